#!/usr/bin/env bash
# Runs the tests. Without an argument, every test (what CI runs): formatting and lints, unit
# and property tests, and the end-to-end tests against the real local control plane (etcd +
# kube-apiserver + kube-controller-manager built from their Go modules), real ZFS (zfs-fuse),
# real nginx, and the cluster tier (zetaback installed by helm as pods on a local two-node cluster).
# Installs what is missing first.
#
#   e2e/test.sh unit   unit and property tests: needs nothing but cargo (no zfs-fuse, no apiserver)
#   e2e/test.sh real   tests on real parts without Kubernetes: zfs-fuse pools, nginx, openssl
#   e2e/test.sh e2e    end-to-end tests against the local control plane (and zfs-fuse)
#   e2e/test.sh hostile  attacks on the trust model (issue 13: identities, forged writes, ...)
#                      against the local control plane and zfs-fuse
#   e2e/test.sh openzfs  tests on real in-kernel OpenZFS 2.3.2 in a QEMU VM (built once and cached
#                      under ~/.cache/zetaback/vm by e2e/scripts/openzfs-vm.sh), with zfs-fuse
#   e2e/test.sh cluster  zetaback installed by `helm install` as pods on a local two-node cluster
#                      (e2e/scripts/cluster.sh: containerd, kubelet, kube-proxy, CNI, CoreDNS, each
#                      node in its own network namespace; node binaries built once and cached by
#                      e2e/scripts/build-node-tools.sh), images from e2e/scripts/image.sh build;
#                      the cluster is taken down afterwards unless ZETABACK_KEEP_CLUSTER=1
#
# Which integration test belongs to which tier: e2e/test-tiers.txt (checked by tests/test_tiers.rs).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tier=${1:-}
case "$tier" in
  "" | unit | real | e2e | hostile | openzfs | cluster) ;;
  *) echo "usage: e2e/test.sh [unit|real|e2e|hostile|openzfs|cluster]   (no argument: every test, as CI runs them)" >&2; exit 2 ;;
esac
export PATH="$PATH:/usr/local/go/bin:$HOME/.cargo/bin"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/zetaback/target}
# One-shot builds gain nothing from incremental state, which costs GiBs of disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
start=$(date +%s)
if [ "${CI:-}" = true ]; then
  # Leave nothing running behind a CI run.
  trap 'bash e2e/scripts/env.sh down >/dev/null 2>&1 || true; bash e2e/scripts/seaweedfs.sh down >/dev/null 2>&1 || true; bash e2e/scripts/zfs.sh stop >/dev/null 2>&1 || true' EXIT
fi

# The OpenZFS VM image (e2e/scripts/openzfs-vm.sh build: a cache hit takes a second; a cold
# build is mostly downloads, dpkg and one kernel-module compile) is built in the background,
# niced, from the start: it overlaps the downloads and the single-threaded stretches of the
# Go and Rust builds instead of adding its whole time after them. `vm_image_wait` collects it.
vm_image_start() {
  vm_image_log=$(mktemp /tmp/zetaback-vm-build.XXXXXX)
  nice -n 10 bash e2e/scripts/openzfs-vm.sh build > "$vm_image_log" 2>&1 &
  vm_image_pid=$!
}
vm_image_wait() {
  local rc=0 t
  t=$(date +%s)
  wait "$vm_image_pid" || rc=$?
  grep -E 'phase|built in|cached in' "$vm_image_log" || true
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$vm_image_log" >&2
    echo "== the OpenZFS VM image build failed (exit $rc)" >&2
    exit 1
  fi
  echo "== OpenZFS VM image ready (waited $(( $(date +%s) - t ))s for it)"
  rm -f "$vm_image_log"
}

# The cluster's node binaries (e2e/scripts/build-node-tools.sh: kubelet, containerd, CoreDNS, …;
# a cache hit takes a second, a cold build ~435 CPU-s) are built in the background, niced, while
# the tests run (they mostly wait on controllers and agents), instead of after them.
node_tools_start() {
  node_tools_log=$(mktemp /tmp/zetaback-node-tools.XXXXXX)
  nice -n 10 bash e2e/scripts/build-node-tools.sh > "$node_tools_log" 2>&1 &
  node_tools_pid=$!
}
node_tools_wait() {
  [ -n "${node_tools_pid:-}" ] || return 0
  local rc=0 t
  t=$(date +%s)
  wait "$node_tools_pid" || rc=$?
  node_tools_pid=
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$node_tools_log" >&2
    echo "== the node binaries' build failed (exit $rc)" >&2
    exit 1
  fi
  grep -E 'built in' "$node_tools_log" || true
  echo "== node binaries ready (waited $(( $(date +%s) - t ))s for them)"
  rm -f "$node_tools_log"
}

