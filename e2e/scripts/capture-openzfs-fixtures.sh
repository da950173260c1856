#!/usr/bin/env bash
# Captures, from the real OpenZFS in the test VM (e2e/scripts/openzfs-vm.sh), the output of
# every `zfs`/`zpool` command whose output the agent parses, into agent/tests/fixtures/
# (openzfs-<version>-*.txt). The parser tests read these files, so a parser that no longer
# matches what OpenZFS prints fails them.
#
#   capture-openzfs-fixtures.sh [OUT_DIR]    (default: agent/tests/fixtures)
#
# Boots the VM if it is not up (openzfs-vm.sh up), makes a pool `zbfix` on a file in the guest
# (the virtio disks belong to the openzfs test tier), a small dataset tree with snapshots, a volume, a bookmark, a hold,
# an encrypted dataset and an interrupted resumable receive, captures, and destroys the pool again.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/agent/tests/fixtures}
vm="$root/e2e/scripts/openzfs-vm.sh"
bash "$vm" up >/dev/null
guest() { bash "$vm" ssh "$@"; }
version=$(guest "zfs version | head -n1 | sed 's/^zfs-//; s/-.*//'")
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "capture: unexpected zfs version '$version'" >&2; exit 1; }
p="$out/openzfs-$version"
echo "capture: OpenZFS $version -> $p-*.txt" >&2

# The agent's inventory columns (agent/src/zfs/parse.rs INVENTORY_PROPERTIES).
props=type,creation,used,referenced,zetaback.io:managed,zetaback.io:class,zetaback.io:exclude

guest 'set -e
zpool destroy zbfix 2>/dev/null || true
rm -f /var/tmp/zbfix.img; truncate -s 256M /var/tmp/zbfix.img
zpool create -f -o cachefile=none -m /zbfix zbfix /var/tmp/zbfix.img
zfs create zbfix/db
zfs set zetaback.io:class=gold zbfix/db
head -c 1048576 /dev/urandom > /zbfix/db/a
zfs snapshot -o zetaback.io:managed=on zbfix/db@zb-1
head -c 262144 /dev/urandom > /zbfix/db/b
zfs snapshot zbfix/db@manual
zfs snapshot -o zetaback.io:managed=on zbfix/db@zb-2
zfs create -V 8M zbfix/vol
zfs create -o zetaback.io:exclude=on zbfix/db/scratch
zfs bookmark zbfix/db@zb-1 zbfix/db#zb-1
zfs hold zetaback zbfix/db@zb-1
# An encrypted dataset, for raw sends (`zfs send -w`): two snapshots.
echo zb-fixture-passphrase | zfs create -o encryption=on -o keyformat=passphrase -o keylocation=prompt zbfix/enc
head -c 65536 /dev/urandom > /zbfix/enc/a
zfs snapshot zbfix/enc@zb-1
head -c 65536 /dev/urandom > /zbfix/enc/b
zfs snapshot zbfix/enc@zb-2
# An interrupted resumable receive: the first 300 KiB of a full stream.
zfs send zbfix/db@zb-2 | head -c 307200 | zfs receive -s zbfix/partial 2>/dev/null || true
'
# `zfs` alone prints its usage to stderr and exits 2.
guest 'zfs 2>&1 || true' > "$p-usage.txt"
guest "zfs list -H -p -t all -o name,$props -r zbfix" > "$p-list.txt"
guest 'zpool list -H -o name,health zbfix' > "$p-zpool-list.txt"
guest 'zfs send -nP zbfix/db@zb-2' > "$p-send-nP-full.txt"
guest 'zfs send -nP -i zbfix/db@zb-1 zbfix/db@zb-2' > "$p-send-nP-incremental.txt"
guest 'zfs send -nP -i zbfix/db#zb-1 zbfix/db@zb-2' > "$p-send-nP-bookmark.txt"
guest 'zfs holds -H zbfix/db@zb-1' > "$p-holds.txt"
guest 'zfs get -H -p -o value receive_resume_token zbfix/partial' > "$p-resume-token.txt"
guest "zfs send -nvt \$(zfs get -H -p -o value receive_resume_token zbfix/partial) 2>&1" > "$p-send-nvt.txt"
guest 'zfs get -H -p -o value guid zbfix/db@zb-2' > "$p-guid.txt"
# The first record (DRR_BEGIN, 312 bytes) of real streams, as hex: what a store checks a
# sender's raw claim against (agent/src/stream_header.rs). Plain and raw single-dataset
# streams, a raw incremental, and compound streams (`-I`: a package header first).
drr_begin() { guest "zfs send $1 2>/dev/null | head -c 312 | od -An -tx1 -v"; }
drr_begin 'zbfix/db@zb-2' > "$p-drr-begin-plain.txt"
drr_begin '-w zbfix/enc@zb-1' > "$p-drr-begin-raw.txt"
drr_begin '-w -i zbfix/enc@zb-1 zbfix/enc@zb-2' > "$p-drr-begin-raw-incremental.txt"
drr_begin '-I zbfix/db@zb-1 zbfix/db@zb-2' > "$p-drr-begin-compound.txt"
drr_begin '-w -I zbfix/enc@zb-1 zbfix/enc@zb-2' > "$p-drr-begin-raw-compound.txt"
guest 'zfs release zetaback zbfix/db@zb-1; zpool destroy zbfix; rm -f /var/tmp/zbfix.img'
for f in "$p"-*.txt; do
  [ -s "$f" ] || { echo "capture: $f is empty" >&2; exit 1; }
done
echo "capture: wrote $(ls "$p"-*.txt | wc -l) files" >&2
