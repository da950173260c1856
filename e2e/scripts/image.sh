#!/usr/bin/env bash
# Builds zetaback's container images (controller, agent, proxy) the way the repository's
# Containerfile describes them, without a registry and without a container daemon, and checks
# that the result matches that file.
#
#   image.sh build    builds the binaries (cargo, profile $ZETABACK_IMAGE_PROFILE: debug or
#                     release, default debug), then the three images as OCI image layouts and
#                     oci-archive tarballs under ~/.cache/zetaback/images/<key>/ (key: the
#                     binaries' hashes, the Containerfile, this script); prints that directory.
#                     A second run with the same binaries is a cache hit. `images/current`
#                     points at the newest.
#   image.sh check    checks the newest build against the Containerfile's final stages: each
#                     image's config (USER, ENTRYPOINT, ENV, EXPOSE) matches; its files are
#                     exactly what the COPY lines put there (controller, proxy: nothing else;
#                     agent: Debian + the ZFS userland beneath); the controller and proxy run
#                     as a non-root user; each binary runs (`--help`) inside its unpacked image
#                     under runc with a read-only root; the agent image's `zfs` reaches the
#                     node's zfs-fuse daemon through the host's /var/run/zfs mounted in.
#   image.sh sizes    prints each image's compressed (layers as stored) and unpacked size.
#   image.sh stage OUT BINDIR
#                     lays out what the Containerfile's final stages copy (OUT/bin: the three
#                     binaries; OUT/runtime: the libraries they link and /etc/passwd, /etc/group).
#                     The Containerfile's build stage runs this too, so both builds share it.
#
# How: the Debian base of the agent is made with `debootstrap --variant=minbase` from Debian's
# packages (cached under images/base-<key>.tar; no contrib here, so the local agent carries
# zfs-fuse's client: ZETABACK_ZFS_PACKAGE), the controller and proxy get an empty base; each
# COPY line becomes one layer (a reproducible tar), added and configured with `umoci`.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
self="$root/e2e/scripts/image.sh"
cache=${ZETABACK_CACHE:-$HOME/.cache/zetaback}
images="$cache/images"
containerfile=${ZETABACK_CONTAINERFILE:-$root/Containerfile}
profile=${ZETABACK_IMAGE_PROFILE:-debug}
zfs_package=${ZETABACK_ZFS_PACKAGE:-zfs-fuse}
mirror=${ZETABACK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
registry=ghcr.io/zetaback
targets=(controller agent proxy)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n1)
# The binaries whose libraries make the empty base of the controller and proxy images.
runtime_bins=(zetaback-controller zetaback-proxy)

die() { echo "image.sh: $*" >&2; exit 1; }
log() { echo "image.sh: $*" >&2; }

# ---- stage: the layout the final stages copy from ------------------------------------------

# stage OUT BINDIR: OUT/bin/<the three binaries, debug info stripped>, OUT/runtime/<libraries at their ldd paths>,
# OUT/runtime/etc/{passwd,group} (names for root and the non-root user 65532).
stage() {
  local out=$1 bindir=$2 b lib
  rm -rf "$out"
  mkdir -p "$out/bin" "$out/runtime/etc"
  for b in zetaback-controller zetaback-agent zetaback-proxy; do
    [ -x "$bindir/$b" ] || die "stage: $bindir/$b is missing (build it first)"
    # Without debug info (symbols stay, so a panic's backtrace still names functions): the
    # release profile keeps line tables of every dependency, 144 MB for the controller, 23 MB
    # stripped.
    strip --strip-debug -o "$out/bin/$b" "$bindir/$b"
    chmod 0755 "$out/bin/$b"
  done
  for b in "${runtime_bins[@]}"; do
    # ldd lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" and "/lib64/ld-linux… (0x…)".
    ldd "$out/bin/$b" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
  done | sort -u | while read -r lib; do
    cp -L --parents "$lib" "$out/runtime/"
  done
  [ -n "$(find "$out/runtime" -name 'libc.so*' -print -quit)" ] || die "stage: ldd listed no libc"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' \
    > "$out/runtime/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$out/runtime/etc/group"
  find "$out" -type d -exec chmod 0755 {} +
  find "$out/runtime" -type f -exec chmod a+r {} +
}

# ---- reading the Containerfile -------------------------------------------------------------

