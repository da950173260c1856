#!/usr/bin/env bash
# The compile units of CI's cargo commands, without building anything: reads "NAME ARGS…" lines
# (commands-before.txt: e2e/test.sh before the one-feature-set change; commands-after.txt: after)
# and writes cargo's --unit-graph of each into OUT/NAME.json; then
#   python3 bench/ci-units/units.py OUT/<name>.json …   (in command order)
# prints how many units each command compiles that no earlier command built.
#   bash bench/ci-units/graphs.sh OUT < bench/ci-units/commands-after.txt
# (--unit-graph is unstable: cargo's channel override lets stable cargo print it.)
set -euo pipefail
out=$1
mkdir -p "$out"
cd "$(dirname "$0")/../.."
export __CARGO_TEST_CHANNEL_OVERRIDE_DO_NOT_USE_THIS=nightly PATH="$PATH:$HOME/.cargo/bin"
while read -r name args; do
  # shellcheck disable=SC2086 # ARGS are cargo's words
  nice -n 19 cargo $args --locked --unit-graph -Z unstable-options > "$out/$name.json"
done
