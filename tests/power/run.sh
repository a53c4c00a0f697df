#!/usr/bin/env bash
# Power-loss campaign against a sessiond binary: run it on lossyfs, a FUSE
# file system that keeps only what was synced, cut the power again and again
# (SIGKILL, then every unsynced write dropped and the file system unmounted),
# and check after every restart that no acknowledged write was lost and the
# store opens. Needs root, /dev/fuse, libfuse3, Python 3.11 with
# examples/python/requirements.txt and mfusepy installed.
# Usage: tests/power/run.sh path/to/sessiond [--cuts N] [--seed S] [--json FILE] [--sanity] ...
#        (tests/power/campaign.py --help lists every option)
set -euo pipefail
bin=${1:?usage: run.sh path/to/sessiond [--cuts N] [--json FILE] ...}
shift
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/power-campaign-XXXXXX")
# Whatever happens to the campaign, no mount is left behind, nor its files.
cleanup() {
  if mountpoint -q "$work/mnt" 2>/dev/null; then
    umount -l "$work/mnt" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
python3 "$here/campaign.py" --binary "$bin" --work "$work" "$@"
