#!/usr/bin/env bash
# Gateway checks against health, with an independent load tool: h2load
# drives grpc.health.v1 Check, the ext_authz Check
# (envoy.service.auth.v3.Authorization, a Bearer token that stays in the
# verified-token cache) and the HTTP forward-auth check (GET /authz) at the
# same concurrency (4 connections x 16 streams), in turn, ROUNDS times
# (default 3), and prints each check's throughput as a fraction of the same
# round's health. Then sessiond-bench runs health, authz-grpc and authz-http
# on the same server for their latency percentiles (h2load reports no p99),
# and to show that every check was allowed (its error column).
# Usage: bench/authz-h2load.sh [requests]   (after cargo build --release --bins;
# installs nghttp2-client and the Python example's packages if missing)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="${CARGO_TARGET_DIR:-$root/target}/release"
. "$root/bench/lib.sh"
requests=${1:-200000}
h2load_setup
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
addr=$(wait_for_address "$work/server.log")

# One session; the framed health and ext_authz Check requests (flag, length,
# message), the latter encoded by hand (CheckRequest.attributes.request.http
# with method, path and the authorization header), and the token for /authz.
PB_DIR="$root/examples/python/sessiond_pb" python3 - "$addr" "$work" <<'PY'
import os, struct, sys
sys.path.insert(0, os.environ["PB_DIR"])
import grpc
from sessiond.v1 import session_pb2, session_pb2_grpc
addr, out = sys.argv[1], sys.argv[2]
stub = session_pb2_grpc.SessionServiceStub(grpc.insecure_channel(addr))
token = stub.CreateNewSession(session_pb2.CreateNewSessionRequest(user_id="h2load")).access_token.token

def varint(n):
    b = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        b += bytes([byte | (0x80 if n else 0)])
        if not n:
            return b

def field(number, payload):  # a length-delimited field
    return varint(number << 3 | 2) + varint(len(payload)) + payload

header = field(1, b"authorization") + field(2, ("Bearer " + token).encode())
http = field(2, b"GET") + field(3, header) + field(4, b"/orders") + field(5, b"app.example.com")
check = field(1, field(4, field(2, http)))
frame = lambda body: b"\x00" + struct.pack(">I", len(body)) + body
open(os.path.join(out, "health.bin"), "wb").write(frame(b""))
open(os.path.join(out, "check.bin"), "wb").write(frame(check))
open(os.path.join(out, "token"), "w").write(token)
PY
token=$(cat "$work/token")

rate() { awk '/finished in/ {print $4}' "$1"; }
grpc_load() {  # NAME PATH BODY
  h2load -n "$requests" -c 4 -m 16 -d "$3" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$addr$2" >"$work/$1.txt"
  grep -q "status codes: $requests 2xx" "$work/$1.txt" || { cat "$work/$1.txt"; exit 1; }
}
rounds=${ROUNDS:-3}
for round in $(seq 1 "$rounds"); do
  grpc_load health /grpc.health.v1.Health/Check "$work/health.bin"
  grpc_load check /envoy.service.auth.v3.Authorization/Check "$work/check.bin"
  h2load -n "$requests" -c 4 -m 16 -H "authorization: Bearer $token" \
    "http://$addr/authz/orders" >"$work/authz.txt"
  grep -q "status codes: $requests 2xx" "$work/authz.txt" || { cat "$work/authz.txt"; exit 1; }
  python3 -c '
import sys
h, c, a = map(float, sys.argv[2:])
print("round %s: health %.0f/s, Check %.0f/s (%.2f x health), /authz %.0f/s (%.2f x health)" % (sys.argv[1], h, c, c / h, a, a / h))
' "$round" "$(rate "$work/health.txt")" "$(rate "$work/check.txt")" "$(rate "$work/authz.txt")"
done
echo "== sessiond-bench, same server, same concurrency"
"$bin/sessiond-bench" --addr "$addr" --connections 4 --concurrency 16 --duration 5s --warmup 1s \
  --rounds "$rounds" --scenarios health,authz-grpc,authz-http --population 1 2>/dev/null | tail -5
