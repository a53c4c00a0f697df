#!/usr/bin/env bash
# Outside verifiers of sessiond's tokens, each fetching the JWKS from
# /.well-known/jwks.json on a real sessiond binary (check.py does the checks):
#   - Node jose (createRemoteJWKSet + jwtVerify);
#   - Node jsonwebtoken + jwks-rsa, as SuperTokens' docs show for backends
#     without a SuperTokens SDK;
#   - Python PyJWT (PyJWKClient);
#   - supertokens-node's Session.getSessionWithoutRequestResponse, with
#     connectionURI pointing at sessiond.
# Each verifies CreateNewSession, RefreshSession and CreateJwt tokens and
# rejects them tampered; then the signing key is rotated and, once the new
# key signs (one publication delay, about 60 s, for all servers at once),
# the same verifier instances verify a token of the new key.
#
# Usage: tests/verifiers/run.sh [--matrix] path/to/sessiond [ALGORITHM...]
#   No ALGORITHM: the server's default (no --signing-algorithm); everything
#   must pass. ALGORITHMs (RS256 ES256 EdDSA): one server each, a table of
#   algorithm x verifier; fails on a result other than the expected one
#   (check.py's EXPECTED_FAILURES). --matrix: print the table, never fail
#   on a result.
# Needs: node + npm, python3 + pip, grpcurl. Installs the pinned verifiers
# itself (npm ci from package-lock.json here; PyJWT into a temporary folder).
set -euo pipefail
matrix=""
if [ "${1:-}" = "--matrix" ]; then matrix="--matrix"; shift; fi
bin=$(realpath "${1:?usage: run.sh [--matrix] path/to/sessiond [ALGORITHM...]}")
shift
algorithms=("$@")
here=$(cd "$(dirname "$0")" && pwd)
pyjwt_version=2.15.1
cryptography_version=48.0.0
work=$(mktemp -d)
key="verifier-check-key-0123456789"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
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
  for log in "$work"/*.log; do
    [ -f "$log" ] && { echo "--- $(basename "$log")"; cat "$log"; }
  done
  exit 1
}

started=$SECONDS
echo "== verifiers: npm ci (tests/verifiers/package-lock.json)"
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error) || fail "npm ci"
echo "== verifiers: PyJWT[crypto]==$pyjwt_version (cryptography==$cryptography_version) into a temporary folder"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  --target "$work/python" "PyJWT[crypto]==$pyjwt_version" "cryptography==$cryptography_version" ||
  fail "pip install PyJWT"

# Starts sessiond NAME with extra flags; sets addr once `sessiond health`
# says SERVING (30 s at most for the address, 10 s for health).
addr=""
start_server() {
  local name=$1 pid
  shift
  addr=""
  # No inherited setting may change the algorithm behind "default".
  env -u SESSIOND_SIGNING_ALGORITHM -u SESSIOND_CONFIG \
    "$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data-$name" --api-key "$key" "$@" \
    >"$work/server-$name.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 1 300); do
    addr=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$work/server-$name.log" | head -n1)
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  [ -n "$addr" ] || return 1
  "$bin" health --addr "$addr" --timeout 10s | grep -qx SERVING
}

specs=()
if [ ${#algorithms[@]} -eq 0 ]; then
  start_server default || fail "sessiond (default algorithm) never became ready"
  specs+=("default=$addr")
else
  for alg in "${algorithms[@]}"; do
    case "$alg" in RS256 | ES256 | EdDSA) ;; *) fail "unknown algorithm $alg" ;; esac
    start_server "$alg" --signing-algorithm "$alg" || fail "sessiond ($alg) never became ready"
    specs+=("$alg=$addr")
  done
fi
echo "== servers: ${specs[*]}"

status=0
python3 "$here/check.py" ${matrix:+"$matrix"} --api-key "$key" --pythonpath "$work/python" "${specs[@]}" ||
  status=$?
[ "$status" -ne 2 ] || fail "the servers or the verifiers could not be driven"
echo "== verifiers: $((SECONDS - started))s"
[ "$status" -eq 0 ] || { echo "FAIL: a verifier's result is not the expected one (see above)"; exit 1; }
echo "outside verifiers: ok"
