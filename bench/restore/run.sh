#!/usr/bin/env bash
# Restore benchmark (issue 5): a dataset of SIZE_MIB (default 1024) MiB of incompressible data
# on zfs-fuse, backed up as a full and 5 incrementals (INC_MIB, default 32, MiB of new data
# each) into a file store through the real agent path (`zetaback-agent backup` → a `--no-kube`
# store agent → stream files + manifests), then restored in the same run, ROUNDS times
# (default 2), alternating:
#   (a) raw:   for each piece in order: `cat piece | zfs receive` (the fair equivalent of
#              `cat full inc1 ... inc5 | zfs receive`: zfs receive takes one stream per run)
#   (b) agent: `zetaback-agent restore` (the code a Restore runs: catalogue → chain → each
#              piece streamed by the store agent over loopback HTTP, sha256-verified with the
#              1 MiB hold-back, then `zfs receive`)
# It prints MB/s, the ratio agent/raw and the destination agent's peak RSS. Not a test: numbers.
#
#   bench/restore/run.sh [SIZE_MIB]      (as root; needs zfs-fuse; builds the agent --release)
# Env: AGENT_LOG (RUST_LOG of the restores, kept in AGENT_LOG_FILE), BENCH_DIR (default /var/tmp/zetaback-bench-restore), AGENT_BIN (skip the build),
#      INC_MIB, ROUNDS, COMPRESSION (none|zstd), BENCH_PORT, PERF=1 (also `perf record` one
#      agent restore and print where its CPU goes).
set -euo pipefail
# The agents here run without TLS, explicitly (bench/transfer compares TLS with plaintext).
export ZETABACK_INSECURE_PLAINTEXT=true
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
size_mib=${1:-1024}
inc_mib=${INC_MIB:-32}
rounds=${ROUNDS:-2}
dir=${BENCH_DIR:-/var/tmp/zetaback-bench-restore}
compression=${COMPRESSION:-none}
src=h2benchrsrc
dst=h2benchrdst
port=${BENCH_PORT:-17795}
zfs_sh="$root/e2e/scripts/zfs.sh"
host=bench-src

log() { echo "bench: $*" >&2; }

if [ -n "${AGENT_BIN:-}" ]; then
  agent=$AGENT_BIN
else
  log "building zetaback-agent (release)"
  (cd "$root" && cargo build --release -q -p zetaback-agent)
  agent="$root/target/release/zetaback-agent"
fi

# zfs-fuse often calls a pool busy for a moment after use; zfs.sh removes the backing file
# even then, and the daemon keeps the space until the pool is destroyed: retry first.
destroy_pool() {
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    zpool list -H "$1" >/dev/null 2>&1 || break
    timeout 60 zpool destroy -f "$1" 2>/dev/null && break
    sleep 1
  done
  "$zfs_sh" destroy "$1" >/dev/null 2>&1 || true
}
cleanup() {
  [ -n "${store_pid:-}" ] && kill "$store_pid" 2>/dev/null || true
  destroy_pool "$src"
  destroy_pool "$dst"
  rm -rf "$dir"
}
trap cleanup EXIT
cleanup
mkdir -p "$dir/store"
echo bench-token >"$dir/token"

total_mib=$(( size_mib + 5 * inc_mib ))
src_mnt=$("$zfs_sh" pool "$src" "$(( total_mib * 2 + 512 ))M")
"$zfs_sh" pool "$dst" "$(( total_mib * 2 + 512 ))M" >/dev/null
zfs create "$src/data"
zfs create "$dst/r"

log "starting the store agent (--no-kube)"
# Without Kubernetes the store knows its callers from a table: the token is the source's.
printf '[{"token": "bench-token", "hosts": ["%s"]}]' "$host" >"$dir/identities.json"
RUST_LOG=warn "$agent" --no-kube --host-name bench-store --listen "127.0.0.1:$port" \
  --store-root "$dir/store" --identities-file "$dir/identities.json" &
store_pid=$!
for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

write_mib() { # write_mib FILE MIB
  local left=$2 out=$1
  : >"$out"
  while [ "$left" -gt 0 ]; do
    local n=$(( left < 64 ? left : 64 ))
    head -c "$(( n * 1048576 ))" /dev/urandom >>"$out"
    left=$(( left - n ))
  done
}

