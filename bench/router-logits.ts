// npm run bench:router-logits — the router's gate products (router logits, for requests that come without them):
// the native addon (router-service/native/src/logits.cc) against the TypeScript loop it replaced (packages/moe
// routerLogits, still the fallback), side by side in one run, at the gates of the three model families, one token
// per request (decode) and 64. Prints microseconds per token and writes bench/results/router-logits.json.
//
// The gate stays in the caches when one is called back to back. In the router it does not (the hidden states, the
// replies and the combine pass through between two gates), so the "cold" rows cycle through copies of the gate
// that together exceed the last-level cache (64 MB), at 1 token a call (a gate per decode request) and 16 (one
// per flush of 16 decode requests, router.ts gateAtFlush).
//
// Then the gate's selection over the logits (softmax top-k, DeepSeek-V3's sigmoid group top-k): the native gate
// (native/src/gate.h) against packages/moe applyGate in TypeScript, at 1, 16 and 44 tokens a call (the router calls
// it once per flush; 44 is the mean flush at Qwen3-30B-A3B full with 256 sequences on the H200).

import { mkdirSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { applyGate, type GateConfig, routerLogits } from "@switchyard/moe";
import { transposeGate } from "../router-service/src/checkpoint-model.js";
import { nativeCombineStatus, routerAddon } from "../router-service/src/core/native-combine.js";

const addon = routerAddon();
if (!addon) throw new Error(`the router addon is needed: ${nativeCombineStatus()}`);
const shapes = [
  { model: "mixtral-8x7b", d: 4096, E: 8 },
  { model: "qwen3-30b-a3b", d: 2048, E: 128 },
  { model: "deepseek-v3", d: 7168, E: 256 },
];
const ROUNDS = 5;

/** Median over rounds of the time per token of `fn` run for ~100 ms each round. */
function perToken(fn: () => void, tokens: number): number {
  for (let i = 0; i < 20; i++) fn();
  const rounds: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    let n = 0;
    const t0 = performance.now();
    while (performance.now() - t0 < 100) {
      fn();
      n++;
    }
    rounds.push(((performance.now() - t0) * 1000) / (n * tokens));
  }
  return rounds.sort((a, b) => a - b)[ROUNDS >> 1];
}

const COLD_BYTES = 64 << 20;
const rows = [];
for (const { model, d, E } of shapes) {
  const gate = Float32Array.from({ length: E * d }, () => Math.random() - 0.5);
  const gateT = transposeGate(gate, E, d);
  for (const T of [1, 64]) {
    const x = Float32Array.from({ length: T * d }, () => Math.random() * 2 - 1);
    const out = new Float32Array(T * E);
    // interleaved: each implementation's rounds run between the other's
    const ts = perToken(() => routerLogits(x, gate, d, out), T);
    const nat = perToken(() => addon.routerLogits(x, gateT, T, d, E, out), T);
    const row = { model, d, experts: E, tokens: T, ts_us_per_token: ts, native_us_per_token: nat, speedup: ts / nat };
    rows.push(row);
    console.log(
      `${model.padEnd(14)} d=${String(d).padEnd(5)} E=${String(E).padEnd(4)} T=${String(T).padEnd(3)}  TypeScript ${ts.toFixed(1).padStart(7)} us/token  native ${nat.toFixed(2).padStart(6)} us/token  ${(ts / nat).toFixed(1)}x`,
    );
  }
  const copies = Math.max(2, Math.ceil(COLD_BYTES / gateT.byteLength));
  const gates = Array.from({ length: copies }, () => gateT.slice());
  const cold: Record<number, number> = {};
  for (const T of [1, 16]) {
    const x = Float32Array.from({ length: T * d }, () => Math.random() * 2 - 1);
    const out = new Float32Array(T * E);
    let g = 0;
    cold[T] = perToken(() => addon.routerLogits(x, gates[g++ % copies], T, d, E, out), T);
  }
  const row = {
    model,
    d,
    experts: E,
    cold: true,
    native_us_per_token_t1: cold[1],
    native_us_per_token_t16: cold[16],
    t16_speedup: cold[1] / cold[16],
  };
  rows.push(row);
  console.log(
    `${model.padEnd(14)} d=${String(d).padEnd(5)} E=${String(E).padEnd(4)} cold gate  native ${cold[1].toFixed(2).padStart(6)} us/token a token a call, ${cold[16].toFixed(2).padStart(6)} 16 a call: ${row.t16_speedup.toFixed(2)}x`,
  );
}
const gates: { model: string; E: number; cfg: GateConfig; bias?: Float32Array }[] = [
  {
    model: "mixtral-8x7b",
    E: 8,
    cfg: { scoring: "softmax", topK: 2, normTopKProb: true, nGroup: 1, topkGroup: 1, routedScalingFactor: 1 },
  },
  {
    model: "qwen3-30b-a3b",
    E: 128,
    cfg: { scoring: "softmax", topK: 8, normTopKProb: true, nGroup: 1, topkGroup: 1, routedScalingFactor: 1 },
  },
  {
    model: "deepseek-v3",
    E: 256,
    cfg: { scoring: "sigmoid", topK: 8, normTopKProb: true, nGroup: 8, topkGroup: 4, routedScalingFactor: 2.5 },
    bias: Float32Array.from({ length: 256 }, () => (Math.random() - 0.5) * 0.2),
  },
];
const kernel = addon.routerGate;
if (!kernel) throw new Error("the router addon has no routerGate (npm run build)");
for (const { model, E, cfg, bias } of gates) {
  for (const T of [1, 16, 44]) {
    // 256 different calls' logits in turn: one call's repeated would let the branch predictor learn its selection
    // (the native gate then reads 0.68 instead of 1.07 us a token at Qwen3's, flushes of 44)
    const calls = Array.from({ length: 256 }, () =>
      Float32Array.from({ length: T * E }, () => (Math.random() * 2 - 1) * 4),
    );
    let i = 0;
    let j = 0;
    const ts = perToken(() => applyGate(calls[i++ & 255], E, cfg, bias), T);
    const nat = perToken(() => applyGate(calls[j++ & 255], E, cfg, bias, kernel), T);
    rows.push({
      model,
      gate: cfg.scoring,
      experts: E,
      k: cfg.topK,
      tokens: T,
      ts_us_per_token: ts,
      native_us_per_token: nat,
      speedup: ts / nat,
    });
    console.log(
      `${model.padEnd(14)} gate ${cfg.scoring.padEnd(7)} E=${String(E).padEnd(4)} k=${cfg.topK} T=${String(T).padEnd(3)}  TypeScript ${ts.toFixed(2).padStart(6)} us/token  native ${nat.toFixed(2).padStart(6)} us/token  ${(ts / nat).toFixed(1)}x`,
    );
  }
}
const out = process.env.BENCH_OUT ?? join(dirname(fileURLToPath(import.meta.url)), "results", "router-logits.json");
mkdirSync(dirname(out), { recursive: true });
writeFileSync(
  out,
  `${JSON.stringify({ date: new Date().toISOString(), cpu: cpus()[0]?.model, isa: addon.isa(), node: process.version, rows }, null, 1)}\n`,
);
console.log(`wrote ${out}`);
