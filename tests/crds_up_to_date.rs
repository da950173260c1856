//! The CRDs in `crds/` and in the Helm chart are exactly what `crdgen` makes from the Rust
//! types; this fails when someone changed `core/src/api` without regenerating them.

#[test]
fn committed_crds_match_the_rust_types() {
    let root = env!("CARGO_MANIFEST_DIR");
    let files = zetaback::api::crd_files().expect("CRDs serialize");
    assert_eq!(files.len(), 5);
    for dir in ["crds", "charts/zetaback/crds"] {
        let mut on_disk: Vec<String> = std::fs::read_dir(format!("{root}/{dir}"))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut expected: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        expected.sort();
        assert_eq!(
            on_disk, expected,
            "{dir} holds other files than the generated CRDs"
        );
        for (name, text) in &files {
            let committed = std::fs::read_to_string(format!("{root}/{dir}/{name}")).unwrap();
            assert!(
                committed == *text,
                "{dir}/{name} is stale: run `cargo run --bin crdgen -- --dir crds --dir charts/zetaback/crds`"
            );
        }
    }
}
