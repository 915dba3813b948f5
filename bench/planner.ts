// npm run bench:planner — what one placement plan costs the operator's event loop, at the pool sizes the ExpertPool
// schema admits (its CEL bound: MoE layers x (experts + redundantExperts + shared slices) <= 32768) and at
// DeepSeek-V3's: a fresh plan, a replan under new heat from the published plan (what rebalance does every interval;
// it keeps most copies in place), and a replan after a scale by 8 workers (every layer is mapped anew onto the
// workers, keeping what it can). Planning runs on the operator's one thread, which also renews its leader
// Lease (renewDeadline 10 s), so these times must stay far below that. Prints each size's times and their ratio;
// writes bench/results/planner.json.

import { mkdirSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { planPlacement } from "@switchyard/moe";

const sizes = [
  { name: "deepseek-v3, 64 workers", layers: 61, experts: 256, redundant: 32, workers: 64 },
  { name: "deepseek-v3, 1024 workers", layers: 61, experts: 256, redundant: 32, workers: 1024 },
  { name: "32 x 1024 experts, 1024 workers", layers: 32, experts: 1024, redundant: 0, workers: 1024 },
  { name: "512 x 64 experts, 1024 workers", layers: 512, experts: 64, redundant: 0, workers: 1024 },
];

/** A deterministic skewed heat matrix (log-uniform over e^3), so runs compare. */
function heat(layers: number, experts: number, seed: number): number[][] {
  let s = seed;
  const next = () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s / 2147483648;
  };
  return Array.from({ length: layers }, () => Array.from({ length: experts }, () => Math.exp(3 * next())));
}

const REPEAT = 3;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rows = [];
for (const z of sizes) {
  const workers = Array.from({ length: z.workers }, (_, i) => `w${i}`);
  const base = { pool: "bench", layers: z.layers, experts: z.experts, workers, redundantExperts: z.redundant };
  const fresh: number[] = [];
  const replan: number[] = [];
  const scaled: number[] = [];
  let kept = 0;
  for (let r = 0; r < REPEAT; r++) {
    let t = performance.now();
    const first = planPlacement({ ...base, load: heat(z.layers, z.experts, 1 + r) });
    fresh.push(performance.now() - t);
    t = performance.now();
    const next = planPlacement({ ...base, load: heat(z.layers, z.experts, 100 + r), previous: first.plan });
    replan.push(performance.now() - t);
    const smaller = planPlacement({ ...base, workers: workers.slice(0, -8), load: heat(z.layers, z.experts, 1 + r) });
    t = performance.now();
    planPlacement({ ...base, load: heat(z.layers, z.experts, 1 + r), previous: smaller.plan });
    scaled.push(performance.now() - t);
    // copies left where they were: what the replan saves the workers in weight loads
    let same = 0;
    let all = 0;
    next.plan.replicas.forEach((row, l) => {
      row.forEach((hs, e) => {
        const before = new Set(first.plan.replicas[l][e]);
        all += hs.length;
        same += hs.filter((w) => before.has(w)).length;
      });
    });
    kept = same / all;
  }
  const row = {
    size: z.name,
    layers: z.layers,
    experts: z.experts,
    redundant_experts: z.redundant,
    workers: z.workers,
    fresh_ms: Math.round(median(fresh)),
    heat_replan_ms: Math.round(median(replan)),
    replan_over_fresh: Number((median(replan) / median(fresh)).toFixed(2)),
    scale_replan_ms: Math.round(median(scaled)),
    scale_replan_over_fresh: Number((median(scaled) / median(fresh)).toFixed(2)),
    copies_kept: Number(kept.toFixed(3)),
  };
  rows.push(row);
  console.log(
    `${z.name.padEnd(34)} fresh ${String(row.fresh_ms).padStart(5)} ms  heat replan ${String(row.heat_replan_ms).padStart(5)} ms (${row.replan_over_fresh}x; ${(kept * 100).toFixed(1)}% of copies kept)  after a scale ${String(row.scale_replan_ms).padStart(5)} ms (${row.scale_replan_over_fresh}x)`,
  );
}

const out = join(dirname(fileURLToPath(import.meta.url)), "results", "planner.json");
mkdirSync(dirname(out), { recursive: true });
writeFileSync(
  out,
  `${JSON.stringify({ machine: `${cpus().length} x ${cpus()[0]?.model ?? "?"}`, repeat: REPEAT, rows }, null, 2)}\n`,
);
console.log(`wrote ${out}`);