# stage_lines TARGET: the instructions of the final stage `FROM … AS TARGET`, continuation
# lines joined, comments and blank lines dropped, the FROM line first.
stage_lines() {
  awk -v t="$1" '
    { line = (held == "" ? $0 : held " " $0) }
    /\\$/ { sub(/\\$/, "", line); held = line; next }
    { held = "" }
    line ~ /^[ \t]*(#|$)/ { next }
    line ~ /^FROM / { n = split(line, w, /[ \t]+/); on = (n >= 4 && tolower(w[n-1]) == "as" && w[n] == t) }
    on { print line }
  ' "$containerfile"
}

# field LINES INSTRUCTION: the arguments of each INSTRUCTION line, one a line.
field() { printf '%s\n' "$1" | sed -n "s/^$2[ \t]\{1,\}//p"; }

# copies LINES: "SRC DST" of each `COPY --from=build SRC DST` (anything else is refused).
copies() {
  local line
  while read -r line; do
    [ -n "$line" ] || continue
    set -- $line
    [ $# -eq 3 ] && [ "$1" = --from=build ] && [[ "$2" == /out/* ]] ||
      die "unsupported COPY in $containerfile: COPY $line (want: COPY --from=build /out/… DEST)"
    echo "$2 $3"
  done <<< "$(field "$1" COPY)"
}

# ---- the agent's Debian base ---------------------------------------------------------------

# base_tar: a tarball of Debian (minbase) with the ZFS userland, made once per key.
base_tar() {
  local key tar dir
  key=$(printf '%s\n' "$suite" "$mirror" "$zfs_package" "$(declare -f base_tar)" | sha256sum | cut -c1-16)
  tar="$images/base-$key.tar"
  if [ -s "$tar" ]; then echo "$tar"; return; fi
  command -v debootstrap >/dev/null || die "debootstrap is missing (e2e/scripts/install-deps.sh installs it)"
  dir=$(mktemp -d "$images/base.XXXXXX")
  log "debootstrap --variant=minbase $suite + $zfs_package (once; cached as $tar)"
  debootstrap --variant=minbase "$suite" "$dir/rootfs" "$mirror" > "$dir/debootstrap.log" 2>&1 ||
    { tail -n 20 "$dir/debootstrap.log" >&2; die "debootstrap failed (log: $dir/debootstrap.log)"; }
  # No service may start inside the chroot (zfs-fuse's package would start a daemon).
  printf '#!/bin/sh\nexit 101\n' > "$dir/rootfs/usr/sbin/policy-rc.d"
  chmod 0755 "$dir/rootfs/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$dir/rootfs/etc/resolv.conf"
  chroot "$dir/rootfs" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends $zfs_package" > "$dir/apt.log" 2>&1 ||
    { tail -n 20 "$dir/apt.log" >&2; die "installing $zfs_package in the base failed"; }
  chroot "$dir/rootfs" apt-get clean
  rm -f "$dir/rootfs/usr/sbin/policy-rc.d" "$dir/rootfs/etc/resolv.conf"
  rm -rf "$dir"/rootfs/var/lib/apt/lists/* "$dir"/rootfs/var/cache/apt/*.bin \
    "$dir"/rootfs/usr/share/man/* "$dir"/rootfs/usr/share/info/* "$dir"/rootfs/var/log/*.log \
    "$dir"/rootfs/dev/* "$dir"/rootfs/proc/* "$dir"/rootfs/sys/* "$dir"/rootfs/run/*
  find "$dir/rootfs/usr/share/doc" -type f ! -name copyright -delete
  layer_tar "$dir/rootfs" "$tar.tmp"
  mv "$tar.tmp" "$tar"
  rm -rf "$dir"
  echo "$tar"
}

# layer_tar DIR TAR: DIR's contents as a reproducible layer (sorted, root-owned, fixed times).
layer_tar() {
  tar -C "$1" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -cf "$2" .
}

# ---- build ---------------------------------------------------------------------------------

bindir() {
  local dir=${CARGO_TARGET_DIR:-$cache/target}/$profile
  echo "$dir"
}

# The same command as e2e/test.sh's build (same packages, same features), so that after it this
# is a no-op and the images hold the binaries the tests ran.
build_binaries() {
  local flags=(--workspace --bins --locked)
  [ "$profile" = release ] && flags+=(--release)
  [ "$profile" = debug ] || [ "$profile" = release ] || die "ZETABACK_IMAGE_PROFILE is debug or release, not $profile"
  (cd "$root" && CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target} cargo build "${flags[@]}" >&2)
}

# build_image TARGET STAGE_DIR OUT_DIR: OUT_DIR/TARGET (OCI layout) and OUT_DIR/TARGET.tar.
build_image() {
  local t=$1 staged=$2 out=$3 lines from layout src dst layer n=0 user entrypoint env port
  lines=$(stage_lines "$t")
  [ -n "$lines" ] || die "no final stage 'FROM … AS $t' in $containerfile"
  from=$(field "$lines" FROM | awk '{print $1}')
  layout="$out/$t"
  umoci init --layout "$layout"
  umoci new --image "$layout:$version"
  case "$from" in
    scratch) field "$lines" RUN | grep -q . && die "stage $t: RUN on an empty base" ;;
    '${DEBIAN_IMAGE}') umoci raw add-layer --image "$layout:$version" "$(base_tar)" ;;
    *) die "stage $t: unsupported base $from" ;;
  esac
  while read -r src dst; do
    [ -n "$src" ] || continue
    n=$((n + 1))
    layer="$out/$t.layer$n"
    mkdir -p "$layer"
    if [[ "$src" == */ ]]; then
      mkdir -p "$layer$dst"
      cp -a "$staged${src#/out}." "$layer$dst/"
    else
      mkdir -p "$layer$(dirname "$dst")"
      cp -a "$staged${src#/out}" "$layer$dst"
    fi
    find "$layer" -type d -exec chmod 0755 {} +
    layer_tar "$layer" "$layer.tar"
    umoci raw add-layer --image "$layout:$version" "$layer.tar"
    rm -rf "$layer" "$layer.tar"
  done <<< "$(copies "$lines")"
  [ "$n" -gt 0 ] || die "stage $t copies nothing from the build"
  local args=(--image "$layout:$version" --os linux --architecture amd64)
  user=$(field "$lines" USER)
  [ -n "$user" ] && args+=(--config.user "$user")
  entrypoint=$(field "$lines" ENTRYPOINT)
  [ -n "$entrypoint" ] || die "stage $t has no ENTRYPOINT"
  while read -r e; do args+=(--config.entrypoint "$e"); done < <(jq -r '.[]' <<< "$entrypoint")
  while read -r env; do [ -n "$env" ] && args+=(--config.env "$env"); done <<< "$(field "$lines" ENV)"
  for port in $(field "$lines" EXPOSE); do args+=(--config.exposedports "$port/tcp"); done
  args+=(--clear=config.cmd)
  umoci config "${args[@]}" --tag "$version"
  umoci gc --layout "$layout"
  # containerd's `ctr images import` names the image after this annotation.
  jq --arg name "$registry/zetaback-$t:$version" \
    '.manifests |= map(.annotations["io.containerd.image.name"] = $name)' \
    "$layout/index.json" > "$layout/index.json.tmp"
  mv "$layout/index.json.tmp" "$layout/index.json"
  tar -C "$layout" --sort=name -cf "$out/$t.tar" .
}

