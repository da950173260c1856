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
#       (GNU time), each round and the medians. Needs rclone and aws on PATH (Debian: apt-get install rclone awscli).
#   bench/objectstore/run.sh restore [SIZE_MIB]     (default 1024; as root, needs zfs-fuse)
#       a dataset of SIZE_MIB MiB of random files on a zfs-fuse pool, its `zfs send` stored in
#       the bucket by the agent's upload code as a full backup, then restored into a new
#       dataset, ROUNDS times each: by the agent's restore code (`restore-bucket`: GET,
#       sha256 with the last MiB held back until it matched, `zfs receive`), by
#       `rclone cat … | zfs receive`, by the same with the sha256 checked (`tee >(openssl dgst -sha256)`),
#       by `aws s3 cp … - | zfs receive`, and (the ceiling)
#       `zfs receive` of the same stream from a local file; every restore's files checked
#       against the source's sha256 sums. MB/s and peak RSS of the reading process.
#
# KEEP_S3=1 under `flock /tmp/zb-bench.lock`: the kept server inherits the lock's file descriptor and
# holds the lock until it is stopped (`seaweedfs.sh down` with the same ZETABACK_S3_* settings), and
# restarting it on 200,000 objects took minutes: measure everything in one server session instead.
# Env: CARGO_TARGET_DIR; BENCH_BIN (skip the build); BEFORE_BIN, BEFORE_LABEL (upload: an earlier
# build of this benchmark, measured in the same rounds as a row of its own); AWS_BIN, RCLONE_BIN (default: aws, rclone
# on PATH; Debian's are /usr/bin/aws and /usr/bin/rclone); ROUNDS (default 3); BENCH_DIR (default /var/tmp/zetaback-bench-objectstore).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
dir=${BENCH_DIR:-/var/tmp/zetaback-bench-objectstore}
log() { echo "bench: $*" >&2; }
# medians FILE BYTES: the median seconds (and MB/s, and the largest peak RSS) of each reader in
# FILE's lines `name<TAB>version<TAB>seconds<TAB>rss_kib`, as table rows.
medians() {
  sort -t$'\t' -k1,1 -k3,3n "$1" | awk -F'\t' -v by="$2" '
    { n[$1]++; s[$1, n[$1]] = $3; v[$1] = $2; if ($4 > m[$1]) m[$1] = $4; if (!($1 in o)) { o[$1] = ++k; name[k] = $1 } }
    END { for (i = 1; i <= k; i++) { x = name[i]; c = n[x];
            med = (c % 2) ? s[x, (c + 1) / 2] : (s[x, c / 2] + s[x, c / 2 + 1]) / 2;
            printf "| %s | %s | %.1f | %.0f | %.0f MiB |\n", x, v[x], med, by / med / 1e6, m[x] / 1024 } }'
}

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
  if [ "${1:-}" = upload ] || [ "${1:-}" = restore ]; then rm -rf "$ZETABACK_S3_RUN" "$dir"; fi
}

if [ -n "${BENCH_BIN:-}" ]; then
  bin=$BENCH_BIN
else
  log "building the benchmark (release)"
  (cd "$root" && cargo build --release -q -p zetaback-bench-objectstore)
  bin="$target_dir/release/zetaback-bench-objectstore"
fi

mode=${1:-}
case "$mode" in catalogue|upload|restore) ;; *) echo "usage: run.sh catalogue [opts] | upload [SIZE_MIB] | restore [SIZE_MIB]" >&2; exit 2 ;; esac
endpoint=$(s3 up)
trap 'stop "$mode"' EXIT
export AWS_ACCESS_KEY_ID=ZBE2EADMIN AWS_SECRET_ACCESS_KEY=zetaback-e2e-admin-secret AWS_DEFAULT_REGION=us-east-1
export RCLONE_CONFIG_SW_TYPE=s3 RCLONE_CONFIG_SW_PROVIDER=SeaweedFS RCLONE_CONFIG_SW_ENDPOINT="$endpoint" \
  RCLONE_CONFIG_SW_ACCESS_KEY_ID=ZBE2EADMIN RCLONE_CONFIG_SW_SECRET_ACCESS_KEY=zetaback-e2e-admin-secret