backup() { # backup SNAP [BASE]
  local args=(backup --host-name "$host" --token-file "$dir/token" --target "127.0.0.1:$port"
    --dataset "$src/data" --snapshot "$1" --target-path "$dir/store" --keep-snapshots
    --compression "$compression")
  [ -n "${2:-}" ] && args+=(--base-snapshot "$2")
  RUST_LOG=warn "$agent" "${args[@]}" | grep -o '"backupId":"[^"]*"' | cut -d'"' -f4
}

log "writing $size_mib MiB of random data, full backup"
left=$size_mib; i=0
while [ "$left" -gt 0 ]; do
  n=$(( left < 256 ? left : 256 ))
  write_mib "$src_mnt/data/f$i.bin" "$n"
  left=$(( left - n )); i=$(( i + 1 ))
done
sync
ids=("$(backup s0)")
for k in 1 2 3 4 5; do
  sleep 1.1 # distinct stream times (ids are unix seconds)
  log "incremental $k: $inc_mib MiB of new data"
  write_mib "$src_mnt/data/inc$k.bin" "$inc_mib"
  sync
  ids+=("$(backup "s$k" "s$(( k - 1 ))")")
done
log "stored: ${ids[*]}"
ds_dir="$dir/store/$host/$(sed 's|/|+|g' <<<"$src/data")"
pieces=()
for id in "${ids[@]}"; do pieces+=("$ds_dir/$id"); done
bytes=$(cat "${pieces[@]}" | wc -c)

# The sums of the source's files: each restore must give them back.
sums() { (cd "$1" && find . -type f -name '*.bin' | LC_ALL=C sort | xargs sha256sum); }
want=$(sums "$src_mnt/data")

now() { date +%s.%N; }
mounted() { zfs get -H -o value mountpoint "$1"; }
destroy() { for _ in 1 2 3 4 5 6 7 8 9 10; do zfs destroy -r "$1" 2>/dev/null && return; sleep 1; done; echo "bench: cannot destroy $1" >&2; }
warm() { cat "${pieces[@]}" >/dev/null; } # both cases read the store from the page cache
load0=$(cut -d' ' -f1-3 /proc/loadavg)
rows=()
raw_total=0; agent_total=0

# CPU seconds used so far by a process (user + system).
clk=$(getconf CLK_TCK)
cpu_s() { awk -v c="$clk" '{printf "%.2f", ($14+$15)/c}' "/proc/$1/stat"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }
zfs_fuse_pid=$(cat /run/zetaback/zfs-fuse.pid 2>/dev/null || pgrep -x zfs-fuse | head -1)
raw_times=(); agent_times=()