cmd_build() {
  local start key dir
  start=$(date +%s)
  command -v umoci >/dev/null || die "umoci is missing (e2e/scripts/install-deps.sh installs it)"
  build_binaries
  mkdir -p "$images"
  key=$( { for b in zetaback-controller zetaback-agent zetaback-proxy; do sha256sum < "$(bindir)/$b"; done
           cat "$containerfile" "$self"; echo "$zfs_package $suite $mirror"; } | sha256sum | cut -c1-16)
  dir="$images/$key"
  if [ -f "$dir/done" ]; then
    ln -sfn "$key" "$images/current"
    log "cached: $dir"
    echo "$dir"
    return
  fi
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp"
  stage "$dir.tmp/stage" "$(bindir)"
  for t in "${targets[@]}"; do build_image "$t" "$dir.tmp/stage" "$dir.tmp"; done
  echo "$profile" > "$dir.tmp/profile"
  touch "$dir.tmp/done"
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
  ln -sfn "$key" "$images/current"
  # Keep the two newest builds (each holds three images).
  ls -1dt "$images"/[0-9a-f]*[0-9a-f] 2>/dev/null | grep -E '/[0-9a-f]{16}$' | tail -n +3 | xargs -r rm -rf
  log "built in $(( $(date +%s) - start ))s: $dir"
  echo "$dir"
}

