#!/usr/bin/env bash
# On one H200 (kind nvidia-h200), from the repo root, with .carry/node.xz, .carry/e2e.tgz (bench/h200_pack_e2e.sh)
# and .carry/logits-mul-add.cc (router-service/native/src/logits.cc before the fused multiply-adds): DeepSeek-V3
# full, 128 sequences, one router over one worker, with the router's gate products fused (this checkout), then
# multiply-then-add (the old source, the router addon rebuilt), then fused again, 12 s each. Logs in $OUT.
export E2E_SECONDS=${E2E_SECONDS:-12}
source bench/h200_e2e_steps.sh
export PATH=$PWD/.carry:$PATH
family=deepseek-v3
conc=128
rebuild() { cp "$1" router-service/native/src/logits.cc && node scripts/build-native.mjs router-service > /dev/null 2>&1; }
e2e_step 1 fma-1 --drivers 6 > /dev/null
cp router-service/native/src/logits.cc /tmp/logits-fma.cc
rebuild .carry/logits-mul-add.cc
e2e_step 1 muladd --drivers 6 > /dev/null
rebuild /tmp/logits-fma.cc
e2e_step 1 fma-2 --drivers 6 > /dev/null
rm -f $OUT/smoke.log $OUT/build.log
for f in $OUT/e2e-*.log; do
  echo "== $f"
  grep -E "^tokens/s|^latency|router time|worker batches|router by thread|^OK|FAILED" $f
done
