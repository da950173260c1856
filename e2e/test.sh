#!/usr/bin/env bash
# Runs every test: formatting and lints, unit and property tests, and the end-to-end tests
# against the real local control plane (etcd + kube-apiserver + kube-controller-manager built
# from their Go modules), real ZFS (zfs-fuse), real nginx. Installs what is missing first.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$PATH:/usr/local/go/bin:$HOME/.cargo/bin"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/zetaback/target}
# One-shot builds gain nothing from incremental state, which costs GiBs of disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
start=$(date +%s)
if [ "${CI:-}" = true ]; then
  # Leave nothing running behind a CI run.
  trap 'bash e2e/scripts/env.sh down >/dev/null 2>&1 || true; bash e2e/scripts/zfs.sh stop >/dev/null 2>&1 || true' EXIT
fi

bash e2e/scripts/install-deps.sh
if [ "${CI:-}" = true ]; then
  # A zfs-fuse daemon left running by earlier work (benchmarks, a demo) can be wedged after
  # long use (a `zfs create` that never returns): CI starts from a fresh one.
  bash e2e/scripts/zfs.sh stop >/dev/null 2>&1 || true
fi
echo "== upstream binaries (built once, cached under ~/.cache/zetaback/bin)"
bash e2e/scripts/build-tools.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== local control plane"
bash e2e/scripts/env.sh up
echo "== cargo build (the end-to-end tests start the built zetaback-agent binary)"
cargo build --workspace --bins --locked
echo "== cargo test (unit, property, real-parts end to end)"
# Two test threads: the machine has two cores and the end-to-end tests share one apiserver.
cargo test --workspace --locked -- --test-threads 2
echo "== all tests passed in $(( $(date +%s) - start ))s"
