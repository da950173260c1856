//! Bad input is refused at `kubectl apply` time by the real apiserver, with a readable reason:
//! every manifest under `e2e/manifests/invalid/` names the text its refusal must contain on
//! its first line (`# expect: ...`), and every example under `examples/` is accepted.

use zetaback_e2e::{Env, text};

fn manifests(dir: &str) -> Vec<std::path::PathBuf> {
    let env = Env::get();
    let mut files: Vec<_> = std::fs::read_dir(env.root.join("e2e/manifests").join(dir))
        .expect("manifest directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_invalid_manifest_is_refused_with_its_reason() {
    let env = Env::get();
    let files = manifests("invalid");
    assert!(
        files.len() >= 19,
        "expected the full set of invalid manifests, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let body = std::fs::read_to_string(file).expect("readable");
        let expect = body
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks a '# expect: ' first line", file.display()));
        let out = env.kubectl(&["apply", "--dry-run=server", "-f", &file.to_string_lossy()]);
        let stderr = text(&out.stderr);
        if out.status.success() {
            failures.push(format!("{}: accepted, but must be refused", file.display()));
        } else if !stderr.contains(expect) {
            failures.push(format!(
                "{}: refused without the expected reason\n  expected: {expect}\n  got: {stderr}",
                file.display()
            ));
        } else {
            println!(
                "refused {}: {}",
                file.file_name().unwrap_or_default().to_string_lossy(),
                stderr.trim()
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_example_is_accepted() {
    let env = Env::get();
    let files = manifests("examples");
    assert!(!files.is_empty());
    for file in files {
        let out = env.kubectl(&["apply", "--dry-run=server", "-f", &file.to_string_lossy()]);
        assert!(
            out.status.success(),
            "{} refused: {}",
            file.display(),
            text(&out.stderr)
        );
    }
}

#[test]
fn kubectl_get_zetaback_lists_every_kind() {
    let env = Env::get();
    let out = env.kubectl(&["api-resources", "--categories=zetaback", "-o", "name"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut kinds: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "backupjobs.zetaback.io",
            "backuppolicies.zetaback.io",
            "fallbackroutes.zetaback.io",
            "restores.zetaback.io",
            "zfshosts.zetaback.io"
        ]
    );
}
