#!/usr/bin/env bash
# The demo: zetaback as Kubernetes workloads on a local two-node cluster
# (e2e/scripts/cluster.sh: its own control plane, two kubelet nodes each in its own network
# and mount namespace with containerd, kube-proxy and CoreDNS), installed with `helm install`
# from charts/zetaback and the images e2e/scripts/image.sh builds, nothing started by hand.
# Node 1 has ZFS datasets (zfs-fuse, file-backed pool zbnode1); a BackupPolicy backs them up,
# through the agent pods, into node 2's store. It ends with every pod, the policy's compliance
# and `kubectl zetaback summary`.
# Run as root on Debian. `e2e/demo.sh down` stops everything: the cluster, its pools, and the
# zfs-fuse daemon when the demo started it and no other pool made by e2e/scripts/zfs.sh is left.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$PATH:/usr/local/go/bin:$HOME/.cargo/bin"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/zetaback/target}
# One-shot builds gain nothing from incremental state, which costs GiBs of disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
ns=zetaback-system
bins="$CARGO_TARGET_DIR/debug"
cluster() { bash e2e/scripts/cluster.sh "$@"; }

if [ "${1:-}" = down ]; then
  # (Also stops zfs-fuse if cluster.sh up started it and it serves no other pool zfs.sh made:
  # a daemon that was running before, e.g. for other work on a shared machine, stays.)
  cluster down
  exit 0
fi

started=$(date +%s)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# The demo proves what it shows: any step that did not happen ends it with this, non-zero.
fail() { printf '\n\033[1;31mDEMO FAILED: %s\033[0m\n' "$*" >&2; exit 1; }

step "Installing prerequisites (Debian packages) if missing"
bash e2e/scripts/install-deps.sh
step "Building zetaback (cargo build: controller, agent, proxy, kubectl-zetaback)"
# --workspace: the agent is its own package; a plain `cargo build --bins` builds only the root's.
cargo build --locked --workspace --bins -q
for b in zetaback-controller zetaback-agent zetaback-proxy kubectl-zetaback; do
  [ -x "$bins/$b" ] || fail "cargo build did not produce $bins/$b"
done
step "Building the container images (e2e/scripts/image.sh build; the first run makes a Debian base: ~3 min)"
ZETABACK_IMAGE_DIR=$(bash e2e/scripts/image.sh build)
export ZETABACK_IMAGE_DIR
step "Starting the two-node cluster (the first run builds Kubernetes, containerd and CoreDNS from source: ~20-30 min)"
kubeconfig=$(cluster up) || fail "cluster.sh up failed"
cluster images || fail "importing the images into the nodes failed"
bin=$(bash e2e/scripts/build-tools.sh)
k() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }
run=$(dirname "$kubeconfig")
store="$run/node2/store"
k get nodes -o wide

step "ZFS on node 1: pool zbnode1 with datasets db/pg and db/redis, with files"
# A demo run again on the same cluster starts from new datasets and an empty store.
k delete backuppolicy databases -n default --ignore-not-found --wait >/dev/null 2>&1 || true
if zfs list -H -o name zbnode1/db >/dev/null 2>&1; then
  # The agent holds the base of the next incremental (zetaback-base): released first.
  zfs list -H -t snapshot -o name -r zbnode1/db | while read -r s; do zfs release zetaback-base "$s" 2>/dev/null || true; done
  zfs destroy -r zbnode1/db
fi
rm -rf "${store:?}/zb-node1"
for ds in zbnode1/db/pg zbnode1/db/redis; do bash e2e/scripts/zfs.sh dataset "$ds" >/dev/null; done
# The restore drills' scratch root on node 2: the agent creates and destroys a dataset under it
# per drill, and refuses a root not marked zetaback.io:scratch=on. mountpoint=none: a drill only
# checks the received snapshots, so nothing is mounted (on zfs-fuse a receive mounts at the
# inherited mountpoint, and node 2's mount namespace, copied when the node started, would not
# hold this dataset's mount: the mount would fail).
zfs list -H -o name zbnode2/drills >/dev/null 2>&1 || zfs create -o mountpoint=none zbnode2/drills
zfs set mountpoint=none zbnode2/drills
zfs set zetaback.io:scratch=on zbnode2/drills
head -c 2000000 /dev/urandom >/run/zetaback/zfs/zbnode1/db/pg/base.dat
head -c 500000 /dev/urandom >/run/zetaback/zfs/zbnode1/db/redis/dump.rdb
zfs list -r zbnode1 | sed 's/^/  /'

