#!/usr/bin/env bash
# Transfer benchmark (issue 3): a dataset of SIZE_MIB (default 1024) MiB of incompressible
# data on zfs-fuse, sent
#   (a) raw:   `zfs send > file` (+fsync) and `zfs send | zfs receive`
#   (b) agent: `zetaback-agent backup` → target agent (another process, loopback HTTP) → file store
#   (c) agent: the same → target agent → `zfs receive` (replica mode)
#   (b', c') the same two over mutual TLS (issue 13): a second target agent with its own
#       certificate, the source with its own (a CA and both made by the openssl CLI), the
#       source verifying that the target is the node it meant; (b) and (c) run the explicit
#       --insecure-plaintext mode, so one invocation compares the two on the same data
#   (d) hop: `zfs send` → socat over loopback TCP → socat → a file (+fsync) or `zfs receive`:
#       the bare network hop, no checksum, for comparison (what any transfer between two
#       hosts pays on this machine);
#   (e) pipeline: what the agent does, done with standard tools for comparison: `zfs send` →
#       socat over loopback TCP → `tee` into `openssl dgst -sha256` (SHA-NI where the CPU has
#       it) and a file (+fsync), or into `zfs receive`.
# (d) and (e) are not targets of the issue: they show what a network hop, and the agent's
# guarantees (a network hop, a sha256 of every byte, a synced file), cost on this machine
# without the agent. ROUNDS rounds (default 3) run each case in turn (raw, hop, pipeline, agent
# in odd rounds; agent, hop, pipeline, raw in even ones), every case starting once zfs-fuse has
# gone quiet (the previous case's writes synced: otherwise a case pays for the one before it),
# and every received copy destroyed after its case. Prints
# each round, the median MB/s per case, the ratio agent/raw of the medians, the CPU-seconds per
# GiB of each agent and of the zfs-fuse daemon (less noisy than MB/s on a shared machine), and
# the agents' peak RSS. Not a test: numbers only.
#
#   bench/transfer/run.sh [SIZE_MIB] [ROUNDS]   (as root; needs zfs-fuse; builds the agent --release)
# Env: BENCH_DIR (default /var/tmp/zetaback-bench), CARGO_TARGET_DIR, COMPRESSION (none|zstd),
#      BENCH_POOL_PREFIX (default zbbench: pools <prefix>src and <prefix>dst), BENCH_PORT,
#      AGENT_BIN (skip the build), TARGET_ARGS (extra flags for the target agent, e.g.
#      --no-direct-io), BENCH_NICE (e.g. -10: run everything, the zfs-fuse daemon included, at
#      that priority, so that other work on a shared machine disturbs raw and agent runs alike;
#      the daemon's priority is put back to 0 at exit).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
size_mib=${1:-1024}
rounds=${2:-3}
dir=${BENCH_DIR:-/var/tmp/zetaback-bench}
compression=${COMPRESSION:-none}
prefix=${BENCH_POOL_PREFIX:-zbbench}
src=${prefix}src
dst=${prefix}dst
port=${BENCH_PORT:-17790}
pipe_port=$(( port + 1 ))
zfs_sh="$root/e2e/scripts/zfs.sh"
read -r -a target_args <<<"${TARGET_ARGS:-}"

log() { echo "bench: $*" >&2; }
command -v socat >/dev/null || { log "installing socat (the pipeline case)"; apt-get install -y -q socat >/dev/null; }

target_dir=${CARGO_TARGET_DIR:-$root/target}
if [ -n "${AGENT_BIN:-}" ]; then
  agent=$AGENT_BIN
else
  log "building zetaback-agent (release)"
  (cd "$root" && cargo build --release -q -p zetaback-agent)
  agent="$target_dir/release/zetaback-agent"
fi

nice_n=${BENCH_NICE:-0}
run() { nice -n "$nice_n" "$@"; }
zfs_fuse_pids() { pgrep -x zfs-fuse || true; }

