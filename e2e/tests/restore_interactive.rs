//! `kubectl zetaback restore -i` for real, in a terminal: the real `kubectl-zetaback` binary
//! runs inside tmux (a 160x48 pane), the test answers with `tmux send-keys` and reads the
//! screen with `tmux capture-pane`, waiting for the text it expects (never for fixed times).
//!
//! The fleet is real: zfs-fuse pools, three `zetaback-agent` processes (a source host, a
//! backup host storing files, a destination host), the local kube-apiserver, the controller
//! in-process, and a policy that takes a full and then an incremental of two datasets.
//!
//! 1. Cancelling creates nothing: Esc at the dataset question, and Ctrl-C at the final
//!    confirmation (after every other answer), each exit 130 and leave no Restore.
//! 2. A bulk restore of both datasets at their newest point, chosen with type-to-filter and
//!    the arrow keys, to the destination host under the suggested base: the command follows
//!    it to the end and exits 0, the parent Restore and its two children succeeded verified,
//!    and every restored file's sha256 equals the original's.
//!
//! The screens of the successful session are printed (`--nocapture`) and written to the
//! fleet's directory (`/tmp/zetaback-e2e/<ns>/restore-interactive-session.txt`); with
//! `ZETABACK_SAVE_SESSION=1` also to `e2e/manifests/demo/restore-interactive-session.txt`
//! (the captured session kept in the repository).
//! tmux is required (`e2e/scripts/install-deps.sh` installs it): without it the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams};
use zetaback::api::Restore;
use zetaback::api::restore::{BULK_PARENT_LABEL, RestorePhase};
use zetaback_e2e::fleet::{DEFAULT_POOL_SIZE, Fleet, agent_binary, mounted, noise, sums};
use zetaback_e2e::{Env, eventually, text};

/// A tmux server of this test (its own socket) with one session running a command.
struct Tmux {
    socket: String,
    session: String,
    transcript: String,
}

