#!/usr/bin/env bash
# Where the server's CPU goes per call of one scenario: starts sessiond on a
# fresh data directory, runs `sessiond-bench --scenarios SCENARIO` against
# it, samples the server with `perf record` (cpu-clock, 2000 Hz) for 3 s in
# the middle of the run, and prints the time per call by thread and by
# symbol (self time, µs per call). Run it for two scenarios, e.g. `health`
# and `get`, and compare the rows: what the second adds over the first.
# Usage: bench/profile.sh SCENARIO [ROWS] [sessiond flags...]
#        (after cargo build --release --bins; needs `perf`, Debian
#        `linux-perf`, and perf_event_paranoid <= 2 or root)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="${CARGO_TARGET_DIR:-$root/target}/release"
. "$root/bench/lib.sh"
scenario=${1:?usage: bench/profile.sh SCENARIO [ROWS] [sessiond flags...]}
shift
rows=40
if [[ ${1-} =~ ^[0-9]+$ ]]; then
  rows=$1
  shift
fi
command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 1; }
work=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

start_sessiond "$work/server.log" --listen 127.0.0.1:0 --data-dir "$work/data" "$@"
addr=$(wait_for_address "$work/server.log")

"$bin/sessiond-bench" --addr "$addr" --scenarios "$scenario" --duration 6s --warmup 1s \
  >"$work/bench.txt" 2>"$work/bench.log" &
bench=$!
sleep 2.5
hz=2000
seconds=3
perf record -F "$hz" -e cpu-clock -p "$pid" -o "$work/perf.data" -- sleep "$seconds" \
  >"$work/perf.log" 2>&1 || { cat "$work/perf.log" >&2; exit 1; }
wait "$bench" || { cat "$work/bench.log" >&2; exit 1; }
rate=$(awk -F'|' -v s=" $scenario " '$2 == s {gsub(/ /, "", $3); print $3}' "$work/bench.txt")
[ -n "$rate" ] || { cat "$work/bench.txt" "$work/bench.log"; exit 1; }

# Samples to µs per call: each sample is 1/hz s of one CPU.
per_call() {
  awk -v hz="$hz" -v calls="$((rate * seconds))" -F'\t' \
    '{ printf "%8.2f  %s\n", $1 * 1e6 / hz / calls, $2 }'
}
report() {
  perf report -i "$work/perf.data" --no-children -q --stdio -g none -n --sort "$1" 2>/dev/null |
    awk 'NF { n = $2; $1 = ""; $2 = ""; sub(/^ +/, ""); print n "\t" $0 }'
}
total=$(report comm | awk -F'\t' '{ s += $1 } END { print s }')
echo "$scenario: $rate calls/s; server CPU per call (perf samples): $(echo "$total" |
  awk -v hz="$hz" -v calls="$((rate * seconds))" '{ printf "%.1f", $1 * 1e6 / hz / calls }') µs"
echo "--- by thread (µs per call)"
report comm | per_call
echo "--- by symbol, self time (µs per call; [k] is the kernel)"
report sym | awk -v n="$rows" 'NR <= n' | cut -c1-160 | per_call
