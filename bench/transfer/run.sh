#!/usr/bin/env bash
# Transfer benchmark (issues 3 and 13): a dataset of SIZE_MIB (default 1024) MiB of
# incompressible data on zfs-fuse, one full stream, sent over ONE network hop by every transport
# compared, in one invocation. The hop: two network namespaces (<prefix>-s, the source host;
# <prefix>-t, the backup host) joined by a veth pair (SUBNET.1 and SUBNET.2, MTU 1500). The
# source agent and a private sshd (own config, host key and port, started and stopped here) run
# in the source namespace; the target agents, the ssh clients and the receiving ends in the
# target's. Cases:
#   raw (no hop, the ceiling):  `zfs send > file` (+fsync) and `zfs send | zfs receive`;
#   bare TCP hop (the floor of any transfer between two hosts): `zfs send | socat` → socat →
#       a file (+fsync) or `zfs receive`, no encryption, no checksum;
#   Zetaback's transport (the backup host pulls, github.com/omniti-labs/zetaback):
#       `ssh src zfs send … | gzip -1 > file` (its default compressionlevel 1) and without gzip
#       (compressionlevel 0), ssh's default cipher (+fsync, which Zetaback does not do);
#   syncoid's: `zfs send | mbuffer -q -s 128k -m 16M` → ssh → `mbuffer … | zfs receive`
#       (syncoid's own mbuffer arguments; ssh's default cipher; no lzop: the data does not
#       compress), run as a pull;
#   plain ssh with the fastest cipher here, `ssh -c aes128-gcm@openssh.com src zfs send` into a
#       file (+fsync) and into `zfs receive`;
#   the agent: `zetaback-agent backup` (the code a BackupJob runs) → a target agent → its file
#       store (temp file, sha256, fsync, link, manifest) or `zfs receive` (replica), with mutual
#       TLS on the connection (both sides present certificates from a CA made by the openssl
#       CLI; the source checks that the target is the node it meant), and the same in the
#       explicit --insecure-plaintext mode;
#   PIPELINE=1 adds what the agent does done with standard tools: `zfs send` → socat → `tee`
#       into `openssl dgst -sha256` and a file (+fsync), or into `zfs receive`.
# ROUNDS rounds (default 3) run every case in turn, the order reversed every other round
# (whichever runs later finds a fuller pool and a churned page cache), every case starting once
# zfs-fuse has gone quiet (the previous case's writes synced), every received copy destroyed
# after its case (zfs-fuse's receive costs twice the CPU once its pool holds more than ~3 GiB).
# Prints each round, the median MB/s (stream bytes ÷ wall time) per case, the agents' CPU-s/GiB
# and peak RSS, and the issue 13 targets, met or not. Not a test: numbers only.
#
#   bench/transfer/run.sh [SIZE_MIB] [ROUNDS]   (as root; needs zfs-fuse, iproute2, socat,
#                                                sshd and mbuffer; builds the agent --release)
# Bench dependencies not needed by the tests: `apt-get install -y openssh-server mbuffer` (the
# script checks and says so; it never starts the system's sshd).
# Env: BENCH_DIR (default /var/tmp/zetaback-bench), CARGO_TARGET_DIR, COMPRESSION (none|zstd),
#      BENCH_POOL_PREFIX (default zbbench: pools <prefix>src and <prefix>dst, namespaces
#      <prefix>-s and <prefix>-t), BENCH_SUBNET (default 10.213.1: the hop's /30),
#      BENCH_PORT (the agents' and listeners' ports start there; sshd on BENCH_PORT+5),
#      AGENT_BIN (skip the build), TARGET_ARGS (extra flags for the target agents), PIPELINE,
#      CASES (only these cases, e.g. "hop_file ssh_file": for trying the script out; without an
#      agent case no agent is built or started),
#      BENCH_NICE (run every process started here at that priority; zfs-fuse's is put back to 0
#      at exit).
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
ns_s=${prefix}-s
ns_t=${prefix}-t
subnet=${BENCH_SUBNET:-10.213.1}
ip_s=$subnet.1
ip_t=$subnet.2
port=${BENCH_PORT:-17790}
tls_port=$(( port + 2 ))
pipe_port=$(( port + 1 ))
ssh_port=$(( port + 5 ))
pipeline=${PIPELINE:-0}
only=${CASES:-}
zfs_sh="$root/e2e/scripts/zfs.sh"
read -r -a target_args <<<"${TARGET_ARGS:-}"

