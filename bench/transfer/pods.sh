#!/usr/bin/env bash
# Transfer through the pods (issue 12, Benchmarks): the same backup, in one invocation, by
#   (pods)      the agent DaemonSet's pod on node 1 of the local cluster (e2e/scripts/cluster.sh),
#               sending through node 1's network namespace, the host bridge and node 2's into the
#               file store of node 2's agent pod, over the chart's mutual TLS (tls.mode csr): a
#               BackupJob of a BackupPolicy, the first made by the controller, the next asked for
#               with `kubectl zetaback backup --full`;
#   (processes) the same agent binary (the one in the agent image) as two host processes over
#               the same hop between the nodes' network namespaces, the one bench/transfer/run.sh
#               measures: a target agent in node 2's namespace (file store, mutual TLS with
#               certificates made by the openssl CLI) and `zetaback-agent backup` in node 1's.
#               What the pods add is what the ratio shows: the container, the pod network (a veth
#               and the CNI bridge, with its iptables, on each node) and the pods' cgroups.
#               (Before session 12 the processes went over the host's loopback, so the ratio
#               also counted the hop between the nodes against the pods.)
# Both send a dataset of SIZE_MIB MiB of the same incompressible data from node 1's zfs-fuse pool
# (two datasets holding the same file: zbnode1/bench-pods, zbnode1/bench-procs), full streams,
# no compression. The rate compared is the agent's own (status.bytesPerSecond of the job; the
# `bytesPerSecond` the backup command prints): stream bytes over the time from the first byte
# of `zfs send` to the target's answer, the same code in both cases, so the controller's
# scheduling and the snapshot are not in it (the pods' job wall times are printed beside).
# ROUNDS rounds alternate which case goes first; each case starts once zfs-fuse went quiet.
# Prints each round, the medians, the ratio pods/processes (target ≥ 0.95), the load average,
# and the agent pods' resources (e2e/scripts/pod-resources.sh). Not a test: numbers only.
#
#   bench/transfer/pods.sh [SIZE_MIB] [ROUNDS]     (as root; the cluster up: cluster.sh up, with
#                                                 ZETABACK_NODE_POOL_SIZE=3G for SIZE_MIB 1024; run it at
#                                                 nice 0: niced, the host processes outweigh the pods)
# Env: ZETABACK_IMAGE_DIR (the image build whose agent the nodes run; default images/current),
#      AGENT_BIN (the processes' agent, default that image's), ZB_BIN (kubectl-zetaback),
#      BENCH_PORT (default 27795),
#      PROCS_CGROUP (an experiment: a cgroup path, e.g. zb-bench/kubepods/burstable/pod/agent,
#      made in the cpu, cpuacct and memory v1 hierarchies, as deep as a pod's container under
#      its node, memory limit 256Mi as the chart's agents; the processes' two agents run in
#      it, so the ratio then shows what the pods add besides their cgroups),
#      PROCS_NETNS=pods (an experiment: the processes' two agents run in the network namespaces
#      of the agent pods, the target on node 2's pod's address, so the ratio then shows what the
#      pods add besides their network).
# It installs the release with the chart's defaults (`cluster.sh install`: no bandwidth limit),
# applies ZfsHosts zb-node1/zb-node2 if missing, and removes its datasets, policy and stored
# streams at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
size_mib=${1:-160}
rounds=${2:-3}
ns=zetaback-system
port=${BENCH_PORT:-27795}
policy=bench-pods
pods_ds=zbnode1/bench-pods
procs_ds=zbnode1/bench-procs
cluster="$root/e2e/scripts/cluster.sh"
dir=/var/tmp/zetaback-pods-bench
# Node 2's address in its network namespace (cluster.sh: node i is 10.250.0.1<i> in netns zb-node<i>).
target_ip=10.250.0.12

log() { echo "bench: $*" >&2; }
die() { log "$*"; exit 1; }

KUBECONFIG=$(bash "$cluster" env | sed 's/^KUBECONFIG=//')
export KUBECONFIG
[ -f "$KUBECONFIG" ] || die "the cluster is not up (e2e/scripts/cluster.sh up)"
run=$(dirname "$KUBECONFIG")
kbin=$(bash "$root/e2e/scripts/build-tools.sh")
k() { "$kbin/kubectl" "$@"; }
img=${ZETABACK_IMAGE_DIR:-$(readlink -f "${ZETABACK_CACHE:-$HOME/.cache/zetaback}/images/current")}
agent=${AGENT_BIN:-$img/stage/bin/zetaback-agent}
zb=${ZB_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/zetaback/target}/debug/kubectl-zetaback}
[ -x "$agent" ] || die "no agent binary at $agent (image.sh build)"
[ -x "$zb" ] || die "no kubectl-zetaback at $zb (cargo build --workspace --bins)"

