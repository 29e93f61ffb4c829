#!/bin/bash
# CPU and context switches per committed write of one build, for comparing two
# builds of ours alternately (docs/benchmarks.md, "One consensus worker, notices
# by key, AppendEntries on a stream"): steadier than a ratio against etcd, whose
# own rate drifts from run to run on a shared machine.
#
# Usage: bench/scripts/cpu-per-write.sh PCE_BINARY CLIENTS SECONDS [VAR=VALUE ...]
#   Starts `pce up` (three nodes, one process) in a fresh directory on ports
#   7500/8543/7543, runs `pce bench write --clients CLIENTS` against it, and
#   counts `perf stat -e task-clock,context-switches` of the `pce up` process
#   over SECONDS of the run. Needs perf. VAR=VALUE pairs go into the nodes'
#   environment.
#
# Example, two builds alternately:
#   for i in 1 2 3 4; do
#     bench/scripts/cpu-per-write.sh /tmp/pce-before 1 5
#     bench/scripts/cpu-per-write.sh /tmp/pce-after 1 5
#   done
set -euo pipefail
if [ $# -lt 3 ]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
exe=$1 clients=$2 seconds=$3
shift 3
dir=$(mktemp -d /tmp/cpu-per-write.XXXX)
trap 'kill "$up" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
env "$@" "$exe" up --dir "$dir/d" --port 7500 --api-port 8543 --ven-port 7543 > "$dir/up.log" 2>&1 &
up=$!
# Ready once two followers have been reported.
for _ in $(seq 1 120); do
    [ "$(grep -c 'state=Follower' "$dir/up.log" 2>/dev/null || true)" -ge 2 ] && break
    sleep 0.5
done
sleep 1
"$exe" bench write --config "$dir/d/us-east/node.toml" --clients "$clients" \
    --seconds $((seconds + 4)) > "$dir/bench.log" 2>&1 &
bench=$!
sleep 2
perf stat -e task-clock,context-switches -p "$up" -x, -o "$dir/stat.txt" -- sleep "$seconds"
wait "$bench"
# The bench prints: clients writes errors writes/s p50 p99 max.
read -r rate p50 < <(awk '$1 ~ /^[0-9]+$/ && NF >= 6 {print $4, $5}' "$dir/bench.log" | tail -1)
cpu_ms=$(awk -F, '/task-clock/ {print $1}' "$dir/stat.txt")
switches=$(awk -F, '/context-switches/ {print $1}' "$dir/stat.txt")
awk -v r="$rate" -v p="$p50" -v t="$cpu_ms" -v c="$switches" -v s="$seconds" 'BEGIN {
    printf "writes/s %7d  p50 %s ms  CPU per write %.3f ms  context switches per write %.1f\n",
        r, p, t / (r * s), c / (r * s) }'