log() { echo "bench: $*" >&2; }
missing=()
for tool in ip socat ssh ssh-keygen /usr/sbin/sshd mbuffer gzip openssl /usr/bin/time; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "missing: ${missing[*]}. The peers' transports need an ssh server and mbuffer, which the"
  log "tests do not: apt-get install -y openssh-server mbuffer socat iproute2 openssl time"
  log "(the script runs its own sshd on a private port inside its namespace; stop the system's"
  log "if the package started one: it is not used)"
  exit 2
fi
[ ${#ns_s} -le 12 ] || { log "BENCH_POOL_PREFIX too long for interface names (at most 10 characters)"; exit 2; }

target_dir=${CARGO_TARGET_DIR:-$root/target}
with_agents=1
[ -z "$only" ] || [[ " $only " == *" agent_"* ]] || with_agents=0
if [ "$with_agents" = 0 ]; then
  agent=
elif [ -n "${AGENT_BIN:-}" ]; then
  agent=$AGENT_BIN
else
  log "building zetaback-agent (release)"
  (cd "$root" && cargo build --release -q -p zetaback-agent)
  agent="$target_dir/release/zetaback-agent"
fi

nice_n=${BENCH_NICE:-0}
run() { nice -n "$nice_n" "$@"; }
in_s() { ip netns exec "$ns_s" nice -n "$nice_n" "$@"; }
in_t() { ip netns exec "$ns_t" nice -n "$nice_n" "$@"; }
zfs_fuse_pids() { pgrep -x zfs-fuse || true; }

cleanup() {
  local p
  for p in "${target_pid:-}" "${tls_pid:-}" "${sshd_pid:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  [ "$nice_n" != 0 ] && for p in $(zfs_fuse_pids); do renice -n 0 -p "$p" >/dev/null || true; done
  ip netns del "$ns_s" 2>/dev/null || true
  ip netns del "$ns_t" 2>/dev/null || true
  "$zfs_sh" destroy "$src" >/dev/null 2>&1 || true
  "$zfs_sh" destroy "$dst" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
cleanup
mkdir -p "$dir/store"
echo bench-token >"$dir/token"

log "the hop: namespaces $ns_s ($ip_s) and $ns_t ($ip_t), one veth pair"
ip netns add "$ns_s"
ip netns add "$ns_t"
ip link add "$ns_s" type veth peer name "$ns_t"
ip link set "$ns_s" netns "$ns_s"
ip link set "$ns_t" netns "$ns_t"
ip -n "$ns_s" addr add "$ip_s/30" dev "$ns_s"
ip -n "$ns_t" addr add "$ip_t/30" dev "$ns_t"
for n in "$ns_s" "$ns_t"; do ip -n "$n" link set lo up; ip -n "$n" link set "$n" up; done
for _ in $(seq 1 50); do ip netns exec "$ns_t" ping -c1 -W1 "$ip_s" >/dev/null 2>&1 && break; sleep 0.1; done

src_mnt=$("$zfs_sh" pool "$src" "$(( size_mib * 2 + 512 ))M")
# Sized (sparse) to keep every received copy, for a copy zfs-fuse will not let go.
"$zfs_sh" pool "$dst" "$(( size_mib * (6 * rounds + 1) + 512 ))M" >/dev/null
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
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{print b-a}'; }
# wait_port NAMESPACE PORT: until something listens on PORT in NAMESPACE (10 s at most).
wait_port() {
  for _ in $(seq 1 200); do ip netns exec "$1" ss -ltnH "sport = :$2" | grep -q . && return 0; sleep 0.05; done
  log "nothing listens on port $2 in $1"; exit 1
}

# One line per measurement: CASE ROUND BYTES SECONDS SRC_CPU TGT_CPU DAEMON_CPU RSS_KB
meas=()
load0=$(cut -d' ' -f1-3 /proc/loadavg)
raw_bytes=$(zfs send -nP "$src/data@bench" 2>/dev/null | awk '$1 == "size" {print $2}' || true)
[ -n "$raw_bytes" ] || raw_bytes=$(zfs send "$src/data@bench" | wc -c)

log "the private sshd in $ns_s ($ip_s:$ssh_port)"
sshdir="$dir/ssh"; mkdir -p "$sshdir"; chmod 700 "$sshdir"
ssh-keygen -q -t ed25519 -N '' -f "$sshdir/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$sshdir/client_key"
cp "$sshdir/client_key.pub" "$sshdir/authorized_keys"
echo "[$ip_s]:$ssh_port $(cat "$sshdir/host_key.pub")" >"$sshdir/known_hosts"
cat >"$sshdir/sshd_config" <<EOF
ListenAddress $ip_s:$ssh_port
HostKey $sshdir/host_key
AuthorizedKeysFile $sshdir/authorized_keys
PidFile $sshdir/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
StrictModes no
EOF
mkdir -p /run/sshd   # sshd's privilege separation directory (Debian's package makes it at boot)
ip netns exec "$ns_s" nice -n "$nice_n" /usr/sbin/sshd -D -e -f "$sshdir/sshd_config" 2>"$sshdir/sshd.log" &
sshd_pid=$!
wait_port "$ns_s" "$ssh_port"
ssh_opts=(-F /dev/null -p "$ssh_port" -i "$sshdir/client_key" -o BatchMode=yes
  -o UserKnownHostsFile="$sshdir/known_hosts" -o StrictHostKeyChecking=yes -o LogLevel=ERROR)
in_t ssh -n "${ssh_opts[@]}" "root@$ip_s" true || { cat "$sshdir/sshd.log" >&2; log "ssh to the private sshd failed"; exit 1; }
# The client's first choice (the server's list starts the same here).
default_cipher=$(ssh "${ssh_opts[@]}" -G "root@$ip_s" 2>/dev/null | awk '$1 == "ciphers" {split($2, c, ","); print c[1]}')

start_agents() {
log "starting the target agents in $ns_t (plaintext :$port, mutual TLS :$tls_port)"
# Without Kubernetes the store knows its callers from a table: the token is each round's
# source host's (bench-src1..N), all on node bench-source (whose certificate the TLS target
# knows it by).
printf '[{"token": "%s", "node": "bench-source", "hosts": [%s]}]' "$(cat "$dir/token")" \
  "$(seq 1 "$rounds" | sed 's/.*/"bench-src&"/' | paste -sd,)" >"$dir/identities.json"
# (Not through in_t: a function run with & is a subshell, so $! would be the subshell, which
# `kill` leaves the agent running past the bench and whose CPU and RSS are not the agent's.)
RUST_LOG=warn ip netns exec "$ns_t" nice -n "$nice_n" "$agent" --no-kube --host-name bench-target --listen "$ip_t:$port" \
  --store-root "$dir/store" --replica-root "$dst/replicas" --identities-file "$dir/identities.json" \
  --insecure-plaintext "${target_args[@]}" &
target_pid=$!
pki="$dir/pki"; mkdir -p "$pki"
ossl() { openssl "$@" >/dev/null 2>&1; }
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$pki/ca.key" -out "$pki/ca.pem" \
  -days 2 -subj "/CN=bench CA" -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
for n in bench-target bench-source; do
  ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$pki/$n.key" -out "$pki/$n.csr" -subj "/CN=$n"
  printf 'subjectAltName=DNS:%s.node.zetaback.io\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' "$n" >"$pki/$n.cnf"
  ossl x509 -req -in "$pki/$n.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial -out "$pki/$n.pem" -days 2 -extfile "$pki/$n.cnf"
done
RUST_LOG=warn ip netns exec "$ns_t" nice -n "$nice_n" "$agent" --no-kube --host-name bench-target --listen "$ip_t:$tls_port" \
  --store-root "$dir/store" --replica-root "$dst/replicas" --identities-file "$dir/identities.json" \
  --tls-cert "$pki/bench-target.pem" --tls-key "$pki/bench-target.key" --tls-ca "$pki/ca.pem" "${target_args[@]}" &
tls_pid=$!
wait_port "$ns_t" "$port"
wait_port "$ns_t" "$tls_port"
plain_args=(--target "$ip_t:$port" --insecure-plaintext)
tls_args=(--target "$ip_t:$tls_port" --tls-cert "$pki/bench-source.pem" --tls-key "$pki/bench-source.key"
  --tls-ca "$pki/ca.pem" --target-node bench-target)
}
[ "$with_agents" = 0 ] || start_agents

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

# timed CASE ROUND COMMAND...: the command's wall time for the whole stream (and zfs-fuse's CPU).
timed() {
  local case=$1 r=$2 d0 d1 t0 t1; shift 2
  log "round $r/$rounds: $case"
  settle
  d0=$(daemon_cpu); t0=$(now)
  "$@"
  t1=$(now); d1=$(daemon_cpu)
  meas+=("$case $r $raw_bytes $(elapsed "$t0" "$t1") 0 0 $(elapsed "$d0" "$d1") 0")
}

# The cases, one function each: CASE ROUND.
raw_file() { run zfs send "$src/data@bench" >"$dir/raw.zfs"; run sync "$dir/raw.zfs"; rm -f "$dir/raw.zfs"; }
raw_recv() { run zfs send "$src/data@bench" | run zfs receive "$dst/rawcopy"; }
# hop RECEIVER: zfs send in the source namespace → socat → the target's socat → RECEIVER (a
# shell command reading the stream on stdin, run in the target namespace).
hop() {
  local listener
  in_t socat -u -b 1048576 "TCP-LISTEN:$pipe_port,bind=$ip_t,reuseaddr" STDOUT | in_t bash -c "$1" &
  listener=$!
  wait_port "$ns_t" "$pipe_port"
  run zfs send "$src/data@bench" | in_s socat -u -b 1048576 STDIN "TCP:$ip_t:$pipe_port"
  wait "$listener"
}
hop_file() { hop "cat >'$dir/hop.zfs' && sync '$dir/hop.zfs'"; rm -f "$dir/hop.zfs"; }
hop_recv() { hop "zfs receive '$dst/hopcopy'"; }
pipe_file() { hop "tee '$dir/pipe.zfs' | openssl dgst -sha256 >'$dir/pipe.sha' && sync '$dir/pipe.zfs'"; rm -f "$dir/pipe.zfs"; }
pipe_recv() {
  rm -f "$dir/pipe.fifo"; mkfifo "$dir/pipe.fifo"
  hop "openssl dgst -sha256 <'$dir/pipe.fifo' >'$dir/pipe.sha' & tee '$dir/pipe.fifo' | zfs receive '$dst/pipecopy'; wait"
}
# The ssh cases pull from the backup host (the target namespace), as Zetaback does.
pull() { in_t ssh -n "${ssh_opts[@]}" "$@"; }
zb_gzip() {
  pull "root@$ip_s" zfs send "$src/data@bench" | in_t gzip -1 >"$dir/zb.zfs.gz"
  run sync "$dir/zb.zfs.gz"; rm -f "$dir/zb.zfs.gz"
}
zb_plain() { pull "root@$ip_s" zfs send "$src/data@bench" >"$dir/zb.zfs"; run sync "$dir/zb.zfs"; rm -f "$dir/zb.zfs"; }
syncoid() {
  pull "root@$ip_s" "zfs send '$src/data@bench' | mbuffer -q -s 128k -m 16M" \
    | in_t mbuffer -q -s 128k -m 16M | in_t zfs receive "$dst/syncoidcopy"
}
ssh_file() {
  pull -c aes128-gcm@openssh.com "root@$ip_s" zfs send "$src/data@bench" >"$dir/ssh.zfs"
  run sync "$dir/ssh.zfs"; rm -f "$dir/ssh.zfs"
}
ssh_recv() { pull -c aes128-gcm@openssh.com "root@$ip_s" zfs send "$src/data@bench" | in_t zfs receive "$dst/sshcopy"; }

# agent_case CASE ROUND TARGET_PID ARGS... (ARGS: the target and its transport, then the mode)
agent_case() {
  local case=$1 r=$2 tpid=$3; shift 3
  local t0 t1 c0 c1 d0 d1 out bytes src_cpu rss
  log "round $r/$rounds: $case"
  settle
  c0=$(cpu_of "$tpid"); d0=$(daemon_cpu)
  t0=$(now)
  out=$( { RUST_LOG=warn ip netns exec "$ns_s" /usr/bin/time -f 'RSS_KB=%M CPU_S=%U+%S' nice -n "$nice_n" "$agent" backup \
      --host-name "bench-src$r" --token-file "$dir/token" --dataset "$src/data" \
      --snapshot bench --keep-snapshots --compression "$compression" "$@" ; } 2>&1 )
  t1=$(now)
  c1=$(cpu_of "$tpid"); d1=$(daemon_cpu)
  bytes=$(grep -o '"bytes":[0-9]*' <<<"$out" | cut -d: -f2)
  [ -n "$bytes" ] || { echo "$out" >&2; exit 1; }
  src_cpu=$(grep -o 'CPU_S=[0-9.+]*' <<<"$out" | cut -d= -f2 | awk -F+ '{print $1 + $2}')
  rss=$(grep -o 'RSS_KB=[0-9]*' <<<"$out" | cut -d= -f2)
  meas+=("$case $r $bytes $(elapsed "$t0" "$t1") $src_cpu $(elapsed "$c0" "$c1") $(elapsed "$d0" "$d1") $rss")
}
agent_file() { agent_case agent_file "$1" "$target_pid" "${plain_args[@]}" --target-path "$dir/store"; rm -rf "${dir:?}/store/bench-src$1"; }
agent_recv() { agent_case agent_recv "$1" "$target_pid" "${plain_args[@]}" --target-dataset "$dst/replicas"; forget_copy "$dst/replicas/bench-src$1"; }
agent_file_tls() { agent_case agent_file_tls "$1" "$tls_pid" "${tls_args[@]}" --target-path "$dir/store"; rm -rf "${dir:?}/store/bench-src$1"; }
agent_recv_tls() { agent_case agent_recv_tls "$1" "$tls_pid" "${tls_args[@]}" --target-dataset "$dst/replicas"; forget_copy "$dst/replicas/bench-src$1"; }

# The order of a round (reversed every other round). Cases that receive leave a copy, destroyed
# after the case.
cases=(raw_file raw_recv hop_file hop_recv agent_file_tls agent_recv_tls zb_gzip zb_plain syncoid
  ssh_file ssh_recv agent_file agent_recv)
[ "$pipeline" = 1 ] && cases+=(pipe_file pipe_recv)
[ -z "$only" ] || read -r -a cases <<<"$only"
copy_of() { case $1 in raw_recv) echo rawcopy;; hop_recv) echo hopcopy;; pipe_recv) echo pipecopy;;
  syncoid) echo syncoidcopy;; ssh_recv) echo sshcopy;; esac; }
