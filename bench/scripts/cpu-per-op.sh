#!/bin/bash
# CPU and context switches per operation of each process in one `pce bench
# compare` level: the three nodes and the bench's own client. It shows where a
# one-client operation's time goes (docs/benchmarks.md, "The bench's own
# client"), which a ratio against etcd cannot.
#
# Usage: bench/scripts/cpu-per-op.sh PCE_BINARY WORKLOAD CLIENTS SECONDS [compare options]
#   Runs `pce bench compare --workloads WORKLOAD --clients CLIENTS --rounds 1`
#   with SECONDS per system, and while Supercluster is measured counts
#   `perf stat -e task-clock,context-switches` of each `pce serve` process
#   and of the bench process over SECONDS - 4 seconds. Needs perf. Further
#   options go to `pce bench compare` (e.g. --client-threads 2).
#   With SYSCALLS=1 it also counts, per op, the system calls that show how
#   replies are batched (writev, write, read, recvfrom, sendmsg,
#   epoll_wait, futex, fdatasync); needs the kernel's syscall tracepoints
#   (run as root).
#
# Example, the bench's client on one thread and on two:
#   bench/scripts/cpu-per-op.sh target/release/pce read 1 12
#   bench/scripts/cpu-per-op.sh target/release/pce read 1 12 --client-threads 2
set -euo pipefail
if [ $# -lt 4 ]; then
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
exe=$1 workload=$2 clients=$3 seconds=$4
shift 4
if [ "$seconds" -lt 6 ]; then
    echo "SECONDS must be at least 6 (2 s of settling, 2 s of margin)" >&2
    exit 2
fi
window=$((seconds - 4))
events=task-clock,context-switches
if [ "${SYSCALLS:-0}" = 1 ]; then
    for call in writev write read recvfrom sendmsg epoll_wait futex fdatasync; do
        events="$events,syscalls:sys_enter_$call"
    done
fi
dir=$(mktemp -d /tmp/cpu-per-op.XXXX)
bench=
# An interrupted run stops the nodes and etcd too (the bench's children: a
# bench killed by a signal does not stop them itself).
trap 'if [ -n "$bench" ]; then pkill -P "$bench" 2>/dev/null || true; kill "$bench" 2>/dev/null || true; fi; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
"$exe" bench compare --workloads "$workload" --clients "$clients" --seconds "$seconds" \
    --rounds 1 "$@" > "$dir/compare.log" 2>&1 &
bench=$!
# etcd is measured first; its line is printed when Supercluster's level starts.
until grep -q "clients etcd" "$dir/compare.log" 2>/dev/null; do
    kill -0 "$bench" 2>/dev/null || { cat "$dir/compare.log" >&2; exit 1; }
    sleep 0.2
done
sleep 2
# The nodes are the bench's own children (`pce serve`, beside etcd's).
nodes=0
for p in $(pgrep -P "$bench" || true); do
    if tr '\0' ' ' < "/proc/$p/cmdline" | grep -q ' serve '; then
        name=$(basename "$(readlink "/proc/$p/cwd")")
        perf stat -e "$events" -x, -p "$p" -o "$dir/$name.stat" -- sleep "$window" &
        nodes=$((nodes + 1))
    fi
done
[ "$nodes" -eq 3 ] || echo "warning: found $nodes of the 3 nodes among the bench's children" >&2
perf stat -e "$events" -x, -p "$bench" -o "$dir/client.stat" -- sleep "$window" &
# The counters end before the bench does.
wait "$bench" || { cat "$dir/compare.log" >&2; exit 1; }
bench=
wait
rate=$(awk '/clients supercluster/ {print $7}' "$dir/compare.log")
if ! [[ "$rate" =~ ^[0-9]+$ ]] || [ "$rate" -eq 0 ]; then
    echo "no single Supercluster rate in the bench's output (give one client count):" >&2
    cat "$dir/compare.log" >&2
    exit 1
fi
grep -E "^round|clients on" "$dir/compare.log"
for f in "$dir"/*.stat; do
    awk -F, -v r="$rate" -v s="$window" -v n="$(basename "$f" .stat)" '
        /task-clock/ {t = $1} /context-switches/ {c = $1}
        /syscalls:sys_enter_/ {sub(/.*sys_enter_/, "", $3); calls = calls sprintf("  %s %.2f", $3, $1 / (r * s))}
        END {printf "%-10s CPU per op %7.1f us  context switches per op %5.2f%s\n", n, t * 1000 / (r * s), c / (r * s), calls}' "$f"
done
