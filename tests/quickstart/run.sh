#!/usr/bin/env bash
# The README's quick start, as a newcomer runs it: starts the server with the
# README's exact run command (`cargo run --release`, on its defaults: port
# 50051, ./data), waits for SERVING through `sessiond health`, pastes the
# walkthrough (the shell blocks between the walkthrough markers) into bash,
# checks what it printed, then stops the server with SIGTERM.
# Needs grpcurl, jq, curl and npm (it installs buf). Usage: tests/quickstart/run.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bin="${CARGO_TARGET_DIR:-$root/target}/release/sessiond"
work=$(mktemp -d)
server_pid=""
made_data=""
[ -e data ] || made_data=yes
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then kill -TERM -- "-$server_pid"; fi
  [ -z "$made_data" ] || rm -rf "$root/data"
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- server log"; cat "$work/server.log"; exit 1; }

run_command=$(sed -n 's/^\(cargo run[^#]*\)#.*/\1/p' README.md | head -n1 | sed 's/ *$//')
[ "$run_command" = "cargo run --release" ] || fail "the README's run command is now '$run_command'"
if python3 -c 'import socket,sys; s=socket.socket(); sys.exit(0 if s.connect_ex(("127.0.0.1", 50051)) == 0 else 1)'; then
  fail "something already listens on 127.0.0.1:50051, the README's default port"
fi

echo "== $run_command"
# In a session of its own, so that SIGTERM reaches the server whether cargo
# replaced itself with it or waits for it.
setsid $run_command >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 600); do
  "$bin" health --addr 127.0.0.1:50051 >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || fail "the server exited"
  sleep 0.5
done
"$bin" health --addr 127.0.0.1:50051 | grep -qx SERVING || fail "never SERVING"
grep -q "treated as an admin backend" "$work/server.log" || fail "no key-less warning at start"

echo "== buf (the walkthrough's buf curl examples)"
buf_version=1.75.0
npm install --prefix "$work/buf" --no-audit --no-fund --loglevel=error "@bufbuild/buf@$buf_version" >/dev/null
export PATH="$work/buf/node_modules/.bin:$PATH"
[ "$(buf --version)" = "$buf_version" ] || fail "buf $buf_version not installed"

echo "== the walkthrough, pasted"
awk '/<!-- walkthrough:begin -->/{on=1} /<!-- walkthrough:end -->/{on=0}
     on && /^```/{code=!code; next} on && code' README.md >"$work/walkthrough.sh"
[ "$(grep -c grpcurl "$work/walkthrough.sh")" -ge 10 ] || fail "walkthrough not found in README.md"
# -e stops at a failing command, as a reader would; no pipefail, since the
# walkthrough pipes the expected errors through grep, as an interactive
# shell runs them.
(cd "$work" && bash -eu walkthrough.sh) >"$work/out.txt" 2>&1 || {
  cat "$work/out.txt"
  fail "the walkthrough stopped with an error"
}
cat "$work/out.txt"
expect() { grep -qE "$1" "$work/out.txt" || fail "the walkthrough did not print $1"; }
expect 'sessiond.v1.SessionService'
expect '"theme": "dark"'
expect '"plan": "pro"'
expect '"reason": ?"TOKEN_THEFT_DETECTED"'
expect '"reason": ?"UNAUTHORISED"'
expect '"revoked": true'
expect '"kty": "EC"'
# It ends with plain curl creating a session over Connect's JSON.
tail -n 3 "$work/out.txt" | grep -q '"tenantId": "public"' || fail "curl over Connect printed no session"
# The private bucket is printed once, by the backend's update; the user's
# own read after it must not show it.
[ "$(grep -c '"plan": "pro"' "$work/out.txt")" -eq 1 ] || fail "the user's read showed the private bucket"

echo "== SIGTERM"
kill -TERM -- "-$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=""
[ "$status" -eq 0 ] || fail "exit status $status after SIGTERM"
grep -q "sessiond stopped" "$work/server.log" || fail "no clean stop in the log"
echo "quick start: ok"
