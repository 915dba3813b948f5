#!/usr/bin/env bash
# Generates packages/protocol/src/gen from packages/protocol/proto with ts-proto for grpc-js.
# --check: regenerate into a temp dir and fail if the committed code differs (CI runs this).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
proto="$root/packages/protocol/proto"
out="$root/packages/protocol/src/gen"
command -v protoc >/dev/null || { echo "gen-proto: protoc not found (Debian: apt-get install protobuf-compiler)" >&2; exit 1; }
target=$out
[ "${1:-}" = "--check" ] && target=$(mktemp -d)
rm -rf "$target" && mkdir -p "$target"
protoc --plugin="$root/node_modules/.bin/protoc-gen-ts_proto" \
  --ts_proto_out="$target" \
  --ts_proto_opt=outputServices=grpc-js,env=node,esModuleInterop=true,useOptionals=messages,oneof=unions-value,forceLong=bigint,importSuffix=.js,useExactTypes=false \
  -I "$proto" $(cd "$proto" && find switchyard -name "*.proto" | sort | sed "s|^|$proto/|")
if [ "${1:-}" = "--check" ]; then
  if ! diff -r "$out" "$target" >/dev/null; then
    echo "gen-proto: packages/protocol/src/gen is stale; run 'npm run gen:proto' and commit" >&2
    diff -r "$out" "$target" | head -20 >&2
    exit 1
  fi
  echo "gen-proto: generated code is up to date"
fi
