#!/usr/bin/env bash
# bench/gate-screen/screen.cc: could DeepSeek-V3's router gate be screened in fp32 and stay exact? Compiles it with the
# router addon's flags (router-service/native/CMakeLists.txt), runs it, writes bench/results/gate-screen.json
# (GATE_SCREEN_OUT to override). Exits 2 if any token the screen decided has other experts than the exact gate, or
# any chosen expert's exact logit differs from the exact product's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
g++ -std=c++17 -O3 -ffp-contract=off -fno-math-errno -march=native -mprefer-vector-width=512 "$here/screen.cc" \
  -o "$tmp/screen"
"$tmp/screen" "${GATE_SCREEN_OUT:-$here/../results/gate-screen.json}"
