#!/usr/bin/env bash
# A host running real, in-kernel OpenZFS for the tests: a Debian VM under QEMU (TCG emulation:
# KVM does not work on this machine), reached over ssh through user-mode networking.
#
#   openzfs-vm.sh build    builds the image once and caches it under
#                          ~/.cache/zetaback/vm/<key>/ (key: the Debian suite, the pinned
#                          OpenZFS version, this script's build code); prints that directory.
#                          A second run is a cache hit (seconds).
#   openzfs-vm.sh key      prints the image's cache key (what `build` would look up).
#   openzfs-vm.sh up       builds if needed, boots the VM with two empty virtio disks for pools
#                          (/dev/vdb, /dev/vdc), waits until sshd answers and `zpool version`
#                          works in the guest, copies the host's zetaback-agent binary to
#                          /usr/local/bin in the guest, prints how to reach it (env lines).
#                          Idempotent: a VM already up is reused.
#   openzfs-vm.sh ssh CMD… runs CMD in the guest as root (stdin passed through).
#   openzfs-vm.sh env      prints the env lines of the running VM (ssh port, agent port, key).
#   openzfs-vm.sh status   says whether the VM is up, and its OpenZFS and kernel versions.
#   openzfs-vm.sh down     powers the VM off (kills the qemu process this script started) and
#                          drops its writable overlay; the cached image stays.
#
# What is in the image: Debian bookworm (debootstrap --variant=minbase from Debian's packages),
# Linux 6.12 and OpenZFS 2.3.2 (zfs-dkms + zfsutils-linux) from bookworm-backports `contrib`,
# the zfs module built by DKMS for that kernel inside the image's chroot, openssh-server, udev.
# Why 2.3 and not bookworm's 2.1.11: 2.3 is the OpenZFS that current distributions ship and
# that production hosts run (2.2 added block cloning, 2.3 `zfs send`/`receive` changes and
# JSON output); the agent's parsers were written against 2.2's formats, and 2.1 would leave
# their newer fields untested. The guest boots the kernel directly (-kernel/-initrd) with a
# small init of its own (/sbin/zetaback-init: mounts, udev, `modprobe zfs`, network, sshd),
# which is much faster under emulation than systemd; it prints ZETABACK-VM-READY on the serial
# console when done.
#
# Network: QEMU user-mode networking. The host reaches the guest's sshd at
# 127.0.0.1:$ZETABACK_VM_SSH_PORT and the guest's agent (port 7790) at
# 127.0.0.1:$ZETABACK_VM_AGENT_PORT; the guest reaches the host's loopback at 10.0.2.2.
#
# Environment: ZETABACK_VM_SSH_PORT (default 10022), ZETABACK_VM_AGENT_PORT (default 17790),
# ZETABACK_VM_MEM (MiB, default 2048), ZETABACK_VM_CPUS (default 2),
# ZETABACK_VM_BOOT_TIMEOUT (seconds, default 600), ZETABACK_DEBIAN_MIRROR.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${ZETABACK_CACHE:-$HOME/.cache/zetaback}
vms="$cache/vm"
run="$vms/run"
mirror=${ZETABACK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
zfs_version=2.3.2
ssh_port=${ZETABACK_VM_SSH_PORT:-10022}
agent_port=${ZETABACK_VM_AGENT_PORT:-17790}
mem=${ZETABACK_VM_MEM:-2048}
cpus=${ZETABACK_VM_CPUS:-2}
boot_timeout=${ZETABACK_VM_BOOT_TIMEOUT:-600}

die() { echo "openzfs-vm.sh: $*" >&2; exit 1; }
log() { echo "openzfs-vm.sh: $(date -u +%H:%M:%S) $*" >&2; }

# ---- build ---------------------------------------------------------------------------------

# The init the guest runs as PID 1.
guest_init() {
  cat <<'EOF'
#!/bin/sh
# zetaback's OpenZFS test VM: PID 1 (see e2e/scripts/openzfs-vm.sh in the repository).
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
mount -o remount,rw /
hostname openzfs-vm
/lib/systemd/systemd-udevd --daemon
udevadm trigger --action=add
udevadm settle --timeout=120
modprobe zfs || echo "ZETABACK-VM-FAILED: modprobe zfs"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
mkdir -p /run/sshd
/usr/sbin/sshd -E /var/log/sshd.log
if zpool version >/dev/null 2>&1; then echo "ZETABACK-VM-READY $(zpool version | head -n1) $(uname -r)"; else echo "ZETABACK-VM-FAILED: zpool version"; fi
# PID 1 reaps orphans; `poweroff -f` (or the host killing qemu) ends the VM.
while :; do wait; sleep 5; done
EOF
}

# ---- phase timing: wall and CPU seconds (user+sys of every finished child) per build phase,
# so the build's cost on an idle machine can be estimated even when the machine is shared.
# Written to DIR/phases ("name wall_s cpu_s"), summed in DIR/versions.
# (`times` runs in this shell, not in a $(…) subshell: a forked shell starts its counts at zero.)
cpu_seconds() { # sets $cpu_now: user+sys of this shell's finished children, from bash's `times`
  times > "$build_dir/.times"
  cpu_now=$(tail -n1 "$build_dir/.times" | awk '{ t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } printf "%.1f\n", t }')
}
phase_begin() { phase_name=$1; phase_wall=$(date +%s); cpu_seconds; phase_cpu=$cpu_now; log "phase $1"; }
phase_end() {
  local wall cpu
  wall=$(( $(date +%s) - phase_wall ))
  cpu_seconds
  cpu=$(awk -v a="$cpu_now" -v b="$phase_cpu" 'BEGIN { printf "%.1f", a - b }')
  echo "$phase_name $wall $cpu" >> "$build_dir/phases"
  log "phase $phase_name: ${wall}s wall, ${cpu} CPU-s"
}

# chroot_mounts DIR / chroot_umounts DIR: /proc, /dev, /sys for a chroot.
chroot_mounts() { mount -t proc proc "$1/proc"; mount --bind /dev "$1/dev"; mount -t sysfs sys "$1/sys"; }
chroot_umounts() { umount -l "$1/proc" "$1/dev" "$1/sys" 2>/dev/null || true; }

# apt_in ROOT ARGS…: apt-get install, non-interactive, no recommends, logged to $build_dir/apt.log.
apt_in() {
  local r=$1; shift
  chroot "$r" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    >> "$build_dir/apt.log" 2>&1 || { tail -n 30 "$build_dir/apt.log" >&2; die "apt-get install $* failed (log: $build_dir/apt.log)"; }
}

# The zfs/spl kernel modules, built once per (kernel package, OpenZFS package) pair and cached
# under $vms/modules/<kernel>_<kernel package version>_<zfs package version>/, so a change to
# the rest of the image build does not recompile them (the compile is most of a cold build).
module_cache_dir() { echo "$vms/modules/$1_$2_$3"; }

# build_zfs_modules ROOT KVER ZVER OUT: builds zfs.ko/spl.ko for KVER with DKMS in a throwaway
# overlay over ROOT (the compiler, headers and DKMS never reach the image), into OUT.
# No debug info (-g0) and no BTF: DKMS strips the modules anyway, and the kernel's
# CONFIG_DEBUG_INFO would otherwise make gcc emit DWARF for every object (slower compile).
build_zfs_modules() {
  local r=$1 kver=$2 zver=$3 out=$4 ov m mods
  ov="$build_dir/modbuild"
  m="$ov/merged"
  rm -rf "$ov"; mkdir -p "$ov/upper" "$ov/work" "$m"
  mount -t overlay overlay -o "lowerdir=$r,upperdir=$ov/upper,workdir=$ov/work" "$m" || die "mounting an overlay for the module build failed"
  chroot_mounts "$m"
  # zfs-dkms before the headers: its install then finds no headers and builds nothing; the
  # headers' own hook would build at once, so it is removed and the build is run below.
  apt_in "$m" -t "$suite-backports" "zfs-dkms=$zver"
  rm -f "$m/etc/kernel/header_postinst.d/dkms"
  apt_in "$m" -t "$suite-backports" "linux-headers-$kver"
  chroot "$m" env MAKEFLAGS="DEBUG_CFLAGS=-g0 PAHOLE=true RESOLVE_BTFIDS=true" \
    dkms build "zfs/${zver%%-*}" -k "$kver" >> "$build_dir/dkms.log" 2>&1 ||
    { tail -n 30 "$build_dir/dkms.log" >&2; cat "$m/var/lib/dkms/zfs/${zver%%-*}/build/make.log" 2>/dev/null | tail -n 30 >&2
      chroot_umounts "$m"; umount -l "$m"; die "dkms build zfs for $kver failed (log: $build_dir/dkms.log)"; }
  mods="$m/var/lib/dkms/zfs/${zver%%-*}/$kver/x86_64/module"
  ls "$mods"/zfs.ko* "$mods"/spl.ko* >/dev/null 2>&1 || { chroot_umounts "$m"; umount -l "$m"; die "dkms built no zfs.ko/spl.ko in $mods"; }
  rm -rf "$out.tmp"; mkdir -p "$out.tmp"
  cp "$mods"/zfs.ko* "$mods"/spl.ko* "$out.tmp/"
  chroot_umounts "$m"
  umount "$m" || umount -l "$m"
  rm -rf "$ov"
  rm -rf "$out"; mv "$out.tmp" "$out"
}

# build_rootfs DIR: debootstrap + kernel + OpenZFS (modules from the cache, or built) + sshd
# into DIR/rootfs.
build_rootfs() {
  local dir=$1 r=$1/rootfs kver kpkg zver mods
  phase_begin debootstrap
  debootstrap --variant=minbase --components=main,contrib \
    --include=ca-certificates,udev,kmod,iproute2,openssh-server,procps,psmisc,initramfs-tools,zstd \
    "$suite" "$r" "$mirror" > "$dir/debootstrap.log" 2>&1 ||
    { tail -n 20 "$dir/debootstrap.log" >&2; die "debootstrap failed (log: $dir/debootstrap.log)"; }
  printf '#!/bin/sh\nexit 101\n' > "$r/usr/sbin/policy-rc.d"
  chmod 0755 "$r/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$r/etc/resolv.conf"
  printf 'deb %s %s main contrib\ndeb %s %s-backports main contrib\n' "$mirror" "$suite" "$mirror" "$suite" \
    > "$r/etc/apt/sources.list"
  # The guest boots its kernel directly: the initramfs only has to find the virtio root disk
  # (ext4). A listed set of modules makes it small and quick to build (MODULES=most copies
  # hundreds); ZFS is loaded from the root file system by the guest's init, not from here.
  printf 'MODULES=list\n' > "$r/etc/initramfs-tools/conf.d/zetaback.conf"
  printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic >> "$r/etc/initramfs-tools/modules"
  chroot_mounts "$r"
  trap 'chroot_umounts "$r"' EXIT
  chroot "$r" apt-get update -qq > "$dir/apt.log" 2>&1 || { tail -n 20 "$dir/apt.log" >&2; die "apt-get update in the chroot failed"; }
  zver=$(chroot "$r" apt-cache madison zfs-dkms | awk -v v="$zfs_version" '$3 ~ "^" v "-" {print $3; exit}')
  [ -n "$zver" ] || die "Debian serves no zfs-dkms $zfs_version (apt-cache madison zfs-dkms in the chroot)"
  phase_end
  phase_begin kernel
  apt_in "$r" -t "$suite-backports" linux-image-amd64
  kver=$(ls "$r/lib/modules" | sort -V | tail -n1)
  [ -f "$r/boot/vmlinuz-$kver" ] || die "no kernel image for $kver in the chroot"
  [ -f "$r/boot/initrd.img-$kver" ] || die "no initramfs for $kver in the chroot"
  kpkg=$(chroot "$r" dpkg-query -W -f '${Version}' "linux-image-$kver")
  phase_end
  mods=$(module_cache_dir "$kver" "$kpkg" "$zver")
  if [ -f "$mods/zfs.ko" ] || [ -f "$mods/zfs.ko.xz" ]; then
    log "zfs/spl modules for $kver ($kpkg), OpenZFS $zver: cached in $mods"
  else
    phase_begin zfs-module
    log "building the zfs/spl modules with DKMS for $kver ($kpkg), OpenZFS $zver"
    build_zfs_modules "$r" "$kver" "$zver" "$mods"
    phase_end
  fi
  phase_begin zfsutils
  # zfsutils-linux only recommends zfs-dkms: the modules come from the cache.
  apt_in "$r" -t "$suite-backports" "zfsutils-linux=$zver"
  mkdir -p "$r/lib/modules/$kver/updates/zfs"
  cp "$mods"/* "$r/lib/modules/$kver/updates/zfs/"
  chroot "$r" depmod "$kver"
  chroot "$r" modinfo -k "$kver" -F version zfs | grep -q "^${zver%%-*}" ||
    die "modinfo zfs for $kver in the image does not say OpenZFS ${zver%%-*}"
  phase_end
  phase_begin finish
  # Access: root over ssh with a key made for this image only.
  ssh-keygen -q -t ed25519 -N '' -C zetaback-openzfs-vm -f "$dir/id_ed25519"
  mkdir -p "$r/root/.ssh"
  cp "$dir/id_ed25519.pub" "$r/root/.ssh/authorized_keys"
  chmod 0700 "$r/root/.ssh"; chmod 0600 "$r/root/.ssh/authorized_keys"
  chroot "$r" ssh-keygen -A >/dev/null
  printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n' > "$r/etc/ssh/sshd_config.d/zetaback.conf"
  guest_init > "$r/sbin/zetaback-init"
  chmod 0755 "$r/sbin/zetaback-init"
  echo openzfs-vm > "$r/etc/hostname"
  # What the image holds, for `status` and the report.
  { echo "kernel=$kver"; echo "kernel_package=$kpkg"; echo "zfs=$zver"; echo "suite=$suite"; } > "$dir/versions"
  cp "$r/boot/vmlinuz-$kver" "$dir/vmlinuz"
  cp "$r/boot/initrd.img-$kver" "$dir/initrd.img"
  chroot "$r" apt-get clean
  chroot_umounts "$r"
  trap - EXIT
  rm -f "$r/usr/sbin/policy-rc.d" "$r/etc/resolv.conf"
  rm -rf "$r"/var/lib/apt/lists/* "$r"/usr/share/man/* "$r"/usr/share/doc/*
}

image_key() {
  printf '%s\n' "$suite" "$mirror" "$zfs_version" "$(declare -f build_rootfs build_zfs_modules apt_in chroot_mounts guest_init image_key)" |
    sha256sum | cut -c1-16
}

cmd_build() {
  local key dir start size
  key=$(image_key)
  dir="$vms/$key"
  if [ -f "$dir/done" ]; then ln -sfn "$key" "$vms/current"; echo "$dir"; return; fi
  [ "$(id -u)" -eq 0 ] || die "building the image needs root (debootstrap, chroot)"
  for c in debootstrap mkfs.ext4 qemu-system-x86_64 qemu-img ssh ssh-keygen; do
    command -v "$c" >/dev/null || die "$c is missing (e2e/scripts/install-deps.sh installs it)"
  done
  mkdir -p "$vms"
  # One build at a time (e2e/test.sh starts one in the background; a second caller waits).
  exec 8> "$vms/build.lock"
  flock 8
  if [ -f "$dir/done" ]; then ln -sfn "$key" "$vms/current"; echo "$dir"; return; fi
  start=$(date +%s)
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp"
  build_dir="$dir.tmp"
  build_rootfs "$dir.tmp"
  phase_begin mkfs
  size=$(du -sm "$dir.tmp/rootfs" | cut -f1)
  log "root file system image ($size MiB of files)"
  mkfs.ext4 -q -L zetaroot -d "$dir.tmp/rootfs" "$dir.tmp/root.img" "$((size + 768))M" ||
    die "mkfs.ext4 -d failed"
  rm -rf "$dir.tmp/rootfs"
  phase_end
  rm -f "$dir.tmp/.times"
  echo "build_seconds=$(( $(date +%s) - start ))" >> "$dir.tmp/versions"
  echo "build_cpu_seconds=$(awk '{ s += $3 } END { printf "%.0f", s }' "$dir.tmp/phases")" >> "$dir.tmp/versions"
  touch "$dir.tmp/done"
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
  ln -sfn "$key" "$vms/current"
  # Keep only this build.
  # (`|| true`: with no other build, grep -v selects nothing and fails, and pipefail with it.)
  { ls -1d "$vms"/[0-9a-f]*[0-9a-f] 2>/dev/null | grep -E '/[0-9a-f]{16}$' | grep -v "/$key\$" | xargs -r rm -rf; } || true
  log "built in $(( $(date +%s) - start ))s: $dir ($(cat "$dir/versions" | paste -sd' '))"
  log "phases (name, wall s, CPU s): $(paste -sd' ' "$dir/phases" | sed 's/ \([a-z]\)/; \1/g')"
  echo "$dir"
}

# ---- run -----------------------------------------------------------------------------------

image_dir() { local d; d=$(readlink -f "$vms/current" 2>/dev/null) && [ -f "$d/done" ] && echo "$d"; }

# The image the running VM booted (its ssh key), else the current one: a VM booted from an
# older image keeps being reachable after the image was rebuilt.
booted_image_dir() {
  local d
  if our_qemu >/dev/null && d=$(cat "$run/image" 2>/dev/null) && [ -f "$d/id_ed25519" ]; then echo "$d"; else image_dir; fi
}

ssh_opts() {
  local d; d=$(booted_image_dir) || die "no image: run openzfs-vm.sh build"
  echo "-i $d/id_ed25519 -p $ssh_port -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=10 -o BatchMode=yes"
}

# Our qemu, if it still runs.
our_qemu() {
  local pid
  pid=$(cat "$run/qemu.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = qemu-system-x86 ] && echo "$pid"
}

guest() { # shellcheck disable=SC2046
  ssh $(ssh_opts) root@127.0.0.1 "$@"
}

print_env() {
  local d; d=$(booted_image_dir)
  echo "ZETABACK_VM_SSH=ssh -i $d/id_ed25519 -p $ssh_port -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes root@127.0.0.1"
  echo "ZETABACK_VM_SSH_PORT=$ssh_port"
  echo "ZETABACK_VM_SSH_KEY=$d/id_ed25519"
  echo "ZETABACK_VM_AGENT_PORT=$agent_port"
  echo "ZETABACK_VM_HOST_ADDR=10.0.2.2"
  echo "ZETABACK_VM_DISKS=/dev/vdb /dev/vdc"
}

agent_binary() {
  local b=${ZETABACK_VM_AGENT_BIN:-${CARGO_TARGET_DIR:-$cache/target}/debug/zetaback-agent}
  [ -x "$b" ] || die "no agent binary at $b (cargo build -p zetaback-agent, or set ZETABACK_VM_AGENT_BIN)"
  echo "$b"
}

# Boots the VM once: 0 when the guest said ZETABACK-VM-READY, 2 when its kernel panicked while
# booting (qemu exits: -no-reboot, panic=-1), dies on anything else.
boot_once() {
  local d=$1 start=$2 i
  rm -f "$run/overlay.qcow2" "$run/serial.log" "$run/image"
  qemu-img create -q -f qcow2 -b "$d/root.img" -F raw "$run/overlay.qcow2"
  for disk in pool1 pool2; do rm -f "$run/$disk.img"; truncate -s 1G "$run/$disk.img"; done
  qemu-system-x86_64 -name zetaback-openzfs -machine q35 -accel tcg,thread=multi \
    -cpu max -smp "$cpus" -m "$mem" -no-reboot \
    -kernel "$d/vmlinuz" -initrd "$d/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 init=/sbin/zetaback-init quiet panic=-1" \
    -drive "file=$run/overlay.qcow2,if=virtio,format=qcow2,cache=unsafe" \
    -drive "file=$run/pool1.img,if=virtio,format=raw,cache=unsafe" \
    -drive "file=$run/pool2.img,if=virtio,format=raw,cache=unsafe" \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$ssh_port-:22,hostfwd=tcp:127.0.0.1:$agent_port-:7790" \
    -device virtio-net-pci,netdev=n0 \
    -serial "file:$run/serial.log" -monitor none -display none \
    -daemonize -pidfile "$run/qemu.pid" ||
    die "qemu failed to start"
  echo "$d" > "$run/image"
  log "booting (qemu pid $(cat "$run/qemu.pid"), serial console: $run/serial.log)"
  for ((i = 0; ; i++)); do
    grep -q 'ZETABACK-VM-FAILED' "$run/serial.log" 2>/dev/null &&
      { tail -n 30 "$run/serial.log" >&2; die "the guest failed: $(grep -a ZETABACK-VM-FAILED "$run/serial.log" | head -n1)"; }
    grep -q 'ZETABACK-VM-READY' "$run/serial.log" 2>/dev/null && return 0
    if ! our_qemu >/dev/null; then
      tail -n 30 "$run/serial.log" >&2
      grep -aq 'Kernel panic' "$run/serial.log" 2>/dev/null && return 2
      die "qemu exited while booting"
    fi
    [ $(( $(date +%s) - start )) -lt "$boot_timeout" ] ||
      { tail -n 30 "$run/serial.log" >&2; die "no ZETABACK-VM-READY within ${boot_timeout}s"; }
    sleep 1
  done
}

# Boot attempts: the guest kernel can panic early under TCG's multi-threaded emulation (seen once:
# "Oops: int3" in sched_clock_idle_wakeup_event while the kernel patched its own code, on a host
# loaded with other work), a fault of the emulator, not of ZFS or zetaback. Such a boot is retried,
# loudly, and kept as serial-panic-<n>.log; a third panic fails.
boot_attempts=3

cmd_up() {
  local d start pid i agent attempt rc
  d=$(cmd_build)
  agent=$(agent_binary)
  mkdir -p "$run"
  if pid=$(our_qemu); then
    log "already up (qemu pid $pid)"
  else
    start=$(date +%s)
    for ((attempt = 1; ; attempt++)); do
      rc=0
      boot_once "$d" "$start" || rc=$?
      [ "$rc" = 0 ] && break
      cp "$run/serial.log" "$run/serial-panic-$attempt.log"
      [ "$attempt" -lt "$boot_attempts" ] ||
        die "the guest kernel panicked while booting, $attempt times (serial consoles: $run/serial-panic-*.log)"
      log "THE GUEST KERNEL PANICKED WHILE BOOTING (attempt $attempt of $boot_attempts; an emulator fault, kept as $run/serial-panic-$attempt.log): booting again"
    done
    for ((i = 0; i < 60; i++)); do guest true 2>/dev/null && break; sleep 1; done
    guest zpool version >/dev/null || die "ssh to the guest or zpool there failed"
    echo "boot_seconds=$(( $(date +%s) - start ))" > "$run/boot"
    log "ready in $(( $(date +%s) - start ))s: $(grep -a -o 'ZETABACK-VM-READY.*' "$run/serial.log" | tr -d '\r')"
  fi
  # The agent the host built (same Debian release, so the same glibc).
  if ! cmp -s <(sha256sum < "$agent" | cut -d' ' -f1) <(guest 'sha256sum < /usr/local/bin/zetaback-agent 2>/dev/null | cut -d" " -f1'); then
    guest 'cat > /usr/local/bin/zetaback-agent.tmp && chmod 0755 /usr/local/bin/zetaback-agent.tmp && mv /usr/local/bin/zetaback-agent.tmp /usr/local/bin/zetaback-agent' < "$agent"
  fi
  print_env
}

cmd_down() {
  local pid
  if pid=$(our_qemu); then
    guest 'sync; poweroff -f' >/dev/null 2>&1 || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$run/qemu.pid" "$run/overlay.qcow2" "$run/pool1.img" "$run/pool2.img" "$run/image"
  echo "openzfs-vm.sh: down"
}

cmd_status() {
  local pid d
  d=$(image_dir) || { echo "no image (openzfs-vm.sh build)"; return 1; }
  echo "image: $d ($(paste -sd' ' "$d/versions"))"
  if pid=$(our_qemu); then
    echo "up: qemu pid $pid, $(cat "$run/boot" 2>/dev/null)"
    guest 'zfs version | paste -sd" "; uname -r' || { echo "but ssh fails"; return 1; }
  else
    echo "down"; return 1
  fi
}

case "${1:-}" in
  build) cmd_build ;;
  key) image_key ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) our_qemu >/dev/null || die "not up"; print_env ;;
  ssh) shift; guest "$@" ;;
  *) echo "usage: openzfs-vm.sh build|key|up|down|status|env|ssh CMD…" >&2; exit 2 ;;
esac