zfs_fuse_pids() { pgrep -x zfs-fuse || true; }
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
destroy_ds() {
  local s
  zfs list -H "$1" >/dev/null 2>&1 || return 0
  zfs list -H -t snapshot -o name -r "$1" 2>/dev/null | while read -r s; do zfs release zetaback-base "$s" >/dev/null 2>&1 || true; done
  for _ in $(seq 1 10); do zfs destroy -r "$1" >/dev/null 2>&1 && return 0; sleep 1; done
  log "could not destroy $1"
}
# The processes' agents in PROCS_CGROUP (see Env), when it is set.
procs_cgroup=${PROCS_CGROUP:-}
cgroup_controllers=(cpu cpuacct memory)
# Execs COMMAND (call it only in a subshell: `&` or `$(…)`, so that $! is the agent itself).
in_procs_cgroup() {
  if [ -z "$procs_cgroup" ]; then exec "$@"; fi
  # shellcheck disable=SC2016
  exec sh -c 'for c in cpu cpuacct memory; do echo $$ >"/sys/fs/cgroup/$c/$0/cgroup.procs"; done; exec "$@"' "$procs_cgroup" "$@"
}
remove_procs_cgroup() {
  [ -n "$procs_cgroup" ] || return 0
  local c path
  for c in "${cgroup_controllers[@]}"; do
    path=$procs_cgroup
    while [ -n "$path" ] && [ "$path" != . ]; do
      rmdir "/sys/fs/cgroup/$c/$path" 2>/dev/null || true
      path=$(dirname "$path")
    done
  done
}
cleanup() {
  [ -n "${target_pid:-}" ] && kill "$target_pid" 2>/dev/null || true
  [ -n "${target_pid:-}" ] && for _ in $(seq 1 50); do kill -0 "$target_pid" 2>/dev/null || break; sleep 0.1; done
  remove_procs_cgroup
  k delete backuppolicy -n "$ns" "$policy" --ignore-not-found --wait=true >/dev/null 2>&1 || true
  destroy_ds "$pods_ds"
  destroy_ds "$procs_ds"
  rm -rf "$run/node2/store/zb-node1/${pods_ds//\//+}" "$dir"
}
trap cleanup EXIT
cleanup
mkdir -p "$dir/store"
if [ -n "$procs_cgroup" ]; then
  for c in "${cgroup_controllers[@]}"; do mkdir -p "/sys/fs/cgroup/$c/$procs_cgroup"; done
  echo $((256 * 1024 * 1024)) >"/sys/fs/cgroup/memory/$procs_cgroup/memory.limit_in_bytes"
  log "the processes run in cgroup $procs_cgroup (cpu, cpuacct, memory; memory limit 256Mi)"
fi

log "installing the release with the chart's defaults (cluster.sh install)"
bash "$cluster" install >/dev/null
k -n "$ns" rollout status ds/zetaback-agent --timeout=300s >/dev/null
k -n "$ns" rollout status deploy/zetaback-controller --timeout=300s >/dev/null
for i in 1 2; do
  k get zfshost "zb-node$i" >/dev/null 2>&1 || k apply -f - >/dev/null <<YAML
apiVersion: zetaback.io/v1alpha1
kind: ZfsHost
metadata: {name: zb-node$i}
spec: {nodeName: zb-node$i, datasets: {include: ["zbnode$i/**"]}}
YAML
done

# The network namespaces the processes' agents run in (exec COMMAND there): the nodes' (as
# bench/transfer/run.sh), or with PROCS_NETNS=pods the agent pods' own.
source_netns=(ip netns exec zb-node1)
target_netns=(ip netns exec zb-node2)
if [ "${PROCS_NETNS:-}" = pods ]; then
  pod_pid() { pgrep -f "zetaback-agent --host-name=zb-node$1 " | head -1; }
  p1=$(pod_pid 1); p2=$(pod_pid 2)
  [ -n "$p1" ] && [ -n "$p2" ] || die "no agent pod processes found"
  source_netns=(nsenter -t "$p1" -n)
  target_netns=(nsenter -t "$p2" -n)
  target_ip=$(k -n "$ns" get pods -l app.kubernetes.io/component=agent -o json |
    jq -r '.items[] | select(.spec.nodeName == "zb-node2") | .status.podIP')
  [ -n "$target_ip" ] || die "no pod IP for node 2's agent"
  log "the processes run in the agent pods' network namespaces (target $target_ip)"