aws=${AWS_BIN:-aws} rclone=${RCLONE_BIN:-rclone}
rounds=${ROUNDS:-3}
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
      awk -v n="$name" -v v="$version" -v a="$t0" -v b="$t1" -v r="$rss" \
        'BEGIN { printf "%s\t%s\t%.3f\t%d\n", n, v, b - a, r }' >>"$dir/rows.tsv"
    }
    : >"$dir/rows.tsv"
    # Warm-up, not measured: a fresh server grows its volumes on its first writes, which would
    # slow whichever uploader came first.
    head -c $((64 << 20)) "$stream" | "$aws" --endpoint-url "$endpoint" s3 cp - s3://zetaback-e2e/bench-upload/warm-up >/dev/null
    for round in $(seq 1 "$rounds"); do
      row "agent upload path (objstore_job::upload_reader)" "this commit" \
        "$bin" upload-stdin --endpoint "$endpoint"
      if [ -n "${BEFORE_BIN:-}" ]; then
        row "agent upload code, before" "${BEFORE_LABEL:-previous build}" \
          "$BEFORE_BIN" upload-stdin --endpoint "$endpoint"
      fi
      row "rclone rcat" "$("$rclone" version 2>/dev/null | awk 'NR == 1 {print $2}')" \
        "$rclone" rcat --s3-chunk-size 8M "sw:zetaback-e2e/bench-upload/rclone-$round"
      row "aws s3 cp -" "$("$aws" --version 2>&1 | awk '{print $1}')" \
        "$aws" --endpoint-url "$endpoint" s3 cp - "s3://zetaback-e2e/bench-upload/aws-$round"
    done
    echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "medians over $rounds rounds:"
    echo "| uploader | version | seconds | MB/s | peak RSS (max) |"
    echo "|---|---|---:|---:|---:|"
    medians "$dir/rows.tsv" "$bytes"
    "$aws" --endpoint-url "$endpoint" s3 rm --quiet --recursive s3://zetaback-e2e/bench-upload/ || true
    ;;
  restore)
    size_mib=${2:-1024}
    zfs_sh="$root/e2e/scripts/zfs.sh"
    pool=zbbenchobjrestore
    host=bench-agent
    prefix=bench-restore
    destroy() { for _ in 1 2 3 4 5 6 7 8 9 10; do zfs destroy -r "$1" 2>/dev/null && return; sleep 1; done; echo "bench: cannot destroy $1" >&2; return 1; }
    finish() {
      "$aws" --endpoint-url "$endpoint" s3 rm --quiet --recursive "s3://zetaback-e2e/$prefix/" || true
      "$zfs_sh" destroy "$pool" >/dev/null 2>&1 || true
      stop restore
    }
    trap finish EXIT
    mkdir -p "$dir"
    # The source, the local copy of the stream's restore and one restore at a time.
    mnt=$("$zfs_sh" pool "$pool" "$(( size_mib * 3 + 1024 ))M")
    zfs create "$pool/src"
    log "writing $size_mib MiB of random files to $pool/src"
    left=$size_mib; i=0
    while [ "$left" -gt 0 ]; do
      n=$(( left < 256 ? left : 256 ))
      head -c "$(( n << 20 ))" /dev/urandom >"$mnt/src/f$i.bin"
      left=$(( left - n )); i=$(( i + 1 ))
    done
    sync
    zfs snapshot "$pool/src@bench"
    sums() { (cd "$1" && find . -type f -name '*.bin' | LC_ALL=C sort | xargs sha256sum); }
    mounted() { zfs get -H -o value mountpoint "$1"; }
    want=$(sums "$mnt/src")
    ts=$(date +%s)
    log "storing zfs send $pool/src@bench in the bucket (the agent's upload code)"
    zfs send "$pool/src@bench" | "$bin" upload-stdin --endpoint "$endpoint" --prefix "$prefix" \
      --host "$host" --dataset "$pool/src" --snapshot bench --ts "$ts" --keep >"$dir/stored.json"
    key="$prefix/$host/$pool+src/$ts.full"
    bytes=$("$aws" --endpoint-url "$endpoint" s3api head-object --bucket zetaback-e2e --key "$key" \
      --query ContentLength --output text)
    zfs send "$pool/src@bench" >"$dir/stream"
    echo "restore of one full stream ($bytes bytes: $size_mib MiB of random files, zfs-fuse) from $endpoint into a new dataset; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "| round | reader | version | seconds | MB/s | peak RSS of the reader |"
    echo "|---|---|---|---:|---:|---:|"
    restored() { # restored ROUND NAME VERSION DATASET T0 -- checks the files, prints the row
      local t1 rss
      t1=$(date +%s.%N)
      rss=$(tail -1 "$dir/time.out")
      # A restore is received inert (canmount=noauto): mount it to read its files.
      [ "$(zfs get -H -o value mounted "$4")" = yes ] || zfs mount "$4"
      [ "$(sums "$(mounted "$4")")" = "$want" ] || { log "$2: the restored files differ"; return 1; }
      destroy "$4"
      awk -v r="$1" -v n="$2" -v v="$3" -v a="$5" -v b="$t1" -v by="$bytes" -v m="$rss" \
        'BEGIN { s = b - a; printf "| %s | %s | %s | %.1f | %.0f | %.0f MiB |\n", r, n, v, s, by / s / 1e6, m / 1024 }'
      awk -v n="$2" -v v="$3" -v a="$5" -v b="$t1" -v m="$rss" \
        'BEGIN { printf "%s\t%s\t%.3f\t%d\n", n, v, b - a, m }' >>"$dir/rows.tsv"
    }
    : >"$dir/rows.tsv"
    rclone_v=$("$rclone" version 2>/dev/null | awk 'NR == 1 {print $2}')
    aws_v=$("$aws" --version 2>&1 | awk '{print $1}')
    by_agent() {
      t0=$(date +%s.%N)
      /usr/bin/time -f '%M' -o "$dir/time.out" "$bin" restore-bucket --endpoint "$endpoint" \
        --prefix "$prefix" --host "$host" --dataset "$pool/src" --ts "$ts" --into "$pool/agent" \
        >"$dir/out.txt" 2>"$dir/err.txt" || { cat "$dir/err.txt" >&2; exit 1; }
      restored "$round" "agent restore code (objstore_restore::restore)" "this commit" "$pool/agent" "$t0"
    }
    by_rclone() {
      t0=$(date +%s.%N)
      /usr/bin/time -f '%M' -o "$dir/time.out" "$rclone" cat "sw:zetaback-e2e/$key" | zfs receive "$pool/rclone"
      restored "$round" "rclone cat \| zfs receive" "$rclone_v" "$pool/rclone" "$t0"
    }
    # What a user who checks what they restore writes with rclone: the same sha256 the agent
    # verifies, computed beside the receive (tee) by the fastest sha256 here (openssl's, with
    # the CPU's SHA extensions; coreutils' sha256sum made it 6.3 s a GiB, openssl 4.4–4.7), compared
    # with the stream's. (The agent checks before the receive is committed; this pipeline only
    # after: the same work.)
    by_rclone_sha256() {
      t0=$(date +%s.%N)
      /usr/bin/time -f '%M' -o "$dir/time.out" "$rclone" cat "sw:zetaback-e2e/$key" \
        | tee >(openssl dgst -sha256 -r | cut -d' ' -f1 >"$dir/rclone.sha256") | zfs receive "$pool/rclonesha"
      wait
      [ "$(cat "$dir/rclone.sha256")" = "$want_sha256" ] || { log "rclone + sha256: the stream's sha256 differs"; exit 1; }
      restored "$round" "rclone cat \| tee >(openssl sha256) \| zfs receive" "$rclone_v" "$pool/rclonesha" "$t0"
    }
    by_aws() {
      t0=$(date +%s.%N)
      /usr/bin/time -f '%M' -o "$dir/time.out" "$aws" --endpoint-url "$endpoint" s3 cp "s3://zetaback-e2e/$key" - \
        | zfs receive "$pool/aws"
      restored "$round" "aws s3 cp - \| zfs receive" "$aws_v" "$pool/aws" "$t0"
    }
    from_file() {
      t0=$(date +%s.%N)
      /usr/bin/time -f '%M' -o "$dir/time.out" cat "$dir/stream" | zfs receive "$pool/file"
      restored "$round" "ceiling: cat local file \| zfs receive" "-" "$pool/file" "$t0"
    }
    want_sha256=$(sha256sum "$dir/stream" | cut -d' ' -f1)
    readers=(by_agent by_rclone by_rclone_sha256 by_aws from_file)
    # A warm-up receive, not measured: the first large receive into the new pool was always the
    # slowest (4.0–6.9 s where the same reader took 2.8–3.1 s later, whoever it was), and the
    # agent, first in round 1, paid it.
    log "warm-up: one receive from the local file (not measured)"
    zfs receive "$pool/warmup" <"$dir/stream"
    destroy "$pool/warmup"
    for round in $(seq 1 "$rounds"); do
      # The order turns every round (round 1: the agent first; round 2: rclone first; …): whoever
      # reads first after the upload meets the store's coldest caches.
      for k in "${!readers[@]}"; do "${readers[$(( (k + round - 1) % ${#readers[@]} ))]}"; done
    done
    echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "medians over $rounds rounds:"
    echo "| reader | version | seconds | MB/s | peak RSS of the reader (max) |"
    echo "|---|---|---:|---:|---:|"
    medians "$dir/rows.tsv" "$bytes"
    ;;
  *) echo "usage: run.sh catalogue [opts] | upload [SIZE_MIB] | restore [SIZE_MIB]" >&2; exit 2 ;;
esac
