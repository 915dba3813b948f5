#!/usr/bin/env bash
# Generates packages/protocol/src/gen from packages/protocol/proto with ts-proto for grpc-js, and the Python client's
# messages (clients/python/switchyard/v1/*_pb2.py, protoc's own --python_out) from the protos an engine uses.
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
py_out="$root/clients/python/switchyard/v1"
py_target=$py_out
[ "${1:-}" = "--check" ] && py_target=$(mktemp -d)/switchyard/v1
mkdir -p "$py_target"
rm -f "$py_target"/*_pb2.py
protoc --python_out="${py_target%/switchyard/v1}" -I "$proto" "$proto/switchyard/v1/tensor.proto" "$proto/switchyard/v1/router.proto"
if [ "${1:-}" = "--check" ]; then
  stale=0
  if ! diff -r "$out" "$target" >/dev/null; then
    echo "gen-proto: packages/protocol/src/gen is stale; run 'npm run gen:proto' and commit" >&2
    diff -r "$out" "$target" | head -20 >&2
    stale=1
  fi
  for f in "$py_target"/*_pb2.py; do
    if ! cmp -s "$f" "$py_out/$(basename "$f")"; then
      echo "gen-proto: clients/python/switchyard/v1/$(basename "$f") is stale; run 'npm run gen:proto' and commit" >&2
      stale=1
    fi
  done
  [ $stale = 0 ] || exit 1
  echo "gen-proto: generated code is up to date"
fi
