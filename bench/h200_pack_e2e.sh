#!/usr/bin/env bash
# Prepares what the H200 machine needs for the worker/E2E runs (it has no Node.js and no registry access):
# .carry/node.xz (Node binary) and .carry/e2e.tgz (compiled dist of the workspace packages + the runtime
# node_modules closure of router/worker + the N-API header packages for building the addons there).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
bash /work/shared/tools/pack-node-for-gpu.sh >/dev/null
npx tsc -b packages/protocol packages/moe expert-worker router-service
node - <<'JS' > /tmp/e2e-files.txt
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
  for (const d of Object.keys({ ...(pkg.dependencies || {}), ...(pkg.optionalDependencies || {}) })) {
    try { add(d, real.includes("node_modules") ? real : dir); } catch (e) { if (!(pkg.optionalDependencies || {})[d]) throw e; }
  }
}
for (const n of ["@grpc/grpc-js", "prom-client", "grpc-health-check", "@bufbuild/protobuf", "express", "node-api-headers", "node-addon-api", "@switchyard/protocol", "@switchyard/moe", "@switchyard/expert-worker", "@switchyard/router-service"]) add(n, process.cwd());
console.log(out.join("\n"));
JS
# workspace packages are symlinks in node_modules: ship the links plus their compiled dist and package.json
tar czf .carry/e2e.tgz -T /tmp/e2e-files.txt packages/protocol/dist packages/moe/dist expert-worker/dist router-service/dist
ls -la .carry
