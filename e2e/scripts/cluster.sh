#!/usr/bin/env bash
# A local multi-node Kubernetes cluster without Docker (README "The local multi-node
# cluster"): its own control plane (env.sh with the opt-in node settings) and N nodes (default 2), each in its own network
# namespace and mount namespace, each running containerd 2.x (+ runc), kubelet and kube-proxy
# (iptables) of the control plane's Kubernetes version, with the CNI bridge/host-local/portmap/
# loopback plugins; CoreDNS (built from its Go module) runs as a Deployment for Service names.
#
#   cluster.sh up       start what is not running (idempotent); prints the kubeconfig path
#   cluster.sh down     stop everything and leave nothing behind: processes, cgroups, network
#                       namespaces, veths, the bridge, routes, mounts, state directories, and
#                       zfs-fuse when up started it and no other pool made by zfs.sh is left
#   cluster.sh status   what runs, and `kubectl get nodes`
#   cluster.sh images   imports the newest image build (image.sh build; ZETABACK_IMAGE_DIR: that
#                       build's directory instead) into every running node
#   cluster.sh env      prints KUBECONFIG=… lines for the tests
#   cluster.sh install [HELM ARGS…]   `helm upgrade --install` of charts/zetaback (release
#                       zetaback, namespace zetaback-system) with this cluster's settings; extra
#                       arguments (e.g. `--set controller.logLevel=debug`) follow them. The
#                       cluster tier and the demo both install with it.
#   cluster.sh helm ARGS…   helm with this cluster's kubeconfig and its own helm directories
#   cluster.sh nsenter N CMD…   runs CMD in node N's network and mount namespaces
#
# Pools: node i's is zbnode<i> (zfs.sh, on the machine's zfs-fuse daemon, mounted under
# /run/zetaback/zfs), made by up before the node starts and destroyed by down.
#
# Addresses (private, all inside this machine): host bridge zb-br0 10.250.0.1/24 (the control
# plane listens there, apiserver port 26443); node i: netns zb-node<i>, address 10.250.0.1<i>,
# pods 10.244.<i>.0/24 on the node's bridge zb-cni0; Services 10.96.0.0/16, DNS 10.96.0.10.
# The nodes have no default route: nothing they or their pods send can leave the machine.
# Node i reaches node j's pods through a route via node j's address; the host reaches pods the
# same way (routes on zb-br0, which vanish with it).
#
# This machine (cgroup v1 hybrid, no systemd) shapes a few settings that production differs on:
# kubelet `failCgroupV1: false` and the cgroupfs driver, each node under its own cgroup root
# /zb-node<i> (production: cgroup v2 with the systemd driver, kubelet refuses v1 by default);
# the kernel sysctls kubelet insists on (vm.overcommit_memory, kernel.panic…) are answered by
# files bind-mounted over /proc/sys in the node's mount namespace, so the host's stay as they
# are (production: kubelet sets them on the real host); eviction and image GC thresholds are
# lowered because this shared disk is over 85% full.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
self="$here/cluster.sh"
run=${ZETABACK_CLUSTER_RUN:-/tmp/zetaback-cluster}
count=${ZETABACK_CLUSTER_NODE_COUNT:-2}
bridge=zb-br0
host_ip=10.250.0.1
api_port=26443
# A port no other control plane here uses (up refuses one that is taken: on 22379 another
# plane's etcd once answered and this cluster's apiserver stored everything in it).
etcd_port=24379
service_cidr=10.96.0.0/16
cluster_dns=10.96.0.10
cluster_cidr=10.244.0.0/16
cni_bin=/usr/lib/cni
kubeconfig="$run/kubeconfig"
# Directories the nodes mount over with their own (created here when missing, removed by down).
node_dirs=(/var/lib/zetaback /var/log/pods /var/log/containers /var/lib/cni /run/containerd)
# cgroup v1 hierarchies each node's tree lives in.
hierarchies=(cpu cpuacct cpuset memory devices freezer blkio pids systemd)

log() { echo "cluster.sh: $*" >&2; }
die() { log "$*"; exit 1; }

node_name() { echo "zb-node$1"; }
node_ip() { echo "10.250.0.1$1"; }
pod_cidr() { echo "10.244.$1.0/24"; }
node_run() { echo "$run/node$1"; }

