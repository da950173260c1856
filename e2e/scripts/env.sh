#!/usr/bin/env bash
# The local control plane for the demo and the end-to-end tests: etcd, kube-apiserver (RBAC on,
# service-account tokens issued) and kube-controller-manager (garbage collector, namespaces,
# service accounts, deployments), all built from their Go modules (build-tools.sh, cached), on
# loopback, plus zfs-fuse for real ZFS.
#
#   env.sh up       start everything that is not running (idempotent); prints the kubeconfig path
#   env.sh down     stop everything started by `up`
#   env.sh status   say what runs
#   env.sh bin      print the directory holding kubectl, helm and the other built binaries
#
# State lives in $ZETABACK_RUN (default /tmp/zetaback-e2e); ports: etcd 12379/12380,
# apiserver $ZETABACK_APISERVER_PORT (default 16443).
#
# Opt-in, for the multi-node cluster (e2e/scripts/cluster.sh sets these; unset, nothing changes):
#   ZETABACK_APISERVER_ADDRESS   listen and advertise there instead of 127.0.0.1 (the nodes'
#                                host bridge address; the self-signed serving certificate
#                                names it, and the `kubernetes` Service's endpoint is it)
#   ZETABACK_CLUSTER_NODES=1     real nodes join: Node+RBAC authorization, NodeRestriction,
#                                the lease endpoint reconciler, a client certificate for the
#                                kubelets' API, the controllers nodes and pods need, and
#                                kube-scheduler ($ZETABACK_SCHEDULER_BIN)
#   ZETABACK_APISERVER_BIN, ZETABACK_CONTROLLER_MANAGER_BIN   run these binaries instead of
#                                build-tools.sh's (the cluster's, linked with their version)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
run=${ZETABACK_RUN:-/tmp/zetaback-e2e}
api_port=${ZETABACK_APISERVER_PORT:-16443}
etcd_port=${ZETABACK_ETCD_PORT:-12379}
kubeconfig="$run/kubeconfig"
api_addr=${ZETABACK_APISERVER_ADDRESS:-127.0.0.1}
nodes=${ZETABACK_CLUSTER_NODES:-}

log() { echo "env.sh: $*" >&2; }
die() { log "$*"; exit 1; }

bin_dir() { "$here/build-tools.sh"; }

alive() { [ -f "$run/$1.pid" ] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }

start_bg() { # name, command...
  local name=$1; shift
  if alive "$name"; then return 0; fi
  nohup "$@" >"$run/$name.log" 2>&1 9>&- &
  echo $! >"$run/$name.pid"
}

certs() {
  [ -f "$run/pki/admin.crt" ] && return 0
  command -v openssl >/dev/null || die "openssl is required"
  mkdir -p "$run/pki"; cd "$run/pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=zetaback-e2e-ca" \
    -keyout ca.key -out ca.crt >/dev/null 2>&1
  openssl genrsa -out sa.key 2048 >/dev/null 2>&1
  openssl rsa -in sa.key -pubout -out sa.pub >/dev/null 2>&1
  # The admin identity: group system:masters.
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=zetaback-admin" \
    -keyout admin.key -out admin.csr >/dev/null 2>&1
  # X.509 v3 with extensions: rustls refuses v1 certificates.
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >admin.ext
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile admin.ext -out admin.crt >/dev/null 2>&1
  # The apiserver's identity towards kubelets (logs, exec, port-forward).
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout kubelet-client.key -out kubelet-client.csr >/dev/null 2>&1
  openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile admin.ext -out kubelet-client.crt >/dev/null 2>&1
  cd - >/dev/null
}

write_kubeconfig() {
  cat >"$kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: zetaback-e2e
  cluster:
    server: https://$api_addr:$api_port
    certificate-authority: $run/apiserver-certs/apiserver.crt
users:
- name: admin
  user:
    client-certificate: $run/pki/admin.crt
    client-key: $run/pki/admin.key
contexts:
- name: zetaback-e2e
  context: {cluster: zetaback-e2e, user: admin, namespace: default}
current-context: zetaback-e2e
YAML
}

wait_ready() {
  local kubectl=$1
  for _ in $(seq 1 240); do
    if "$kubectl" --kubeconfig "$kubeconfig" get --raw /readyz >/dev/null 2>&1; then return 0; fi
    alive kube-apiserver || { tail -30 "$run/kube-apiserver.log" >&2; die "kube-apiserver exited"; }
    sleep 0.5
  done
  tail -30 "$run/kube-apiserver.log" >&2
  die "kube-apiserver not ready after 120s"
}

