#!/usr/bin/env bash
# Controller scale benchmark (issue 4): the real local kube-apiserver (e2e/scripts/env.sh up),
# the controller as its own process (target/release/zetaback-controller), and an in-process
# agent simulator standing in for the agents (N ZfsHosts × 20 datasets with realistic status,
# the backup host's catalogue over HTTP, BackupJobs completed at once). For N = 100 and 1000
# it prints cold start, reconcile p50/p99, API requests per reconcile, status writes, peak
# RSS, object sizes and jobs created, with the issue's targets. Not a test: numbers only.
#
#   bench/controller-scale/run.sh [--sizes 100,1000] [--policies 10] [--window 40]
# Env: CARGO_TARGET_DIR. Loopback only; everything it creates is deleted afterwards.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
log() { echo "bench: $*" >&2; }

KUBECONFIG=$("$root/e2e/scripts/env.sh" up)
export KUBECONFIG
log "building zetaback-controller and the benchmark (release)"
(cd "$root" && cargo build --release -q --bin zetaback-controller \
  && cargo build --release -q -p zetaback-bench-controller-scale)
exec "$target_dir/release/zetaback-bench-controller-scale" \
  --controller "$target_dir/release/zetaback-controller" "$@"