impl Tmux {
    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run tmux ({e}): it is required for this test; e2e/scripts/install-deps.sh installs it"
                )
            })
    }

    /// Starts `command` (a shell command line) in a detached 160x48 session; when it ends,
    /// the pane shows `[exit N]` and stays.
    fn start(tag: &str, command: &str) -> Tmux {
        let t = Tmux {
            socket: format!("zetaback-e2e-{}-{tag}", std::process::id()),
            session: "restore".into(),
            transcript: String::new(),
        };
        let line = format!("{command}; echo \"[exit $?]\"; sleep 3600");
        let out = t.tmux(&[
            "new-session",
            "-d",
            "-x",
            "160",
            "-y",
            "48",
            "-s",
            &t.session,
            &line,
        ]);
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            text(&out.stderr)
        );
        t
    }

    /// The visible screen with wrapped lines joined (for matching), trailing blank lines
    /// dropped.
    fn screen(&self) -> String {
        self.capture(true)
    }

    /// The visible screen as it looks (`joined`: wrapped lines joined).
    fn capture(&self, joined: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-t", self.session.as_str()];
        if joined {
            args.push("-J");
        }
        let out = self.tmux(&args);
        assert!(
            out.status.success(),
            "tmux capture-pane: {}",
            text(&out.stderr)
        );
        text(&out.stdout).trim_end().to_owned()
    }

    /// Sends keys (tmux key names such as `Enter`, `Escape`, `Right`, `C-c`, or text).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", self.session.as_str()];
        args.extend_from_slice(keys);
        let out = self.tmux(&args);
        assert!(
            out.status.success(),
            "tmux send-keys: {}",
            text(&out.stderr)
        );
    }

    /// Sends literal text (no key-name lookup).
    fn type_text(&self, s: &str) {
        let out = self.tmux(&["send-keys", "-t", &self.session, "-l", s]);
        assert!(
            out.status.success(),
            "tmux send-keys -l: {}",
            text(&out.stderr)
        );
    }

    /// Waits until the screen satisfies `ready`, then records it in the transcript under
    /// `step`. Panics with the last screen after `limit`.
    async fn wait(&mut self, step: &str, limit: Duration, ready: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if ready(&s) {
                let seen = self.capture(false);
                self.transcript
                    .push_str(&format!("──── {step} ────\n{seen}\n\n"));
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for: {step}\nlast screen:\n{s}"
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Waits for `needle` on the screen.
    async fn wait_for(&mut self, step: &str, needle: &str, limit: Duration) -> String {
        let n = needle.to_owned();
        self.wait(step, limit, move |s| s.contains(&n)).await
    }

    /// The exit code the command printed (`[exit N]`), once it ended.
    async fn exit_code(&mut self, limit: Duration) -> i32 {
        let s = self
            .wait("the command ended", limit, |s| s.contains("[exit "))
            .await;
        let tail = s.rsplit("[exit ").next().unwrap_or("");
        tail.split(']')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no exit code on the screen:\n{s}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

const QUESTION: Duration = Duration::from_secs(60);

fn kubectl_zetaback() -> PathBuf {
    let bin = agent_binary().with_file_name("kubectl-zetaback");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`)",
        bin.display()
    );
    bin
}

fn command_line(env: &Env, fleet: &Fleet) -> String {
    format!(
        "env KUBECONFIG={} {} restore -i -n {} --token-file={}",
        env.kubeconfig.display(),
        kubectl_zetaback().display(),
        fleet.ns,
        fleet.admin_token_file.display()
    )
}

async fn restores(api: &Api<Restore>) -> Vec<String> {
    api.list(&ListParams::default())
        .await
        .expect("list restores")
        .items
        .into_iter()
        .map(|r| r.metadata.name.unwrap_or_default())
        .collect()
}

/// Answers the questions up to the confirmation: source host by typing part of its name,
/// every dataset (→), the newest point, the destination host by typing its unique part,
/// the suggested base.
async fn answer_all(t: &mut Tmux, src: &str, dst: &str, tag: u32) {
    t.wait_for("asked for the source host", "Source host", QUESTION)
        .await;
    t.type_text("src");
    t.wait("typed 'src': the list is filtered", QUESTION, |s| {
        s.contains(src) && s.contains("Source host")
    })
    .await;
    t.keys(&["Enter"]);
    t.wait_for("asked for the datasets", "Datasets of", QUESTION)
        .await;
    t.keys(&["Right"]);
    t.wait("→ marked every dataset", QUESTION, |s| {
        s.matches("[x]").count() == 2
    })
    .await;
    t.keys(&["Enter"]);
    t.wait_for("asked for the point in time", "Point in time", QUESTION)
        .await;
    t.keys(&["Enter"]);
    t.wait_for(
        "asked for the destination host",
        "Destination host",
        QUESTION,
    )
    .await;
    t.type_text(&format!("{tag}-dst"));
    t.wait("typed the destination's name", QUESTION, |s| {
        s.lines()
            .any(|l| l.trim_start().starts_with('>') && l.contains(dst))
    })
    .await;
    t.keys(&["Enter"]);
    t.wait_for("asked for the base dataset", "Base dataset on", QUESTION)
        .await;
    t.keys(&["Enter"]);
    t.wait_for(
        "the summary, and the confirmation",
        "Start this restore?",
        QUESTION,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_restore_in_a_terminal() {
    let env = Env::get();
    let fleet = Fleet::source_store_dest(env, "restorei", DEFAULT_POOL_SIZE).await;
    let client = fleet.client.clone();
    let (src, dst) = (fleet.name("src"), fleet.name("dst"));
    let src_pool = fleet.host("src").pool.clone();
    let dst_pool = fleet.host("dst").pool.clone();
    let datasets = [
        fleet.create_dataset("src", "data/alpha"),
        fleet.create_dataset("src", "data/beta"),
    ];
    for (i, ds) in datasets.iter().enumerate() {
        let seed = u32::try_from(i).expect("small") + 1;
        fleet.write_file(ds, "blob.bin", &noise(seed, 1_500_000));
        fleet.write_file(
            ds,
            "notes/readme.txt",
            format!("{ds} version 1\n").as_bytes(),
        );
    }

    // A policy whose full is due at once; the incremental comes on request.
    let spec = fleet.policy_spec("src", "bak", "*/data/*");
    fleet
        .create_policy("nightly", "src", &[&datasets[0], &datasets[1]], spec)
        .await;
    for ds in &datasets {
        fleet.wait_for_backups("bak", "src", ds, 1).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await; // distinct stream times
    for (i, ds) in datasets.iter().enumerate() {
        let mut blob = noise(u32::try_from(i).expect("small") + 1, 1_500_000);
        blob[200_000..260_000].copy_from_slice(&noise(99, 60_000));
        fleet.write_file(ds, "blob.bin", &blob);
        fleet.write_file(
            ds,
            "notes/readme.txt",
            format!("{ds} version 2\n").as_bytes(),
        );
        fleet.write_file(ds, "added.txt", b"added before the incremental\n");
    }
    // One request per dataset: a request for every dataset of the host is recorded as
    // handled once the first job is created, when the host has one job slot.
    for (i, ds) in datasets.iter().enumerate() {
        fleet.backup_incremental_now("nightly", "src", ds).await;
        fleet.wait_for_backups("bak", "src", ds, 2).await;
        if i == 0 {
            tokio::time::sleep(Duration::from_millis(1100)).await; // a request per second
        }
    }
    let originals: Vec<String> = datasets.iter().map(|d| sums(&mounted(d))).collect();
    // The destination's agent must have reported its pool, for the suggested base.
    let hosts: Api<zetaback::api::ZfsHost> = Api::all(client.clone());
    eventually(
        "the destination host reports its pool",
        Duration::from_secs(60),
        || async {
            let h = hosts.get(&dst).await.ok()?;
            h.status?
                .pools
                .iter()
                .any(|p| p.name == dst_pool)
                .then_some(())
        },
    )
    .await;
    let api: Api<Restore> = Api::namespaced(client.clone(), &fleet.ns);
    let command = command_line(env, &fleet);
    println!("in tmux: {command}");

    // 1a. Esc at the dataset question: exit 130, nothing created.
    let mut t = Tmux::start("esc", &command);
    t.wait_for("asked for the source host", "Source host", QUESTION)
        .await;
    t.keys(&["Enter"]);
    t.wait_for("asked for the datasets", "Datasets of", QUESTION)
        .await;
    t.keys(&["Escape"]);
    assert_eq!(t.exit_code(QUESTION).await, 130, "{}", t.screen());
    assert!(
        t.screen().contains("cancelled: nothing was created"),
        "{}",
        t.screen()
    );
    println!("Esc at the datasets:\n{}\n", t.screen());
    drop(t);
    assert_eq!(
        restores(&api).await,
        Vec::<String>::new(),
        "Esc created a Restore"
    );

    // 1b. Ctrl-C at the confirmation, after every other answer: exit 130, nothing created.
    let mut t = Tmux::start("ctrlc", &command);
    answer_all(&mut t, &src, &dst, fleet.tag).await;
    t.keys(&["C-c"]);
    assert_eq!(t.exit_code(QUESTION).await, 130, "{}", t.screen());
    println!("Ctrl-C at the confirmation:\n{}\n", t.screen());
    drop(t);
    assert_eq!(
        restores(&api).await,
        Vec::<String>::new(),
        "Ctrl-C created a Restore"
    );

    // 2. The restore, to the end.
    let mut t = Tmux::start("run", &command);
    answer_all(&mut t, &src, &dst, fleet.tag).await;
    let summary = t.screen();
    let base = format!("{dst_pool}/restore");
    for ds in &datasets {
        assert!(
            summary.contains(&format!("{src}:{ds}"))
                && summary.contains(&format!("{dst}:{base}/{ds}")),
            "the summary names {ds} and where it goes:\n{summary}"
        );
    }
    t.keys(&["y", "Enter"]);
    // Whatever the follow shows first: the bars (one per dataset), or already the end.
    t.wait("following the restore", Duration::from_secs(300), |s| {
        s.contains("[exit ")
            || (s.contains("created")
                && ["waiting", "restoring", "done, verified"]
                    .iter()
                    .any(|w| s.contains(&format!("/s {w}")) || s.contains(&format!(" {w}\n"))))
    })
    .await;
    let code = t.exit_code(Duration::from_secs(300)).await;
    let transcript = t.transcript.clone();
    let session = format!(
        "# kubectl zetaback restore -i, run by e2e/tests/restore_interactive.rs in tmux (160x48):\n# {command}\n# Each block is the screen (tmux capture-pane) after the step it names.\n\n{transcript}"
    );
    println!("{session}");
    std::fs::write(fleet.dir.join("restore-interactive-session.txt"), &session)
        .expect("write the session transcript");
    if std::env::var_os("ZETABACK_SAVE_SESSION").is_some_and(|v| v == "1") {
        let demo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("manifests/demo/restore-interactive-session.txt");
        std::fs::write(&demo, &session).expect("write the session transcript");
    }
    assert_eq!(code, 0, "the interactive restore failed:\n{}", t.screen());
    drop(t);

    // The parent and its children succeeded verified; the files are the originals.
    let names = restores(&api).await;
    let parents: Vec<Restore> = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter(|r| r.spec.source.is_bulk())
        .collect();
    assert_eq!(parents.len(), 1, "{names:?}");
    let parent = &parents[0];
    let st = parent.status.clone().expect("status");
    assert_eq!(
        (st.phase, st.verified),
        (RestorePhase::Succeeded, Some(true)),
        "{st:?}"
    );
    assert_eq!(st.datasets.len(), 2, "{st:?}");
    let children = api
        .list(&ListParams::default().labels(&format!(
            "{BULK_PARENT_LABEL}={}",
            parent.metadata.name.clone().unwrap_or_default()
        )))
        .await
        .expect("children")
        .items;
    assert_eq!(children.len(), 2, "one child per dataset: {names:?}");
    for c in &children {
        let cs = c.status.clone().expect("child status");
        assert_eq!(
            (cs.phase, cs.verified),
            (RestorePhase::Succeeded, Some(true)),
            "{cs:?}"
        );
        assert_eq!(cs.chain.len(), 2, "full + incremental: {:?}", cs.chain);
    }
    for (ds, original) in datasets.iter().zip(&originals) {
        let restored = format!("{base}/{ds}");
        assert_eq!(
            &sums(&mounted(&restored)),
            original,
            "{restored} differs from {ds}"
        );
        println!("{restored}: every file's sha256 equals {src}:{ds}'s");
    }
    assert!(src_pool != dst_pool);
    fleet.shutdown().await;
}
