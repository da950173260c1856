//! Writes the CRDs generated from the Rust types: `crdgen > crds/zetaback.yaml`, or
//! `crdgen --dir crds` for one file per kind.

use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let docs = zetaback::api::all_crds()
        .into_iter()
        .map(|crd| serde_yaml::to_string(&crd).map(|y| (crd.metadata.name.unwrap_or_default(), y)))
        .collect::<Result<Vec<_>, _>>()?;
    match args.get(1).map(String::as_str) {
        Some("--dir") => {
            let dir = args.get(2).ok_or("--dir needs a directory")?;
            std::fs::create_dir_all(dir)?;
            for (name, yaml) in &docs {
                std::fs::write(
                    format!("{dir}/{name}.yaml"),
                    zetaback::api::crd_file_text(yaml),
                )?;
            }
        }
        _ => {
            let mut out = std::io::stdout().lock();
            for (_, yaml) in &docs {
                writeln!(out, "---")?;
                out.write_all(yaml.as_bytes())?;
            }
        }
    }
    Ok(())
}