fi

log "writing $size_mib MiB of random data into $pods_ds and $procs_ds"
pods_mnt=$(bash "$root/e2e/scripts/zfs.sh" dataset "$pods_ds")
procs_mnt=$(bash "$root/e2e/scripts/zfs.sh" dataset "$procs_ds")
head -c "$(( size_mib * 1048576 ))" /dev/urandom >"$pods_mnt/data.bin"
cp "$pods_mnt/data.bin" "$procs_mnt/data.bin"
sync
log "warm-up reads"
cat "$pods_mnt/data.bin" "$procs_mnt/data.bin" >/dev/null

log "the processes' target agent (mutual TLS, certificates by openssl)"
pki="$dir/pki"; mkdir -p "$pki"
ossl() { openssl "$@" >/dev/null 2>&1; }
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$pki/ca.key" -out "$pki/ca.pem" \
  -days 2 -subj "/CN=bench CA" -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
for n in bench-target bench-source; do
  ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$pki/$n.key" -out "$pki/$n.csr" -subj "/CN=$n"
  printf 'subjectAltName=DNS:%s.node.zetaback.io\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' "$n" >"$pki/$n.cnf"
  ossl x509 -req -in "$pki/$n.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial -out "$pki/$n.pem" -days 2 -extfile "$pki/$n.cnf"
done
echo bench-token >"$dir/token"
printf '[{"token": "bench-token", "node": "bench-source", "hosts": [%s]}]' \
  "$(seq 1 "$rounds" | sed 's/.*/"bench-src&"/' | paste -sd,)" >"$dir/identities.json"
# `ip netns exec` execs the agent: $! is the agent itself.
RUST_LOG=warn in_procs_cgroup "${target_netns[@]}" "$agent" --no-kube --host-name bench-target --listen "$target_ip:$port" \
  --store-root "$dir/store" --identities-file "$dir/identities.json" \
  --tls-cert "$pki/bench-target.pem" --tls-key "$pki/bench-target.key" --tls-ca "$pki/ca.pem" &
target_pid=$!
for _ in $(seq 1 100); do "${source_netns[@]}" bash -c 'echo >"/dev/tcp/$0/$1"' "$target_ip" "$port" 2>/dev/null && break; sleep 0.1; done

printf '  waiting for node 1'"'"'s agent pod to report %s' "$pods_ds" >&2
for _ in $(seq 1 120); do
  k get zfshost zb-node1 -o json | jq -e --arg d "$pods_ds" '.status.datasets // [] | any(.name == $d)' >/dev/null && break
  printf '.' >&2; sleep 1
done
echo >&2

# One line per measurement: CASE ROUND BYTES BYTES_PER_SECOND WALL_SECONDS
meas=()
load0=$(cut -d' ' -f1-3 /proc/loadavg)

process_case() {
  local r=$1 t0 t1 out bps bytes
  log "round $r/$rounds: processes (agent in node 1's netns → target agent's file store in node 2's)"
  settle
  t0=$(date +%s.%N)
  out=$(RUST_LOG=warn in_procs_cgroup "${source_netns[@]}" "$agent" backup --host-name "bench-src$r" --token-file "$dir/token" --dataset "$procs_ds" \
    --snapshot bench --keep-snapshots --compression none --target "$target_ip:$port" --target-path "$dir/store" \
    --tls-cert "$pki/bench-source.pem" --tls-key "$pki/bench-source.key" --tls-ca "$pki/ca.pem" --target-node bench-target 2>&1) ||
    { echo "$out" >&2; die "the process case failed"; }
  t1=$(date +%s.%N)
  bps=$(grep -o '"bytesPerSecond":[0-9]*' <<<"$out" | cut -d: -f2)
  bytes=$(grep -o '"bytes":[0-9]*' <<<"$out" | cut -d: -f2)
  [ -n "$bps" ] && [ -n "$bytes" ] || { echo "$out" >&2; die "no bytesPerSecond in the backup's answer"; }
  rm -rf "${dir:?}/store/bench-src$r"
  meas+=("processes $r $bytes $bps $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')")
}

