//! Every integration test (a file `tests/<name>.rs` of a workspace crate) is in exactly one
//! tier of `e2e/test-tiers.txt`, which `e2e/test.sh unit|real|e2e|hostile` runs: a new test file that
//! is not listed would run only in the full run, and a listed file that is gone would make a
//! tier's `cargo test --test` fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The value of the first `key = value` after `[section]` in a Cargo.toml (an array may
/// span lines).
fn toml_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut inside = false;
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line.starts_with('[') && !line.contains('=') {
            inside = line == format!("[{section}]");
        } else if inside
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            let mut value = v.trim().to_owned();
            while value.starts_with('[') && !value.contains(']') {
                value.push_str(lines.next()?);
            }
            return Some(value);
        }
    }
    None
}

/// (package, test name) of every `tests/*.rs` file of every workspace member.
fn test_files(root: &Path) -> BTreeSet<(String, String)> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let members = toml_value(&manifest, "workspace", "members").expect("workspace members");
    let mut found = BTreeSet::new();
    let members = members.trim_matches(['[', ']']).split(',');
    for member in members
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
    {
        let dir = root.join(member);
        let text = std::fs::read_to_string(dir.join("Cargo.toml")).expect("member Cargo.toml");
        let package = toml_value(&text, "package", "name").expect("package name");
        let Ok(entries) = std::fs::read_dir(dir.join("tests")) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "rs") {
                let name = path
                    .file_stem()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                found.insert((package.trim_matches('"').to_owned(), name));
            }
        }
    }
    found
}

#[test]
fn every_test_file_is_in_exactly_one_tier() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tiers = std::fs::read_to_string(root.join("e2e/test-tiers.txt")).expect("test-tiers.txt");
    let mut listed: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for line in tiers
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [tier, package, test] = fields[..] else {
            panic!("e2e/test-tiers.txt: {line:?} is not `tier package test`");
        };
        assert!(
            ["unit", "real", "e2e", "hostile", "openzfs", "cluster"].contains(&tier),
            "e2e/test-tiers.txt: unknown tier {tier:?} in {line:?}"
        );
        listed
            .entry((package.to_owned(), test.to_owned()))
            .or_default()
            .push(tier.to_owned());
    }
    let files = test_files(root);
    let unlisted: Vec<_> = files.iter().filter(|k| !listed.contains_key(*k)).collect();
    assert!(
        unlisted.is_empty(),
        "test files in no tier of e2e/test-tiers.txt: {unlisted:?}"
    );
    let gone: Vec<_> = listed.keys().filter(|k| !files.contains(*k)).collect();
    assert!(
        gone.is_empty(),
        "e2e/test-tiers.txt lists tests that do not exist: {gone:?}"
    );
    let twice: Vec<_> = listed.iter().filter(|(_, t)| t.len() > 1).collect();
    assert!(twice.is_empty(), "tests listed more than once: {twice:?}");
    // `cargo test -p A -p B --test NAME` runs NAME in every selected package that has it.
    let mut names: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (package, test) in &files {
        names.entry(test).or_default().push(package);
    }
    let shared: Vec<_> = names.iter().filter(|(_, p)| p.len() > 1).collect();
    assert!(
        shared.is_empty(),
        "test names used by several packages cannot be selected per tier: {shared:?}"
    );
}
