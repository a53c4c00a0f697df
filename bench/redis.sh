#!/usr/bin/env bash
# The reference users would pick instead: Redis on this machine, GET and
# SET with appendfsync always (every write on disk before the reply, one
# fsync shared by the writes of an event-loop turn), 64 clients like
# sessiond-bench's default 4 x 16, 200-byte values.
# Usage: bench/redis.sh [requests]   (installs redis-server if missing)
set -euo pipefail
requests=${1:-300000}
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq redis-server redis-tools >/dev/null
fi
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$port" --dir "$work" --appendonly yes --appendfsync always \
  --save "" --daemonize no --logfile "$work/redis.log" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$port" config get appendfsync | tail -1 | grep -qx always
echo "redis $(redis-server --version | awk '{print $3}'), appendfsync always, 64 clients, 200-byte values"
redis-benchmark -h 127.0.0.1 -p "$port" -c 64 -n "$requests" -d 200 -t set,get --csv