# SeaweedFS's `weed` (e2e/scripts/seaweedfs.sh build: a cache hit takes a second, a cold build
# ~8 minutes of Go compilation) is built in the background, niced, like the VM image: only the
# object-store tests need it, and they run after the tests that do not (see the test phase).
weed_start() {
  weed_log=$(mktemp /tmp/zetaback-weed-build.XXXXXX)
  weed_rc="$weed_log.rc"
  rm -f "$weed_rc"
  # (Its exit code goes to a file: weed_wait runs in the test stream's subshell, which cannot
  # `wait` for a job of this shell.)
  { nice -n 10 bash e2e/scripts/seaweedfs.sh build > "$weed_log" 2>&1; echo $? > "$weed_rc"; } &
}
weed_wait() {
  local rc t
  t=$(date +%s)
  while [ ! -s "$weed_rc" ]; do sleep 2; done
  rc=$(cat "$weed_rc")
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$weed_log" >&2
    echo "== the SeaweedFS build failed (exit $rc)" >&2
    return 1
  fi
  grep -E 'built in' "$weed_log" || true
  echo "== SeaweedFS ready (waited $(( $(date +%s) - t ))s for it)"
  rm -f "$weed_log" "$weed_rc"
}

# `--test NAME` for every integration test of tier $1 (e2e/test-tiers.txt). Every cargo command
# here selects --workspace (test names are unique across the workspace): cargo resolves features
# for the packages a command selects, and a `-p` subset can resolve others than the workspace
# build (`-p zetaback-agent` alone did: mio, axum, rand…), which rebuilt tokio, kube and the
# zetaback crates above them. With --workspace every command shares the binaries' build
# (tests/build_feature_sets.rs keeps `cargo build --bins` and `cargo test` on one feature set).
tier_targets() {
  awk -v t="$1" '$1 == t { print "--test"; print $3 }' e2e/test-tiers.txt
}

# The cluster tier: node binaries (cached), images (cached by the binaries' hashes), the local
# two-node cluster, its tests (`test = false` targets: only run here), then `cluster.sh down`
# unless ZETABACK_KEEP_CLUSTER=1.
cluster_tier() {
  local t0
  t0=$(date +%s)
  echo "== node binaries (built once, cached under ~/.cache/zetaback/bin)"
  node_tools_wait
  bash e2e/scripts/build-node-tools.sh
  # image.sh builds what `cargo build --workspace --bins` builds (after the test phase: nothing),
  # kubectl-zetaback (the tests run it) among them; the tests below build only their own file.
  echo "== images (e2e/scripts/image.sh build: the workspace's binaries, kubectl-zetaback too)"
  local built
  built=$(date +%s)
  ZETABACK_IMAGE_DIR=$(bash e2e/scripts/image.sh build)
  export ZETABACK_IMAGE_DIR
  echo "== images ready in $(( $(date +%s) - built ))s"
  echo "== local cluster"
  bash e2e/scripts/cluster.sh up
  echo "== cluster up in $(( $(date +%s) - t0 ))s"
  echo "== cluster tests"
  mapfile -t targets < <(tier_targets cluster)
  cargo test --workspace --locked "${targets[@]}" -- --test-threads 1 --nocapture
  [ "${ZETABACK_KEEP_CLUSTER:-}" = 1 ] || bash e2e/scripts/cluster.sh down
  echo "== cluster tier (with down) in $(( $(date +%s) - t0 ))s"
}

