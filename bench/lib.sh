# Shared by the bench/ scripts (sourced, not run).
# start_sessiond LOG [serve flags...]: starts the release sessiond in the
# background with its log in LOG and sets `pid`; the flags should include
# --data-dir, and --listen (127.0.0.1:0 picks a free port).
# wait_for_address LOG: prints the address the server logged it listens on,
# or prints the log and fails after 10 s.
# h2load_setup: installs h2load and the Python example's packages if
# missing, generates the example's stubs, makes `work` (a temporary
# directory) and starts sessiond on a data directory in it.
start_sessiond() {
  local log=$1
  shift
  "$bin/sessiond" serve "$@" 2>"$log" &
  pid=$!
}

wait_for_address() {
  local addr=""
  for _ in $(seq 1 100); do
    addr=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$1" | head -n1)
    [ -n "$addr" ] && { echo "$addr"; return 0; }
    sleep 0.1
  done
  cat "$1" >&2
  return 1
}

h2load_setup() {
  if ! command -v h2load >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq nghttp2-client >/dev/null
  fi
  python3 -c 'import grpc, grpc_tools' 2>/dev/null || python3 -m pip install --quiet -r "$root/examples/python/requirements.txt"
  "$root/examples/python/generate.sh"
  work=$(mktemp -d)
  start_sessiond "$work/server.log" --listen 127.0.0.1:0 --data-dir "$work/data"
}
