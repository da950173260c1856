#!/usr/bin/env bash
# Real ZFS for tests: Debian's zfs-fuse daemon and file-backed pools.
#   zfs.sh start                 start zfs-fuse if it is not running (idempotent)
#   zfs.sh pool NAME [SIZE]      create a file-backed pool NAME (default 512M) if missing;
#                                prints its mountpoint
#   zfs.sh dataset NAME          `zfs create -p NAME` (parents too); prints its mountpoint
#   zfs.sh destroy NAME          destroy pool NAME, then its backing file (fails, keeping
#                                both, when the pool cannot be destroyed)
#   zfs.sh owned                 list the pools this script made (one a line)
#   zfs.sh stop                  export the pools this script made, and stop the zfs-fuse it
#                                started unless other pools are still imported
# Pools live under $ZETABACK_ZFS_DIR (default ~/.cache/zetaback/zfs) and mount under
# /run/zetaback/zfs/NAME. Fails loudly when zfs-fuse is not installed.
#
# The script only ever touches what it made: pools carrying the marker property
# zetaback.io:e2e=on on their root dataset, or backed by a file in its own directory (pools
# made before the marker); the zfs-fuse daemon whose pid it recorded. Its pools are created
# with cachefile=none, so a restarted daemon never imports them and zpool.cache (which lists
# the machine's other pools) is left alone.
set -euo pipefail
dir=${ZETABACK_ZFS_DIR:-$HOME/.cache/zetaback/zfs}
mnt=/run/zetaback/zfs
pidfile=/run/zetaback/zfs-fuse.pid

need() { command -v "$1" >/dev/null || { echo "zfs.sh: $1 not found: install Debian's zfs-fuse (apt-get install zfs-fuse)" >&2; exit 1; }; }

running() { zpool list -H >/dev/null 2>&1; }

# The marker property on the root dataset of every pool this script makes.
marker=zetaback.io:e2e

# The pools this script made, from `zpool status` (on stdin) and the marker property values
# (`zfs get -H -o name,value MARKER` lines, in the file named by $1): a pool whose root dataset
# says MARKER=on, or whose vdev is a file under $dir/. Pure text in, names out (tested).
select_owned() {
  { awk -F'\t' '$2 == "on" && $1 !~ /\// {print $1}' "$1"
    awk -v d="$dir/" '$1 == "pool:" {p = $2} index($1, d) == 1 && p != "" {print p}'
  } | sort -u
}

owned_pools() {
  local marks
  marks=$(mktemp)
  zfs get -H -d 0 -o name,value "$marker" >"$marks" 2>/dev/null || true
  zpool status 2>/dev/null | select_owned "$marks"
  rm -f "$marks"
}

# The zfs-fuse this script started (its pidfile), if it still runs.
our_daemon() {
  local pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = zfs-fuse ] && echo "$pid"
}

# Ends the zfs-fuse this script started (TERM, then KILL: a wedged daemon ignores TERM) and
# lazily unmounts what it left mounted under the script's mount directory, so blocked callers
# get an error instead of hanging. Any other zfs-fuse is left alone.
kill_daemon() {
  local pid
  if pid=$(our_daemon); then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 1 25); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
  awk -v m="$mnt/" '$3 == "fuse.zfs" && index($2, m) == 1 {print $2}' /proc/mounts \
    | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -f "$pidfile"
}

# zfs-fuse has hung for good (twice in agents_zfs, once with a fresh daemon) when two tests'
# `zfs create` ran at once: each mounts a new file system, and both stayed blocked on the
# parent's FUSE mount with every daemon thread idle. So starting the daemon and creating pools
# and datasets go one at a time across processes (an flock), and a creation that does not
# return within 120 s fails with that said, instead of hanging the test run.
admin_lock() {
  mkdir -p "$(dirname "$pidfile")"
  exec 9>"$(dirname "$pidfile")/zfs-admin.lock"
  flock 9
}
wedged() { echo "zfs.sh: $1 did not return within 120 s: zfs-fuse is wedged (zfs.sh stop, then start)" >&2; exit 1; }

