#!/usr/bin/env node
// Where a process's CPU went: self time per function from V8 .cpuprofile files (the local mode writes them with
// SWITCHYARD_CPU_PROF_DIR=DIR). Usage: node bench/cpuprofile-top.mjs FILE.cpuprofile[.gz] ... [--top N]
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { gunzipSync } from "node:zlib";

const args = process.argv.slice(2);
const topAt = args.indexOf("--top");
const top = topAt >= 0 ? Number(args.splice(topAt, 2)[1]) : 25;
for (const file of args) {
  const raw = readFileSync(file);
  const prof = JSON.parse((file.endsWith(".gz") ? gunzipSync(raw) : raw).toString("utf8"));
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  // self time per node: the sampling intervals attributed to the node of each sample
  const self = new Map();
  for (let i = 0; i < prof.samples.length; i++) {
    const dt = prof.timeDeltas[i + 1] ?? 0;
    self.set(prof.samples[i], (self.get(prof.samples[i]) ?? 0) + dt);
  }
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const byFn = new Map();
  for (const [id, us] of self) {
    const f = byId.get(id).callFrame;
    const where = f.url ? `${basename(f.url)}:${f.lineNumber + 1}` : "";
    const key = `${f.functionName || "(anonymous)"} ${where}`.trim();
    byFn.set(key, (byFn.get(key) ?? 0) + us);
  }
  const idle = byFn.get("(idle)") ?? 0;
  console.log(
    `\n${basename(file)}: ${(total / 1e6).toFixed(2)} s sampled, ${(((total - idle) / total) * 100).toFixed(1)}% busy`,
  );
  for (const [k, us] of [...byFn].sort((a, b) => b[1] - a[1]).slice(0, top))
    console.log(`${((us / total) * 100).toFixed(1).padStart(6)}%  ${(us / 1e3).toFixed(0).padStart(7)} ms  ${k}`);
}