step "helm install zetaback (charts/zetaback: CRDs, RBAC, the controller Deployment, the agent DaemonSet)"
cluster install | sed 's/^/  /' || fail "helm install failed"
k apply -f e2e/manifests/demo/hosts.yaml | sed 's/^/  /'
k -n "$ns" rollout status deploy/zetaback-controller --timeout=300s | sed 's/^/  /' ||
  fail "the controller Deployment did not become Ready"
k -n "$ns" rollout status ds/zetaback-agent --timeout=300s | sed 's/^/  /' ||
  fail "the agent DaemonSet did not become Ready on every node"
printf '  waiting for both agent pods to report their ZfsHost'
for _ in $(seq 1 120); do
  [ -n "$(k get zfshost zb-node1 -o jsonpath='{.status.lastSeen}' 2>/dev/null)" ] &&
    [ -n "$(k get zfshost zb-node2 -o jsonpath='{.status.lastSeen}' 2>/dev/null)" ] && break
  printf '.'; sleep 1
done
echo
for h in zb-node1 zb-node2; do
  [ -n "$(k get zfshost "$h" -o jsonpath='{.status.lastSeen}' 2>/dev/null)" ] || fail "the agent pod on $h never reported its ZfsHost"
done

step "Applying a BackupPolicy: zbnode1/db/* to node 2's store, full every 5m, incremental every 30s"
k apply -f e2e/manifests/demo/policy.yaml | sed 's/^/  /'
policy_field() { k get backuppolicy databases -n default -o jsonpath="$1" 2>/dev/null || true; }
compliant() { policy_field '{.status.conditions[?(@.type=="Compliant")].status}'; }
# A backup counts once its manifest is written: count manifests, not stream files.
count() { find "$store/zb-node1" -name "$1" 2>/dev/null | wc -l; }
printf '  waiting for a full backup of each dataset'
for _ in $(seq 1 180); do
  [ "$(compliant)" = True ] && [ "$(policy_field '{.status.datasets}')" = 2 ] && [ "$(count '*.full.json')" -ge 2 ] && break
  printf '.'; sleep 1
done
echo
printf '  and for an incremental'
for _ in $(seq 1 90); do
  [ "$(count '*.incremental.*.json')" -ge 1 ] && break
  printf '.'; sleep 1
done
echo
fulls=$(count '*.full.json')
incrementals=$(count '*.incremental.*.json')
[ "$fulls" -ge 2 ] || fail "expected a full backup of each dataset in node 2's store ($store/zb-node1), found $fulls"
[ "$incrementals" -ge 1 ] || fail "no incremental backup stored in node 2's store ($store/zb-node1) within 90 s"
[ "$(policy_field '{.status.datasets}')" = 2 ] ||
  fail "the policy covers $(policy_field '{.status.datasets}') datasets, expected 2 (zbnode1/db/pg, zbnode1/db/redis)"
[ "$(compliant)" = True ] ||
  fail "the policy is not Compliant: $(policy_field '{.status.conditions[?(@.type=="Compliant")].message}')"

step "kubectl get pods -A -o wide"
k get pods -A -o wide
# Every pod Running with every container ready, on both nodes.
not_ready=$(k get pods -A -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name} {.status.phase}{range .status.containerStatuses[*]} {.ready}{end}{"\n"}{end}' |
  awk '$2 != "Running" || NF < 3 || / false/')
