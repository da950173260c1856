#!/usr/bin/env bash
# Builds what the nodes of the local multi-node cluster (e2e/scripts/cluster.sh) run, from their
# Go modules, and caches them under ~/.cache/zetaback/bin/node-<key> (key: the pinning
# go.mod/go.sum files and this script; separate from build-tools.sh's key, so the control plane's
# binaries are not rebuilt when these pins change):
#   kubelet, kube-proxy, kube-scheduler,  e2e/tools/node (k8s.io/kubernetes, the same version as
#   kube-apiserver, kube-controller-manager   e2e/tools/k8s, checked below), linked with that
#                                         version (-X …/component-base/version.gitVersion): a
#                                         module build otherwise reports v0.0.0-master, which
#                                         `helm install` of a chart with a kubeVersion refuses
#                                         (the cluster's control plane runs these two; the
#                                         shared one keeps build-tools.sh's, whose key and
#                                         binaries stay as they are)
#   containerd, containerd-shim-runc-v2, ctr   e2e/tools/containerd (containerd 2.x, CGO_ENABLED=0)
#   coredns                               e2e/tools/coredns (only the plugins the cluster DNS uses)
# Prints the directory. Nothing is downloaded except Go modules through the Go module proxy.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${ZETABACK_CACHE:-$HOME/.cache/zetaback}
export GOFLAGS=-mod=mod
export GOCACHE=${GOCACHE:-$cache/go-build}
export GOMODCACHE=${GOMODCACHE:-$cache/go-mod}
export CGO_ENABLED=0
export PATH="$PATH:/usr/local/go/bin"

die() { echo "build-node-tools: $*" >&2; exit 1; }

# The node's Kubernetes must be the control plane's.
k8s_version() { sed -n 's|^[[:space:]]*k8s.io/kubernetes \(v[^ ]*\).*|\1|p' "$1" | head -n1; }
[ "$(k8s_version "$here/tools/node/go.mod")" = "$(k8s_version "$here/tools/k8s/go.mod")" ] ||
  die "e2e/tools/node pins k8s.io/kubernetes $(k8s_version "$here/tools/node/go.mod"), the control plane $(k8s_version "$here/tools/k8s/go.mod")"

key=$(cat "$here"/tools/node/go.mod "$here"/tools/node/go.sum "$here"/tools/containerd/go.mod \
          "$here"/tools/containerd/go.sum "$here"/tools/coredns/go.mod "$here"/tools/coredns/go.sum \
          "$here"/tools/coredns/main.go "$0" 2>/dev/null | sha256sum | cut -c1-16)
out="$cache/bin/node-$key"
want=(kubelet kube-proxy kube-scheduler kube-apiserver kube-controller-manager containerd containerd-shim-runc-v2 ctr coredns)

have_all() { for b in "${want[@]}"; do [ -x "$out/$b" ] || return 1; done; }
if have_all; then echo "$out"; exit 0; fi

command -v go >/dev/null || die "the Go toolchain is required (go not on PATH)"
mkdir -p "$out.tmp"
start=$(date +%s)
version=$(k8s_version "$here/tools/node/go.mod")
major=${version#v}; major=${major%%.*}
minor=${version#v*.}; minor=${minor%%.*}
vpkg=k8s.io/component-base/version
k8s_ldflags="-X $vpkg.gitVersion=$version -X $vpkg.gitMajor=$major -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"
build() { # dir, output name, package, [tags], [extra ldflags]
  [ -x "$out.tmp/$2" ] && return 0
  echo "build-node-tools: building $2" >&2
  (cd "$here/tools/$1" && go build -trimpath -tags "${4:-}" -ldflags "-s -w ${5:-}" -o "$out.tmp/$2" "$3")
}
for cmd in kubelet kube-proxy kube-scheduler kube-apiserver kube-controller-manager; do
  build node "$cmd" "k8s.io/kubernetes/cmd/$cmd" "" "$k8s_ldflags"
done
# No C: the btrfs and devmapper snapshotters need cgo; the nodes use overlayfs/native.
ctags="no_btrfs no_devmapper no_zfs no_aufs"
build containerd containerd github.com/containerd/containerd/v2/cmd/containerd "$ctags"
build containerd containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 "$ctags"
build containerd ctr github.com/containerd/containerd/v2/cmd/ctr "$ctags"
build coredns coredns .
rm -rf "$out"; mv "$out.tmp" "$out"
echo "build-node-tools: built in $(( $(date +%s) - start ))s" >&2
echo "$out"