# ---- check ---------------------------------------------------------------------------------

# config_of LAYOUT: the image config JSON of the layout's only manifest.
blob() { echo "$1/blobs/${2%%:*}/${2#*:}"; }
config_of() {
  local layout=$1 manifest
  manifest=$(blob "$layout" "$(jq -r '.manifests[0].digest' "$layout/index.json")")
  cat "$(blob "$layout" "$(jq -r '.config.digest' "$manifest")")"
}

fail=0
bad() { echo "image.sh check: $*" >&2; fail=1; }

# run_in BUNDLE NAME ARGS…: runs ARGS in the unpacked image under runc (read-only root, the
# image's user), extra mounts from $mounts (JSON array); prints the output, returns its status.
run_in() {
  local bundle=$1 name=$2; shift 2
  jq --argjson args "$(printf '%s\n' "$@" | jq -R . | jq -s .)" --argjson mounts "${mounts:-[]}" \
    '.process.args = $args | .process.terminal = false | .root.readonly = true
     | .mounts += $mounts' "$bundle/config.json" > "$bundle/config.json.tmp"
  mv "$bundle/config.json.tmp" "$bundle/config.json"
  runc run --bundle "$bundle" "zetaback-image-check-$name-$$" < /dev/null 2>&1
}

check_image() {
  local t=$1 dir=$2 lines from layout config want got bundle src dst rel expected user out
  lines=$(stage_lines "$t")
  [ -n "$lines" ] || { bad "$t: no final stage 'FROM … AS $t' in $containerfile"; return; }
  from=$(field "$lines" FROM | awk '{print $1}')
  layout="$dir/$t"
  [ -f "$layout/index.json" ] && [ -s "$dir/$t.tar" ] || { bad "$t: no OCI layout and archive in $dir"; return; }
  config=$(config_of "$layout")
  # USER, ENTRYPOINT, ENV, EXPOSE as the Containerfile says.
  want=$(field "$lines" USER); got=$(jq -r '.config.User // ""' <<< "$config")
  [ "$want" = "$got" ] || bad "$t: image user '$got', Containerfile USER '$want'"
  if [ "$t" != agent ]; then
    case "${got%%:*}" in ''|0|root) bad "$t: runs as root (user '$got'): it must not" ;; esac
  fi
  want=$(field "$lines" ENTRYPOINT | jq -c .); got=$(jq -c '.config.Entrypoint' <<< "$config")
  [ "$want" = "$got" ] || bad "$t: image entrypoint $got, Containerfile ENTRYPOINT $want"
  while read -r e; do
    [ -z "$e" ] || jq -e --arg e "$e" '.config.Env // [] | index($e)' <<< "$config" >/dev/null ||
      bad "$t: image env lacks '$e' (Containerfile ENV)"
  done <<< "$(field "$lines" ENV)"
  want=$(for p in $(field "$lines" EXPOSE); do echo "$p/tcp"; done | sort | paste -sd' ')
  got=$(jq -r '.config.ExposedPorts // {} | keys[]' <<< "$config" | sort | paste -sd' ')
  [ "$want" = "$got" ] || bad "$t: image exposes '$got', Containerfile EXPOSE '$want'"

  # The files: unpack and compare with what the COPY lines put there.
  bundle="$work/$t"
  umoci unpack --image "$layout:$version" "$bundle" >/dev/null
  # expected: "PATH_IN_IMAGE STAGED_FILE" for every file a COPY line puts there.
  expected="$work/$t.expected"
  : > "$expected"
  while read -r src dst; do
    [ -n "$src" ] || continue
    if [[ "$src" == */ ]]; then
      (cd "$dir/stage${src#/out}" && find . -type f | sed 's|^\./||') | while read -r rel; do
        echo "${dst%/}/$rel $dir/stage${src#/out}$rel"
      done >> "$expected"
    else
      echo "$dst $dir/stage${src#/out}" >> "$expected"
    fi
  done <<< "$(copies "$lines")"
  [ -s "$expected" ] || bad "$t: the Containerfile copies nothing into it"
  while read -r rel src; do
    if [ ! -f "$bundle/rootfs$rel" ]; then bad "$t: $rel is missing from the image"
    elif ! cmp -s "$src" "$bundle/rootfs$rel"; then bad "$t: $rel differs from the build's ${src#"$dir/stage"}"
    fi
  done < "$expected"
  if [ "$from" = scratch ]; then
    # An empty base: the image holds what the COPY lines put there and nothing else.
    got=$(cd "$bundle/rootfs" && find . ! -type d | sed 's|^\.||' | sort)
    want=$(awk '{print $1}' "$expected" | sort -u)
    [ "$got" = "$want" ] || bad "$t: files beyond the Containerfile's COPY lines: $(comm -23 <(echo "$got") <(echo "$want") | head -n 5 | paste -sd' ')"
  fi

  # The binary runs in its image, as the image's user, on a read-only root.
  mapfile -t entry < <(jq -r '.config.Entrypoint[]' <<< "$config")
  if out=$(mounts='[]' run_in "$bundle" "$t" "${entry[@]}" --help); then
    grep -q '^Usage:' <<< "$out" || bad "$t: '${entry[*]} --help' printed no usage: $(head -c 300 <<< "$out")"
  else
    bad "$t: '${entry[*]} --help' failed in the image: $(head -c 300 <<< "$out")"
  fi
  user=$(jq -r '.process.user.uid' "$bundle/config.json")
  if [ "$t" != agent ] && [ "$user" = 0 ]; then bad "$t: runc runs it as uid 0"; fi
  if [ "$t" = agent ]; then
    # zfs-fuse's client reaches the node's daemon through /var/run/zfs/zfs_socket: with the
    # host's /var/run/zfs mounted in, `zfs list` in the image lists the host's pools.
    [ -S /var/run/zfs/zfs_socket ] || { bad "agent: no zfs-fuse daemon on this host (/var/run/zfs/zfs_socket): run e2e/scripts/zfs.sh start"; return; }
    want=$(zpool list -H -o name | sort)
    if out=$(mounts='[{"destination":"/var/run/zfs","type":"bind","source":"/var/run/zfs","options":["rbind","rw"]}]' \
        run_in "$bundle" "$t-zpool" zpool list -H -o name); then
      [ "$(sort <<< "$out")" = "$want" ] || bad "agent: 'zpool list' in the image gave '$out', on the host '$want'"
    else
      bad "agent: 'zpool list' failed in the image: $(head -c 300 <<< "$out")"
    fi
  fi
}

