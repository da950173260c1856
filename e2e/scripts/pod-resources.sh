#!/usr/bin/env bash
# What the pods of the local cluster (e2e/scripts/cluster.sh) really use, read from their
# containers' cgroups (cgroup v1, kubelet's cgroupfs driver: /sys/fs/cgroup/<hierarchy>/zb-node<i>/
# kubepods/…/pod<uid>/<container id>): the figures the chart's requests and limits are set from
# (charts/zetaback/values.yaml, README "Requests and limits, measured").
#
#   pod-resources.sh [-n NAMESPACE] [-l SELECTOR] [--watch SECONDS]
#
# One line per container:
#   RSS_PEAK    the highest resident set of any of its processes so far (VmHWM): the memory it needed
#   RSS_NOW     anonymous memory charged to the container now (memory.stat total_rss)
#   CACHE_NOW   page cache charged to it now (a store's written streams: reclaimable, but counted
#               against the memory limit until reclaimed)
#   CG_PEAK     the cgroup's peak charge, page cache included (memory.max_usage_in_bytes)
#   CPU_S       CPU seconds used since the container started (cpuacct.usage)
#   AVG_mCPU    CPU_S over the container's age, in millicores
# With --watch SECONDS: sampled every second for that long, also
#   PEAK_mCPU   the busiest one-second interval, in millicores, and RSS_MAX the highest RSS_NOW seen.
# Env: KUBECONFIG (default: the cluster's, `cluster.sh env`).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ns=zetaback-system
selector=
watch=0
while [ $# -gt 0 ]; do
  case "$1" in
    -n) ns=$2; shift 2 ;;
    -l) selector=$2; shift 2 ;;
    --watch) watch=$2; shift 2 ;;
    *) echo "usage: pod-resources.sh [-n NAMESPACE] [-l SELECTOR] [--watch SECONDS]" >&2; exit 2 ;;
  esac
done
export KUBECONFIG=${KUBECONFIG:-$(bash "$here/cluster.sh" env | sed 's/^KUBECONFIG=//')}
kubectl="$(bash "$here/build-tools.sh")/kubectl"

# container id → its cgroup directory in hierarchy $1 (empty when not found).
cg_dir() {
  find "/sys/fs/cgroup/$1/" -mindepth 3 -maxdepth 6 -type d -name "$2" -path '*/zb-node*' 2>/dev/null | head -n1
}
mib() { awk -v b="$1" 'BEGIN{printf "%.1f", b / 1048576}'; }
# The highest VmHWM (kB) of the processes in a cgroup.
hwm_kb() {
  local max=0 p v
  for p in $(cat "$1/cgroup.procs" 2>/dev/null); do
    v=$(awk '/^VmHWM:/{print $2}' "/proc/$p/status" 2>/dev/null || true)
    [ -n "$v" ] && [ "$v" -gt "$max" ] && max=$v
  done
  echo "$max"
}
stat_of() { awk -v k="$2" '$1 == k {print $2}' "$1/memory.stat"; }

args=(get pods -n "$ns" -o json)
[ -z "$selector" ] || args+=(-l "$selector")
rows=$("$kubectl" "${args[@]}" | jq -r '.items[] | . as $p | (.status.containerStatuses // [])[]
  | select(.containerID != null and .state.running != null)
  | [$p.metadata.name, .name, $p.spec.nodeName, (.containerID | sub("^[a-z]+://"; "")), .state.running.startedAt] | @tsv')
[ -n "$rows" ] || { echo "no running containers in $ns${selector:+ with $selector}"; exit 0; }

declare -a labels mem cpu started
while IFS=$'\t' read -r pod container node id since; do
  m=$(cg_dir memory "$id"); c=$(cg_dir cpuacct "$id")
  [ -n "$m" ] && [ -n "$c" ] || { echo "$pod/$container: no cgroup for container $id" >&2; continue; }
  labels+=("$pod $container $node"); mem+=("$m"); cpu+=("$c"); started+=("$(date -d "$since" +%s)")
done <<<"$rows"

n=${#labels[@]}
declare -a peak_m rss_max prev
for ((i = 0; i < n; i++)); do peak_m[i]=0; rss_max[i]=0; prev[i]=$(cat "${cpu[i]}/cpuacct.usage"); done
for ((t = 0; t < watch; t++)); do
  sleep 1
  for ((i = 0; i < n; i++)); do
    now=$(cat "${cpu[i]}/cpuacct.usage" 2>/dev/null || echo "${prev[i]}")
    d=$(( (now - prev[i]) / 1000000 )); prev[i]=$now
    [ "$d" -gt "${peak_m[i]}" ] && peak_m[i]=$d
    r=$(stat_of "${mem[i]}" total_rss 2>/dev/null || echo 0)
    [ "${r:-0}" -gt "${rss_max[i]}" ] && rss_max[i]=$r
  done
done

{
  printf 'POD CONTAINER NODE RSS_PEAK_MiB RSS_NOW_MiB CACHE_NOW_MiB CG_PEAK_MiB CPU_S AGE_S AVG_mCPU'
  [ "$watch" -gt 0 ] && printf ' PEAK_mCPU RSS_MAX_MiB'
  echo
  for ((i = 0; i < n; i++)); do
    used=$(cat "${cpu[i]}/cpuacct.usage"); age=$(( $(date +%s) - started[i] )); [ "$age" -gt 0 ] || age=1
    printf '%s %s %s %s %s %s %s %s' "${labels[i]}" "$(mib $(( $(hwm_kb "${mem[i]}") * 1024 )))" \
      "$(mib "$(stat_of "${mem[i]}" total_rss)")" "$(mib "$(stat_of "${mem[i]}" total_cache)")" \
      "$(cat "${mem[i]}/memory.max_usage_in_bytes" | awk '{printf "%.1f", $1 / 1048576}')" \
      "$(awk -v u="$used" 'BEGIN{printf "%.2f", u / 1e9}')" "$age" \
      "$(awk -v u="$used" -v a="$age" 'BEGIN{printf "%.0f", u / 1e6 / a}')"
    [ "$watch" -gt 0 ] && printf ' %s %s' "${peak_m[i]}" "$(mib "${rss_max[i]}")"
    echo
  done
} | column -t