case "$tier" in
  unit)
    echo "== unit and property tests (every crate's own tests, and the unit tier's test files)"
    mapfile -t targets < <(tier_targets unit)
    cargo test --workspace --locked --lib --bins "${targets[@]}" -- --test-threads 2
    cargo test --workspace --locked --doc
    echo "== unit tier passed in $(( $(date +%s) - start ))s"
    exit 0
    ;;
  real)
    bash e2e/scripts/install-deps.sh
    echo "== zfs-fuse"
    bash e2e/scripts/zfs.sh start
    echo "== SeaweedFS (the S3 server of the object-store tests; built once, cached)"
    bash e2e/scripts/seaweedfs.sh build >/dev/null
    echo "== tests on real parts (zfs-fuse, nginx, openssl, SeaweedFS)"
    mapfile -t targets < <(tier_targets real)
    cargo test --workspace --locked "${targets[@]}" -- --test-threads 2
    echo "== real tier passed in $(( $(date +%s) - start ))s"
    exit 0
    ;;
  openzfs)
    bash e2e/scripts/install-deps.sh
    vm_image_start
    echo "== zfs-fuse"
    bash e2e/scripts/zfs.sh start
    echo "== cargo build (the agent binary runs inside the VM)"
    cargo build --workspace --bins --locked
    echo "== OpenZFS VM (image built once, cached under ~/.cache/zetaback/vm)"
    vm_image_wait
    vm_start=$(date +%s)
    bash e2e/scripts/openzfs-vm.sh up
    echo "== OpenZFS VM up in $(( $(date +%s) - vm_start ))s"
    trap 'bash e2e/scripts/openzfs-vm.sh down >/dev/null 2>&1 || true' EXIT
    echo "== tests on real OpenZFS"
    mapfile -t targets < <(tier_targets openzfs)
    cargo test --workspace --locked "${targets[@]}" -- --test-threads 2
    echo "== openzfs tier passed in $(( $(date +%s) - start ))s"
    exit 0
    ;;
  cluster)
    bash e2e/scripts/install-deps.sh
    bash e2e/scripts/build-tools.sh
    [ "${ZETABACK_KEEP_CLUSTER:-}" = 1 ] || trap 'bash e2e/scripts/cluster.sh down >/dev/null 2>&1 || true' EXIT
    cluster_tier
    echo "== cluster tier passed in $(( $(date +%s) - start ))s"
    exit 0
    ;;
  e2e | hostile)
    bash e2e/scripts/install-deps.sh
    echo "== upstream binaries (built once, cached under ~/.cache/zetaback/bin)"
    bash e2e/scripts/build-tools.sh
    echo "== local control plane"
    bash e2e/scripts/env.sh up
    echo "== cargo build (the end-to-end tests start the built zetaback-agent binary)"
    cargo build --workspace --bins --locked
    echo "== $tier tests"
    mapfile -t targets < <(tier_targets "$tier")
    cargo test --workspace --locked "${targets[@]}" -- --test-threads 2
    echo "== $tier tier passed in $(( $(date +%s) - start ))s"
    exit 0
    ;;
esac

bash e2e/scripts/install-deps.sh
vm_image_start
weed_start
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
# The cluster tier's test files are `test = false`, which --all-targets leaves out.
mapfile -t cluster_targets < <(tier_targets cluster)
cargo clippy --workspace --locked "${cluster_targets[@]}" -- -D warnings
echo "== local control plane"
bash e2e/scripts/env.sh up
echo "== cargo build (the end-to-end tests start the built zetaback-agent binary)"
cargo build --workspace --bins --locked
if [ "${CI:-}" = true ]; then
  trap 'bash e2e/scripts/openzfs-vm.sh down >/dev/null 2>&1 || true; bash e2e/scripts/env.sh down >/dev/null 2>&1 || true; bash e2e/scripts/seaweedfs.sh down >/dev/null 2>&1 || true; bash e2e/scripts/zfs.sh stop >/dev/null 2>&1 || true' EXIT
fi
echo "== cargo test (unit, property, real-parts end to end, real OpenZFS)"
# Every test of every tier, in two streams of cargo test runs at once: the test files in
# $beside mostly wait (controller periods, verification rounds, Lease expiry), so they run beside
# the others instead of after them; the run's wall time drops by about theirs. Two test threads
# each: the machine has two cores and the end-to-end tests share one apiserver. --no-fail-fast:
# every failing test file shows in one run, not only the first.
# What needs a slow cold build runs last in its stream: the real-OpenZFS files ($needs_vm) after
# the VM image is ready, the object-store files ($needs_weed) after SeaweedFS is built. On a warm
# machine both are ready at once; on a cold one the tests before them overlap the two builds
# (the image's kernel-module compile, weed's Go compile) instead of waiting for them.
beside=(verify monitoring controller_kill bucket_faults bucket_flow drills)
needs_vm=(openzfs_vm openzfs_fleet)
needs_weed=(objstore_seaweedfs cached_seaweedfs verify_seaweedfs bucket_restore bucket_faults bucket_flow)
main_targets=() beside_targets=() vm_targets=() weed_targets=()
while read -r t package test; do
  # (The cluster tier's files are `test = false`: cluster_tier below runs them on the cluster.)
  case "$t" in ''|'#'*|cluster) continue ;; esac
  if [[ " ${needs_vm[*]} " == *" $test "* ]]; then
    vm_targets+=(--test "$test")
  elif [[ " ${needs_weed[*]} " == *" $test "* ]]; then
    weed_targets+=(--test "$test")
  elif [[ " ${beside[*]} " == *" $test "* ]]; then
    beside_targets+=(--test "$test")
  else
    main_targets+=(--test "$test")
  fi
