#!/usr/bin/env bash
# Server (and load generator) CPU time per call of one scenario: starts sessiond on a fresh data
# directory, runs `sessiond-bench --scenarios SCENARIO` against it, and
# divides the server's user+system CPU time over 3 s in the middle of the
# measured run by the calls made in those 3 s. Steadier than throughput on
# a shared machine, where neighbours change the CPU left to the run.
# Usage: bench/cpu-per-call.sh SCENARIO [sessiond flags...]
#        (after cargo build --release --bins)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="${CARGO_TARGET_DIR:-$root/target}/release"
. "$root/bench/lib.sh"
scenario=${1:?usage: bench/cpu-per-call.sh SCENARIO [sessiond flags...]}
shift
work=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

start_sessiond "$work/server.log" --listen 127.0.0.1:0 --data-dir "$work/data" "$@"
addr=$(wait_for_address "$work/server.log")

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
"$bin/sessiond-bench" --addr "$addr" --scenarios "$scenario" --duration 5s --warmup 1s \
  >"$work/bench.txt" 2>"$work/bench.log" &
bench=$!
sleep 2.5
before=$(cpu_ticks "$pid") client_before=$(cpu_ticks "$bench")
sleep 3
after=$(cpu_ticks "$pid") client_after=$(cpu_ticks "$bench")
wait "$bench"
rate=$(awk -F'|' -v s=" $scenario " '$2 == s {gsub(/ /, "", $3); print $3}' "$work/bench.txt")
[ -n "$rate" ] || { cat "$work/bench.txt"; exit 1; }
per_call() { echo $(( ($2 - $1) * 1000000 / $(getconf CLK_TCK) / (rate * 3) )); }
echo "$scenario: $rate calls/s, CPU per call: server $(per_call "$before" "$after") µs," \
  "load generator $(per_call "$client_before" "$client_after") µs"
