//! `e2e/scripts/zfs.sh` touches only what it made (issue 14, item 11): `stop` exports only its
//! own pools and leaves a daemon that serves other pools running, `start` keeps zpool.cache
//! (a restarted daemon still imports the machine's other pools), and the pools it makes never
//! enter the cache.
//!
//! The live test runs the script against a zfs-fuse daemon of its own, in a private mount
//! namespace (`unshare --mount`: its own /run, /var/lib/zfs and /etc/zfs, so its own socket,
//! pidfile and zpool.cache), never against the daemon the other tests share. The script only
//! ever signals the daemon in its pidfile (the private one); the harness's clean-up kills only
//! zfs-fuse processes in its own mount namespace.

mod common;

use std::process::Command;

use common::repo_root;

fn zfs_sh() -> String {
    repo_root().join("e2e/scripts/zfs.sh").display().to_string()
}

/// The selection is a pure function of `zpool status` and the marker values: every case.
#[test]
fn owned_pools_are_the_marked_ones_and_those_backed_by_the_scripts_files() {
    let marks = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        marks.path(),
        "marked\ton\nunmarked\t-\noff\toff\nmarked/child\ton\nold\t-\nnear\t-\n",
    )
    .expect("write");
    let status = "  pool: marked\n state: ONLINE\nconfig:\n\n\tNAME STATE\n\tmarked ONLINE\n\t  /elsewhere/m.img ONLINE\n\n\
  pool: unmarked\n state: ONLINE\nconfig:\n\n\tunmarked ONLINE\n\t  /dev/sdb ONLINE\n\n\
  pool: off\n state: ONLINE\nconfig:\n\n\toff ONLINE\n\t  /var/pools/off.img ONLINE\n\n\
  pool: old\n state: UNAVAIL\nconfig:\n\n\told UNAVAIL\n\t  /x/zfs/old.img UNAVAIL cannot open\n\n\
  pool: near\n state: ONLINE\nconfig:\n\n\tnear ONLINE\n\t  /x/zfs-other/near.img ONLINE\n";
    let mut child = Command::new("bash")
        .args([&zfs_sh(), "select-owned"])
        .arg(marks.path())
        .env("ZETABACK_ZFS_DIR", "/x/zfs")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("zfs.sh");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(status.as_bytes())
        .expect("write status");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "zfs.sh select-owned: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let owned: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    // marked: the property; old: its file is in the script's directory (made before the
    // marker, even unavailable). Not: no marker, marker off, a child dataset's marker, a file
    // in a directory whose name only begins like the script's.
    assert_eq!(owned, ["marked", "old"]);
}

const HARNESS: &str = r#"
set -uo pipefail
T=$1; SCRIPT=$2; FOREIGN=$3; MINE=$4; LEGACY=$5
self_ns=$(readlink /proc/self/ns/mnt)
# Clean-up: the foreign pool, then every zfs-fuse in THIS mount namespace (never another).
cleanup() {
  zpool destroy -f "$FOREIGN" >/dev/null 2>&1
  zpool destroy -f "$MINE" >/dev/null 2>&1
  zpool destroy -f "$LEGACY" >/dev/null 2>&1
  for p in $(pgrep -x zfs-fuse); do
    [ "$(readlink /proc/$p/ns/mnt 2>/dev/null)" = "$self_ns" ] && kill -9 "$p"
  done
}
trap cleanup EXIT
mount -t tmpfs tmpfs /run && mkdir -p /run/lock/zfs || exit 10
mkdir -p "$T/var-lib-zfs" "$T/etc-zfs" && mount --bind "$T/var-lib-zfs" /var/lib/zfs || exit 11
cp -a /etc/zfs/. "$T/etc-zfs/" && mount --bind "$T/etc-zfs" /etc/zfs || exit 12
export ZETABACK_ZFS_DIR="$T/zfs"
bash "$SCRIPT" start || exit 13
truncate -s 64M "$T/foreign.img"
zpool create -f -m "/run/foreign-$FOREIGN" "$FOREIGN" "$T/foreign.img" || exit 14
bash "$SCRIPT" pool "$MINE" 64M >/dev/null || exit 15
echo "before: $(zpool list -H -o name 2>/dev/null | sort | tr '\n' ' ')"
bash "$SCRIPT" stop
echo "after stop: $(zpool list -H -o name 2>/dev/null | sort | tr '\n' ' ')"
# A pool an older version of the script made: its image in the script's directory, no marker,
# listed in zpool.cache.
if zpool list -H >/dev/null 2>&1; then
  mkdir -p "$ZETABACK_ZFS_DIR" && truncate -s 64M "$ZETABACK_ZFS_DIR/$LEGACY.img"
  zpool create -f -m "/run/zetaback/zfs/$LEGACY" "$LEGACY" "$ZETABACK_ZFS_DIR/$LEGACY.img" || exit 18
fi
# The daemon dies behind the script's back (a crash, a reboot): the next start must bring
# the foreign pool back (it is in zpool.cache) and not the script's.
pid=$(cat /run/zetaback/zfs-fuse.pid 2>/dev/null)
[ -n "$pid" ] && kill -9 "$pid" && for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
bash "$SCRIPT" start || exit 16
echo "after restart: $(zpool list -H -o name 2>/dev/null | sort | tr '\n' ' ')"
bash "$SCRIPT" pool "$MINE" 64M >/dev/null || exit 17
echo "owned: $(bash "$SCRIPT" owned | tr '\n' ' ')"
exit 0
"#;

/// `stop` and `start` leave a pool the script did not make alone, on a private daemon.
#[test]
fn stop_and_start_leave_other_pools_alone() {
    let t = tempfile::tempdir().expect("tempdir");
    let foreign = format!("agentforeign{}", std::process::id());
    let mine = format!("agentmine{}", std::process::id());
    let legacy = format!("agentlegacy{}", std::process::id());
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-c",
            HARNESS,
            "harness",
        ])
        .arg(t.path())
        .arg(zfs_sh())
        .args([&foreign, &mine, &legacy])
        .output()
        .expect("unshare (tests run as root)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "harness failed ({}): {text}\n{err}",
        out.status
    );
    let line = |prefix: &str| -> Vec<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line: {text}\n{err}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let mut both = vec![foreign.clone(), mine.clone()];
    both.sort();
    assert_eq!(line("before: "), both, "{err}");
    assert_eq!(
        line("after stop: "),
        [foreign.as_str()],
        "stop must export the script's pool and only it: {err}"
    );
    assert!(
        err.contains("left zfs-fuse running"),
        "stop says why the daemon stays: {err}"
    );
    assert_eq!(
        line("after restart: "),
        [foreign.as_str()],
        "a restarted daemon imports the other pool (zpool.cache kept), and none of the script's (not even one an older version left in the cache): {err}"
    );
    assert_eq!(line("owned: "), [mine.as_str()], "{err}");
}
