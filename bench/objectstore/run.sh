#!/usr/bin/env bash
# Object-store benchmark (issue 17), on its own SeaweedFS (e2e/scripts/seaweedfs.sh with a
# private run directory and ports, so the tests' server is not filled; stopped at the end
# unless KEEP_S3=1). Not a test: numbers only (bench/RESULTS.md).
#
#   bench/objectstore/run.sh catalogue [--manifests 100000 --hosts 20 --datasets 50]
#       100,000 backups written once (parallel PUTs), then the old catalogue read (whole
#       prefix, every manifest GET) against the new one (per host, cached: cold, unchanged,
#       after one new and one deleted manifest) and a Restore's resolution by each.
#   bench/objectstore/run.sh upload [SIZE_MIB]      (default 512)
#       the same stream file (random bytes) into the same bucket by the agent's upload code
#       (`upload-stdin`), `rclone rcat` and `aws s3 cp -`, each from a pipe; MB/s and peak RSS
#       (GNU time). Needs rclone and aws on PATH (Debian: apt-get install rclone awscli).
#
# Env: CARGO_TARGET_DIR; BENCH_BIN (skip the build); AWS_BIN, RCLONE_BIN (default: aws, rclone
# on PATH; Debian's are /usr/bin/aws and /usr/bin/rclone); ROUNDS (upload, default 2); BENCH_DIR (default /var/tmp/zetaback-bench-objectstore).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
dir=${BENCH_DIR:-/var/tmp/zetaback-bench-objectstore}
log() { echo "bench: $*" >&2; }

# The catalogue's server keeps its data (filled once, reused by the next run); the upload's
# is deleted afterwards (GBs of streams).
export ZETABACK_S3_RUN=${ZETABACK_S3_RUN:-/var/tmp/zetaback-bench-s3-${1:-none}}
# Ports away from the tests' server (18333, 19333, 18080, 18888 and each + 10000 for gRPC).
export ZETABACK_S3_PORT=${ZETABACK_S3_PORT:-38333} ZETABACK_S3_MASTER_PORT=${ZETABACK_S3_MASTER_PORT:-39333}
export ZETABACK_S3_VOLUME_PORT=${ZETABACK_S3_VOLUME_PORT:-38080} ZETABACK_S3_FILER_PORT=${ZETABACK_S3_FILER_PORT:-38888}
s3() { "$root/e2e/scripts/seaweedfs.sh" "$@"; }
stop() {
  [ "${KEEP_S3:-0}" = 1 ] && return 0
  s3 down
  if [ "${1:-}" = upload ]; then rm -rf "$ZETABACK_S3_RUN" "$dir"; fi
}

if [ -n "${BENCH_BIN:-}" ]; then
  bin=$BENCH_BIN
else
  log "building the benchmark (release)"
  (cd "$root" && cargo build --release -q -p zetaback-bench-objectstore)
  bin="$target_dir/release/zetaback-bench-objectstore"
fi

mode=${1:-}
case "$mode" in catalogue|upload) ;; *) echo "usage: run.sh catalogue [opts] | upload [SIZE_MIB]" >&2; exit 2 ;; esac
endpoint=$(s3 up)
trap 'stop "$mode"' EXIT
log "SeaweedFS at $endpoint (run dir $ZETABACK_S3_RUN)"

case "${1:-}" in
  catalogue)
    shift
    "$bin" catalogue --endpoint "$endpoint" "$@"
    ;;
  upload)
    size_mib=${2:-512}
    mkdir -p "$dir"
    stream="$dir/stream-$size_mib"
    [ -f "$stream" ] || { log "writing $size_mib MiB of random bytes to $stream"; head -c "$((size_mib << 20))" /dev/urandom >"$stream"; }
    bytes=$(stat -c %s "$stream")
    export AWS_ACCESS_KEY_ID=ZBE2EADMIN AWS_SECRET_ACCESS_KEY=zetaback-e2e-admin-secret AWS_DEFAULT_REGION=us-east-1
    export RCLONE_CONFIG_SW_TYPE=s3 RCLONE_CONFIG_SW_PROVIDER=SeaweedFS RCLONE_CONFIG_SW_ENDPOINT="$endpoint" \
      RCLONE_CONFIG_SW_ACCESS_KEY_ID=ZBE2EADMIN RCLONE_CONFIG_SW_SECRET_ACCESS_KEY=zetaback-e2e-admin-secret
    echo "upload of one $size_mib MiB stream ($bytes bytes, random) from a pipe into $endpoint; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "| uploader | version | seconds | MB/s | peak RSS |"
    echo "|---|---|---:|---:|---:|"
    row() { # name version command...
      local name=$1 version=$2; shift 2
      local t0 t1 rss
      t0=$(date +%s.%N)
      cat "$stream" | /usr/bin/time -f '%M' -o "$dir/time.out" "$@" >"$dir/out.txt" 2>"$dir/err.txt" \
        || { cat "$dir/err.txt" >&2; log "$name failed"; return 1; }
      t1=$(date +%s.%N)
      rss=$(tail -1 "$dir/time.out")
      awk -v n="$name" -v v="$version" -v a="$t0" -v b="$t1" -v by="$bytes" -v r="$rss" \
        'BEGIN { s = b - a; printf "| %s | %s | %.1f | %.0f | %.0f MiB |\n", n, v, s, by / s / 1e6, r / 1024 }'
    }
    aws=${AWS_BIN:-aws} rclone=${RCLONE_BIN:-rclone}
    rounds=${ROUNDS:-2}
    for round in $(seq 1 "$rounds"); do
      row "agent upload code (zetaback_objstore::upload)" "this commit" \
        "$bin" upload-stdin --endpoint "$endpoint"
      row "rclone rcat" "$("$rclone" version 2>/dev/null | head -1 | awk '{print $2}')" \
        "$rclone" rcat --s3-chunk-size 8M "sw:zetaback-e2e/bench-upload/rclone-$round"
      row "aws s3 cp -" "$("$aws" --version 2>&1 | awk '{print $1}')" \
        "$aws" --endpoint-url "$endpoint" s3 cp - "s3://zetaback-e2e/bench-upload/aws-$round"
    done
    echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    "$aws" --endpoint-url "$endpoint" s3 rm --quiet --recursive s3://zetaback-e2e/bench-upload/ || true
    ;;
  *) echo "usage: run.sh catalogue [opts] | upload [SIZE_MIB]" >&2; exit 2 ;;
esac
