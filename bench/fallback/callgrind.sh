#!/usr/bin/env bash
# Instructions per cache hit of zetaback-proxy, counted by callgrind. Unlike
# req/s, instruction counts do not depend on the machine's load, so a change
# to the hit path can be judged on a busy machine (the wall-clock comparison
# with Varnish and nginx stays bench/fallback/run.sh's job).
#
# Set-up: one nginx backend with FILES small files (200..2200 bytes, as in
# run.sh), the release proxy (one worker thread) under
# `valgrind --tool=callgrind --instr-atstart=no`. Every file is fetched twice
# (fill, then one hit), then instrumentation is switched on, HITS requests
# are sent the way wrk sends them (`GET /files/f<i>.txt HTTP/1.1` + Host,
# keep-alive, CONNS connections taking turns), every answer is checked to be
# an `X-Cache: HIT` with the file's length, instrumentation is switched off
# and the counts are dumped. Ir/hit = instructions counted / HITS; the
# metrics endpoint's hit counter must have grown by exactly HITS.
#
# Usage: bench/fallback/callgrind.sh [REV...]
#   no argument : the working tree (built with cargo, release profile)
#   REV         : a git revision, exported with `git archive` to
#                 $SRC_CACHE/<rev> (default /tmp/zb-callgrind-src, kept) and built
#                 in the same CARGO_TARGET_DIR (only the proxy crate is rebuilt); "."
#                 is the working tree, so `callgrind.sh 320d388 .` compares.
# Env: HITS=3000 FILES=300 CONNS=4 TOP=20 (functions listed, inclusive Ir/hit)
#      KEEP=1 (keep the work dir with the callgrind.out files)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
HITS="${HITS:-3000}"
FILES="${FILES:-300}"
CONNS="${CONNS:-4}"
TOP="${TOP:-20}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SRC_CACHE="${SRC_CACHE:-/tmp/zb-callgrind-src}"
REVS=("$@"); [[ ${#REVS[@]} -eq 0 ]] && REVS=(.)

for bin in /usr/sbin/nginx valgrind callgrind_control callgrind_annotate python3 curl; do
  command -v "$bin" >/dev/null || { echo "missing $bin" >&2; exit 1; }
done

WORK="$(mktemp -d /tmp/zb-callgrind.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill -9 "$p" 2>/dev/null || true; done
  if [[ -n "${KEEP:-}" ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # port pid
  for _ in $(seq 1 600); do
    kill -0 "$2" 2>/dev/null || { echo "process $2 died" >&2; return 1; }
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 did not open" >&2; return 1
}

# Build every revision first, the working tree last (its build leaves
# $TARGET_DIR/release/zetaback-proxy as the working tree's binary).
declare -A BIN
REBUILD_WORKTREE=
build() { # rev -> copies the binary to $WORK/bin-<label>
  local rev="$1" label src
  if [[ "$rev" == . ]]; then
    label=worktree; src="$ROOT"
    [[ -n "$REBUILD_WORKTREE" ]] && touch "$ROOT/proxy/src/lib.rs"
  else
    # A fixed directory per revision: cargo keys a crate's build by its path, so the
    # next run of the same revision reuses the build.
    label="$(git -C "$ROOT" rev-parse --short "$rev")"; src="$SRC_CACHE/$label"
    if [[ ! -f "$src/Cargo.toml" ]]; then
      mkdir -p "$src"
      git -C "$ROOT" archive "$rev" | tar -x -C "$src"
    fi
    # Every tree builds the same cargo unit (same package, same target dir), told
    # apart by source mtimes only: `git archive` gives commit times, older than
    # any build, so mark the sources new, and the working tree after them.
    find "$src/proxy" -name '*.rs' -exec touch {} +
    REBUILD_WORKTREE=1
  fi
  echo "building zetaback-proxy ($label, release)..." >&2
  (cd "$src" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --locked -q -p zetaback-proxy)
  cp "$TARGET_DIR/release/zetaback-proxy" "$WORK/bin-$label"
  BIN[$rev]="$WORK/bin-$label"
  LABEL[$rev]="$label"
}
declare -A LABEL
for rev in "${REVS[@]}"; do [[ "$rev" != . ]] && build "$rev"; done
for rev in "${REVS[@]}"; do [[ "$rev" == . ]] && build "$rev"; done

# One nginx backend holding every file.
mkdir -p "$WORK/be/www/files" "$WORK/be/tmp"
python3 - "$WORK/be/www/files" "$FILES" <<'PY'
import sys
root, files = sys.argv[1], int(sys.argv[2])
for i in range(files):
    size = 200 + (i * 7919) % 2000
    line = f"file {i} ".encode()
    with open(f"{root}/f{i}.txt", "wb") as f:
        f.write((line * (size // len(line) + 1))[:size])
PY
BPORT=$(free_port)
cat > "$WORK/be/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; user root;
pid $WORK/be/nginx.pid; error_log $WORK/be/error.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $WORK/be/tmp/b; proxy_temp_path $WORK/be/tmp/p; fastcgi_temp_path $WORK/be/tmp/f;
  uwsgi_temp_path $WORK/be/tmp/u; scgi_temp_path $WORK/be/tmp/s;
  server { listen 127.0.0.1:$BPORT; root $WORK/be/www; } }
CONF
/usr/sbin/nginx -p "$WORK/be" -c "$WORK/be/nginx.conf" -e "$WORK/be/error.log" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$BPORT" "$!"

# The client: wrk's request form, every answer checked.
cat > "$WORK/client.py" <<'PY'
import socket, sys
port, files, count, conns, expect = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
bufs = [b""] * conns
bad = 0
for n in range(count):
    c = n % conns
    i = n % files
    socks[c].sendall(f"GET /files/f{i}.txt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    buf = bufs[c]
    while b"\r\n\r\n" not in buf:
        chunk = socks[c].recv(65536)
        if not chunk:
            sys.exit(f"connection closed after {n} requests")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    length = int(hdrs.get("content-length", "-1"))
    while len(buf) < length:
        buf += socks[c].recv(65536)
    body, bufs[c] = buf[:length], buf[length:]
    size = 200 + (i * 7919) % 2000
    if not lines[0].startswith("HTTP/1.1 200") or len(body) != size or (expect and hdrs.get("x-cache") != expect):
        bad += 1
        if bad < 5:
            print(f"unexpected answer to f{i}: {lines[0]} x-cache={hdrs.get('x-cache')} len={len(body)}", file=sys.stderr)
if bad:
    sys.exit(f"{bad} of {count} answers were not the expected {expect or 'file'}")
PY

hits_metric() { # metrics port
  curl -sf "http://127.0.0.1:$1/metrics" | awk '/^zetaback_proxy_cache_total\{result="hit"\}/ { print $2 }'
}

measure() { # rev
  local rev="$1" label="${LABEL[$1]}" port mport dir pid before after total
  dir="$WORK/run-$label"; mkdir -p "$dir"
  port=$(free_port); mport=$(free_port)
  cat > "$dir/proxy.yaml" <<YAML
listen: 127.0.0.1:$port
metricsListen: 127.0.0.1:$mport
cache: {defaultTtl: 10m, maxSize: 256Mi, maxObjectSize: 1Mi, notFoundTtl: 10s, grace: 30s}
ownerTtl: 1h
backends:
  - {name: b0, url: 'http://127.0.0.1:$BPORT'}
YAML
  RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$dir/callgrind.out" \
    "${BIN[$rev]}" --config "$dir/proxy.yaml" --threads 1 --watch-interval 0s \
    > "$dir/proxy.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  wait_port "$port" "$pid"
  python3 "$WORK/client.py" "$port" "$FILES" "$FILES" 1 ""      # fill
  python3 "$WORK/client.py" "$port" "$FILES" "$FILES" 1 HIT     # warm the hit path
  before=$(hits_metric "$mport")
  callgrind_control -i on "$pid" >/dev/null
  python3 "$WORK/client.py" "$port" "$FILES" "$HITS" "$CONNS" HIT
  callgrind_control -i off "$pid" >/dev/null
  after=$(hits_metric "$mport")
  if [[ "$((after - before))" -ne "$HITS" ]]; then
    echo "$label: the hit counter grew by $((after - before)), not $HITS" >&2; exit 1
  fi
  callgrind_control -d "$pid" >/dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local out="$dir/callgrind.out.1"   # the explicit dump (part 1)
  total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done { gsub(",", "", $1); print $1; done = 1 }')
  printf '%s: %d Ir per hit (%s Ir over %d hits, %d connections)\n' \
    "$label" "$((total / HITS))" "$total" "$HITS" "$CONNS"
  if [[ "$TOP" -gt 0 ]]; then
    echo "  inclusive Ir per hit, top $TOP:"
    callgrind_annotate --inclusive=yes "$out" 2>/dev/null \
      | awk -v hits="$HITS" -v top="$TOP" '
          /^-+$/ { sep++; next }
          sep >= 3 && $1 ~ /^[0-9,]+$/ && n < top {
            ir = $1; gsub(",", "", ir)
            name = $0; sub(/^ *[0-9,]+ +\( *[0-9.]+%\) +/, "", name); sub(/ \[.*$/, "", name)
            sub(/^.*\/registry\/src\/[^\/]*\//, "", name); sub(/^\/rustc\/[0-9a-f]*\//, "", name)
            printf "  %8d  %s\n", ir / hits, substr(name, 1, 110); n++ }'
  fi
}

for rev in "${REVS[@]}"; do measure "$rev"; done
