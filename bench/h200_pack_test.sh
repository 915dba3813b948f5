#!/usr/bin/env bash
# Prepares what the H200 machine needs to run the expert worker's vitest suite there (it has no Node.js and no
# registry access): .carry/node.xz (Node binary) and .carry/test.tgz (the node_modules closure of vitest, the
# worker's runtime dependencies and the N-API header packages for building the addons). Sources travel as they
# are: vitest resolves the workspace packages to their TypeScript sources. Then, there: bench/h200_cuda_test.sh.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
bash /work/shared/tools/pack-node-for-gpu.sh >/dev/null
node - <<'JS' > /tmp/h200-test-files.txt
const fs = require("fs"), path = require("path");
const seen = new Set();
const out = [];
function add(name, from) {
  let dir = path.join(from, "node_modules", name);
  while (!fs.existsSync(dir)) {
    const up = path.dirname(from);
    if (up === from) { if (name.startsWith("@types/")) return; throw new Error("missing " + name); }
    from = up; dir = path.join(from, "node_modules", name);
  }
  const real = fs.realpathSync(dir);
  if (seen.has(real)) return;
  seen.add(real);
  out.push(path.relative(process.cwd(), dir));
  const pkg = JSON.parse(fs.readFileSync(path.join(real, "package.json"), "utf8"));
  const deps = { ...(pkg.dependencies || {}), ...(pkg.optionalDependencies || {}), ...(pkg.peerDependencies || {}) };
  for (const d of Object.keys(deps)) {
    try { add(d, real.includes("node_modules") ? real : dir); } catch (e) { if (!(d in (pkg.dependencies || {}))) continue; throw e; }
  }
}
for (const n of ["vitest", "@grpc/grpc-js", "prom-client", "grpc-health-check", "@bufbuild/protobuf", "express", "node-api-headers", "node-addon-api", "@switchyard/protocol", "@switchyard/moe", "@switchyard/expert-worker"]) add(n, process.cwd());
console.log(out.join("\n"));
JS
tar czf .carry/test.tgz -T /tmp/h200-test-files.txt
ls -la .carry/test.tgz .carry/node.xz