done < e2e/test-tiers.txt
for name in "${beside[@]}" "${needs_vm[@]}" "${needs_weed[@]}"; do
  awk -v n="$name" '$3 == n { found = 1 } END { exit !found }' e2e/test-tiers.txt \
    || { echo "test.sh: $name (named in \$beside, \$needs_vm or \$needs_weed) is not in e2e/test-tiers.txt" >&2; exit 1; }
done
# Build everything first, so that neither stream waits on the other's build.
cargo test --workspace --locked --no-run
node_tools_start
# Stream 2: the waiting files, then the object-store files once weed is built.
beside_stream() {
  local rc=0 t0
  t0=$(date +%s)
  cargo test --workspace --locked --no-fail-fast "${beside_targets[@]}" -- --test-threads 2 || rc=1
  if weed_wait; then
    cargo test --workspace --locked --no-fail-fast "${weed_targets[@]}" -- --test-threads 2 || rc=1
  else
    rc=1
  fi
  echo "== stream 2 (beside) ended in $(( $(date +%s) - t0 ))s"
  return "$rc"
}
beside_log=$(mktemp)
beside_stream >"$beside_log" 2>&1 &
beside_pid=$!
main_t0=$(date +%s)
# Stream 1: everything else, then the real-OpenZFS files once the VM image is built and booted.
main_rc=0
cargo test --workspace --locked --no-fail-fast --lib --bins "${main_targets[@]}" -- --test-threads 2 \
  || main_rc=$?
cargo test --workspace --locked --doc || main_rc=1
echo "== OpenZFS VM (image built once, cached under ~/.cache/zetaback/vm; fails loudly if it cannot boot)"
vm_image_wait
vm_start=$(date +%s)
bash e2e/scripts/openzfs-vm.sh up
echo "== OpenZFS VM up in $(( $(date +%s) - vm_start ))s"
echo "== tests on real OpenZFS (${needs_vm[*]})"
cargo test --workspace --locked --no-fail-fast "${vm_targets[@]}" -- --test-threads 2 || main_rc=1
bash e2e/scripts/openzfs-vm.sh down >/dev/null 2>&1 || true
echo "== stream 1 (main) ended in $(( $(date +%s) - main_t0 ))s"
beside_rc=0
wait "$beside_pid" || beside_rc=$?
echo "== the tests run beside the others (${beside[*]}; then ${needs_weed[*]}):"
cat "$beside_log"
rm -f "$beside_log"
if [ "$main_rc" -ne 0 ] || [ "$beside_rc" -ne 0 ]; then
  echo "== tests failed (see above)" >&2
  exit 1
fi
# The hostile tier's tests ran above with the rest (every test file); its own command is
# `e2e/test.sh hostile`. Say which ran, so the log shows the tier's output.
echo "== hostile tier (in the run above): $(awk '$1 == "hostile" { printf "%s ", $3 }' e2e/test-tiers.txt)"
if [ "${CI:-}" = true ]; then
  trap 'bash e2e/scripts/cluster.sh down >/dev/null 2>&1 || true; bash e2e/scripts/openzfs-vm.sh down >/dev/null 2>&1 || true; bash e2e/scripts/env.sh down >/dev/null 2>&1 || true; bash e2e/scripts/seaweedfs.sh down >/dev/null 2>&1 || true; bash e2e/scripts/zfs.sh stop >/dev/null 2>&1 || true' EXIT
fi
# zetaback as pods on the local two-node cluster (its test files are `test = false`, so the
# run above did not run them); about 3 minutes warm.
cluster_tier
echo "== all tests passed in $(( $(date +%s) - start ))s"
