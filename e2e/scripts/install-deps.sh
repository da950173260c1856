#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh Debian machine (as root): Debian's
# zfs-fuse, nginx, Varnish, wrk, tmux, openssl, iproute2, and what builds and checks the
# container images without a daemon (debootstrap, umoci, runc, jq), and the OpenZFS test VM (QEMU,
# qemu-img, ssh, mkfs.ext4: e2e/scripts/openzfs-vm.sh), what the local cluster's nodes use
# (iptables and conntrack for kube-proxy, the CNI plugins, catatonit as the pause image:
# e2e/scripts/cluster.sh), headless Chromium (renders the HTML compliance report in
# e2e/tests/report_html.rs); checks for the Rust and Go
# toolchains. Installs only what is missing, so a second run does nothing.
set -euo pipefail
pkgs=(zfs-fuse nginx-light varnish wrk tmux openssl iproute2 procps time curl debootstrap umoci runc jq
  qemu-system-x86 qemu-utils openssh-client e2fsprogs
  iptables conntrack containernetworking-plugins catatonit
  chromium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then echo "install-deps: run as root to install ${missing[*]}" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The packages start system services we do not use; the tests start their own instances.
  for svc in nginx varnish varnishncsa zfs-fuse; do
    (systemctl stop "$svc" || service "$svc" stop) >/dev/null 2>&1 || true
  done
fi
command -v cargo >/dev/null || { echo "install-deps: the Rust toolchain (cargo) is required: https://rustup.rs" >&2; exit 1; }
command -v go >/dev/null || [ -x /usr/local/go/bin/go ] || { echo "install-deps: the Go toolchain is required to build the Kubernetes binaries" >&2; exit 1; }
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy rustfmt
