#!/usr/bin/env bash
# A large store: creates N sessions (default 1 000 000) with 200-byte access
# token payloads through the gRPC API, then reports the server's resident
# memory, the data directory's size per session, and how long a restart takes
# until `sessiond health` answers SERVING.
# Usage: bench/million.sh [sessions]   (after cargo build --release --bins)
# With KEEP_DATA=DIR the data directory is DIR and is kept afterwards.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="${CARGO_TARGET_DIR:-$root/target}/release"
. "$root/bench/lib.sh"
sessions=${1:-1000000}
work=$(mktemp -d)
data=${KEEP_DATA:-$work/data}
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

rss() { # resident and peak resident memory of $pid, MiB
  awk '/^VmRSS|^VmHWM/ {printf "%s %.0f MiB  ", $1, $2 / 1024} END {print ""}' "/proc/$pid/status"
}

start_sessiond "$work/first.log" --listen 127.0.0.1:0 --data-dir "$data"
addr=$(wait_for_address "$work/first.log")

echo "== creating $sessions sessions at $addr"
began=$(date +%s)
"$bin/sessiond-bench" --addr "$addr" --population "$sessions" --payload-bytes 200 \
  --scenarios get-db --warmup 1s --duration 5s | tail -n 3
echo "created in $(( $(date +%s) - began )) s"
echo "after the load:   $(rss)"
kill -TERM "$pid"
wait "$pid" || true
pid=""
bytes=$(du -sb "$data" | cut -f1)
echo "data directory:   $(( bytes / 1024 / 1024 )) MiB, $(( bytes / sessions )) bytes per session"

echo "== restart"
began=$(date +%s%N)
start_sessiond "$work/second.log" --listen "$addr" --data-dir "$data"
until "$bin/sessiond" health --addr "$addr" --timeout 200ms >/dev/null 2>&1; do
  kill -0 "$pid" 2>/dev/null || { cat "$work/second.log"; exit 1; }
  sleep 0.02
done
echo "SERVING after:    $(( ($(date +%s%N) - began) / 1000000 )) ms"
echo "after restart:    $(rss)"
"$bin/sessiond-bench" --addr "$addr" --population 1000 --payload-bytes 200 \
  --scenarios get-db --warmup 1s --duration 5s | tail -n 1
echo "after get-db:     $(rss)"
