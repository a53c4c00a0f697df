#!/usr/bin/env bash
# Generates the Python stubs of sessiond's API from proto/ into ./sessiond_pb.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$here/sessiond_pb"
rm -rf "$out" && mkdir -p "$out"
python3 -m grpc_tools.protoc -I "$root/proto" \
  --python_out="$out" --grpc_python_out="$out" \
  "$root"/proto/sessiond/v1/*.proto