# The node binaries (ZETABACK_NODE_BIN: a directory holding them instead, e.g. while trying a change).
tools() {
  if [ -n "${ZETABACK_NODE_BIN:-}" ]; then echo "$ZETABACK_NODE_BIN"; return; fi
  PATH="$PATH:/usr/local/go/bin" "$here/build-node-tools.sh"
}
# env.sh with this cluster's control plane settings (its own run directory, ports, address).
cp_env() {
  ZETABACK_RUN="$run" ZETABACK_APISERVER_PORT=$api_port ZETABACK_ETCD_PORT=$etcd_port \
    ZETABACK_APISERVER_ADDRESS=$host_ip ZETABACK_CLUSTER_NODES=1 "$here/env.sh" "$@" 8<&-
}
cp_up() {
  local bin; bin=$(tools)
  ZETABACK_SCHEDULER_BIN="$bin/kube-scheduler" ZETABACK_APISERVER_BIN="$bin/kube-apiserver" \
    ZETABACK_CONTROLLER_MANAGER_BIN="$bin/kube-controller-manager" cp_env up
}
kubectl() { "$("$here/build-tools.sh")/kubectl" --kubeconfig "$kubeconfig" "$@"; }
helm() {
  KUBECONFIG=$kubeconfig HELM_CACHE_HOME="$run/helm/cache" HELM_CONFIG_HOME="$run/helm/config" \
    HELM_DATA_HOME="$run/helm/data" "$("$here/build-tools.sh")/helm" "$@"
}

# The release on this cluster: `helm upgrade --install` (a first install, or an upgrade that
# rolls out what changed). The settings this cluster needs:
#   agent.zfsFuse, agent.zfsFuseMountRoots: the agents reach the machine's zfs-fuse daemon
#     through its socket, and zfs.sh's pools mount under /run/zetaback/zfs (README, "The local
#     multi-node cluster");
#   TLS: the chart's default, tls.mode=csr (mutual TLS; the controller is the CA and each agent
#     gets its node's certificate through the CertificateSigningRequest API).
install_chart() {
  helm upgrade --install zetaback "$root/charts/zetaback" --namespace zetaback-system --create-namespace \
    --set agent.zfsFuse=true --set 'agent.zfsFuseMountRoots={/run/zetaback/zfs}' "$@"
}

# ---- the host side: bridge, namespaces, veths, routes ---------------------------------------

network_up() {
  local i j
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge
    ip addr add "$host_ip/24" dev "$bridge"
  fi
  ip link set "$bridge" up
  for i in $(seq 1 "$count"); do
    local ns; ns=$(node_name "$i")
    [ -e "/run/netns/$ns" ] || ip netns add "$ns"
    if ! ip link show "zb-n$i-h" >/dev/null 2>&1; then
      ip link add "zb-n$i-h" type veth peer name eth0 netns "$ns"
      ip link set "zb-n$i-h" master "$bridge" up
      ip -n "$ns" addr add "$(node_ip "$i")/24" dev eth0
      ip -n "$ns" link set eth0 up
      ip -n "$ns" link set lo up
    fi
    # Forwarding and bridged traffic through iptables, inside the node only (per-netns sysctls).
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
    ip route replace "$(pod_cidr "$i")" via "$(node_ip "$i")" dev "$bridge"
    for j in $(seq 1 "$count"); do
      [ "$i" = "$j" ] || ip -n "$ns" route replace "$(pod_cidr "$j")" via "$(node_ip "$j")" dev eth0
    done
    # Services from the node itself (host-network clients): a local packet needs a route before
    # kube-proxy's DNAT rewrites it (without one: "Network unreachable"); an address no Service
    # has is answered by nobody on the node link.
    ip -n "$ns" route replace "$service_cidr" dev eth0 src "$(node_ip "$i")"
  done
}

network_down() {
  local ns
  for ns in $(ip netns list | awk '$1 ~ /^zb-node[0-9]+$/ {print $1}'); do ip netns del "$ns"; done
  for dev in $(ip -o link show | awk -F': ' '{sub(/@.*/, "", $2); print $2}' | grep -E '^zb-n[0-9]+-h$' || true); do
    ip link del "$dev" 2>/dev/null || true
  done
  ip link del "$bridge" 2>/dev/null || true
}

