#!/usr/bin/env bash
# Prepares .carry/benchjs/ for the H200 machine (it has Node.js only as .carry/node.xz, and no tsx): the router's
# gate benches (bench/router-logits.ts, bench/router-gate-concurrency.ts) as plain ESM, their imports of the
# router's TypeScript sources pointed at its compiled dist, which .carry/e2e.tgz ships (bench/h200_pack_e2e.sh).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
mkdir -p .carry/benchjs
for f in router-logits router-gate-concurrency; do
  npx esbuild bench/$f.ts --format=esm --platform=node --outfile=.carry/benchjs/$f.mjs --log-level=warning
  sed -i 's#"\.\./router-service/src/\(.*\)\.js"#"../../router-service/dist/\1.js"#' .carry/benchjs/$f.mjs
done
ls -la .carry/benchjs
