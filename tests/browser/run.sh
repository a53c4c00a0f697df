#!/usr/bin/env bash
# A real browser against a real sessiond binary: builds examples/browser
# (Connect-ES over gRPC-Web), serves it from one origin, starts sessiond on
# another with --cors-origin for the page, and drives the page in Debian's
# Chromium (playwright-core, tests/browser/check.mjs): read, merge twice and
# re-read the public bucket, see the private bucket refused, then list the
# user's devices, sign one out, be refused another user's session, and sign
# out everywhere else, with grpcurl confirming each step on the backend.
# Needs: node + npm, grpcurl, python3, and /usr/bin/chromium
# (apt-get install -y chromium). Never downloads a browser.
# Usage: tests/browser/run.sh path/to/sessiond
# BROWSER_SCREENSHOT=/path/page.png keeps a screenshot of the page.
set -euo pipefail
bin=$(realpath "${1:?usage: run.sh path/to/sessiond}")
root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/tests/browser"
example="$root/examples/browser"
work=$(mktemp -d)
server_pid=""
static_pid=""
cleanup() {
  for pid in "$server_pid" "$static_pid"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  echo "FAIL: $*"
  for log in static.log server.log; do
    [ -f "$work/$log" ] && { echo "--- $log"; cat "$work/$log"; }
  done
  exit 1
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
# Waits (at most 30 s) until sed expression $2 finds a line in log $1.
wait_for() {
  local log=$1 expr=$2 pid=$3 found=""
  for _ in $(seq 1 300); do
    found=$(sed -n "$expr" "$log" | head -n1)
    [ -n "$found" ] && { echo "$found"; return 0; }
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

[ -x /usr/bin/chromium ] || fail "/usr/bin/chromium is missing: apt-get install -y chromium"

echo "== build the page (npm ci && npm run build in examples/browser)"
(cd "$example" && npm ci --no-audit --no-fund && npm run build)
[ -f "$example/dist/index.html" ] && [ -f "$example/dist/main.js" ] || fail "no dist/ after the build"
echo "== test dependencies (npm ci in tests/browser)"
(cd "$here" && npm ci --no-audit --no-fund)

echo "== serve dist/ on a free port"
node "$here/serve.mjs" "$example/dist" >"$work/static.log" 2>&1 &
static_pid=$!
page_origin=$(wait_for "$work/static.log" 's/^serving .* at \(http:[0-9.:/]*\)$/\1/p' "$static_pid") ||
  fail "the static server never became ready"
page_port=${page_origin##*:}
echo "page at $page_origin"

echo "== sessiond with --cors-origin $page_origin"
"$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" --cors-origin "$page_origin" \
  2>"$work/server.log" &
server_pid=$!
addr=$(wait_for "$work/server.log" 's/.*listening on \([0-9.:]*\).*/\1/p' "$server_pid") ||
  fail "sessiond never became ready"
echo "server at $addr"

echo "== grpcurl (backend): the page's session, two more devices, another user, and a secret"
# new_session USER DEVICE_JSON: prints the handle of a new session of USER.
new_session() {
  local out
  out=$(grpcurl -plaintext -d "{\"userId\": \"$1\", \"device\": $2}" \
    "$addr" sessiond.v1.SessionService/CreateNewSession) || return 1
  json 'd["session"]["sessionHandle"]' <<<"$out"
}
created=$(grpcurl -plaintext -d '{"userId": "browser-user", "userIdentifier": "ann@example.com",
    "device": {"label": "This browser", "userAgent": "Chromium (tests/browser)", "ipAddress": "127.0.0.1"}}' \
  "$addr" sessiond.v1.SessionService/CreateNewSession) || fail "CreateNewSession"
token=$(json 'd["accessToken"]["token"]' <<<"$created")
page_handle=$(json 'd["session"]["sessionHandle"]' <<<"$created")
laptop_handle=$(new_session browser-user '{"label": "Laptop", "ipAddress": "203.0.113.7",
  "userAgent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"}') ||
  fail "CreateNewSession (Laptop)"
phone_handle=$(new_session browser-user '{"label": "Phone", "ipAddress": "2001:db8::17",
  "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Mobile/15E148 Safari/604.1"}') ||
  fail "CreateNewSession (Phone)"
other_user_handle=$(new_session other-user '{"label": "Not yours", "ipAddress": "198.51.100.23"}') ||
  fail "CreateNewSession (another user)"
secret="private-secret-$RANDOM$RANDOM"
grpcurl -plaintext -d "{\"bucket\": \"BUCKET_PRIVATE\", \"userId\": \"browser-user\", \"data\": {\"secret\": \"$secret\"}}" \
  "$addr" sessiond.v1.UserSessionService/UpdateUserSession >/dev/null || fail "seeding the private bucket"

echo "== Chromium drives the page (check.mjs)"
PAGE_URL="$page_origin/" \
  OTHER_PAGE_URL="http://localhost:$page_port/" \
  SERVER_URL="http://$addr" \
  ACCESS_TOKEN="$token" \
  SECRET="$secret" \
  GRPC_ADDR="$addr" \
  PAGE_HANDLE="$page_handle" \
  LAPTOP_HANDLE="$laptop_handle" \
  PHONE_HANDLE="$phone_handle" \
  OTHER_USER_HANDLE="$other_user_handle" \
  SCREENSHOT="${BROWSER_SCREENSHOT:-}" \
  node "$here/check.mjs" || fail "the browser checks failed"

echo "== grpcurl (backend) sees what the browser wrote, and the private bucket unchanged"
got=$(grpcurl -plaintext -d '{"bucket": "BUCKET_PRIVATE", "userId": "browser-user"}' \
  "$addr" sessiond.v1.UserSessionService/GetUserSession) || fail "GetUserSession"
[ "$(json 'json.dumps(d["public"], sort_keys=True)' <<<"$got")" = \
  '{"prefs": {"lang": "en", "size": "L"}, "theme": "dark"}' ] || fail "public bucket: $got"
[ "$(json 'd["private"]["secret"]' <<<"$got")" = "$secret" ] || fail "private bucket: $got"

echo "== SIGTERM stops sessiond cleanly"
kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=""
[ "$status" -eq 0 ] || fail "sessiond exit status $status after SIGTERM"
echo "browser example: ok"