# ---- credentials -----------------------------------------------------------------------------

# client_cert NAME CN O: $run/pki/NAME.{crt,key} signed by the control plane's CA.
client_cert() {
  local name=$1 cn=$2 org=$3 pki="$run/pki"
  [ -s "$pki/$name.crt" ] && return 0
  openssl req -newkey rsa:2048 -nodes -subj "/O=$org/CN=$cn" -keyout "$pki/$name.key" \
    -out "$pki/$name.csr" >/dev/null 2>&1
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/admin.ext" -out "$pki/$name.crt" >/dev/null 2>&1
}

# node_kubeconfig FILE NAME: a kubeconfig for the client certificate NAME.
node_kubeconfig() {
  cat >"$1" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: zb-cluster
  cluster: {server: "https://$host_ip:$api_port", certificate-authority: "$run/apiserver-certs/apiserver.crt"}
users:
- name: $2
  user: {client-certificate: "$run/pki/$2.crt", client-key: "$run/pki/$2.key"}
contexts:
- name: zb-cluster
  context: {cluster: zb-cluster, user: $2}
current-context: zb-cluster
YAML
}

# ---- a node's configuration -------------------------------------------------------------------

node_config() {
  local i=$1 n name ip
  n=$(node_run "$i"); name=$(node_name "$i"); ip=$(node_ip "$i")
  mkdir -p "$n"/{containerd,kubelet,cni/net.d,cni-ipam,cni-cache,store,log-pods,log-containers,sysctl,volume-plugins}
  client_cert "$name" "system:node:$name" system:nodes
  client_cert kube-proxy system:kube-proxy system:node-proxier
  node_kubeconfig "$n/kubelet.kubeconfig" "$name"
  node_kubeconfig "$n/kube-proxy.kubeconfig" kube-proxy
  cat >"$n/containerd.toml" <<TOML
version = 3
root = "$n/containerd/root"
state = "$n/containerd/state"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$n/containerd/containerd.sock"
[ttrpc]
  address = "$n/containerd/containerd.sock.ttrpc"
[plugins.'io.containerd.internal.v1.opt']
  path = "$n/containerd/opt"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "localhost/zetaback/pause:1"
[plugins.'io.containerd.cri.v1.runtime']
  # Root here lacks CAP_SYS_RESOURCE: runc cannot lower a pod's oom_score_adj below ours.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "/usr/sbin/runc"
      SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$cni_bin"]
    conf_dir = "$n/cni/net.d"
[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
TOML
  cat >"$n/cni/net.d/10-zb-pods.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "zb-pods", "plugins": [
  {"type": "bridge", "bridge": "zb-cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$n/cni-ipam",
            "ranges": [[{"subnet": "$(pod_cidr "$i")"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
JSON
  cat >"$n/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$run/pki/ca.crt"}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$n/containerd/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /$name
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
clusterDNS: [$cluster_dns]
resolvConf: ""
podCIDR: $(pod_cidr "$i")
maxPods: 60
volumePluginDir: $n/volume-plugins
# The shared disk is over 85% full: defaults would evict every pod and GC the imported images.
evictionHard: {nodefs.available: "1%", imagefs.available: "1%", memory.available: "50Mi"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
rotateCertificates: false
registerNode: true
YAML
  cat >"$n/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$n/kube-proxy.kubeconfig"}
mode: iptables
clusterCIDR: $cluster_cidr
hostnameOverride: $name
bindAddress: $ip
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the host-wide conntrack table size alone (not writable from a node's namespace).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
  # What kubelet insists the kernel says (it would write these host-wide sysctls otherwise).
  printf '1\n' >"$n/sysctl/vm.overcommit_memory"
  printf '0\n' >"$n/sysctl/vm.panic_on_oom"
  printf '10\n' >"$n/sysctl/kernel.panic"
  printf '1\n' >"$n/sysctl/kernel.panic_on_oops"
  printf '1000000\n' >"$n/sysctl/kernel.keys.root_maxkeys"
  printf '25000000\n' >"$n/sysctl/kernel.keys.root_maxbytes"
}

# ---- inside a node (run as `cluster.sh node-run I` in the node's netns + a new mount ns) --------

node_run_inside() {
  local i=$1 n name bin h f
  n=$(node_run "$i"); name=$(node_name "$i"); bin=$(tools)
  # Everything this node runs (and its pods, under kubelet's cgroupRoot) in /zb-node<i>.
  for h in "${hierarchies[@]}"; do
    [ -d "/sys/fs/cgroup/$h" ] || continue
    mkdir -p "/sys/fs/cgroup/$h/$name/system"
    if [ "$h" = cpuset ]; then
      for f in cpus mems; do
        cat "/sys/fs/cgroup/cpuset/cpuset.$f" >"/sys/fs/cgroup/cpuset/$name/cpuset.$f"
        cat "/sys/fs/cgroup/cpuset/cpuset.$f" >"/sys/fs/cgroup/cpuset/$name/system/cpuset.$f"
      done
    fi
    echo $$ >"/sys/fs/cgroup/$h/$name/system/cgroup.procs"
  done
  # This mount namespace only: the node's own store, logs, CNI cache, containerd sockets, sysctls.
  mount --bind "$n/store" /var/lib/zetaback
  mount --bind "$n/log-pods" /var/log/pods
  mount --bind "$n/log-containers" /var/log/containers
  mount --bind "$n/cni-cache" /var/lib/cni
  mount -t tmpfs -o mode=0711 zb-containerd /run/containerd
  for f in "$n"/sysctl/*; do
    mount --bind "$f" "/proc/sys/$(basename "$f" | tr . /)"
  done
  # Only this cluster's pools: the machine's other zfs-fuse file systems (other work's pools,
  # copied into this namespace when it was made) are detached here, so the node never keeps
  # another pool's file system alive after its owner unmounted it to destroy the pool.
  # (grep finds nothing when no other pool is mounted: not a failure.)
  awk '$3 == "fuse.zfs" {print $2}' /proc/self/mounts | { grep -Ev '^/run/zetaback/zfs/zbnode[0-9]+(/|$)' || true; } |
    sort -r | while read -r f; do umount -l "$f" 2>/dev/null || true; done
  export PATH="$bin:$PATH"
  "$bin/containerd" --config "$n/containerd.toml" >"$n/containerd.log" 2>&1 &
  for _ in $(seq 1 100); do [ -S "$n/containerd/containerd.sock" ] && break; sleep 0.2; done
  [ -S "$n/containerd/containerd.sock" ] || { tail -20 "$n/containerd.log"; exit 1; }
  import_images "$i"
  "$bin/kubelet" --config "$n/kubelet.yaml" --kubeconfig "$n/kubelet.kubeconfig" --root-dir "$n/kubelet" \
    --hostname-override "$name" --node-ip "$(node_ip "$i")" >"$n/kubelet.log" 2>&1 &
  "$bin/kube-proxy" --config "$n/kube-proxy.yaml" >"$n/kube-proxy.log" 2>&1 &
  echo ready >"$n/ready"
  wait
}

# import_images I: every image of $run/images into node I's containerd (content already there
# is not copied again).
import_images() {
  local n f bin
  n=$(node_run "$1"); bin=$(tools)
  for f in "$run"/images/*.tar; do
    # (ctr repeats containerd's cgroup v1 deprecation warning on every call: shown on failure only.)
    "$bin/ctr" -a "$n/containerd/containerd.sock" -n k8s.io images import "$f" >"$n/import.log" 2>&1 ||
      { cat "$n/import.log" >&2; die "importing $f into node $1 failed"; }
  done
}

node_alive() { local p; p=$(cat "$(node_run "$1")/pid" 2>/dev/null) && kill -0 "$p" 2>/dev/null; }

node_up() {
  local i=$1 n
  n=$(node_run "$i")
  node_alive "$i" && return 0
  node_config "$i"
  rm -f "$n/ready"
  nohup nsenter --net="/run/netns/$(node_name "$i")" -- unshare --mount --propagation private -- \
    bash "$self" node-run "$i" >"$n/node.log" 2>&1 8<&- 9>&- &
  echo $! >"$n/pid"
}

# ---- images -----------------------------------------------------------------------------------

# The pause (sandbox) image: Debian's static catatonit in pause mode, on an empty base.
pause_image() {
  local out=$1 dir
  [ -s "$out" ] && return 0
  command -v catatonit >/dev/null || die "catatonit is missing (e2e/scripts/install-deps.sh installs it)"
  dir=$(mktemp -d "$run/pause.XXXXXX")
  umoci init --layout "$dir/oci"
  umoci new --image "$dir/oci:1"
  mkdir -p "$dir/layer"
  cp "$(command -v catatonit)" "$dir/layer/pause"
  tar -C "$dir/layer" --owner=0 --group=0 --numeric-owner -cf "$dir/layer.tar" .
  umoci raw add-layer --image "$dir/oci:1" "$dir/layer.tar"
  umoci config --image "$dir/oci:1" --os linux --architecture amd64 --config.user 65535:65535 \
    --config.entrypoint /pause --config.entrypoint -P --clear=config.cmd --tag 1
  jq '.manifests |= map(select(.annotations["org.opencontainers.image.ref.name"] == "1")
      | .annotations["io.containerd.image.name"] = "localhost/zetaback/pause:1")' \
    "$dir/oci/index.json" >"$dir/index.json" && mv "$dir/index.json" "$dir/oci/index.json"
  umoci gc --layout "$dir/oci"
  tar -C "$dir/oci" -cf "$out.tmp" . && mv "$out.tmp" "$out"
  rm -rf "$dir"
}

# The CoreDNS image: the static binary on an empty base.
coredns_image() {
  local out=$1 dir
  [ -s "$out" ] && return 0
  dir=$(mktemp -d "$run/coredns.XXXXXX")
  umoci init --layout "$dir/oci"
  umoci new --image "$dir/oci:1"
  mkdir -p "$dir/layer"
  cp "$(tools)/coredns" "$dir/layer/coredns"
  tar -C "$dir/layer" --owner=0 --group=0 --numeric-owner -cf "$dir/layer.tar" .
  umoci raw add-layer --image "$dir/oci:1" "$dir/layer.tar"
  umoci config --image "$dir/oci:1" --os linux --architecture amd64 --config.entrypoint /coredns \
    --clear=config.cmd --tag 1
  jq '.manifests |= map(select(.annotations["org.opencontainers.image.ref.name"] == "1")
      | .annotations["io.containerd.image.name"] = "localhost/zetaback/coredns:1")' \
    "$dir/oci/index.json" >"$dir/index.json" && mv "$dir/index.json" "$dir/oci/index.json"
  umoci gc --layout "$dir/oci"
  tar -C "$dir/oci" -cf "$out.tmp" . && mv "$out.tmp" "$out"
  rm -rf "$dir"
}

# The images every node imports: pause, CoreDNS, and zetaback's three (image.sh build's newest).
images() {
  local cur t
  mkdir -p "$run/images"
  pause_image "$run/images/pause.tar"
  coredns_image "$run/images/coredns.tar"
  # ZETABACK_IMAGE_DIR: the build `image.sh build` printed (the tier and the demo pass theirs:
  # `images/current` follows whichever build ran last on the machine, e.g. the e2e tier's).
  cur=${ZETABACK_IMAGE_DIR:-}
  [ -n "$cur" ] || cur=$(readlink -f "${ZETABACK_CACHE:-$HOME/.cache/zetaback}/images/current" 2>/dev/null) || cur=
  if [ -n "$cur" ] && [ -f "$cur/done" ]; then
    for t in controller agent proxy; do ln -sfn "$cur/$t.tar" "$run/images/zetaback-$t.tar"; done
  else
    log "no zetaback images (run e2e/scripts/image.sh build): nodes get pause and CoreDNS only"
  fi
}

# ---- up / down / status -----------------------------------------------------------------------

dns_up() {
  kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: zb-coredns}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: zb-coredns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: zb-coredns}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        cache 30
        loop
        reload
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      containers:
      - name: coredns
        image: localhost/zetaback/coredns:1
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        livenessProbe: {httpGet: {path: /health, port: 8080}}
        readinessProbe: {httpGet: {path: /ready, port: 8181}}
        resources: {requests: {cpu: 20m, memory: 32Mi}, limits: {memory: 128Mi}}
        securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $cluster_dns
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
YAML
}

up() {
  local start i
  start=$(date +%s)
  for c in ip nsenter unshare iptables conntrack umoci jq openssl catatonit; do
    command -v "$c" >/dev/null || die "$c is missing (e2e/scripts/install-deps.sh installs it)"
  done
  for b in bridge host-local loopback portmap; do
    [ -x "$cni_bin/$b" ] || die "CNI plugin $cni_bin/$b is missing (install-deps.sh installs containernetworking-plugins)"
  done
  mkdir -p "$run"
  tools >/dev/null
  # Our etcd or none on its port: env.sh's etcd fails on a taken port, and the apiserver would
  # then store this cluster in whatever etcd answers there.
  if ss -ltnH "sport = :$etcd_port" | grep -q . && ! kill -0 "$(cat "$run/etcd.pid" 2>/dev/null || echo x)" 2>/dev/null; then
    die "port $etcd_port (this cluster's etcd) is taken by another process: $(ss -ltnpH "sport = :$etcd_port")"
  fi
  network_up
  cp_up >/dev/null
  kubectl get clusterrolebinding system:node-proxier >/dev/null
  images
  for d in "${node_dirs[@]}"; do
    if [ ! -d "$d" ]; then mkdir -p "$d"; echo "$d" >>"$run/created-dirs"; fi
  done
  # Each node's pool (zbnode<i>, zfs-fuse, file-backed: zfs.sh), made before the node starts:
  # the node's mount namespace is a private copy of the host's taken then, so only mounts that
  # existed at that moment are seen by its pods. zfs-fuse's client creates a received dataset's
  # mountpoint directory itself, inside the pool's mounted root, before the daemon mounts it.
  # Whether this up starts zfs-fuse: then down stops it again (when no other pool made by
  # zfs.sh is left); a daemon that was already running serves others and is left alone.
  if ! zpool list -H >/dev/null 2>&1; then touch "$run/zfs-fuse-started"; fi
  "$here/zfs.sh" start 8<&- >/dev/null
  # 768M (sparse files): room for bench/transfer/pods.sh's two datasets of 256 MiB beside the
  # tests'; ZETABACK_NODE_POOL_SIZE for larger ones (pods.sh 1024: 3G).
  for i in $(seq 1 "$count"); do "$here/zfs.sh" pool "zbnode$i" "${ZETABACK_NODE_POOL_SIZE:-768M}" 8<&- >/dev/null; done
  for i in $(seq 1 "$count"); do node_up "$i"; done
  for i in $(seq 1 "$count"); do
    for _ in $(seq 1 600); do
      [ -f "$(node_run "$i")/ready" ] && break
      node_alive "$i" || { tail -20 "$(node_run "$i")/node.log" >&2; die "node $i exited"; }
      sleep 0.2
    done
  done
  for _ in $(seq 1 180); do
    [ "$(kubectl get nodes -o name 2>/dev/null | wc -l)" -ge "$count" ] && break
    sleep 1
  done
  kubectl wait --for=condition=Ready --timeout=180s node --all >/dev/null ||
    { kubectl get nodes -o wide >&2; die "nodes not Ready"; }
  dns_up
  kubectl -n kube-system rollout status deploy/coredns --timeout=180s >/dev/null ||
    { kubectl -n kube-system get pods -o wide >&2; die "CoreDNS not ready"; }
  log "up in $(( $(date +%s) - start ))s: $count nodes Ready"
  echo "$kubeconfig"
}

# kill_cgroup NAME: ends every process in /NAME's tree (all hierarchies), then removes the tree.
kill_cgroup() {
  local name=$1 h pids
  for _ in $(seq 1 50); do
    pids=$(cat $(find "/sys/fs/cgroup/pids/$name" -name cgroup.procs 2>/dev/null) /dev/null 2>/dev/null | sort -u)
    [ -n "$pids" ] || break
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    sleep 0.2
  done
  [ -z "$pids" ] || log "processes left in /$name: $pids"
  for h in "${hierarchies[@]}" unified; do
    [ -d "/sys/fs/cgroup/$h/$name" ] || continue
    find "/sys/fs/cgroup/$h/$name" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [ ! -d "/sys/fs/cgroup/$h/$name" ] || log "cgroup /sys/fs/cgroup/$h/$name left"
  done
}

# quiesce: before the nodes go, the release goes (its agents stop their sends and receives
# cleanly) and the datasets inside the nodes' pools are destroyed (the agents' holds on their
# last backup's snapshot, zetaback-base, released first), so the pools are empty when they are
# destroyed. Destroying a pool with mounted datasets right after its users were killed once
# ended the machine's zfs-fuse daemon ("cannot destroy 'zbnode1': pool is busy", then no
# daemon): this is the order the cluster tier always cleaned up in.
quiesce() {
  local i ds s
  if [ -f "$kubeconfig" ] && helm status zetaback -n zetaback-system >/dev/null 2>&1; then
    helm uninstall zetaback -n zetaback-system --wait --timeout 90s >/dev/null 2>&1 ||
      log "helm uninstall did not finish: the nodes are stopped anyway"
  fi
  for i in $(seq 1 9); do
    zpool list -H -o name "zbnode$i" >/dev/null 2>&1 || continue
    zfs list -H -t snapshot -o name -r "zbnode$i" 2>/dev/null | while read -r s; do
      zfs release zetaback-base "$s" >/dev/null 2>&1 || true
    done
    zfs list -H -d 1 -o name "zbnode$i" 2>/dev/null | tail -n +2 | while read -r ds; do
      for _ in $(seq 1 10); do
        zfs destroy -r "$ds" 2>/dev/null && break
        sleep 1
      done
    done
  done
}

down() {
  local i d n started_zfs=no
  [ ! -f "$run/zfs-fuse-started" ] || started_zfs=yes
  quiesce
  for i in $(seq 1 9); do
    n=$(node_name "$i")
    if [ -d "/sys/fs/cgroup/pids/$n" ] || [ -d "/sys/fs/cgroup/memory/$n" ]; then
      # TERM first so kubelet and containerd stop what they can, then everything left.
      pids=$(cat $(find "/sys/fs/cgroup/pids/$n" -name cgroup.procs 2>/dev/null) /dev/null 2>/dev/null | sort -u)
      # shellcheck disable=SC2086
      [ -z "$pids" ] || kill $pids 2>/dev/null || true
      sleep 1
      kill_cgroup "$n"
    fi
  done
  network_down
  for i in $(seq 1 9); do
    if zpool list -H -o name "zbnode$i" >/dev/null 2>&1; then "$here/zfs.sh" destroy "zbnode$i" 8<&- || true; fi
  done
  if [ -f "$run/kubeconfig" ]; then cp_env down; fi
  if [ "$started_zfs" = yes ] && zpool list -H >/dev/null 2>&1 && [ -z "$("$here/zfs.sh" owned 8<&-)" ]; then
    "$here/zfs.sh" stop 8<&- || true
  fi
  if [ -f "$run/created-dirs" ]; then
    while read -r d; do rmdir "$d" 2>/dev/null || log "left $d (not empty)"; done <"$run/created-dirs"
  fi
  rm -rf "$run"
}

status() {
  local i
  for i in $(seq 1 "$count"); do
    if node_alive "$i"; then echo "$(node_name "$i"): running (pid $(cat "$(node_run "$i")/pid"))"
    else echo "$(node_name "$i"): stopped"; fi
  done
  [ -f "$kubeconfig" ] && cp_env status && kubectl get nodes -o wide 2>/dev/null || true
}

case "${1:-}" in
  up|down)
    # One up or down at a time; fd 8 (the lock) is closed for everything they start.
    exec 8<"$self"
    flock 8
    "$1" ;;
  status) status ;;
  images)
    images
    for i in $(seq 1 "$count"); do node_alive "$i" || die "node $i is not running (cluster.sh up)"; import_images "$i"; done ;;
  env) echo "KUBECONFIG=$kubeconfig" ;;
  install) shift; install_chart "$@" ;;
  helm) shift; helm "$@" ;;
  node-run) node_run_inside "$2" ;;
  nsenter)
    i=$2; shift 2
    exec nsenter --net="/run/netns/$(node_name "$i")" --mount="/proc/$(cat "$(node_run "$i")/pid")/ns/mnt" -- "$@" ;;
  *) echo "usage: cluster.sh up|down|status|images|env|install [HELM ARGS…]|helm ARGS…|nsenter N CMD…" >&2; exit 2 ;;
esac