one_case() {
  local c=$1 r=$2 copy
  case $c in
    agent_*) "$c" "$r" ;;
    *) timed "$c" "$r" "$c"; copy=$(copy_of "$c"); [ -z "$copy" ] || forget_copy "$dst/$copy" ;;
  esac
}
for r in $(seq 1 "$rounds"); do
  if (( r % 2 )); then order=("${cases[@]}"); else order=(); for (( k = ${#cases[@]} - 1; k >= 0; k-- )); do order+=("${cases[k]}"); done; fi
  for c in "${order[@]}"; do one_case "$c" "$r"; done
done
target_rss=0; tls_rss=0
if [ "$with_agents" = 1 ]; then
  target_rss=$(awk '/VmHWM/{print int($2/1024)}' "/proc/$target_pid/status")
  tls_rss=$(awk '/VmHWM/{print int($2/1024)}' "/proc/$tls_pid/status")
fi

printf '%s\n' "${meas[@]}" >"$dir/measurements.txt"
echo
echo "zfs-fuse, $size_mib MiB of incompressible data in one dataset, stream $(( raw_bytes / 1048576 )) MiB; hop: two network namespaces, one veth pair (MTU $(ip -n "$ns_s" -o link show "$ns_s" | grep -o 'mtu [0-9]*' | cut -d' ' -f2)); ssh default cipher $default_cipher ($(ssh -V 2>&1 | cut -d, -f1)); $(nproc) cores; nice $nice_n; compression $compression; $rounds rounds; load average before: $load0, after: $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%F %H:%M') UTC"
echo
awk -v target_rss="$target_rss" -v tls_rss="$tls_rss" -v pipeline="$pipeline" '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  function m(c) { return (c in rate) ? median(rate[c]) : 0 }
  function q(a, b) { return b > 0 ? a / b : 0 }
  function verdict(ok) { return ok ? "met" : "NOT met" }
  {
    c = $1; g = $3 / 1073741824; mbps = $3 / $4 / 1e6
    rate[c] = rate[c] " " mbps; per[c, $2] = mbps
    src[c] = src[c] " " $5 / g; tgt[c] = tgt[c] " " $6 / g; dmn[c] = dmn[c] " " $7 / g
    if ($8 > rss[c]) rss[c] = $8
    rounds = $2 > rounds ? $2 : rounds
  }
  END {
    list = "raw_file raw_recv hop_file hop_recv zb_gzip zb_plain syncoid ssh_file ssh_recv"
    if (pipeline == 1) list = list " pipe_file pipe_recv"
    list = list " agent_file agent_recv agent_file_tls agent_recv_tls"
    n = split(list, order, " ")
    name["raw_file"] = "raw, no hop: zfs send > file (+fsync)"; name["raw_recv"] = "raw, no hop: zfs send \\| zfs receive"
    name["hop_file"] = "bare TCP hop: send → socat → file (+fsync)"; name["hop_recv"] = "bare TCP hop: send → socat → zfs receive"
    name["zb_gzip"] = "Zetaback: ssh src zfs send \\| gzip -1 > file (+fsync)"; name["zb_plain"] = "Zetaback, compressionlevel 0: ssh src zfs send > file (+fsync)"
    name["syncoid"] = "syncoid: send \\| mbuffer → ssh → mbuffer \\| zfs receive"
    name["ssh_file"] = "ssh -c aes128-gcm: zfs send > file (+fsync)"; name["ssh_recv"] = "ssh -c aes128-gcm: zfs send \\| zfs receive"
    name["pipe_file"] = "pipeline: send → socat → sha256 + file (+fsync)"; name["pipe_recv"] = "pipeline: send → socat → sha256 + zfs receive"
    name["agent_file"] = "agent → file store (plaintext)"; name["agent_recv"] = "agent → replica (plaintext)"
    name["agent_file_tls"] = "**agent → file store (mutual TLS)**"; name["agent_recv_tls"] = "**agent → replica (mutual TLS)**"
    printf "| case | MB/s each round | median MB/s | × bare hop | CPU-s/GiB source agent | CPU-s/GiB target agent | CPU-s/GiB zfs-fuse | peak RSS source agent |\n"
    printf "|---|---|---:|---:|---:|---:|---:|---:|\n"
    for (k = 1; k <= n; k++) {
      c = order[k]; each = ""
      if (!(c in rate)) continue
      for (r = 1; r <= rounds; r++) each = each (r > 1 ? " / " : "") sprintf("%.0f", per[c, r])
      hop = (c ~ /recv|syncoid/) ? "hop_recv" : "hop_file"
      agent = c ~ /^agent/
      printf "| %s | %s | %.0f | %.2f | %s | %s | %.2f | %s |\n", name[c], each, m(c), q(m(c), m(hop)),
        agent ? sprintf("%.2f", median(src[c])) : "-", agent ? sprintf("%.2f", median(tgt[c])) : "-",
        median(dmn[c]), agent ? sprintf("%d MiB", rss[c] / 1024) : "-"
    }
    fastest_file = "ssh_file"
    if (m("zb_plain") > m(fastest_file)) fastest_file = "zb_plain"
    fastest_any = fastest_file
    if (m("ssh_recv") > m(fastest_any)) fastest_any = "ssh_recv"
    if (m("syncoid") > m(fastest_any)) fastest_any = "syncoid"
    srss = rss["agent_file_tls"] > rss["agent_recv_tls"] ? rss["agent_file_tls"] : rss["agent_recv_tls"]
    printf "\nIssue 13 targets, mutual TLS on every agent connection (medians):\n"
    printf "- agent → file store ÷ fastest ssh pipeline (%s, %.0f MB/s): %.2f (target ≥ 2.0: %s); ÷ the fastest ssh case of all (%s): %.2f\n",
      fastest_file, m(fastest_file), q(m("agent_file_tls"), m(fastest_file)), verdict(q(m("agent_file_tls"), m(fastest_file)) >= 2.0),
      fastest_any, q(m("agent_file_tls"), m(fastest_any))
    printf "- agent → replica ÷ ssh … zfs receive (ssh_recv, %.0f MB/s): %.2f (target ≥ 1.5: %s); ÷ syncoid: %.2f\n",
      m("ssh_recv"), q(m("agent_recv_tls"), m("ssh_recv")), verdict(q(m("agent_recv_tls"), m("ssh_recv")) >= 1.5), q(m("agent_recv_tls"), m("syncoid"))
    printf "- agent ÷ bare TCP hop: file store %.2f (target ≥ 0.9: %s), replica %.2f (target ≥ 0.9: %s)\n",
      q(m("agent_file_tls"), m("hop_file")), verdict(q(m("agent_file_tls"), m("hop_file")) >= 0.9),
      q(m("agent_recv_tls"), m("hop_recv")), verdict(q(m("agent_recv_tls"), m("hop_recv")) >= 0.9)
    printf "- agent RSS (peak over all runs): source %d MiB, target %d MiB (target < 64 MiB: %s)\n",
      srss / 1024, tls_rss, verdict(srss / 1024 < 64 && tls_rss < 64)
    printf "- Zetaback with its defaults (gzip -1): %.0f MB/s; the agent with mutual TLS is %.1f× that\n", m("zb_gzip"), q(m("agent_file_tls"), m("zb_gzip"))
    printf "- mutual TLS ÷ plaintext agent: file store %.2f, replica %.2f\n", q(m("agent_file_tls"), m("agent_file")), q(m("agent_recv_tls"), m("agent_recv"))
    printf "- per round, agent (mutual TLS) ÷ ssh -c aes128-gcm:"
    for (r = 1; r <= rounds; r++) printf " file %.2f, receive %.2f;", q(per["agent_file_tls", r], per["ssh_file", r]), q(per["agent_recv_tls", r], per["ssh_recv", r])
    printf "\n- target agents peak RSS (VmHWM): plaintext %d MiB, mutual TLS %d MiB\n", target_rss, tls_rss
  }' "$dir/measurements.txt"
