//! The container images. `e2e/scripts/image.sh build` assembles the controller, agent and proxy
//! images without a registry or a daemon (a debootstrapped Debian base, umoci), and
//! `image.sh check` holds them against the Containerfile users build from: the final stages'
//! USER, ENTRYPOINT, ENV, EXPOSE and COPY lines against each image's config and files, each
//! binary run inside its image under runc, the agent's `zpool` reaching this host's zfs-fuse.
//! A Containerfile that says something else than the images must fail that check, and the
//! chart and the controller must name the images the Containerfile builds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde::Deserialize as _;
use zetaback::controller::fallback_route::DEFAULT_IMAGE;
use zetaback_e2e::{Env, text};

/// `bash e2e/scripts/image.sh ARGS…`, reading `containerfile` instead of the repository's.
fn image_sh(env: &Env, args: &[&str], containerfile: Option<&Path>) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(env.root.join("e2e/scripts/image.sh")).args(args);
    // image.sh runs `cargo build` as e2e/test.sh does; what `cargo test` adds to a test's
    // environment (its package's variables, LD_LIBRARY_PATH) would make that a rebuild.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let cargo_own = name == "CARGO"
            || (name.starts_with("CARGO_")
                && !matches!(
                    name.as_ref(),
                    "CARGO_HOME" | "CARGO_TARGET_DIR" | "CARGO_INCREMENTAL"
                ));
        if cargo_own || name == "LD_LIBRARY_PATH" || name == "RUST_RECURSION_COUNT" {
            cmd.env_remove(name.as_ref());
        }
    }
    if let Some(file) = containerfile {
        cmd.env("ZETABACK_CONTAINERFILE", file);
    }
    cmd.output().expect("run image.sh")
}

/// The images, built once per test binary (a cache hit when the binaries did not change);
/// the directory holding their OCI layouts.
fn built() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let env = Env::get();
        let out = image_sh(env, &["build"], None);
        assert!(
            out.status.success(),
            "image.sh build: {}",
            text(&out.stderr)
        );
        PathBuf::from(text(&out.stdout).trim())
    })
}

/// The Containerfile with `from` replaced by `to` (which must occur), in a temporary file.
fn tampered(name: &str, from: &str, to: &str) -> PathBuf {
    let root = &Env::get().root;
    let original = std::fs::read_to_string(root.join("Containerfile")).expect("Containerfile");
    assert!(original.contains(from), "the Containerfile has no '{from}'");
    let path =
        std::env::temp_dir().join(format!("image-containerfile-{name}-{}", std::process::id()));
    std::fs::write(&path, original.replacen(from, to, 1)).expect("write Containerfile");
    path
}

/// The reference containerd will give the image of `target` (the layout's annotation).
fn image_name(dir: &Path, target: &str) -> String {
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(target).join("index.json")).expect("index.json"),
    )
    .expect("index.json is JSON");
    index["manifests"][0]["annotations"]["io.containerd.image.name"]
        .as_str()
        .expect("an io.containerd.image.name annotation")
        .to_owned()
}

#[test]
fn built_images_match_the_containerfile_and_run() {
    let env = Env::get();
    built();
    let out = image_sh(env, &["check"], None);
    assert!(
        out.status.success(),
        "image.sh check: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let sizes = image_sh(env, &["sizes"], None);
    assert!(sizes.status.success(), "{}", text(&sizes.stderr));
    let listed = text(&sizes.stdout);
    for target in ["controller", "agent", "proxy"] {
        assert!(
            listed.contains(&format!("zetaback-{target} ")),
            "sizes lists no {target}: {listed}"
        );
    }
}

#[test]
fn check_fails_when_the_containerfile_says_otherwise() {
    let env = Env::get();
    built();
    // (what is changed, to what, a phrase the failure must name)
    let cases = [
        (
            "user",
            "FROM scratch AS controller\nCOPY --from=build /out/runtime/ /\nCOPY --from=build /out/bin/zetaback-controller /usr/local/bin/zetaback-controller\nUSER 65532:65532",
            "FROM scratch AS controller\nCOPY --from=build /out/runtime/ /\nCOPY --from=build /out/bin/zetaback-controller /usr/local/bin/zetaback-controller\nUSER 0",
            "controller: image user '65532:65532', Containerfile USER '0'",
        ),
        (
            "copy",
            "COPY --from=build /out/bin/zetaback-proxy /usr/local/bin/zetaback-proxy\n",
            "COPY --from=build /out/bin/zetaback-proxy /usr/local/bin/zetaback-proxy\nCOPY --from=build /out/bin/zetaback-agent /usr/local/bin/zetaback-agent\n",
            "proxy: /usr/local/bin/zetaback-agent is missing from the image",
        ),
        (
            "entrypoint",
            "ENTRYPOINT [\"/usr/local/bin/zetaback-agent\"]",
            "ENTRYPOINT [\"/usr/local/bin/zetaback-agent\", \"--verbose\"]",
            "agent: image entrypoint",
        ),
        (
            "expose",
            "EXPOSE 8080 9090",
            "EXPOSE 8080",
            "proxy: image exposes '8080/tcp 9090/tcp', Containerfile EXPOSE '8080/tcp'",
        ),
    ];
    for (name, from, to, phrase) in cases {
        let file = tampered(name, from, to);
        let out = image_sh(env, &["check"], Some(&file));
        let _ = std::fs::remove_file(&file);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "check passed with the {name} changed"
        );
        assert!(
            stderr.contains(phrase),
            "the {name} case does not say '{phrase}': {stderr}"
        );
    }
}

#[test]
fn chart_and_controller_name_the_built_images() {
    let env = Env::get();
    let dir = built();
    let chart = env.root.join("charts/zetaback");
    let out = env.helm(&[
        "template",
        "zetaback",
        &chart.to_string_lossy(),
        "--kube-version",
        "1.37.2",
    ]);
    assert!(out.status.success(), "helm template: {}", text(&out.stderr));
    let manifests = text(&out.stdout);
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&manifests)
        .map(|d| serde_yaml::Value::deserialize(d).expect("a YAML document"))
        .collect();
    let pod_of = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
            })
            .map(|d| d["spec"]["template"]["spec"].clone())
            .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"))
    };
    let controller = pod_of("Deployment", "zetaback-controller");
    let agent = pod_of("DaemonSet", "zetaback-agent");
    assert_eq!(
        controller["containers"][0]["image"].as_str(),
        Some(image_name(dir, "controller").as_str())
    );
    assert_eq!(
        agent["containers"][0]["image"].as_str(),
        Some(image_name(dir, "agent").as_str())
    );
    // FallbackRoutes that name no image run the proxy image the Containerfile builds.
    assert_eq!(DEFAULT_IMAGE, image_name(dir, "proxy"));
    // The controller runs as the image's non-root user on a read-only root filesystem.
    let containerfile =
        std::fs::read_to_string(env.root.join("Containerfile")).expect("Containerfile");
    let user = containerfile
        .split("FROM scratch AS controller")
        .nth(1)
        .and_then(|stage| stage.lines().find_map(|l| l.strip_prefix("USER ")))
        .expect("the controller stage has a USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert_eq!(
        controller["securityContext"]["runAsUser"]
            .as_u64()
            .map(|u| u.to_string()),
        Some(uid.to_owned())
    );
    assert_eq!(
        controller["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    assert_eq!(
        controller["containers"][0]["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
}
