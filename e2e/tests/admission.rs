//! Bad input is refused at `kubectl apply` time by the real apiserver, with a readable reason:
//! every manifest under `e2e/manifests/invalid/` names the text its refusal must contain on
//! its first line (`# expect: ...`), no refusal prints a regular expression instead of a
//! sentence, and every example under `examples/` is accepted. Admission and the agent agree on
//! names: every dataset name, dataset pattern and snapshot name the apiserver accepts the
//! agent's checks (`zetaback::names`) accept too, and the other way round.

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
        } else if stderr.contains("should match '") {
            failures.push(format!(
                "{}: refused with a regular expression instead of a sentence: {stderr}",
                file.display()
            ));
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

/// Whether the apiserver admits `object` (a server-side dry run of its creation).
async fn admitted<K>(api: &kube::Api<K>, object: serde_json::Value) -> Result<(), String>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let object: K = serde_json::from_value(object).expect("object");
    let params = kube::api::PostParams {
        dry_run: true,
        field_manager: None,
    };
    match api.create(&params, &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 422 => Err(s.message),
        Err(e) => panic!("dry-run create: {e}"),
    }
}

/// Names admission and the agent must judge alike: ordinary ones, and hostile ones (option
/// injection, path traversal, shell characters, `@`, empty and over-long components).
fn candidate_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "tank",
        "tank/db",
        "rpool/ROOT/debian_12",
        "t/a.b:c",
        "tank/.hidden",
        "tank/..x",
        "tank/...",
        "tank/.",
        "tank/..",
        "tank/./db",
        "tank/../etc",
        ".",
        "..",
        "./tank",
        "-R",
        "tank/-x",
        "tank//db",
        "tank/",
        "/tank",
        "a b",
        "tank/db@snap",
        "tank/db;rm",
        "tank/$(id)",
        "tank/db\n",
        "tank/é",
        "9tank",
    ]
    .map(String::from)
    .to_vec();
    names.push(format!("tank/{}", "a".repeat(250)));
    names.push(format!("tank/{}", "a".repeat(251)));
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_and_the_agent_agree_on_names() {
    use zetaback::api::{BackupJob, BackupPolicy, ZfsHost};
    use zetaback::names::{validate_dataset, validate_dataset_glob, validate_snapshot_name};
    let env = Env::get();
    let client = env.client().await;
    let policies: kube::Api<BackupPolicy> = kube::Api::namespaced(client.clone(), "default");
    let jobs: kube::Api<BackupJob> = kube::Api::namespaced(client.clone(), "default");
    let hosts: kube::Api<ZfsHost> = kube::Api::all(client);
    let mut disagreements = Vec::new();
    let mut check = |what: &str, name: &str, agent: bool, admission: Result<(), String>| {
        println!("{what} {name:?}: agent {agent}, admission {admission:?}");
        if agent != admission.is_ok() {
            disagreements.push(format!(
                "{what} {name:?}: the agent {} it, admission {}",
                if agent { "accepts" } else { "refuses" },
                match admission {
                    Ok(()) => "accepts it".to_owned(),
                    Err(why) => format!("refuses it: {why}"),
                }
            ));
        }
    };
    for name in candidate_names() {
        let policy = serde_json::json!({
            "apiVersion": "zetaback.io/v1alpha1", "kind": "BackupPolicy",
            "metadata": {"name": "names"},
            "spec": {"hosts": {"names": ["db-1"]}, "full": {"every": "7d", "keep": "30d"},
                     "incremental": {"every": "1d", "keep": "14d"},
                     "target": {"host": "backup-1", "dataset": name}}
        });
        check(
            "dataset",
            &name,
            validate_dataset(&name).is_ok(),
            admitted(&policies, policy).await,
        );
        let host = serde_json::json!({
            "apiVersion": "zetaback.io/v1alpha1", "kind": "ZfsHost",
            "metadata": {"name": "admission-names"},
            "spec": {"nodeName": "n1", "datasets": {"include": [name]}}
        });
        check(
            "dataset pattern",
            &name,
            validate_dataset_glob(&name).is_ok(),
            admitted(&hosts, host).await,
        );
        // A snapshot's short name: the same candidates (those with '/' or '@' are refused).
        let job = serde_json::json!({
            "apiVersion": "zetaback.io/v1alpha1", "kind": "BackupJob",
            "metadata": {"name": "names"},
            "spec": {"policy": "p", "host": "db-1", "dataset": "tank/db", "type": "full",
                     "snapshot": name, "target": {"host": "backup-1", "path": "/srv"}}
        });
        check(
            "snapshot",
            &name,
            validate_snapshot_name(&name).is_ok() && name.len() <= 200,
            admitted(&jobs, job).await,
        );
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
