#!/usr/bin/env bash
# Fallback-proxy benchmark: nginx backends (N = 2, 4, 8, each owning 1/N of
# 10,000 small files) behind
#   - zetaback-proxy (owner cache + RFC 9111 cache),
#   - Varnish 7 with the seed VCL ported to 4.1 in its strongest modern form
#     (return(retry) in vcl_backend_response, max_retries >= N-1),
#   - Varnish 7 with the seed's restart form (restart in vcl_deliver),
#   - nginx as a fallback proxy (proxy_next_upstream http_404 + proxy_cache),
# plus nginx served directly as the ceiling. Loopback only, every wrk run
# bounded (DURATION seconds, default 8, at most 10).
#
# Pinning (2 cores): the proxy under test on CPU 0 (one worker), wrk and the
# nginx backends on CPU 1.
#
# Scenarios per N (all systems started fresh per N, runs interleaved):
#   cold  : every file once, never seen before (owners unknown)
#   hit   : all files cached, cycling
#   known : every request a new cache key (query string) for a known path,
#           i.e. a miss once owners are known
#   stampede: 1,000 connections on one key expiring every 2 s (backend fetches)
#   upload: a file appears on the last backend after its 404 was served
# "be/req" = backend requests (nginx access-log lines) per client request.
#
# Usage: bench/fallback/run.sh [N...]    (default: 2 4 8)
# Env: DURATION=8 ROUNDS=3 CONNS=50 FILES=10000 OUT=bench/fallback/results.md
#      SYSTEMS="zetaback varnish-retry varnish-restart nginx-fallback" KEEP=1 (keep work dir)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DURATION="${DURATION:-8}"
(( DURATION > 10 )) && DURATION=10
CONNS="${CONNS:-50}"
FILES="${FILES:-10000}"
OUT="${OUT:-$HERE/results.md}"
NS=("$@"); [[ ${#NS[@]} -eq 0 ]] && NS=(2 4 8)
PROXY_CPU=0
LOAD_CPU=1
TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-proxy}"
PROXY_BIN="$TARGET_DIR/release/zetaback-proxy"

for bin in /usr/sbin/nginx /usr/sbin/varnishd wrk taskset; do
  command -v "$bin" >/dev/null || { echo "missing $bin" >&2; exit 1; }
done

echo "building zetaback-proxy (release)..." >&2
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -q -p zetaback-proxy)

WORK="$(mktemp -d /tmp/zb-fallback-bench.XXXXXX)"
chmod 755 "$WORK"   # varnishd reads the VCL after dropping privileges
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill -9 "$p" 2>/dev/null || true; done
  if [[ -n "${KEEP:-}" ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Ports are handed out in the main shell (never inside $(...), where the
# counter would not advance).
PORT=21000
alloc_port() {
  PORT=$((PORT + 1))
  while (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do PORT=$((PORT + 1)); done
}

wait_port() { # port [pid]: the port opens (and the pid is still alive)
  for _ in $(seq 1 200); do
    if [[ -n "${2:-}" ]] && ! kill -0 "$2" 2>/dev/null; then echo "process $2 died" >&2; return 1; fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "port $1 did not open" >&2; return 1
}

stop_pid() {
  local pid="$1"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
  kill -9 "$pid" 2>/dev/null || true
}

# Files: f<i>.txt lives on backend (i % N); sizes 200..2200 bytes.
make_docroots() {
  local n="$1"
  python3 - "$WORK/n$n" "$n" "$FILES" <<'PY'
import os, sys
root, n, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for k in range(n):
    os.makedirs(f"{root}/b{k}/www/files", exist_ok=True)
for i in range(files):
    size = 200 + (i * 7919) % 2000
    line = f"file {i} ".encode()
    body = (line * (size // len(line) + 1))[:size]
    with open(f"{root}/b{i % n}/www/files/f{i}.txt", "wb") as f:
        f.write(body)
os.makedirs(f"{root}/b{n - 1}/www/hot", exist_ok=True)
with open(f"{root}/b{n - 1}/www/hot/key.txt", "w") as f:
    f.write("hot key\n")
PY
}

start_backend() { # dir port name -> pid
  local dir="$1" port="$2" name="$3"
  mkdir -p "$dir/tmp"
  cat > "$dir/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; user root;
pid $dir/nginx.pid; error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  log_format c '\$request_method \$request_uri \$status';
  access_log $dir/access.log c;
  client_body_temp_path $dir/tmp/b; proxy_temp_path $dir/tmp/p; fastcgi_temp_path $dir/tmp/f;
  uwsgi_temp_path $dir/tmp/u; scgi_temp_path $dir/tmp/s;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$port; root $dir/www; add_header X-Backend $name;
    location /hot/ { expires 2s; } }
}
CONF
  taskset -c "$LOAD_CPU" /usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
    > /dev/null 2>&1 &
  local pid=$!
  wait_port "$port" "$pid"
  echo "$pid"
}

backend_hits() { # sum of access-log lines of the current backends
  cat "$WORK"/n"$CUR_N"/b*/access.log 2>/dev/null | wc -l
}

# ---- systems -------------------------------------------------------------

start_zetaback() { # port n -> pid
  local port="$1" n="$2" mport="$3" dir="$WORK/zb-$1"
  mkdir -p "$dir"
  {
    echo "listen: 127.0.0.1:$port"
    echo "metricsListen: 127.0.0.1:$mport"
    echo "cache: {defaultTtl: 10m, maxSize: 256Mi, maxObjectSize: 1Mi, notFoundTtl: 10s, grace: 30s}"
    echo "ownerTtl: 1h"
    echo "backends:"
    for k in $(seq 0 $((n - 1))); do
      echo "  - {name: b$k, url: 'http://127.0.0.1:${BPORTS[$k]}'}"
    done
  } > "$dir/proxy.yaml"
  RUST_LOG=warn taskset -c "$PROXY_CPU" "$PROXY_BIN" --config "$dir/proxy.yaml" --threads 1 \
    --watch-interval 0s > "$dir/proxy.log" 2>&1 &
  local pid=$!
  wait_port "$port" "$pid"
  echo "$pid"
}

vcl_backends() {
  local n="$1"
  for k in $(seq 0 $((n - 1))); do
    echo "backend b$k { .host = \"127.0.0.1\"; .port = \"${BPORTS[$k]}\"; }"
  done
}

# Strongest modern form: the retry happens inside the backend fetch, so
# requests waiting on the same object stay collapsed on one busy object.
vcl_retry() {
  local n="$1"
  echo "vcl 4.1;"
  vcl_backends "$n"
  echo "sub vcl_recv {"
  echo "  if (req.method != \"GET\" && req.method != \"HEAD\") { return (pipe); }"
  echo "  return (hash);"
  echo "}"
  echo "sub vcl_backend_fetch {"
  for k in $(seq 0 $((n - 1))); do
    if [[ $k -eq 0 ]]; then echo "  if (bereq.retries == 0) { set bereq.backend = b0; }"
    else echo "  elsif (bereq.retries == $k) { set bereq.backend = b$k; }"; fi
  done
  echo "}"
  echo "sub vcl_backend_response {"
  echo "  if (beresp.status == 404 && bereq.retries < $((n - 1))) { return (retry); }"
  echo "  if (beresp.http.Set-Cookie) { set beresp.uncacheable = true; return (deliver); }"
  echo "}"
}

# The seed's form: restart the whole request on a 404 (Varnish 2's restart
# in vcl_fetch becomes restart in vcl_deliver; the intermediate 404 is not
# cached, as it was not in the seed, where restart came before insertion).
vcl_restart() {
  local n="$1"
  echo "vcl 4.1;"
  vcl_backends "$n"
  echo "sub vcl_recv {"
  for k in $(seq 0 $((n - 1))); do
    if [[ $k -eq 0 ]]; then echo "  if (req.restarts == 0) { set req.backend_hint = b0; }"
    else echo "  elsif (req.restarts == $k) { set req.backend_hint = b$k; }"; fi
  done
  echo "  set req.http.X-Restarts = req.restarts;"
  echo "  if (req.method != \"GET\" && req.method != \"HEAD\") { return (pipe); }"
  echo "  return (hash);"
  echo "}"
  echo "sub vcl_backend_response {"
  echo "  if (beresp.status == 404 && std.integer(bereq.http.X-Restarts, 0) < $((n - 1))) {"
  echo "    set beresp.ttl = 0s; set beresp.uncacheable = true; return (deliver);"
  echo "  }"
  echo "  if (beresp.http.Set-Cookie) { set beresp.uncacheable = true; return (deliver); }"
  echo "}"
  echo "sub vcl_deliver {"
  echo "  if (resp.status == 404 && req.restarts < $((n - 1))) { return (restart); }"
  echo "}"
}

start_varnish() { # port n form -> pid
  local port="$1" n="$2" form="$3" dir="$WORK/varnish-$1"
  mkdir -p "$dir"
  if [[ "$form" == retry ]]; then vcl_retry "$n" > "$dir/fallback.vcl"
  else { vcl_restart "$n" | sed '1a import std;'; } > "$dir/fallback.vcl"; fi
  taskset -c "$PROXY_CPU" /usr/sbin/varnishd -F -n "$dir/n" -a "127.0.0.1:$port" \
    -f "$dir/fallback.vcl" -s malloc,256m -T none \
    -p thread_pools=1 -p max_retries=$((n > 4 ? n : 4)) -p max_restarts=$((n > 4 ? n : 4)) \
    -p default_ttl=600 > "$dir/varnish.log" 2>&1 &
  local pid=$!
  wait_port "$port" "$pid"
  echo "$pid"
}

start_nginx_fallback() { # port n -> pid
  local port="$1" n="$2" dir="$WORK/ngxfb-$1"
  mkdir -p "$dir/tmp" "$dir/cache"
  {
    echo "daemon off; master_process off; worker_processes 1; user root;"
    echo "pid $dir/nginx.pid; error_log $dir/error.log warn;"
    echo "events { worker_connections 4096; }"
    echo "http { access_log off;"
    echo "  client_body_temp_path $dir/tmp/b; proxy_temp_path $dir/tmp/p; fastcgi_temp_path $dir/tmp/f;"
    echo "  uwsgi_temp_path $dir/tmp/u; scgi_temp_path $dir/tmp/s;"
    echo "  proxy_cache_path $dir/cache levels=1:2 keys_zone=z:32m max_size=256m inactive=10m;"
    echo "  upstream b {"
    for k in $(seq 0 $((n - 1))); do echo "    server 127.0.0.1:${BPORTS[$k]};"; done
    echo "    keepalive 64; }"
    echo "  server { listen 127.0.0.1:$port;"
    echo "    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\";"
    echo "      proxy_set_header Host \$host;"
    echo "      proxy_next_upstream error timeout http_404; proxy_next_upstream_tries $n;"
    echo "      proxy_cache z; proxy_cache_valid 200 10m; proxy_cache_valid 404 10s; proxy_cache_lock on; }"
    echo "  }"
    echo "}"
  } > "$dir/nginx.conf"
  taskset -c "$PROXY_CPU" /usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
    > /dev/null 2>&1 &
  local pid=$!
  wait_port "$port" "$pid"
  echo "$pid"
}

# ---- measurement ---------------------------------------------------------

ROWS=()
# Run wrk once; results in W_* globals, progress on stderr.
run_wrk() { # system n scenario port script args...
  local sys="$1" n="$2" scen="$3" port="$4" script="$5"; shift 5
  local before after out res
  before=$(backend_hits)
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"${WRK_CONNS:-$CONNS}" -d"${DURATION}s" -s "$HERE/$script" \
        "http://127.0.0.1:$port" -- "$@" 2>&1) || true
  sleep 0.2
  after=$(backend_hits)
  res=$(echo "$out" | grep '^RESULT' | tail -1)
  if [[ -z "$res" ]]; then
    echo "wrk failed for $sys/$scen: $out" >&2
    W_RPS=0; W_P50=-; W_P99=-; W_BEPR=-; W_REQ=0; W_ERR=-; W_NON2XX=-
    return
  fi
  local requests duration_us p50_us p99_us errors non2xx
  eval "$(echo "$res" | sed 's/^RESULT //')"
  W_RPS=$(awk -v r="$requests" -v d="$duration_us" 'BEGIN{printf "%.0f", r/(d/1e6)}')
  # wrk keeps the clock running after the cold pass stops its thread, so
  # req/s is meaningless there; latency and be/req are what counts.
  [[ "$scen" == cold ]] && W_RPS="-"
  W_P50=$(awk -v v="$p50_us" 'BEGIN{printf "%.2f", v/1000}')
  W_P99=$(awk -v v="$p99_us" 'BEGIN{printf "%.2f", v/1000}')
  W_BEPR=$(awk -v b="$((after - before))" -v r="$requests" 'BEGIN{ if (r>0) printf "%.2f", b/r; else print "-"}')
  W_REQ=$requests; W_ERR=$errors; W_NON2XX=$non2xx
  # A stampede is about how many fetches reach the backends at all.
  [[ "$scen" == stampede ]] && W_BEPR="$((after - before)) total"
  printf '  [load %s] %-16s %-6s %9s req/s  p50 %7s ms  p99 %7s ms  be/req %5s  (%s req, %s err, %s non2xx)\n' \
    "$(cut -d' ' -f1 /proc/loadavg)" "$sys" "$scen" "$W_RPS" "$W_P50" "$W_P99" "$W_BEPR" \
    "$W_REQ" "$W_ERR" "$W_NON2XX" >&2
}

add_row() { # n sys scen
  ROWS+=("$1|$2|$3|$W_RPS|$W_P50|$W_P99|$W_BEPR|$W_REQ|$W_ERR|$W_NON2XX")
}

peak_rss_mib() { # pid: max VmHWM of the process and its children
  local pid="$1" max=0 v c
  for c in "$pid" $(pgrep -P "$pid" 2>/dev/null); do
    v=$(awk '/VmHWM/{print $2}' "/proc/$c/status" 2>/dev/null || echo 0)
    (( ${v:-0} > max )) && max=$v
  done
  echo $((max / 1024))
}

declare -A RSS UPLOAD
SYS_LIST=(${SYSTEMS:-zetaback varnish-retry varnish-restart nginx-fallback})
ROUNDS="${ROUNDS:-3}"
for n in "${NS[@]}"; do
  CUR_N="$n"
  echo "== N=$n: preparing $FILES files over $n nginx backends" >&2
  make_docroots "$n"
  BPORTS=()
  BPIDS=()
  for k in $(seq 0 $((n - 1))); do
    alloc_port; p=$PORT
    BPORTS+=("$p")
    bp=$(start_backend "$WORK/n$n/b$k" "$p" "b$k")
    BPIDS+=("$bp")
    PIDS+=("$bp")
  done
  # All systems up at once (idle ones cost nothing); scenarios interleave
  # them so that background load on this shared machine hits all alike.
  declare -A SPORT=() SPID=()
  for sys in "${SYS_LIST[@]}"; do
    alloc_port; port=$PORT
    case "$sys" in
      zetaback) alloc_port; pid=$(start_zetaback "$port" "$n" "$PORT") ;;
      varnish-retry) pid=$(start_varnish "$port" "$n" retry) ;;
      varnish-restart) pid=$(start_varnish "$port" "$n" restart) ;;
      nginx-fallback) pid=$(start_nginx_fallback "$port" "$n") ;;
      *) echo "unknown system $sys" >&2; exit 1 ;;
    esac
    PIDS+=("$pid")
    SPORT[$sys]=$port; SPID[$sys]=$pid
  done

  for sys in "${SYS_LIST[@]}"; do
    run_wrk "$sys" "$n" cold "${SPORT[$sys]}" cold.lua "$FILES"; add_row "$n" "$sys" cold
    if (( W_REQ < FILES )); then
      # The cold pass ran out of time: finish warming (not recorded) so
      # that the hit runs are all hits.
      run_wrk "$sys" "$n" warm "${SPORT[$sys]}" cold.lua "$FILES"
    fi
  done

  # Hits: ROUNDS alternating rounds, the median round (by req/s) is kept.
  # The first N also measures nginx serving its own files directly (the
  # ceiling), pinned to the proxy CPU.
  hit_sys=("${SYS_LIST[@]}")
  [[ "$n" == "${NS[0]}" ]] && hit_sys=(nginx-direct "${hit_sys[@]}")
  declare -A HITS=()
  for r in $(seq 1 "$ROUNDS"); do
    for sys in "${hit_sys[@]}"; do
      if [[ "$sys" == nginx-direct ]]; then
        taskset -cp "$PROXY_CPU" "${BPIDS[0]}" >/dev/null
        run_wrk nginx-direct "$n" hit "${BPORTS[0]}" walk.lua direct "$FILES" x "$n"
        taskset -cp "$LOAD_CPU" "${BPIDS[0]}" >/dev/null
      else
        run_wrk "$sys" "$n" hit "${SPORT[$sys]}" walk.lua hit "$FILES"
      fi
      HITS[$sys]+="$W_RPS|$W_P50|$W_P99|$W_BEPR|$W_REQ|$W_ERR|$W_NON2XX"$'\n'
    done
  done
  for sys in "${hit_sys[@]}"; do
    med=$(printf '%s' "${HITS[$sys]}" | sort -t'|' -k1,1n | awk -v k="$(( (ROUNDS + 1) / 2 ))" 'NR==k')
    IFS='|' read -r W_RPS W_P50 W_P99 W_BEPR W_REQ W_ERR W_NON2XX <<< "$med"
    add_row "$n" "$sys" hit
  done

  for sys in "${SYS_LIST[@]}"; do
    run_wrk "$sys" "$n" known "${SPORT[$sys]}" walk.lua known "$FILES" "$sys$n"; add_row "$n" "$sys" known
  done

  # Stampede: 1,000 connections on one key that expires every 2 s and lives
  # on the last backend; what counts is the number of backend fetches.
  for sys in "${SYS_LIST[@]}"; do
    WRK_CONNS=1000 run_wrk "$sys" "$n" stampede "${SPORT[$sys]}" walk.lua hot "$FILES"
    add_row "$n" "$sys" stampede
  done

  # A new upload on the last backend: how long until each system serves it
  # (after a client already got the 404).
  for sys in "${SYS_LIST[@]}"; do
    path="/files/new-$sys.txt"
    curl -s -o /dev/null "http://127.0.0.1:${SPORT[$sys]}$path" || true
    echo "uploaded" > "$WORK/n$n/b$((n - 1))/www/files/new-$sys.txt"
    t0=$(date +%s.%N); seen=""
    while :; do
      code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${SPORT[$sys]}$path" || true)
      el=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
      if [[ "$code" == 200 ]]; then seen="$el s"; break; fi
      if awk -v e="$el" 'BEGIN{exit !(e > 20)}'; then seen="> 20 s"; break; fi
      sleep 0.2
    done
    UPLOAD["$n/$sys"]="$seen"
    echo "  upload on b$((n - 1)) visible through $sys after $seen" >&2
  done

  for sys in "${SYS_LIST[@]}"; do
    RSS["$n/$sys"]=$(peak_rss_mib "${SPID[$sys]}")
    stop_pid "${SPID[$sys]}"
  done
  for p in "${BPIDS[@]}"; do stop_pid "$p"; done
  rm -rf "$WORK/n$n"