jobs_of() { k get backupjob -n "$ns" -l "zetaback.io/policy=$policy" -o json; }

pods_case() {
  local r=$1 before t0 j phase bps bytes t1 name
  log "round $r/$rounds: pods (agent pod on zb-node1 → node 2's agent pod's file store)"
  settle
  before=$(jobs_of | jq -r '[.items[].metadata.name] | join(" ")')
  # One watch for the whole job (not a kubectl every half second: on 2 cores those runs took
  # CPU from the transfer being measured, which the processes' case never paid).
  "$kbin/kubectl" get backupjob -n "$ns" -l "zetaback.io/policy=$policy" --watch -o json >"$dir/watch.json" 2>/dev/null &
  watcher=$!
  t0=$(date +%s.%N)
  if [ "$r" = 1 ] && ! k get backuppolicy -n "$ns" "$policy" >/dev/null 2>&1; then
    k apply -f - >/dev/null <<YAML
apiVersion: zetaback.io/v1alpha1
kind: BackupPolicy
metadata: {name: $policy, namespace: $ns}
spec:
  hosts: {names: [zb-node1]}
  datasets: {include: ["$pods_ds"]}
  full: {every: 24h, keep: 48h}
  incremental: {every: 12h, keep: 48h}
  compression: none
  target: {host: zb-node2, path: /var/lib/zetaback}
YAML
  else
    "$zb" backup "$policy" -n "$ns" --full >/dev/null
  fi
  j=
  for _ in $(seq 1 1200); do
    sleep 0.5
    j=$(jq -c --arg before " $before " '. as $job | select((.status.phase == "Succeeded" or .status.phase == "Failed")
      and ($before | contains(" " + $job.metadata.name + " ") | not))' "$dir/watch.json" 2>/dev/null | head -1 || true)
    [ -n "$j" ] && break
  done
  kill "$watcher" 2>/dev/null || true
  wait "$watcher" 2>/dev/null || true
  t1=$(date +%s.%N)
  [ -n "$j" ] || die "no job of $policy ended within 600 s"
  phase=$(jq -r .status.phase <<<"$j"); name=$(jq -r .metadata.name <<<"$j")
  [ "$phase" = Succeeded ] || die "job $name: $phase: $(jq -r .status.message <<<"$j")"
  bps=$(jq -r .status.bytesPerSecond <<<"$j"); bytes=$(jq -r .status.bytes <<<"$j")
  meas+=("pods $r $bytes $bps $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')")
}

for r in $(seq 1 "$rounds"); do
  if (( r % 2 )); then process_case "$r"; pods_case "$r"; else pods_case "$r"; process_case "$r"; fi
done
load1=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "$size_mib MiB of incompressible data, full streams, no compression, mutual TLS both ways; agent $(sha256sum "$agent" | cut -c1-12) ($agent); $(nproc) cores; $rounds rounds; load average before: $load0, after: $load1; $(date -u '+%F %H:%M') UTC"
echo
printf '%s\n' "${meas[@]}" | awk '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { mbps = $4 / 1e6; rate[$1] = rate[$1] " " mbps; per[$1, $2] = mbps; wall[$1, $2] = $5; bytes = $3
    rounds = $2 > rounds ? $2 : rounds }
  END {
    printf "| round | processes MB/s | pods MB/s | pods ÷ processes | job wall s (pods) | command wall s (processes) |\n|---:|---:|---:|---:|---:|---:|\n"
    for (r = 1; r <= rounds; r++)
      printf "| %d | %.1f | %.1f | %.2f | %.1f | %.1f |\n", r, per["processes", r], per["pods", r], per["pods", r] / per["processes", r], wall["pods", r], wall["processes", r]
    mp = median(rate["processes"]); mo = median(rate["pods"])
    printf "| median | %.1f | %.1f | **%.2f** | | |\n", mp, mo, mo / mp
    printf "\nstream %.1f MiB; ratio pods/processes of the medians: %.2f (target >= 0.95)\n", bytes / 1048576, mo / mp
  }'
echo
echo "agent pods after the transfers (e2e/scripts/pod-resources.sh):"
bash "$root/e2e/scripts/pod-resources.sh" -n "$ns" -l app.kubernetes.io/component=agent
echo "processes' target agent: peak RSS $(awk '/VmHWM/{print int($2/1024)}' "/proc/$target_pid/status") MiB, CPU $(cpu_of "$target_pid") s"
