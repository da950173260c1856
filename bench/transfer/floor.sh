#!/usr/bin/env bash
# What each of the agent's per-byte jobs costs on this machine when done by a standard tool,
# for SIZE_MIB (default 1024) MiB of random data held in memory (/dev/shm), without ZFS:
#   - loopback TCP: socat reading a pipe and sending, socat receiving into /dev/null;
#   - loopback TCP with splice(2) on the sending side (python3's os.splice), to see what
#     zero-copy sending would save;
#   - sha256: `openssl dgst -sha256` (SHA-NI where the CPU has it);
#   - an O_DIRECT write: `dd oflag=direct bs=1M` to a file under BENCH_DIR.
# Prints CPU-seconds per GiB (user + system, from GNU time) and wall time for each, so the
# agents' CPU-s/GiB in run.sh's table can be read against the cost of the same work done
# by the usual tools. Not a test: numbers only.
#
#   bench/transfer/floor.sh [SIZE_MIB]   (needs socat, python3, openssl, GNU time)
set -euo pipefail
size_mib=${1:-1024}
dir=${BENCH_DIR:-/var/tmp/zetaback-bench-floor}
port=${BENCH_PORT:-17800}
data=/dev/shm/zetaback-floor.bin
command -v socat >/dev/null || apt-get install -y -q socat >/dev/null
for tool in python3 openssl /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "floor.sh: $tool not found" >&2; exit 1; }
done
cleanup() { rm -f "$data"; rm -rf "$dir"; }
trap cleanup EXIT
mkdir -p "$dir"
head -c "$(( size_mib * 1048576 ))" /dev/urandom >"$data"
gib=$(awk -v m="$size_mib" 'BEGIN{print m / 1024}')

# row NAME TIME_OUTPUT_FILE: the line "CPU=<user>+<sys> WALL=<s>" GNU time wrote.
row() {
  awk -v name="$1" -v g="$gib" -F'[=+ ]' '/^CPU=/{printf "| %s | %.2f | %.2f |\n", name, ($2 + $3) / g, $5 / g}' "$2"
}
tfmt='CPU=%U+%S WALL=%e'
wait_listen() {
  for _ in $(seq 1 200); do ss -ltnH "sport = :$port" | grep -q . && return 0; sleep 0.01; done
  echo "floor.sh: nothing listens on $port" >&2; exit 1
}

echo "| job ($size_mib MiB, $(nproc) cores) | CPU-s/GiB | wall s/GiB |"
echo "|---|---:|---:|"

/usr/bin/time -o "$dir/recv.t" -f "$tfmt" socat -u -b 1048576 \
  "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr" STDOUT >/dev/null &
listener=$!
wait_listen
cat "$data" | /usr/bin/time -o "$dir/send.t" -f "$tfmt" socat -u -b 1048576 STDIN "TCP:127.0.0.1:$port"
wait "$listener"
row "socat: pipe → loopback TCP (sending side)" "$dir/send.t"
row "socat: loopback TCP → /dev/null (receiving side)" "$dir/recv.t"

cat >"$dir/splice.py" <<'EOF'
import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
while os.splice(0, s.fileno(), 1 << 20) > 0:
    pass
s.close()
EOF
/usr/bin/time -o "$dir/recv2.t" -f "$tfmt" socat -u -b 1048576 \
  "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr" STDOUT >/dev/null &
listener=$!
wait_listen
cat "$data" | /usr/bin/time -o "$dir/splice.t" -f "$tfmt" python3 "$dir/splice.py" "$port"
wait "$listener"
row "splice(2): pipe → loopback TCP (sending side)" "$dir/splice.t"

/usr/bin/time -o "$dir/sha.t" -f "$tfmt" openssl dgst -sha256 "$data" >/dev/null
row "openssl dgst -sha256" "$dir/sha.t"

/usr/bin/time -o "$dir/dd.t" -f "$tfmt" dd if="$data" of="$dir/direct.bin" bs=1M oflag=direct status=none
row "dd oflag=direct bs=1M (no fsync needed)" "$dir/dd.t"