done

# ---- report --------------------------------------------------------------
{
  echo "Run: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, wrk -t1 -c$CONNS -d${DURATION}s, proxy on CPU $PROXY_CPU, wrk+backends on CPU $LOAD_CPU, $FILES files (200-2200 B)."
  echo "varnishd $(/usr/sbin/varnishd -V 2>&1 | head -1 | sed 's/.*(varnish-\([0-9.]*\).*/\1/'), nginx $(/usr/sbin/nginx -v 2>&1 | sed 's|.*/||'), zetaback-proxy (release, 1 worker thread)."
  echo
  echo "| N | system | scenario | req/s | p50 ms | p99 ms | backend req / client req | requests | errors | non-2xx |"
  echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
  for r in "${ROWS[@]}"; do echo "| ${r//|/ | } |"; done
  echo
  echo "Ratios zetaback / varnish-retry (req/s; p99; backend req per request):"
  echo
  echo "| N | scenario | req/s ratio | p99 zetaback / varnish-retry | be/req zetaback / varnish-retry |"
  echo "|---|---|---:|---|---|"
  for n in "${NS[@]}"; do
    for scen in cold hit known; do
      z=""; v=""
      for r in "${ROWS[@]}"; do
        IFS='|' read -r rn rs rsc rrps rp50 rp99 rbe _ <<< "$r"
        [[ "$rn" == "$n" && "$rsc" == "$scen" && "$rs" == zetaback ]] && z="$rrps|$rp99|$rbe"
        [[ "$rn" == "$n" && "$rsc" == "$scen" && "$rs" == varnish-retry ]] && v="$rrps|$rp99|$rbe"
      done
      if [[ -n "$z" && -n "$v" ]]; then
        IFS='|' read -r zr zp zb <<< "$z"; IFS='|' read -r vr vp vb <<< "$v"
        ratio=$(awk -v a="$zr" -v b="$vr" 'BEGIN{ if (b+0>0) printf "%.2f", a/b; else print "-"}')
        echo "| $n | $scen | $ratio | $zp / $vp ms | $zb / $vb |"
      fi
    done
  done
  echo
  echo "New upload on the last backend, after a client already got its 404: time until served"
  echo "(zetaback notFoundTtl 10s; Varnish caches the final 404 for default_ttl, 600 s here; nginx-fallback proxy_cache_valid 404 10s):"
  echo
  for n in "${NS[@]}"; do
    line="N=$n:"
    for sys in "${SYS_LIST[@]}"; do line+=" $sys ${UPLOAD[$n/$sys]:-?};"; done
    echo "$line"
  done
  echo
  echo "Peak RSS (VmHWM, MiB; Varnish: its cache process), maxSize 256 MiB for zetaback and Varnish (-s malloc,256m):"
  echo
  for n in "${NS[@]}"; do
    line="N=$n:"
    for sys in "${SYS_LIST[@]}"; do line+=" $sys ${RSS[$n/$sys]:-?};"; done
    echo "$line"
  done
} | tee "$OUT"
