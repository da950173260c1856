#!/usr/bin/env bash
# The demo: brings up the local control plane (etcd, kube-apiserver, kube-controller-manager
# built from their Go modules; zfs-fuse), installs the Helm chart's CRDs and RBAC, runs the
# controller as its own ServiceAccount, applies example objects and shows them with
# `kubectl get zetaback`. Run as root on Debian. `e2e/demo.sh down` stops everything.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$PATH:/usr/local/go/bin:$HOME/.cargo/bin"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/zetaback/target}
run=${ZETABACK_RUN:-/tmp/zetaback-e2e}
ns=zetaback-system

if [ "${1:-}" = down ]; then
  [ -f "$run/demo-controller.pid" ] && kill "$(cat "$run/demo-controller.pid")" 2>/dev/null || true
  bash e2e/scripts/env.sh down
  bash e2e/scripts/zfs.sh stop
  exit 0
fi

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Installing prerequisites (Debian packages) if missing"
bash e2e/scripts/install-deps.sh
step "Building zetaback (cargo build)"
cargo build --locked --bins -q
step "Starting the local control plane (first run builds Kubernetes from source: ~10-20 min)"
kubeconfig=$(bash e2e/scripts/env.sh up)
bin=$(bash e2e/scripts/env.sh bin)
k() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }
k version 2>/dev/null | sed 's/^/  /'

step "Installing the Helm chart's RBAC and service accounts into $ns"
k create namespace "$ns" --dry-run=client -o yaml | k apply -f - >/dev/null
"$bin/helm" template zetaback charts/zetaback --namespace "$ns" --kube-version 1.37.2 | k apply -f - | sed 's/^/  /'

step "Running the controller with its own ServiceAccount token (RBAC as installed)"
token=$(k create token zetaback-controller -n "$ns" --duration 24h)
server=$(k config view --raw -o jsonpath='{.clusters[0].cluster.server}')
ca=$(k config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority}')
cat >"$run/controller.kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$server", certificate-authority: "$ca"}}]
users: [{name: zetaback-controller, user: {token: "$token"}}]
contexts: [{name: local, context: {cluster: local, user: zetaback-controller}}]
current-context: local
YAML
[ -f "$run/demo-controller.pid" ] && kill "$(cat "$run/demo-controller.pid")" 2>/dev/null || true
KUBECONFIG="$run/controller.kubeconfig" POD_NAMESPACE=$ns POD_NAME=demo-controller \
  ZETABACK_METRICS_ADDR=127.0.0.1:18080 \
  nohup "$CARGO_TARGET_DIR/debug/zetaback-controller" >"$run/demo-controller.log" 2>&1 &
echo $! >"$run/demo-controller.pid"
echo "  controller pid $(cat "$run/demo-controller.pid"), log $run/demo-controller.log"

step "Applying the example ZfsHosts, BackupPolicy and FallbackRoute"
k apply -f e2e/manifests/examples/ | sed 's/^/  /'
for _ in $(seq 1 60); do
  [ "$(k get backuppolicy databases -o jsonpath='{.status.observedGeneration}' 2>/dev/null)" = 1 ] && break
  sleep 0.5
done

step "kubectl get zetaback"
k get zetaback -A
step "A refused policy (incremental not shorter than full)"
k apply --dry-run=server -f e2e/manifests/invalid/incremental-not-shorter.yaml 2>&1 | sed 's/^/  /' || true
cat <<TXT

The control plane keeps running. Try:
  export KUBECONFIG=$kubeconfig PATH=$bin:\$PATH
  kubectl get backuppolicies -o wide
  kubectl describe backuppolicy databases
Stop everything with: e2e/demo.sh down
TXT
