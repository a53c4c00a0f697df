#!/usr/bin/env bash
# Checks that the Dockerfile's build stage has every file cargo needs: copies
# exactly what its COPY lines name (those without --from) into an empty
# directory and type-checks the sessiond binary there with the locked
# dependencies. No Docker engine is needed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
grep -E '^COPY ' "$root/Dockerfile" | grep -v -- '--from' | while read -r _ args; do
  read -r -a parts <<<"$args"
  dest=${parts[-1]}
  unset 'parts[-1]'
  for src in "${parts[@]}"; do
    if [ "$dest" = "./" ]; then
      cp -r "$root/$src" "$context/"
    else
      mkdir -p "$context/$(dirname "$dest")"
      cp -r "$root/$src" "$context/$dest"
    fi
  done
done
# The build step keeps the registry and compiled dependencies in cache
# mounts, so that a source change does not rebuild every dependency.
for cache in /usr/local/cargo/registry /src/target; do
  grep -q -- "--mount=type=cache,target=$cache" "$root/Dockerfile" ||
    { echo "the Dockerfile's build step has no cache mount for $cache"; exit 1; }
done
echo "Docker build context: $(cd "$context" && ls | tr '\n' ' ')"
(cd "$context" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}" cargo check --locked --quiet --bin sessiond)
echo "Docker build context: ok"
