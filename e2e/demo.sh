#!/usr/bin/env bash
# The demo: a local control plane (etcd, kube-apiserver, kube-controller-manager built from
# their Go modules), two "machines" with real ZFS (zfs-fuse, file-backed pools) each served by
# a zetaback-agent process, and the controller running as its own ServiceAccount (the Helm
# chart's RBAC). A BackupPolicy with short intervals takes real `zfs send` backups; the demo
# ends with `kubectl get zetaback` and `kubectl zetaback summary`.
# Run as root on Debian. `e2e/demo.sh down` stops everything.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$PATH:/usr/local/go/bin:$HOME/.cargo/bin"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/zetaback/target}
# One-shot builds gain nothing from incremental state, which costs GiBs of disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
run=${ZETABACK_RUN:-/tmp/zetaback-e2e}
demo="$run/demo"
ns=zetaback-system
bins="$CARGO_TARGET_DIR/debug"

stop_procs() {
  for p in "$demo"/*.pid; do
    [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true
    rm -f "$p"
  done
}

if [ "${1:-}" = down ]; then
  stop_procs
  bash e2e/scripts/env.sh down
  bash e2e/scripts/zfs.sh stop
  exit 0
fi

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# The demo proves what it shows: any step that did not happen ends it with this, non-zero.
fail() { printf '\n\033[1;31mDEMO FAILED: %s\033[0m\n  logs: %s\n' "$*" "$demo" >&2; exit 1; }
bg() { # name, command...
  local name=$1; shift
  nohup "$@" >"$demo/$name.log" 2>&1 &
  echo $! >"$demo/$name.pid"
}
# Every process the demo started is still running (one that exited shows its log's tail).
check_alive() {
  local p name
  for p in "$demo"/*.pid; do
    [ -f "$p" ] || continue
    name=$(basename "$p" .pid)
    kill -0 "$(cat "$p")" 2>/dev/null && continue
    tail -n 20 "$demo/$name.log" >&2 || true
    fail "$name exited (its log's last lines are above)"
  done
}

step "Installing prerequisites (Debian packages) if missing"
bash e2e/scripts/install-deps.sh
step "Building zetaback (cargo build: controller, agent, CLI)"
# --workspace: the agent is its own package; a plain `cargo build --bins` builds only the root's.
cargo build --locked --workspace --bins -q
for b in zetaback-controller zetaback-agent kubectl-zetaback; do
  [ -x "$bins/$b" ] || fail "cargo build did not produce $bins/$b"
done
step "Starting the local control plane (the first run builds Kubernetes from source: ~10-20 min)"
kubeconfig=$(bash e2e/scripts/env.sh up)
bin=$(bash e2e/scripts/env.sh bin)
k() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }
k version 2>/dev/null | sed "s/^/  /" || true
mkdir -p "$demo"
stop_procs

step "Two machines with real ZFS: pool demodb (datasets db/pg, db/redis with files) and pool demobak"
for pool in demodb demobak; do
  bash e2e/scripts/zfs.sh destroy "$pool"
  mnt=$(bash e2e/scripts/zfs.sh pool "$pool" 256M)
  echo "  $pool mounted at $mnt"
done
for ds in demodb/db demodb/db/pg demodb/db/redis; do zfs create "$ds"; done
head -c 2000000 /dev/urandom >/run/zetaback/zfs/demodb/db/pg/base.dat
head -c 500000 /dev/urandom >/run/zetaback/zfs/demodb/db/redis/dump.rdb
zfs list -r demodb | sed 's/^/  /'

step "Installing the Helm chart's RBAC and service accounts into $ns"
k create namespace "$ns" --dry-run=client -o yaml | k apply -f - >/dev/null
"$bin/helm" template zetaback charts/zetaback --namespace "$ns" --kube-version 1.37.2 | k apply -f - | sed 's/^/  /'

kubeconfig_for() { # service account [pod] → kubeconfig path (with a pod: its token is bound
  # to that pod, so it carries the pod's node, which the agent-writes admission policy checks)
  local sa=$1 pod=${2:-} file="$demo/$1${2:+-$2}.kubeconfig"
  local token server ca
  if [ -n "$pod" ]; then
    token=$(k create token "$sa" -n "$ns" --duration 24h \
      --bound-object-kind Pod --bound-object-name "$pod" \
      --bound-object-uid "$(k get pod "$pod" -n "$ns" -o jsonpath='{.metadata.uid}')")
  else
    token=$(k create token "$sa" -n "$ns" --duration 24h)
  fi
  server=$(k config view --raw -o jsonpath='{.clusters[0].cluster.server}')
  ca=$(k config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority}')
  cat >"$file" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$server", certificate-authority: "$ca"}}]
users: [{name: $sa, user: {token: "$token"}}]
contexts: [{name: local, context: {cluster: local, user: $sa}}]
current-context: local
YAML
  echo "$file"
}

step "Applying the ZfsHosts and starting one agent per machine (as the zetaback-agent ServiceAccount)"
k apply -f e2e/manifests/demo/hosts.yaml | sed 's/^/  /'
# Each agent's own identity (no shared token): its node (a Node object; no kubelet runs here),
# its pod of the zetaback-agent ServiceAccount on that node, and a token bound to the pod for
# the stores' audience, as the chart's projected token volume gives it in a cluster. Stores
# check every caller with a TokenReview: the token names the node, the node its ZfsHost.
store_token_for() { # pod-or-"" service-account → token file
  local pod=$1 sa=$2 file="$demo/$2${1:+-$1}.store-token"
  if [ -n "$pod" ]; then
    k create token "$sa" -n "$ns" --audience zetaback-store --duration 24h \
      --bound-object-kind Pod --bound-object-name "$pod" \
      --bound-object-uid "$(k get pod "$pod" -n "$ns" -o jsonpath='{.metadata.uid}')" >"$file"
  else
    k create token "$sa" -n "$ns" --audience zetaback-store --duration 24h >"$file"
  fi
  echo "$file"
}
for host in db-1 backup-1; do
  k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata: {name: $host}
---
apiVersion: v1
kind: Pod
metadata: {name: agent-$host, namespace: $ns}
spec:
  nodeName: $host
  serviceAccountName: zetaback-agent
  automountServiceAccountToken: false
  containers: [{name: agent, image: zetaback-agent:demo}]
YAML
done
identities=(--controller-service-account "$ns/zetaback-controller" --agent-service-account "$ns/zetaback-agent"
  --reader-service-account "$ns/zetaback-reader")
mkdir -p "$demo/store"
# The demo's agents run on one machine without TLS, explicitly (the chart runs them with TLS).
export ZETABACK_INSECURE_PLAINTEXT=true
KUBECONFIG=$(kubeconfig_for zetaback-agent agent-db-1) bg agent-db-1 "$bins/zetaback-agent" --host-name db-1 --node-name db-1 \
  --listen 127.0.0.1:17791 --token-file "$(store_token_for agent-db-1 zetaback-agent)" "${identities[@]}" \
  --status-interval 5 --last-seen-every 10
KUBECONFIG=$(kubeconfig_for zetaback-agent agent-backup-1) bg agent-backup-1 "$bins/zetaback-agent" --host-name backup-1 --node-name backup-1 \
  --listen 127.0.0.1:17792 --store-root "$demo/store" \
  --token-file "$(store_token_for agent-backup-1 zetaback-agent)" "${identities[@]}" \
  --status-interval 5 --last-seen-every 10
echo "  agents: db-1 on 127.0.0.1:17791, backup-1 on 127.0.0.1:17792 (logs in $demo)"
printf '  waiting for both agents to report their ZfsHost'
for _ in $(seq 1 60); do
  [ -n "$(k get zfshost db-1 -o jsonpath='{.status.lastSeen}' 2>/dev/null)" ] &&
    [ -n "$(k get zfshost backup-1 -o jsonpath='{.status.lastSeen}' 2>/dev/null)" ] && break
  printf '.'; sleep 1
done
echo
check_alive
[ -n "$(k get zfshost db-1 -o jsonpath='{.status.lastSeen}' 2>/dev/null)" ] || fail "agent db-1 never reported its ZfsHost"
[ -n "$(k get zfshost backup-1 -o jsonpath='{.status.lastSeen}' 2>/dev/null)" ] || fail "agent backup-1 never reported its ZfsHost"

step "Starting the controller (as the zetaback-controller ServiceAccount)"
KUBECONFIG=$(kubeconfig_for zetaback-controller) POD_NAMESPACE=$ns POD_NAME=demo-controller \
  ZETABACK_METRICS_ADDR=127.0.0.1:18080 ZETABACK_STORE_TOKEN_FILE="$(store_token_for "" zetaback-controller)" \
  ZETABACK_HOST_STALE_AFTER=30s ZETABACK_WATCH_NAMESPACE=default bg controller "$bins/zetaback-controller"
echo "  metrics on http://127.0.0.1:18080/metrics"

step "Applying a BackupPolicy (full every 5m, incremental every 30s) and a FallbackRoute"
k apply -f e2e/manifests/demo/policy.yaml -f e2e/manifests/demo/route.yaml | sed 's/^/  /'
policy_field() { k get backuppolicy databases -o jsonpath="$1" 2>/dev/null || true; }
printf '  waiting for the first full backups'
for _ in $(seq 1 120); do
  [ "$(policy_field '{.status.conditions[?(@.type=="Compliant")].status}')" = True ] &&
    [ "$(policy_field '{.status.datasets}')" = 2 ] && break
  printf '.'; sleep 1
done
echo
check_alive
[ "$(policy_field '{.status.datasets}')" = 2 ] ||
  fail "the policy covers $(policy_field '{.status.datasets}') datasets, expected 2 (demodb/db/pg, demodb/db/redis)"
[ "$(policy_field '{.status.conditions[?(@.type=="Compliant")].status}')" = True ] ||
  fail "the policy is not Compliant: $(policy_field '{.status.conditions[?(@.type=="Compliant")].message}')"
printf '  and for an incremental'
for _ in $(seq 1 90); do
  ls "$demo"/store/db-1/*/ 2>/dev/null | grep -q incremental && break
  printf '.'; sleep 1
done
echo
# A backup counts once its manifest is written: count manifests, not stream files.
fulls=$(find "$demo/store/db-1" -name '*.full.json' 2>/dev/null | wc -l)
incrementals=$(find "$demo/store/db-1" -name '*.incremental.*.json' 2>/dev/null | wc -l)
[ "$fulls" -ge 2 ] || fail "expected a full backup of each dataset in $demo/store/db-1, found $fulls"
[ "$incrementals" -ge 1 ] || fail "no incremental backup stored in $demo/store/db-1 within 90 s"
check_alive

step "kubectl get zetaback"
k get zetaback -A
step "kubectl zetaback summary"
KUBECONFIG=$kubeconfig "$bins/kubectl-zetaback" summary --token-file "$(store_token_for "" zetaback-reader)" ||
  fail "kubectl zetaback summary failed"
step "kubectl zetaback violators (monitoring-plugin exit code)"
violators_rc=0
KUBECONFIG=$kubeconfig "$bins/kubectl-zetaback" violators || violators_rc=$?
echo "  exit $violators_rc"
[ "$violators_rc" = 0 ] || fail "kubectl zetaback violators exited $violators_rc, expected 0 (OK)"
step "A refused policy (incremental not shorter than full)"
if k apply --dry-run=server -f e2e/manifests/invalid/incremental-not-shorter.yaml >"$demo/refused.txt" 2>&1; then
  fail "the apiserver accepted an invalid policy"
fi
sed 's/^/  /' "$demo/refused.txt"
step "DEMO OK: $fulls full and $incrementals incremental backups stored by the agents, 2 datasets, Compliant"
cat <<TXT

Everything keeps running: backups continue every 30s. Try:
  export KUBECONFIG=$kubeconfig PATH=$bin:$bins:\$PATH
  kubectl get backuppolicies; kubectl get backupjobs
  kubectl zetaback list --token-file $demo/zetaback-reader.store-token
  kill \$(cat $demo/agent-db-1.pid)   # then watch 'kubectl get backuppolicies' report violators
Stop everything with: e2e/demo.sh down
TXT
