// H200 smoke of the worker's CUDA backend through the built addon and compiled dist (no vitest there):
// probe, backend selection, parity against the TypeScript reference (with evictions), GPU cache counters.
// Usage (repo root, after `npm run build` with nvcc available): node bench/h200_worker_smoke.mjs

import { cudaParity } from "../expert-worker/dist/backend/cuda-parity.js";
import { selectBackend } from "../expert-worker/dist/backend/select.js";

process.env.SWITCHYARD_GPU_CACHE_SLOTS = "5";
const sel = await selectBackend("cuda");
console.log(`backend: ${sel.backend.name} — ${sel.reason}`);
const r = await cudaParity(sel.backend);
console.log(JSON.stringify(r));
console.log("gpu cache:", JSON.stringify(sel.backend.deviceCacheStats?.()));
const auto = await selectBackend("auto");
console.log(`auto selects: ${auto.backend.name}`);
if (!r.ok) {
  console.log("FAILED: cuda backend does not match the reference");
  process.exit(1);
}
console.log("OK: cuda backend matches the TypeScript reference");