cmd_check() {
  local dir
  dir=$(readlink -f "$images/current" 2>/dev/null) && [ -f "$dir/done" ] || die "no image build: run image.sh build"
  command -v runc >/dev/null || die "runc is missing (e2e/scripts/install-deps.sh installs it)"
  # Checks may run side by side (each unpacks into its own directory).
  work=$(mktemp -d "$dir/check.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  for t in "${targets[@]}"; do check_image "$t" "$dir"; done
  [ "$fail" = 0 ] || die "check failed ($dir against $containerfile)"
  echo "image.sh check: ${targets[*]} match $containerfile and run ($dir)"
}

cmd_sizes() {
  local dir t manifest packed unpacked
  dir=$(readlink -f "$images/current" 2>/dev/null) && [ -f "$dir/done" ] || die "no image build: run image.sh build"
  printf '%-20s %13s %13s  (%s binaries)\n' image compressed unpacked "$(cat "$dir/profile")"
  for t in "${targets[@]}"; do
    manifest=$(blob "$dir/$t" "$(jq -r '.manifests[0].digest' "$dir/$t/index.json")")
    packed=$(jq '[.layers[].size] | add' "$manifest")
    unpacked=0
    for d in $(jq -r '.layers[].digest' "$manifest"); do
      unpacked=$(( unpacked + $(gzip -dc "$(blob "$dir/$t" "$d")" | wc -c) ))
    done
    printf '%-20s %10s MB %10s MB\n' "zetaback-$t" \
      "$(awk -v b="$packed" 'BEGIN{printf "%.1f", b/1e6}')" "$(awk -v b="$unpacked" 'BEGIN{printf "%.1f", b/1e6}')"
  done
}

case "${1:-}" in
  build) cmd_build ;;
  check) cmd_check ;;
  sizes) cmd_sizes ;;
  base) mkdir -p "$images"; base_tar ;;
  stage) [ $# -eq 3 ] || die "usage: image.sh stage OUT BINDIR"; stage "$2" "$3" ;;
  *) echo "usage: image.sh build|check|sizes|stage OUT BINDIR" >&2; exit 2 ;;
esac
