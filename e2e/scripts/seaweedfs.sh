#!/usr/bin/env bash
# SeaweedFS, the S3-compatible object store the object-store tests run against: built from its
# Go module (pinned by e2e/tools/seaweedfs/go.mod and go.sum) and cached under
# ~/.cache/zetaback/bin/seaweedfs-<key>/weed, <key> hashing the pins and the build recipe (its own
# cache key: the control plane's binaries are not rebuilt when SeaweedFS's pin moves).
#
#   seaweedfs.sh build   build `weed` unless cached; prints its path
#   seaweedfs.sh up      start `weed server -s3` (master, volume, filer and S3 gateway in one
#                        process) on loopback unless running; prints the S3 endpoint URL
#   seaweedfs.sh down    stop the server `up` started (only that pid)
#   seaweedfs.sh status  say whether it runs
#
# Identities (S3 access keys) come from e2e/manifests/seaweedfs/s3-identities.json, rendered
# into $ZETABACK_S3_RUN/s3.json: `admin` for the controller (every action on every bucket) and
# one source identity per test host, restricted to its prefix (see that file's README note in
# README.md, "Object-store target"). State: $ZETABACK_S3_RUN (default /tmp/zetaback-s3);
# port $ZETABACK_S3_PORT (default 18333; master 19333, volume 18080, filer 18888, gRPC +10000;
# ZETABACK_S3_MASTER_PORT, _VOLUME_PORT, _FILER_PORT move them: a test that kills its server
# runs its own, with its own run directory and ports).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${ZETABACK_CACHE:-$HOME/.cache/zetaback}
run=${ZETABACK_S3_RUN:-/tmp/zetaback-s3}
s3_port=${ZETABACK_S3_PORT:-18333}
# The other ports (a second, private server needs all four; gRPC is each one + 10000).
master_port=${ZETABACK_S3_MASTER_PORT:-19333}
volume_port=${ZETABACK_S3_VOLUME_PORT:-18080}
filer_port=${ZETABACK_S3_FILER_PORT:-18888}
tools="$root/e2e/tools/seaweedfs"

log() { echo "seaweedfs.sh: $*" >&2; }
die() { log "$*"; exit 1; }

recipe='CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" github.com/seaweedfs/seaweedfs/weed'

build() {
  local key out start
  # The key: the pins and the build recipe (not this whole script, so editing how the server
  # runs does not rebuild it).
  key=$( (cat "$tools/go.mod" "$tools/go.sum" "$tools/tools.go"; echo "$recipe") | sha256sum | cut -c1-16)
  out="$cache/bin/seaweedfs-$key"
  if [ -x "$out/weed" ]; then echo "$out/weed"; return 0; fi
  export PATH="$PATH:/usr/local/go/bin"
  command -v go >/dev/null || die "the Go toolchain is required (go not on PATH)"
  export GOFLAGS=-mod=mod GOCACHE=${GOCACHE:-$cache/go-build} GOMODCACHE=${GOMODCACHE:-$cache/go-mod}
  export CGO_ENABLED=0
  mkdir -p "$out.tmp"
  start=$(date +%s)
  log "building weed (SeaweedFS) from its Go module"
  (cd "$tools" && go build -trimpath -ldflags "-s -w" -o "$out.tmp/weed" github.com/seaweedfs/seaweedfs/weed)
  rm -rf "$out"; mv "$out.tmp" "$out"
  log "built in $(( $(date +%s) - start ))s"
  echo "$out/weed"
}

# Running, and not a zombie: a server killed after the script that started it exited waits
# for its new parent to reap it, and until then `kill -0` still finds it.
running() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state=$(ps -o stat= -p "$1" 2>/dev/null || true)
  [ -n "$state" ] && [ "${state:0:1}" != Z ]
}
alive() { [ -f "$run/weed.pid" ] && running "$(cat "$run/weed.pid")"; }

up() {
  local weed
  weed=$(build)
  mkdir -p "$run/data"
  # One `up` at a time: tests call it in parallel, and two servers started at once fight over
  # the ports (the loser's pid would replace the winner's). The lock is held until the gateway
  # answers; the server itself does not inherit it (9>&-).
  exec 9>"$run/up.lock"
  flock 9
  local changed=0
  cmp -s "$root/e2e/manifests/seaweedfs/s3-identities.json" "$run/s3.json" || changed=1
  cp "$root/e2e/manifests/seaweedfs/s3-identities.json" "$run/s3.json"
  # A running server whose identities file changed reloads it (SIGHUP: weed's s3 gateway
  # re-reads -s3.config), so a test that brings new identities needs no restart.
  if alive && [ "$changed" = 1 ]; then
    log "identities changed: reloading them (SIGHUP)"
    kill -HUP "$(cat "$run/weed.pid")"
    sleep 1
  fi
  if ! alive; then
    # -s3.config: the identities; -volume.max 0: as many volumes as the disk allows;
    # -master.volumeSizeLimitMB 64: small volumes so a test machine's disk is not reserved.
    # -s3.autoCreateBucket=false: a missing bucket is an error, as on AWS (SeaweedFS would
    # otherwise create it on an admin identity's first upload).
    # -s3.port.iceberg/lance 0: catalog servers on fixed ports the tests do not use (a second
    # server could not start beside the first).
    nohup "$weed" server -ip 127.0.0.1 -ip.bind 127.0.0.1 -dir "$run/data" \
      -master.port "$master_port" -master.volumeSizeLimitMB 64 \
      -volume.port "$volume_port" -volume.max 0 \
      -filer -filer.port "$filer_port" \
      -s3 -s3.port "$s3_port" -s3.port.iceberg 0 -s3.port.lance 0 \
      -s3.config "$run/s3.json" -s3.autoCreateBucket=false \
      >"$run/weed.log" 2>&1 9>&- &
    echo $! >"$run/weed.pid"
  fi
  for _ in $(seq 1 240); do
    # An anonymous request to the gateway answers 403 once it serves (identities are on).
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$s3_port/" || true)
    case "$code" in 2??|403) make_bucket; echo "http://127.0.0.1:$s3_port"; return 0 ;; esac
    alive || { tail -30 "$run/weed.log" >&2; die "weed exited"; }
    sleep 0.5
  done
  tail -30 "$run/weed.log" >&2
  die "the S3 gateway did not answer on port $s3_port within 120 s"
}

# The tests' bucket, made with the admin identity (SigV4 by curl); 409: it exists already.
make_bucket() {
  local code
  code=$(curl -s -o "$run/make-bucket.out" -w '%{http_code}' -X PUT \
    --aws-sigv4 "aws:amz:us-east-1:s3" --user "ZBE2EADMIN:zetaback-e2e-admin-secret" \
    "http://127.0.0.1:$s3_port/zetaback-e2e")
  case "$code" in 200|409) ;; *) cat "$run/make-bucket.out" >&2; die "could not create bucket zetaback-e2e (HTTP $code)" ;; esac
}

down() {
  if alive; then
    local pid; pid=$(cat "$run/weed.pid")
    kill "$pid"
    for _ in $(seq 1 40); do running "$pid" || break; sleep 0.25; done
    if running "$pid"; then kill -9 "$pid"; fi
  fi
  rm -f "$run/weed.pid"
}

case "${1:-}" in
  build) build ;;
  up) up ;;
  down) down ;;
  status) if alive; then echo "weed running (pid $(cat "$run/weed.pid")), S3 on http://127.0.0.1:$s3_port"; else echo "weed not running"; fi ;;
  *) echo "usage: seaweedfs.sh build|up|down|status" >&2; exit 2 ;;
esac
