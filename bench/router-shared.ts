// npm run bench:router-shared — the shared expert that the router computes itself (Qwen2-MoE, DeepSeek-V3 families),
// at the real models' sizes: the TypeScript path (shared() per request, fp32 weights) against the native one
// (sharedBatch() over the whole flush, the expert worker's CPU kernels on bf16 weights), side by side in one run,
// through CheckpointModel on generated one-layer checkpoints. Flushes of 1 and 16 decode tokens. Prints ms per
// flush and per token; writes bench/results/router-shared.json.

import { mkdirSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { cpus, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { generateCheckpoint } from "@switchyard/moe";
import { CheckpointModel } from "../router-service/src/checkpoint-model.js";

const shapes = [
  // routed experts cut to 2 (the router never reads them); the shared expert at its real size
  { model: "qwen1.5-moe-a2.7b", family: "qwen2-moe" as const, d: 2048, f: 1408, shared: 5632 },
  { model: "deepseek-v3", family: "deepseek-v3" as const, d: 7168, f: 2048, shared: 2048 },
];
const rows = [];
for (const s of shapes) {
  const dir = await mkdtemp(join(tmpdir(), "sy-bench-shared-"));
  try {
    await generateCheckpoint({
      family: s.family,
      dir,
      seed: 1,
      layers: 1,
      hiddenSize: s.d,
      intermediateSize: s.f,
      sharedIntermediateSize: s.shared,
      experts: s.family === "deepseek-v3" ? 8 : 2,
      ...(s.family === "deepseek-v3" ? { nGroup: 1, topkGroup: 1, topK: 2 } : { topK: 2 }),
    });
    const m = await CheckpointModel.open(dir);
    const layer = m.isMoeLayer(0) ? 0 : 1;
    await m.loadShared(layer); // read on first need in the router; here before the timing
    for (const T of [1, 16]) {
      const x = Float32Array.from({ length: T * s.d }, (_, i) => Math.sin(i * 0.01));
      const time = async (fn: () => unknown, reps: number) => {
        await fn();
        const t0 = performance.now();
        for (let i = 0; i < reps; i++) await fn();
        return (performance.now() - t0) / reps;
      };
      // interleaved: TypeScript, native, TypeScript, native; the median of each pair's two
      const ts: number[] = [];
      const nat: number[] = [];
      for (let r = 0; r < 2; r++) {
        ts.push(await time(() => m.shared(layer, x, T), T === 1 ? 3 : 1));
        nat.push(await time(() => m.sharedBatch(layer, x, T), 10));
      }
      const tsMs = Math.min(...ts);
      const natMs = Math.min(...nat);
      const row = {
        model: s.model,
        d: s.d,
        shared_f: s.shared,
        tokens: T,
        ts_ms: tsMs,
        native_ms: natMs,
        speedup: tsMs / natMs,
      };
      rows.push(row);
      console.log(
        `${s.model.padEnd(18)} d=${s.d} f_shared=${s.shared} T=${String(T).padEnd(2)}  TypeScript ${tsMs.toFixed(1).padStart(7)} ms  native ${natMs.toFixed(2).padStart(6)} ms  ${(tsMs / natMs).toFixed(0)}x`,
      );
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
const out = process.env.BENCH_OUT ?? join(dirname(fileURLToPath(import.meta.url)), "results", "router-shared.json");
mkdirSync(dirname(out), { recursive: true });
writeFileSync(
  out,
  `${JSON.stringify({ date: new Date().toISOString(), cpu: cpus()[0]?.model, cpus: cpus().length, node: process.version, note: "best of 2 interleaved rounds; TypeScript: shared() as the router ran it per request before; native: sharedBatch() per flush", rows }, null, 1)}\n`,
);
console.log(`wrote ${out}`);
