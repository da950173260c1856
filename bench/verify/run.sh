#!/usr/bin/env bash
# Verification benchmark (issue 18). Over the same stream files (COUNT files of SIZE_MIB MiB of
# incompressible data, default 4 × 256 MiB, in BENCH_DIR):
#   (a) openssl:  `openssl dgst -sha256 FILES…` (one process, the files in turn)
#   (b) verify:   `zetaback-agent verify-files FILES…` (the store verifier's read loop:
#                 1 MiB reads, sha256, fadvise; a rate of 1024Gi: no pacing)
# alternating, ROUNDS times (default 3), each after dropping the page cache when allowed (else
# both read from the cache alike); prints MB/s of each and the ratio verify/openssl (target ≥ 0.9).
# Then the rate limit: `verify-files --rate RATE` (default 50Mi) over one file, bytes/s
# measured over the run against RATE (target within 10 %). Not a test: numbers.
#
#   bench/verify/run.sh            (builds the agent --release unless AGENT_BIN is set)
# Env: SIZE_MIB, COUNT, ROUNDS, RATE, BENCH_DIR (default /var/tmp/zetaback-bench-verify).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
size_mib=${SIZE_MIB:-256}
count=${COUNT:-4}
rounds=${ROUNDS:-3}
rate=${RATE:-50Mi}
dir=${BENCH_DIR:-/var/tmp/zetaback-bench-verify}
log() { echo "bench: $*" >&2; }

if [ -n "${AGENT_BIN:-}" ]; then
  agent=$AGENT_BIN
else
  log "building zetaback-agent (release)"
  (cd "$root" && cargo build --release -q -p zetaback-agent)
  agent="${CARGO_TARGET_DIR:-$HOME/.cache/zetaback/target}/release/zetaback-agent"
fi

mkdir -p "$dir"
files=()
for i in $(seq 1 "$count"); do
  f="$dir/stream-$i.zfs"
  if [ ! -f "$f" ] || [ "$(stat -c %s "$f")" -ne $((size_mib * 1048576)) ]; then
    log "writing $f ($size_mib MiB)"
    head -c $((size_mib * 1048576)) /dev/urandom > "$f"
  fi
  files+=("$f")
done
total=$((size_mib * 1048576 * count))

drop_cache() { sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
now() { date +%s.%N; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / s / 1e6 }'; }

echo "Run: $(date -u +%FT%RZ), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $count × $size_mib MiB, $(openssl version)"
echo
echo "| round | openssl MB/s | zetaback verify MB/s | ratio |"
echo "|---:|---:|---:|---:|"
best_ratio=0
for r in $(seq 1 "$rounds"); do
  drop_cache
  t0=$(now); openssl dgst -sha256 "${files[@]}" > "$dir/openssl.out"; t1=$(now)
  drop_cache
  t2=$(now); "$agent" verify-files --rate 1024Gi "${files[@]}" > "$dir/verify.out"; t3=$(now)
  # Same digests, or the comparison means nothing.
  a=$(sed -E 's/^SHA2?-?256\((.*)\)= (.*)$/\2/' "$dir/openssl.out" | sort)
  b=$(grep -v '^total' "$dir/verify.out" | awk '{print $1}' | sort)
  [ "$a" = "$b" ] || { echo "digests differ" >&2; exit 1; }
  o=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  v=$(awk -v a="$t2" -v b="$t3" 'BEGIN { print b - a }')
  ratio=$(awk -v o="$o" -v v="$v" 'BEGIN { printf "%.2f", o / v }')
  echo "| $r | $(mbps "$total" "$o") | $(mbps "$total" "$v") | $ratio |"
done
echo
rate_bytes=$(awk -v r="$rate" 'BEGIN {
  n = r + 0; u = substr(r, length(n "") + 1);
  m = (u == "Ki") ? 1024 : (u == "Mi") ? 1048576 : (u == "Gi") ? 1073741824 : (u == "k") ? 1e3 : (u == "M") ? 1e6 : 1;
  printf "%d", n * m }')
one=${files[0]}
drop_cache
t0=$(now); "$agent" verify-files --rate "$rate" "$one" > /dev/null; t1=$(now)
measured=$(awk -v b=$((size_mib * 1048576)) -v a="$t0" -v c="$t1" 'BEGIN { printf "%.0f", b / (c - a) }')
dev=$(awk -v m="$measured" -v r="$rate_bytes" 'BEGIN { printf "%+.1f", (m - r) / r * 100 }')
echo "| rate limit | asked B/s | measured B/s (over the run) | deviation |"
echo "|---|---:|---:|---:|"
echo "| $rate | $rate_bytes | $measured | $dev % |"
