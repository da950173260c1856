//! Writes the CRDs generated from the Rust types in `core/src/api`:
//! `crdgen --dir crds --dir charts/zetaback/crds` (one file per kind in each directory), or
//! with no arguments, every CRD to standard output as one YAML stream.

use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut dirs = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--dir" => dirs.push(it.next().ok_or("--dir needs a directory")?.clone()),
            other => return Err(format!("unknown argument {other:?}; use --dir DIR").into()),
        }
    }
    let files = zetaback::api::crd_files()?;
    if dirs.is_empty() {
        let mut out = std::io::stdout().lock();
        for (_, text) in &files {
            writeln!(out, "---")?;
            out.write_all(text.as_bytes())?;
        }
    }
    for dir in dirs {
        std::fs::create_dir_all(&dir)?;
        for (name, text) in &files {
            std::fs::write(format!("{dir}/{name}"), text)?;
        }
    }
    Ok(())
}
