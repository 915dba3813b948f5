#!/usr/bin/env bash
# Per-kernel GPU times (torch.profiler / CUPTI) of the library's default at the large compute-side cells, and of the
# previous default (SY_MOE_DYN=0) at Qwen3 T=8192, with PDL off so each kernel's span is its own work (with PDL a
# kernel's span includes its wait for the one before it). Usage, from the repo root there: bash bench/h200_profile.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
B=expert-worker/native/cuda/build
say() { echo "[${SECONDS}s] $*"; }
rm -rf $B
make -C expert-worker/native/cuda -j16 build/libsy_moe.so > $OUT/make.log 2>&1 || { tail -30 $OUT/make.log; exit 1; }
say built
run() {  # label, env, shapes, ts
  mkdir -p /tmp/p
  env SY_MOE_PDL=0 $2 PYTHONUNBUFFERED=1 OUT=/tmp/p timeout 100 python3 bench/h200_moe.py $B/libsy_moe.so \
    --shapes "$3" --ts "$4" --no-loop --no-tune --profile > $OUT/profile-$1.log 2>&1
  say "$1 rc=$?"
  python3 - $OUT/profile-$1.log "$1" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("{") and '"kernels_us"' in line:
        r = json.loads(line)
        k = r["kernels_us"] or {}
        print(sys.argv[2], r["shape"], r["T"], "ms %.4f" % r["ms"], "sum_us %.0f" % sum(k.values()))
        for n, v in list(k.items())[:8]:
            print("   %9.1f  %s" % (v, n))
PY
}
run dyn "SY_MOE_NOP=0" qwen3-30b-a3b,deepseek-v3 8192
run static "SY_MOE_DYN=0" qwen3-30b-a3b 8192
run dyn-mixtral "SY_MOE_NOP=0" mixtral-8x7b 1024
exit 0
