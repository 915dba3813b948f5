// The router's asynchronous gate products under concurrent calls (router.ts gateAtFlush: two flushes in flight per
// layer, so several gates at once): DeepSeek-V3's gate (d 7168, 256 experts) over a flush of 21 tokens (the mean
// flush of the 05:14 run on the H200), 1, 2 and 4 calls at once, each call's time from call to settle and the calls
// per second, for 1.5 s per setting, two rounds. With an addon built from another source as the first argument
// (e.g. the one before the shared gate pool, router-service/native/src/gate_pool.h), both are timed in turn in the
// same process. The threads argument: SWITCHYARD_ROUTER_GATE_THREADS semantics (default 4).
// Usage: npx tsx --conditions=switchyard-source bench/router-gate-concurrency.ts [OTHER_ADDON.node] [--threads N]
// Writes bench/results/router-gate-concurrency.json (BENCH_OUT to override).

import { mkdirSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { availableParallelism, cpus } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { transposeGate } from "../router-service/src/checkpoint-model.js";
import { ROUTER_ADDON_PATH, type RouterAddon } from "../router-service/src/core/native-combine.js";

const args = process.argv.slice(2);
const ti = args.indexOf("--threads");
const threads = ti >= 0 ? Number(args[ti + 1]) : 4;
const other = args.find((a, i) => !a.startsWith("--") && i !== ti + 1);
const req = createRequire(import.meta.url);
const addons: [string, RouterAddon][] = [["this source", req(ROUTER_ADDON_PATH) as RouterAddon]];
if (other) addons.unshift([other, req(other) as RouterAddon]);

const d = 7168;
const E = 256;
const T = 21;
const gateT = transposeGate(
  Float32Array.from({ length: E * d }, () => Math.random() - 0.5),
  E,
  d,
);
const xs = Array.from({ length: 4 }, () => Float32Array.from({ length: T * d }, () => Math.random() * 2 - 1));
const rows = [];
for (let round = 0; round < 2; round++)
  for (const concurrent of [1, 2, 4])
    for (const [addon, a] of addons) {
      const lat: number[] = [];
      const t0 = performance.now();
      while (performance.now() - t0 < 1500)
        await Promise.all(
          xs.slice(0, concurrent).map(async (x) => {
            const s = performance.now();
            // an addon built before routerLogitsAsync allocated its output takes one as its 6th argument
            if (typeof a.asyncLogitsOut === "function") await a.routerLogitsAsync(x, gateT, T, d, E, threads);
            else
              await (a.routerLogitsAsync as (...args: unknown[]) => Promise<void>)(
                x,
                gateT,
                T,
                d,
                E,
                new Float32Array(T * E),
                threads,
              );
            lat.push(performance.now() - s);
          }),
        );
      const wall = performance.now() - t0;
      const mean = lat.reduce((x, y) => x + y, 0) / lat.length;
      const row = { round, addon, concurrent, threads, mean_ms: mean, calls_per_s: (lat.length / wall) * 1000 };
      rows.push(row);
      console.log(
        `round ${round} ${addon.padEnd(24)} ${concurrent} at once: ${mean.toFixed(2)} ms a call, ${row.calls_per_s.toFixed(0)} calls/s`,
      );
    }
const out =
  process.env.BENCH_OUT ?? join(dirname(fileURLToPath(import.meta.url)), "results", "router-gate-concurrency.json");
mkdirSync(dirname(out), { recursive: true });
const meta = {
  date: new Date().toISOString(),
  cpu: cpus()[0]?.model,
  cores: availableParallelism(),
  node: process.version,
};
writeFileSync(out, `${JSON.stringify({ ...meta, d, experts: E, tokens: T, rows }, null, 1)}\n`);
console.log(`wrote ${out}`);