up() {
  mkdir -p "$run"
  local bin; bin=$(bin_dir)
  "$here/zfs.sh" start 9>&-
  certs
  start_bg etcd "$bin/etcd" --name e2e --data-dir "$run/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-cluster "e2e=http://127.0.0.1:$((etcd_port + 1))" \
    --unsafe-no-fsync --quota-backend-bytes 4294967296 --log-level warn
  mkdir -p "$run/apiserver-certs"
  local node_flags=(--endpoint-reconciler-type=none) authz=RBAC
  local controllers=garbagecollector,namespace,serviceaccount,deployment,replicaset
  if [ -n "$nodes" ]; then
    authz=Node,RBAC
    node_flags=(--endpoint-reconciler-type=lease
      --enable-admission-plugins NodeRestriction
      --kubelet-client-certificate "$run/pki/kubelet-client.crt" --kubelet-client-key "$run/pki/kubelet-client.key"
      --kubelet-preferred-address-types InternalIP)
    controllers=$controllers,endpointslice,nodelifecycle,daemonset,podgc,root-ca-cert-publisher,disruption,job
  fi
  # Self-signed serving certificate for 127.0.0.1 (kube-apiserver writes it into --cert-dir).
  start_bg kube-apiserver "${ZETABACK_APISERVER_BIN:-$bin/kube-apiserver}" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$api_addr" --advertise-address "$api_addr" --secure-port "$api_port" \
    --cert-dir "$run/apiserver-certs" --tls-cert-file "" \
    --client-ca-file "$run/pki/ca.crt" \
    --authorization-mode "$authz" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$run/pki/sa.pub" \
    --service-account-signing-key-file "$run/pki/sa.key" \
    --api-audiences https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range 10.96.0.0/16 \
    --allow-privileged=true \
    --enable-priority-and-fairness=false \
    --max-requests-inflight 2000 --max-mutating-requests-inflight 1000 \
    "${node_flags[@]}"
  for _ in $(seq 1 100); do [ -f "$run/apiserver-certs/apiserver.crt" ] && break; sleep 0.2; done
  write_kubeconfig
  wait_ready "$bin/kubectl"
  start_bg kube-controller-manager "${ZETABACK_CONTROLLER_MANAGER_BIN:-$bin/kube-controller-manager}" \
    --kubeconfig "$kubeconfig" --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$((api_port + 1))" --leader-elect=false \
    --controllers "$controllers" \
    --root-ca-file "$run/apiserver-certs/apiserver.crt" \
    --concurrent-gc-syncs 5
  if [ -n "$nodes" ]; then
    [ -x "${ZETABACK_SCHEDULER_BIN:-}" ] || die "ZETABACK_CLUSTER_NODES needs ZETABACK_SCHEDULER_BIN (kube-scheduler)"
    start_bg kube-scheduler "$ZETABACK_SCHEDULER_BIN" --kubeconfig "$kubeconfig" \
      --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
      --bind-address 127.0.0.1 --secure-port "$((api_port + 2))" --leader-elect=false
  fi
  "$bin/kubectl" --kubeconfig "$kubeconfig" apply --server-side --force-conflicts -f "$root/crds/" >/dev/null
  "$bin/kubectl" --kubeconfig "$kubeconfig" wait --for condition=established --timeout=60s \
    -f "$root/crds/" >/dev/null
  echo "$kubeconfig"
}

down() {
  for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    if alive "$name"; then kill "$(cat "$run/$name.pid")" 2>/dev/null || true; fi
  done
  for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    for _ in $(seq 1 50); do alive "$name" || break; sleep 0.2; done
    rm -f "$run/$name.pid"
  done
  # Also whatever an interrupted run left without a pid file, found by its own state paths.
  pkill -f -- "--cert-dir $run/apiserver-certs" 2>/dev/null || true
  pkill -f -- "--kubeconfig $kubeconfig --authentication-kubeconfig" 2>/dev/null || true
  pkill -f -- "kube-scheduler --kubeconfig $kubeconfig " 2>/dev/null || true
  pkill -f -- "--data-dir $run/etcd" 2>/dev/null || true
  sleep 1
  pkill -9 -f -- "--cert-dir $run/apiserver-certs" 2>/dev/null || true
  pkill -9 -f -- "--data-dir $run/etcd" 2>/dev/null || true
  rm -rf "$run/etcd"
}

status() {
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler; do
    [ "$name" != kube-scheduler ] || [ -f "$run/$name.pid" ] || continue
    if alive "$name"; then echo "$name: running (pid $(cat "$run/$name.pid"))"; else echo "$name: stopped"; fi
  done
  if zpool list -H >/dev/null 2>&1; then echo "zfs-fuse: running"; else echo "zfs-fuse: stopped"; fi
}

# One `up` or `down` at a time (tests and the demo may call it together).
mkdir -p "$run"
exec 9>"$run/env.lock"
flock 9

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  bin) bin_dir ;;
  *) echo "usage: env.sh up | down | status | bin" >&2; exit 2 ;;
esac
