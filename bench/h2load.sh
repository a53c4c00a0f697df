#!/usr/bin/env bash
# Cross-checks sessiond-bench with an independent load tool: h2load drives
# GetSession (stateless) with a pre-framed request at the same concurrency
# (4 connections x 16 streams), then sessiond-bench runs `get` against the
# same server. h2load counts HTTP statuses only, so the script also checks
# the gRPC status of one call.
# Runs the pair ROUNDS times (default 3), alternating, and prints each
# round's ratio.
# Usage: bench/h2load.sh [requests]   (after cargo build --release --bins;
# installs nghttp2-client and the Python example's packages if missing)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="${CARGO_TARGET_DIR:-$root/target}/release"
. "$root/bench/lib.sh"
requests=${1:-200000}
h2load_setup
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
addr=$(wait_for_address "$work/server.log")

# One session, and its GetSession request framed for gRPC (flag, length, message).
PB_DIR="$root/examples/python/sessiond_pb" python3 - "$addr" "$work/get.bin" <<'PY'
import os, struct, sys
sys.path.insert(0, os.environ["PB_DIR"])
import grpc
from sessiond.v1 import session_pb2, session_pb2_grpc
addr, out = sys.argv[1], sys.argv[2]
stub = session_pb2_grpc.SessionServiceStub(grpc.insecure_channel(addr))
created = stub.CreateNewSession(session_pb2.CreateNewSessionRequest(user_id="h2load"))
request = session_pb2.GetSessionRequest(access_token=created.access_token.token)
stub.GetSession(request)  # the call succeeds, so h2load's 200s are real answers
body = request.SerializeToString()
open(out, "wb").write(b"\x00" + struct.pack(">I", len(body)) + body)
PY

# Alternate the two tools, so that a burst of load from a neighbour on a
# shared machine shows up as one odd pair rather than as a verdict.
rounds=${ROUNDS:-3}
for round in $(seq 1 "$rounds"); do
  echo "== round $round: h2load, GetSession, 4 connections x 16 streams, $requests requests"
  h2load -n "$requests" -c 4 -m 16 -d "$work/get.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$addr/sessiond.v1.SessionService/GetSession" >"$work/h2load.txt"
  grep -E "finished in|requests:|status codes" "$work/h2load.txt"
  h2=$(awk '/finished in/ {print $4}' "$work/h2load.txt")
  echo "== round $round: sessiond-bench get, same server, same concurrency"
  "$bin/sessiond-bench" --addr "$addr" --connections 4 --concurrency 16 --duration 5s --warmup 1s \
    --scenarios get --population 1 2>/dev/null | tail -1 | tee "$work/bench.txt"
  ours=$(cut -d'|' -f3 "$work/bench.txt" | tr -d ' ')
  python3 -c "import sys; print('sessiond-bench / h2load: %.2f' % (float(sys.argv[1]) / float(sys.argv[2])))" "$ours" "$h2"
done