for r in $(seq 1 "$rounds"); do
  warm
  log "round $r: (a) raw cat | zfs receive, piece by piece"
  z0=$(cpu_s "$zfs_fuse_pid")
  t0=$(now)
  out=$( { /usr/bin/time -f 'CPU %U %S' bash -c 'ds=$1; shift; f=
      for p; do cat "$p" | zfs receive $f "$ds"; f=-F; done' raw "$dst/r/raw$r" "${pieces[@]}" ; } 2>&1 )
  t1=$(now)
  z1=$(cpu_s "$zfs_fuse_pid")
  raw_s=$(sub "$t0" "$t1")
  raw_cpu=$(awk '/^CPU/{printf "%.2f", $2+$3}' <<<"$out")
  [ "$(sums "$(mounted "$dst/r/raw$r")")" = "$want" ] || { echo "bench: raw restore differs: $out" >&2; exit 1; }
  destroy "$dst/r/raw$r"

  warm
  log "round $r: (b) zetaback-agent restore"
  z2=$(cpu_s "$zfs_fuse_pid"); s0=$(cpu_s "$store_pid")
  t0=$(now)
  out=$( { RUST_LOG=${AGENT_LOG:-warn} /usr/bin/time -v "$agent" restore --token-file "$dir/token" \
      --from "127.0.0.1:$port" --host "$host" --dataset "$src/data" --backup "${ids[5]}" \
      --into "$dst/r/agent$r" ; } 2>&1 )
  t1=$(now)
  # AGENT_LOG=info (or debug): keep the restores' logs, e.g. to see where time goes per piece.
  [ -n "${AGENT_LOG:-}" ] && echo "$out" >>"${AGENT_LOG_FILE:-/tmp/zetaback-restore-bench.log}"
  z3=$(cpu_s "$zfs_fuse_pid"); s1=$(cpu_s "$store_pid")
  agent_s=$(sub "$t0" "$t1")
  grep -q '"chain"' <<<"$out" || { echo "$out" >&2; exit 1; }
  rss=$(awk -F': ' '/Maximum resident set size/{print int($2/1024)}' <<<"$out")
  agent_cpu=$(awk -F': ' '/User time/{u=$2} /System time/{s=$2} END{printf "%.2f", u+s}' <<<"$out")
  [ "$(sums "$(mounted "$dst/r/agent$r")")" = "$want" ] || { echo "bench: agent restore differs" >&2; exit 1; }
  destroy "$dst/r/agent$r"

  raw_mbps=$(awk -v b="$bytes" -v s="$raw_s" 'BEGIN{printf "%.1f", b/s/1e6}')
  agent_mbps=$(awk -v b="$bytes" -v s="$agent_s" 'BEGIN{printf "%.1f", b/s/1e6}')
  ratio=$(awk -v a="$agent_mbps" -v b="$raw_mbps" 'BEGIN{printf "%.2f", a/b}')
  rows+=("| $r | raw: cat piece \\| zfs receive (×6) | $(printf '%.2f' "$raw_s") | $raw_mbps | - | $raw_cpu (cat + zfs receive) | - | $(sub "$z0" "$z1") | - |")
  rows+=("| $r | agent: zetaback-agent restore | $(printf '%.2f' "$agent_s") | $agent_mbps | $ratio | $agent_cpu (dest. agent, incl. zfs receive) | $(sub "$s0" "$s1") | $(sub "$z2" "$z3") | $rss MiB |")
  raw_times+=("$raw_s"); agent_times+=("$agent_s")
  raw_total=$(awk -v a="$raw_total" -v b="$raw_s" 'BEGIN{print a+b}')
  agent_total=$(awk -v a="$agent_total" -v b="$agent_s" 'BEGIN{print a+b}')
done
store_rss=$(awk '/VmHWM/{print int($2/1024)}' "/proc/$store_pid/status")
load1=$(cut -d' ' -f1-3 /proc/loadavg)
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
best() { printf '%s\n' "$@" | sort -g | head -1; }

echo
echo "zfs-fuse; dataset $size_mib MiB incompressible + 5 incrementals of $inc_mib MiB; chain of 6 pieces, $(( bytes / 1048576 )) MiB stored ($compression); $(nproc) cores; load average before: $load0, after: $load1; $(date -u +%FT%RZ)"
echo
echo "| round | case | seconds | MB/s | ratio agent/raw | client CPU-s | store agent CPU-s | zfs-fuse CPU-s | dest. agent peak RSS |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
echo
rm=$(median "${raw_times[@]}"); am=$(median "${agent_times[@]}")
rb=$(best "${raw_times[@]}"); ab=$(best "${agent_times[@]}")
awk -v r="$rm" -v a="$am" -v b="$bytes" 'BEGIN{printf "medians: raw %.1f MB/s, agent %.1f MB/s, ratio %.2f (target >= 0.90)\n", b/r/1e6, b/a/1e6, r/a}'
awk -v r="$rb" -v a="$ab" -v b="$bytes" 'BEGIN{printf "best of each: raw %.1f MB/s, agent %.1f MB/s, ratio %.2f\n", b/r/1e6, b/a/1e6, r/a}'
awk -v r="$raw_total" -v a="$agent_total" -v b="$bytes" -v n="$rounds" 'BEGIN{printf "all rounds together: raw %.1f MB/s, agent %.1f MB/s, ratio %.2f\n", b*n/r/1e6, b*n/a/1e6, r/a}'
echo "store agent peak RSS (VmHWM, serving every agent round): $store_rss MiB"
echo "every restore's files had the source's sha256 sums"
if [ "${PERF:-0}" = 1 ]; then
  warm
  log "perf record of one agent restore (destination process)"
  RUST_LOG=warn perf record -g -o "$dir/perf.data" -- "$agent" restore --token-file "$dir/token" \
    --from "127.0.0.1:$port" --host "$host" --dataset "$src/data" --backup "${ids[5]}" \
    --into "$dst/r/perf" >/dev/null 2>"$dir/perf.log"
  echo
  echo "perf: where the destination agent's CPU goes (self, top 15)"
  perf report -i "$dir/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | sed 's/ *$//' | head -15 || true
  destroy "$dst/r/perf"
fi

