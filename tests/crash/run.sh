#!/usr/bin/env bash
# Crash campaign against a sessiond binary: SIGKILL it again and again on one
# data directory (under a write load, within milliseconds of start, twice in a
# row during recovery, and while sled writes a snapshot), and check after
# every restart that no acknowledged write was lost and the store opens.
# Needs Python 3.11 with examples/python/requirements.txt installed.
# Usage: tests/crash/run.sh path/to/sessiond [--kills N] [--seed S] [--json FILE] ...
#        (tests/crash/campaign.py --help lists every option)
set -euo pipefail
bin=${1:?usage: run.sh path/to/sessiond [--kills N] [--json FILE] ...}
shift
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }
exec python3 "$here/campaign.py" --binary "$bin" "$@"
