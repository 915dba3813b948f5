#!/usr/bin/env bash
# Does libm's exp (the router's native gate, router-service/native/src/gate.cc) give the same fp32 values as V8's
# Math.exp (packages/moe gating.ts)? The gate stores every exp (and every sigmoid built on one) as fp32 before it
# compares or sums it, so the fp32 values are what must agree. 20 M doubles from one xorshift sequence, in the
# softmax range [-40, 0] and the sigmoid range [-20, 20]: counts of differing doubles and of differing fp32 values.
# Writes bench/results/exp-agreement.json.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gcc -O2 -ffp-contract=off "$here/libm_exp.c" -o "$tmp/libm_exp" -lm
(cd "$tmp" && ./libm_exp)
node "$here/compare.mjs" "$tmp/c.bin" "$here/../results/exp-agreement.json"