start() {
  need zfs-fuse; need zpool; need zfs
  mkdir -p "$dir" "$mnt" "$(dirname "$pidfile")"
  [ -e /dev/fuse ] || mknod -m 666 /dev/fuse c 10 229
  if ! running; then
    kill_daemon
    # The script's pools are disposable and never in zpool.cache (cachefile=none): a fresh
    # daemon imports none of them (a damaged image could wedge it), and their images go. The
    # cache itself, which lists pools this script did not make, stays.
    rm -f "$dir"/*.img
    # (without fd 9: the daemon must not hold the admin lock)
    # The daemon serves every caller on the machine: it runs at nice 0 even when the caller that
    # happened to start it is niced (a niced daemon starves every other caller's zfs commands).
    nice -n "$(( -$(nice) ))" zfs-fuse --pidfile "$pidfile" --no-kstat-mount </dev/null >/dev/null 2>&1 9>&-
    for _ in $(seq 1 50); do running && break; sleep 0.2; done
    running || { echo "zfs.sh: zfs-fuse did not start" >&2; exit 1; }
    # A pool of this script that a fresh daemon imported anyway (made by an older version of
    # the script, which left its pools in zpool.cache) is stale: its image is gone. Out of the
    # cache with it.
    for p in $(owned_pools); do timeout 20 zpool export -f "$p" >/dev/null 2>&1 || true; done
  fi
}

pool() {
  local name=$1 size=${2:-512M}
  [[ $name =~ ^[A-Za-z][A-Za-z0-9_.:-]*$ ]] || { echo "zfs.sh: bad pool name '$name'" >&2; exit 2; }
  start
  if ! zpool list -H "$name" >/dev/null 2>&1; then
    rm -f "$dir/$name.img"   # never import a stale image: pools are made fresh
    truncate -s "$size" "$dir/$name.img"
    timeout 120 zpool create -f -o cachefile=none -O "$marker=on" -m "$mnt/$name" "$name" "$dir/$name.img" >/dev/null \
      || { [ $? = 124 ] && wedged "zpool create $name"; exit 1; }
  fi
  zfs get -H -o value mountpoint "$name"
}

dataset() {
  local name=$1
  [[ $name =~ ^[A-Za-z][A-Za-z0-9_.:/-]*$ ]] || { echo "zfs.sh: bad dataset name '$name'" >&2; exit 2; }
  start
  timeout 120 zfs create -p "$name" || { [ $? = 124 ] && wedged "zfs create -p $name"; exit 1; }
  zfs get -H -o value mountpoint "$name"
}

# zfs-fuse often calls a pool busy for a moment after its datasets were used: the destroy is
# tried up to 10 times, a second apart. The image goes only once the pool is gone (a pool whose
# file was removed keeps its space held by the daemon); a pool that stays is an error.
destroy() {
  local name=$1 try
  for try in $(seq 1 10); do
    zpool list -H "$name" >/dev/null 2>&1 || break
    timeout 60 zpool destroy -f "$name" && break
    if [ "$try" = 10 ]; then
      zpool list -H "$name" >/dev/null 2>&1 || break
      echo "zfs.sh: cannot destroy pool $name (busy?): kept it and its image $dir/$name.img" >&2
      exit 1
    fi
    sleep 1
  done
  rm -f "$dir/$name.img"
}

stop() {
  if running; then
    for p in $(owned_pools); do timeout 20 zpool export -f "$p" || true; done
    local others
    others=$(zpool list -H -o name 2>/dev/null | tr '\n' ' ')
    if [ -n "${others// /}" ]; then
      echo "zfs.sh: left zfs-fuse running: it serves pools this script did not make: $others" >&2
      return 0
    fi
  fi
  kill_daemon
}

case "${1:-}" in
  start) admin_lock; start ;;
  pool) shift; admin_lock; pool "$@" ;;
  dataset) shift; admin_lock; dataset "$@" ;;
  destroy) shift; destroy "$@" ;;
  owned) owned_pools ;;
  select-owned) shift; select_owned "$@" ;;
  stop) stop ;;
  *) echo "usage: zfs.sh start | pool NAME [SIZE] | dataset NAME | destroy NAME | owned | stop" >&2; exit 2 ;;
esac
