//! The binaries and the tests are built with one feature set, so each crate compiles once.
//!
//! Cargo resolves features twice: without dev-dependencies for `cargo build --bins` (what
//! `e2e/scripts/image.sh`, the demo and CI's first build run) and with them for `cargo test`.
//! When a dev-dependency turns on one more feature of a crate the binaries also use, every crate
//! above it gets a second build: with `fastrand`'s `default` (turned on by the dev-dependencies'
//! `tempfile`, left off by kube-runtime's `backon`), that was kube and every zetaback crate, and
//! a CI run compiled them twice. This test compares the two resolutions with `cargo tree`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// `cargo tree -f '{p} {f}' --prefix none` lines ("name vX.Y.Z features" or, for a path
/// package, "name vX.Y.Z (path) features") as package → the feature lists it is built with
/// (a crate can be built twice in one graph: for build scripts and for the target).
fn feature_sets(tree: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut sets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in tree.lines() {
        let line = line.trim_end_matches(" (*)").trim();
        let mut words = line.split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            continue;
        };
        let rest: Vec<&str> = words.filter(|w| !w.starts_with('(')).collect();
        sets.entry(format!("{name}@{version}"))
            .or_default()
            .insert(rest.join(" "));
    }
    sets
}

/// The packages both graphs build, with different features: (package, without dev, with dev).
fn parted(
    normal: &BTreeMap<String, BTreeSet<String>>,
    with_dev: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<(String, BTreeSet<String>, BTreeSet<String>)> {
    normal
        .iter()
        .filter_map(|(package, features)| {
            let other = with_dev.get(package)?;
            (other != features).then(|| (package.clone(), features.clone(), other.clone()))
        })
        .collect()
}

fn cargo_tree(edges: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "--workspace", "--locked", "--offline", "-e", edges])
        .args(["-f", "{p} {f}", "--prefix", "none"])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -e {edges} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("cargo tree prints UTF-8")
}

#[test]
fn binaries_and_tests_share_one_feature_set() {
    let normal = feature_sets(&cargo_tree("normal,build"));
    let with_dev = feature_sets(&cargo_tree("normal,build,dev"));
    assert!(
        normal.contains_key(&format!("zetaback-core@v{}", env!("CARGO_PKG_VERSION"))),
        "cargo tree listed no zetaback-core: {normal:?}"
    );
    let parted = parted(&normal, &with_dev);
    assert!(
        parted.is_empty(),
        "dev-dependencies change the features of crates the binaries use (each crate above them \
         builds twice: once for `cargo build --bins`, once for `cargo test`); give the normal \
         graph the same features (e.g. a dependency line in core/Cargo.toml): {parted:#?}"
    );
}

#[test]
fn a_feature_only_the_tests_turn_on_is_found() {
    let normal = feature_sets(
        "fastrand v2.5.0 alloc,std\nzetaback-core v0.1.0 (/w/core) \nserde v1.0.0 std\nserde v1.0.0 derive,std\n",
    );
    let with_dev = feature_sets(
        "fastrand v2.5.0 alloc,default,std\nzetaback-core v0.1.0 (/w/core) \nserde v1.0.0 derive,std (*)\nserde v1.0.0 std\ntempfile v3.0.0 default\n",
    );
    let parted = parted(&normal, &with_dev);
    assert_eq!(parted.len(), 1, "{parted:?}");
    assert_eq!(parted[0].0, "fastrand@v2.5.0");
    assert_eq!(
        parted[0].2,
        BTreeSet::from(["alloc,default,std".to_owned()])
    );
}
