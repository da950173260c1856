#!/usr/bin/env bash
# Builds the upstream binaries the e2e environment runs (kube-apiserver, kube-controller-manager,
# kubectl, etcd, helm) from their Go modules and caches them under ~/.cache/zetaback/bin/<key>,
# where <key> hashes the pinning go.mod/go.sum files: a second run with the same pins is instant.
# Nothing is downloaded except Go modules through the Go module proxy.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${ZETABACK_CACHE:-$HOME/.cache/zetaback}
export GOFLAGS=-mod=mod
export GOCACHE=${GOCACHE:-$cache/go-build}
export GOMODCACHE=${GOMODCACHE:-$cache/go-mod}
export CGO_ENABLED=0

key=$(cat "$here"/tools/k8s/go.mod "$here"/tools/k8s/go.sum "$here"/tools/k8s/etcd/main.go \
          "$here"/tools/helm/go.mod "$here"/tools/helm/go.sum "$0" | sha256sum | cut -c1-16)
out="$cache/bin/$key"
want=(kube-apiserver kube-controller-manager kubectl etcd helm)

have_all() { for b in "${want[@]}"; do [ -x "$out/$b" ] || return 1; done; }
if have_all; then echo "$out"; exit 0; fi

command -v go >/dev/null || { echo "build-tools: the Go toolchain is required (go not on PATH)" >&2; exit 1; }
mkdir -p "$out.tmp"
start=$(date +%s)
(
  # One `go build` for the four: it compiles their shared packages once and links them side by
  # side (one invocation per binary left cores idle through each link).
  cd "$here/tools/k8s"
  echo "build-tools: building kube-apiserver kube-controller-manager kubectl etcd" >&2
  go build -trimpath -ldflags "-s -w" -o "$out.tmp/" k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl ./etcd
)
( cd "$here/tools/helm"
  [ -x "$out.tmp/helm" ] || { echo "build-tools: building helm" >&2; go build -trimpath -ldflags "-s -w" -o "$out.tmp/helm" helm.sh/helm/v3/cmd/helm; }
)
rm -rf "$out"; mv "$out.tmp" "$out"
echo "build-tools: built in $(( $(date +%s) - start ))s" >&2
echo "$out"
