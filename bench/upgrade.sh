#!/usr/bin/env bash
# The cost of upgrading a data directory: an earlier release writes N
# sessions (default 1 000 000, 200-byte payloads) through the gRPC API and
# stops; this build then opens the same directory, and the script reports
# how long it took until it listened and its peak resident memory, then
# checks the sessions are served.
# Usage: OLD=dir/of/earlier/release/binaries bench/upgrade.sh [sessions]
#        (after cargo build --release --bins here and in the earlier tree)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="${CARGO_TARGET_DIR:-$root/target}/release"
old=${OLD:?set OLD to the directory holding the earlier sessiond and sessiond-bench}
. "$root/bench/lib.sh"
sessions=${1:-1000000}
work=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

"$old/sessiond" serve --listen 127.0.0.1:0 --data-dir "$work/data" 2>"$work/old.log" &
pid=$!
addr=$(wait_for_address "$work/old.log")
echo "== the earlier release writes $sessions sessions at $addr"
"$old/sessiond-bench" --addr "$addr" --population "$sessions" --payload-bytes 200 \
  --scenarios health --warmup 1s --duration 1s >/dev/null
kill -TERM "$pid"
wait "$pid" || true
pid=""
echo "data directory: $(du -sh "$work/data" | cut -f1)"

echo "== this build opens it"
began=$(date +%s.%N)
start_sessiond "$work/new.log" --listen 127.0.0.1:0 --data-dir "$work/data"
while ! grep -q "listening on" "$work/new.log"; do
  kill -0 "$pid" 2>/dev/null || { cat "$work/new.log"; exit 1; }
  sleep 0.1
done
ready=$(date +%s.%N)
took=$(python3 -c "print(round($ready - $began, 1))")
peak=$(awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
echo "ready after $took s; peak resident memory $peak MiB"
grep -E "rebuil" "$work/new.log" | sed 's/^.*INFO //'
addr=$(wait_for_address "$work/new.log")
"$bin/sessiond-bench" --addr "$addr" --population 1000 --scenarios get-db --warmup 1s \
  --duration 2s | tail -n 1