[ -z "$not_ready" ] || fail "pods not Running and Ready: $not_ready"
nodes=$(k get pods -A -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort -u | grep -c .)
[ "$nodes" -ge 2 ] || fail "the pods run on $nodes node(s), expected both"
step "kubectl get zfshosts,backuppolicies -A"
k get zfshosts,backuppolicies -A
step "kubectl zetaback summary -A (the store on node 2 over mutual TLS's CA, read with a catalogue reader's token)"
# The stores speak TLS (the chart's default, tls.mode csr): the CLI verifies each one as its
# ZfsHost's node against the CA the controller publishes in ConfigMap zetaback-ca.
store_ca=$run/zetaback-ca.crt
k get configmap -n "$ns" zetaback-ca -o jsonpath='{.data.ca\.crt}' > "$store_ca"
grep -q 'BEGIN CERTIFICATE' "$store_ca" || fail "ConfigMap $ns/zetaback-ca holds no CA certificate"
zb() { KUBECONFIG=$kubeconfig "$bins/kubectl-zetaback" --reader-service-account "$ns/zetaback-reader" --store-ca "$store_ca" "$@"; }
summary=$(zb summary -A 2>&1) || { echo "$summary"; fail "kubectl zetaback summary failed"; }
echo "$summary"
# Read from the store itself, not the BackupJob history it falls back to.
! grep -q 'unreachable' <<<"$summary" || fail "kubectl zetaback summary could not read the store's catalogue"
step "kubectl zetaback violators -A (monitoring-plugin exit code)"
violators_rc=0
zb violators -A || violators_rc=$?
echo "  exit $violators_rc"
[ "$violators_rc" = 0 ] || fail "kubectl zetaback violators exited $violators_rc, expected 0 (OK)"
step "A restore drill now (kubectl zetaback drill): each dataset's newest backup restored on node 2, verified, timed, destroyed"
drill_started=$(date +%s)
drill_rc=0
zb drill databases -n default --timeout 3m || drill_rc=$?
echo "  exit $drill_rc"
[ "$drill_rc" = 0 ] || fail "kubectl zetaback drill exited $drill_rc, expected 0 (DRILL OK)"
echo "  the policy's drill status (status.recovery, once the controller recorded both drills' ends):"
# `drill` returns when the drills' Restores ended; the policy's status records them on its next
# reconcile, a moment later.
recovery=
for _ in $(seq 1 60); do
  recovery=$(policy_field '{range .status.recovery[*]}{.dataset} {.lastDrill.result} rto={.rtoSeconds}s bytes={.lastDrill.bytes} backup={.lastDrill.backup} restore={.lastDrill.restore}{"\n"}{end}')
  [ "$(grep -c ' Succeeded rto=[0-9]' <<<"$recovery")" -ge 2 ] && break
  sleep 1
done
echo "$recovery" | sed 's/^/    /'
for ds in zbnode1/db/pg zbnode1/db/redis; do
  grep -q "^$ds Succeeded rto=[0-9]" <<<"$recovery" || fail "no successful drill with a measured RTO for $ds in the policy's status"
done
# The drill metrics, from the leading controller pod's /metrics (the host routes to pod IPs).
leader=$(k get lease -n "$ns" zetaback-controller -o jsonpath='{.spec.holderIdentity}')
leader_ip=$(k get pod -n "$ns" "$leader" -o jsonpath='{.status.podIP}')
echo "  restore_drill_* metrics of the leading controller $leader (http://$leader_ip:8080/metrics):"
metrics=
for _ in $(seq 1 30); do
  metrics=$(curl -sS --max-time 5 "http://$leader_ip:8080/metrics" | grep '^zetaback_controller_restore_drill_' || true)
  [ "$(grep -c 'dataset="zbnode1/db/' <<<"$metrics")" -ge 4 ] && break
  sleep 1
done
echo "$metrics" | sed 's/^/    /'
for m in seconds bytes; do
  for ds in zbnode1/db/pg zbnode1/db/redis; do
    grep -q "^zetaback_controller_restore_drill_$m{.*dataset=\"$ds\".*} [0-9]" <<<"$metrics" ||
      fail "the leading controller exports no restore_drill_$m for $ds"
  done
done
echo "  (drill step: $(( $(date +%s) - drill_started ))s)"
step "A refused policy (incremental not shorter than full)"
refused=$(k apply --dry-run=server -f e2e/manifests/invalid/incremental-not-shorter.yaml 2>&1) &&
  fail "the apiserver accepted an invalid policy"
echo "$refused" | sed 's/^/  /'
step "DEMO OK in $(( $(date +%s) - started ))s: every pod Ready on 2 nodes; $fulls full and $incrementals incremental backups stored by the agent pods, 2 datasets, Compliant; a restore drill of each passed"
cat <<TXT

Everything keeps running: backups continue every 30s. Try:
  export KUBECONFIG=$kubeconfig PATH=$bin:$bins:\$PATH
  kubectl get backuppolicies -A; kubectl get backupjobs -A
  kubectl zetaback list -A --reader-service-account $ns/zetaback-reader --store-ca $run/zetaback-ca.crt
  kubectl zetaback drill databases -n default; kubectl get backuppolicy databases -o yaml   # status.recovery
  kubectl logs -n $ns ds/zetaback-agent --prefix --tail=5
  kubectl delete pod -n $ns -l app.kubernetes.io/component=controller   # the DaemonSet and Deployment bring them back
Stop everything with: e2e/demo.sh down
TXT