cleanup() {
  [ -n "${target_pid:-}" ] && kill "$target_pid" 2>/dev/null || true
  [ -n "${tls_pid:-}" ] && kill "$tls_pid" 2>/dev/null || true
  [ "$nice_n" != 0 ] && for p in $(zfs_fuse_pids); do renice -n 0 -p "$p" >/dev/null || true; done
  "$zfs_sh" destroy "$src" >/dev/null 2>&1 || true
  "$zfs_sh" destroy "$dst" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
cleanup
mkdir -p "$dir/store"
echo bench-token >"$dir/token"

src_mnt=$("$zfs_sh" pool "$src" "$(( size_mib * 2 + 512 ))M")
# Every receive case's copy is destroyed after it (see forget_copy), so that each receive finds
# the replica pool in the same state: zfs-fuse's receive costs about twice the CPU once its
# pool holds more than about 3 GiB (measured: ≈ 3 CPU-s/GiB for the first three 1 GiB
# receives into a fresh pool, ≈ 6.7 for the fourth, ≈ 3 again once the copies were destroyed).
# The pool is sized to keep every copy anyway, for a copy zfs-fuse will not let go.
"$zfs_sh" pool "$dst" "$(( size_mib * (3 * rounds + 1) + 512 ))M" >/dev/null
zfs create "$src/data"
zfs create "$dst/replicas"
log "writing $size_mib MiB of random data"
mib_left=$size_mib; i=0
while [ "$mib_left" -gt 0 ]; do
  n=$(( mib_left < 64 ? mib_left : 64 ))
  head -c "$(( n * 1048576 ))" /dev/urandom >"$src_mnt/data/f$i.bin"
  mib_left=$(( mib_left - n )); i=$(( i + 1 ))
done
sync
zfs snapshot -o zetaback.io:managed=on "$src/data@bench"
if [ "$nice_n" != 0 ]; then
  for p in $(zfs_fuse_pids); do renice -n "$nice_n" -p "$p" >/dev/null; done
fi
log "warm-up read"
zfs send "$src/data@bench" >/dev/null

now() { date +%s.%N; }
# CPU seconds (user + system) a process used so far.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / hz}' "/proc/$1/stat"; }
daemon_cpu() { local p; p=$(zfs_fuse_pids | head -1); if [ -n "$p" ]; then cpu_of "$p"; else echo 0; fi; }
# Waits (at most 30 s) until zfs-fuse used less than 2% of a core over half a second.
settle() {
  sync
  local a b
  for _ in $(seq 1 60); do
    a=$(daemon_cpu); sleep 0.5; b=$(daemon_cpu)
    awk -v a="$a" -v b="$b" 'BEGIN{exit !((b - a) < 0.01)}' && return 0
  done
  log "zfs-fuse did not go quiet within 30 s"
}
gib() { awk -v b="$1" 'BEGIN{printf "%.6f", b / 1073741824}'; }

# One line per measurement: CASE ROUND BYTES SECONDS SRC_CPU TGT_CPU DAEMON_CPU RSS_KB
meas=()
load0=$(cut -d' ' -f1-3 /proc/loadavg)

log "starting the target agent"
# Without Kubernetes the store knows its callers from a table: the token is each round's
# source host's (bench-src1..N).
# source host's (bench-src1..N), all on node bench-source (whose certificate the TLS target
# knows it by).
printf '[{"token": "%s", "node": "bench-source", "hosts": [%s]}]' "$(cat "$dir/token")" \
  "$(seq 1 "$rounds" | sed 's/.*/"bench-src&"/' | paste -sd,)" >"$dir/identities.json"
RUST_LOG=warn nice -n "$nice_n" "$agent" --no-kube --host-name bench-target --listen "127.0.0.1:$port" \
  --store-root "$dir/store" --replica-root "$dst/replicas" --identities-file "$dir/identities.json" \
  --insecure-plaintext "${target_args[@]}" &
target_pid=$!
for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

log "making a CA and the agents' certificates (openssl), starting the TLS target agent"
tls_port=$(( port + 2 ))
pki="$dir/pki"; mkdir -p "$pki"
ossl() { openssl "$@" >/dev/null 2>&1; }
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$pki/ca.key" -out "$pki/ca.pem" \
  -days 2 -subj "/CN=bench CA" -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
for n in bench-target bench-source; do
  ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$pki/$n.key" -out "$pki/$n.csr" -subj "/CN=$n"
  printf 'subjectAltName=DNS:%s.node.zetaback.io\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' "$n" >"$pki/$n.cnf"
  ossl x509 -req -in "$pki/$n.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial -out "$pki/$n.pem" -days 2 -extfile "$pki/$n.cnf"
done
RUST_LOG=warn nice -n "$nice_n" "$agent" --no-kube --host-name bench-target --listen "127.0.0.1:$tls_port" \
  --store-root "$dir/store" --replica-root "$dst/replicas" --identities-file "$dir/identities.json" \
  --tls-cert "$pki/bench-target.pem" --tls-key "$pki/bench-target.key" --tls-ca "$pki/ca.pem" "${target_args[@]}" &
tls_pid=$!
for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$tls_port") 2>/dev/null && break; sleep 0.1; done
plain_args=(--target "127.0.0.1:$port" --insecure-plaintext)
tls_args=(--target "127.0.0.1:$tls_port" --tls-cert "$pki/bench-source.pem" --tls-key "$pki/bench-source.key"
  --tls-ca "$pki/ca.pem" --target-node bench-target)

# agent_case CASE ROUND TARGET_PID ARGS... (ARGS: the target and its transport, then the mode)
agent_case() {
  local case=$1 r=$2 tpid=$3; shift 3
  local t0 t1 c0 c1 d0 d1 out bytes src_cpu rss
  settle
  c0=$(cpu_of "$tpid"); d0=$(daemon_cpu)
  t0=$(now)
  out=$( { RUST_LOG=warn /usr/bin/time -f 'RSS_KB=%M CPU_S=%U+%S' nice -n "$nice_n" "$agent" backup \
      --host-name "bench-src$r" --token-file "$dir/token" --dataset "$src/data" \
      --snapshot bench --keep-snapshots --compression "$compression" "$@" ; } 2>&1 )
  t1=$(now)
  c1=$(cpu_of "$tpid"); d1=$(daemon_cpu)
  bytes=$(grep -o '"bytes":[0-9]*' <<<"$out" | cut -d: -f2)
  [ -n "$bytes" ] || { echo "$out" >&2; exit 1; }
  src_cpu=$(grep -o 'CPU_S=[0-9.+]*' <<<"$out" | cut -d= -f2 | awk -F+ '{print $1 + $2}')
  rss=$(grep -o 'RSS_KB=[0-9]*' <<<"$out" | cut -d= -f2)
  meas+=("$case $r $bytes $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}') $src_cpu $(awk -v a="$c0" -v b="$c1" 'BEGIN{print b-a}') $(awk -v a="$d0" -v b="$d1" 'BEGIN{print b-a}') $rss")
}

raw_cases() {
  local r=$1 d0 d1 t0 t1
  log "round $r/$rounds: zfs send > file"
  settle
  d0=$(daemon_cpu); t0=$(now)
  run zfs send "$src/data@bench" >"$dir/raw.zfs"; run sync "$dir/raw.zfs"
  t1=$(now); d1=$(daemon_cpu)
  raw_bytes=$(stat -c %s "$dir/raw.zfs")
  rm -f "$dir/raw.zfs"
  meas+=("raw_file $r $raw_bytes $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}') 0 0 $(awk -v a="$d0" -v b="$d1" 'BEGIN{print b-a}') 0")

  log "round $r/$rounds: zfs send | zfs receive"
  settle
  d0=$(daemon_cpu); t0=$(now)
  run zfs send "$src/data@bench" | run zfs receive "$dst/rawcopy$r"
  t1=$(now); d1=$(daemon_cpu)
  meas+=("raw_recv $r $raw_bytes $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}') 0 0 $(awk -v a="$d0" -v b="$d1" 'BEGIN{print b-a}') 0")
  forget_copy "$dst/rawcopy$r"
}

# pipeline_case CASE ROUND RECEIVER: `zfs send` → socat → loopback TCP → socat → RECEIVER
# (a shell command reading the stream on stdin).
pipeline_case() {
  local case=$1 r=$2 receiver=$3 d0 d1 t0 t1 listener
  settle
  d0=$(daemon_cpu); t0=$(now)
  run socat -u -b 1048576 "TCP-LISTEN:$pipe_port,bind=127.0.0.1,reuseaddr" STDOUT | run bash -c "$receiver" &
  listener=$!
  for _ in $(seq 1 100); do ss -ltnH "sport = :$pipe_port" | grep -q . && break; sleep 0.01; done
  run zfs send "$src/data@bench" | run socat -u -b 1048576 STDIN "TCP:127.0.0.1:$pipe_port"
  wait "$listener"
  t1=$(now); d1=$(daemon_cpu)
  meas+=("$case $r $raw_bytes $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}') 0 0 $(awk -v a="$d0" -v b="$d1" 'BEGIN{print b-a}') 0")
}

pipeline_cases() {
  local r=$1
  log "round $r/$rounds: bare TCP hop → file"
  pipeline_case hop_file "$r" "cat >'$dir/hop.zfs' && sync '$dir/hop.zfs'"
  rm -f "$dir/hop.zfs"
  log "round $r/$rounds: bare TCP hop → zfs receive"
  pipeline_case hop_recv "$r" "zfs receive '$dst/hopcopy$r'"
  forget_copy "$dst/hopcopy$r"
  log "round $r/$rounds: pipeline → file"
  pipeline_case pipe_file "$r" "tee '$dir/pipe.zfs' | openssl dgst -sha256 >'$dir/pipe.sha' && sync '$dir/pipe.zfs'"
  rm -f "$dir/pipe.zfs"
  log "round $r/$rounds: pipeline → zfs receive"
  # The hash reads a FIFO that tee feeds, and is waited for: its end counts too.
  rm -f "$dir/pipe.fifo"; mkfifo "$dir/pipe.fifo"
  pipeline_case pipe_recv "$r" "openssl dgst -sha256 <'$dir/pipe.fifo' >'$dir/pipe.sha' & tee '$dir/pipe.fifo' | zfs receive '$dst/pipecopy$r'; wait"
  forget_copy "$dst/pipecopy$r"
}

# forget_copy DATASET: destroys a received copy, retrying for up to 15 s (zfs-fuse often calls
# a just-received dataset busy); one that stays is reported and kept.
forget_copy() {
  local try
  for try in $(seq 1 30); do
    zfs list -H "$1" >/dev/null 2>&1 || return 0
    zfs destroy -r "$1" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  log "could not destroy $1 (busy): the replica pool keeps it"
}

# One transport's two cases: agent_pair SUFFIX TARGET_PID ARGS...
agent_pair() {
  local r=$1 sfx=$2 tpid=$3; shift 3
  log "round $r/$rounds: agent → file store${sfx:+ (TLS)}"
  agent_case "agent_file$sfx" "$r" "$tpid" "$@" --target-path "$dir/store"
  rm -rf "${dir:?}/store/bench-src$r"
  log "round $r/$rounds: agent → replica${sfx:+ (TLS)}"
  agent_case "agent_recv$sfx" "$r" "$tpid" "$@" --target-dataset "$dst/replicas"
  forget_copy "$dst/replicas/bench-src$r"
}

# Plaintext and TLS in turn, the first of the two alternating by round.
agent_cases() {
  local r=$1
  if (( r % 2 )); then
    agent_pair "$r" "" "$target_pid" "${plain_args[@]}"; agent_pair "$r" _tls "$tls_pid" "${tls_args[@]}"
  else
    agent_pair "$r" _tls "$tls_pid" "${tls_args[@]}"; agent_pair "$r" "" "$target_pid" "${plain_args[@]}"
  fi
}

# Odd rounds run the raw cases first, even rounds the agent cases first: whichever runs
# second finds a fuller replica pool and a page cache the first one churned, so a fixed
# order would favour one side.
for r in $(seq 1 "$rounds"); do
  if (( r % 2 )); then raw_cases "$r"; pipeline_cases "$r"; agent_cases "$r"
  else agent_cases "$r"; pipeline_cases "$r"; raw_cases "$r"; fi
done
target_rss=$(awk '/VmHWM/{print int($2/1024)}' "/proc/$target_pid/status")
tls_rss=$(awk '/VmHWM/{print int($2/1024)}' "/proc/$tls_pid/status")

printf '%s\n' "${meas[@]}" >"$dir/measurements.txt"
echo
echo "zfs-fuse, $size_mib MiB of incompressible data in one dataset, stream $(( raw_bytes / 1048576 )) MiB; $(nproc) cores; nice $nice_n; compression $compression; $rounds rounds; load average before: $load0, after: $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%F %H:%M') UTC"
echo
awk '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  {
    c = $1; g = $3 / 1073741824; mbps = $3 / $4 / 1e6
    rate[c] = rate[c] " " mbps; per[c, $2] = mbps
    src[c] = src[c] " " $5 / g; tgt[c] = tgt[c] " " $6 / g; dmn[c] = dmn[c] " " $7 / g
    if ($8 > rss[c]) rss[c] = $8
    rounds = $2 > rounds ? $2 : rounds
  }
  END {
    split("raw_file raw_recv hop_file hop_recv pipe_file pipe_recv agent_file agent_recv agent_file_tls agent_recv_tls", order, " ")
    name["hop_file"] = "bare TCP hop: send → TCP → file (+fsync)"; name["hop_recv"] = "bare TCP hop: send → TCP → zfs receive"
    name["raw_file"] = "raw: zfs send > file (+fsync)"; name["raw_recv"] = "raw: zfs send \\| zfs receive"
    name["pipe_file"] = "pipeline: send → TCP → sha256 + file (+fsync)"; name["pipe_recv"] = "pipeline: send → TCP → sha256 + zfs receive"
    name["agent_file"] = "agent → file store (plaintext)"; name["agent_recv"] = "agent → replica (plaintext)"
    name["agent_file_tls"] = "agent → file store (mutual TLS)"; name["agent_recv_tls"] = "agent → replica (mutual TLS)"
    raw["agent_file"] = "raw_file"; raw["agent_recv"] = "raw_recv"
    raw["agent_file_tls"] = "raw_file"; raw["agent_recv_tls"] = "raw_recv"
    printf "| case | MB/s each round | median MB/s | ratio (medians) | CPU-s/GiB source agent | CPU-s/GiB target agent | CPU-s/GiB zfs-fuse | peak RSS source |\n"
    printf "|---|---|---:|---:|---:|---:|---:|---:|\n"
    for (k = 1; k <= 10; k++) {
      c = order[k]; each = ""
      for (r = 1; r <= rounds; r++) each = each (r > 1 ? " / " : "") sprintf("%.0f", per[c, r])
      m = median(rate[c])
      ratio = (c in raw) ? sprintf("%.2f", m / median(rate[raw[c]])) : "-"
      s = (c in raw) ? sprintf("%.2f", median(src[c])) : "-"
      t = (c in raw) ? sprintf("%.2f", median(tgt[c])) : "-"
      r2 = (c in raw) ? sprintf("%d MiB", rss[c] / 1024) : "-"
      printf "| %s | %s | %.0f | %s | %s | %s | %.2f | %s |\n", name[c], each, m, ratio, s, t, median(dmn[c]), r2
    }
    printf "\nper-round ratios (agent ÷ raw of the same round):"
    for (r = 1; r <= rounds; r++) printf " file %.2f, replica %.2f;", per["agent_file", r] / per["raw_file", r], per["agent_recv", r] / per["raw_recv", r]
    printf "\n"
    printf "agent ÷ bare TCP hop (medians): file %.2f, replica %.2f\n", median(rate["agent_file"]) / median(rate["hop_file"]), median(rate["agent_recv"]) / median(rate["hop_recv"])
    printf "agent ÷ pipeline (medians): file %.2f, replica %.2f\n", median(rate["agent_file"]) / median(rate["pipe_file"]), median(rate["agent_recv"]) / median(rate["pipe_recv"])
    printf "mutual TLS ÷ plaintext (medians): file %.2f, replica %.2f; per round:", median(rate["agent_file_tls"]) / median(rate["agent_file"]), median(rate["agent_recv_tls"]) / median(rate["agent_recv"])
    for (r = 1; r <= rounds; r++) printf " file %.2f, replica %.2f;", per["agent_file_tls", r] / per["agent_file", r], per["agent_recv_tls", r] / per["agent_recv", r]
    printf "\n"
    printf "mutual TLS ÷ bare TCP hop (medians): file %.2f, replica %.2f\n", median(rate["agent_file_tls"]) / median(rate["hop_file"]), median(rate["agent_recv_tls"]) / median(rate["hop_recv"])
  }' "$dir/measurements.txt"
echo
echo "target agents' peak RSS (VmHWM) over all agent runs: plaintext ${target_rss} MiB, mutual TLS ${tls_rss} MiB"
