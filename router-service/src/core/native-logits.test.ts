// The native router logits (native/src/logits.cc) against packages/moe routerLogits, which they must match bit for
// bit (the same bits route tokens to the same experts as the reference does): fresh random inputs each run, the three
// model families' gate shapes, odd widths, one expert, no tokens, every blocking path of the kernel, values of mixed
// scale, fp32 and bf16 hidden states; bad calls must throw.

import { spawnSync } from "node:child_process";
import { routerLogits } from "@switchyard/moe";
import { describe, expect, it } from "vitest";
import { transposeGate } from "../checkpoint-model.js";
import { nativeCombineStatus, ROUTER_ADDON_PATH, routerAddon } from "./native-combine.js";

const addon = routerAddon();
if (!addon && process.env.CI === "true") throw new Error(`router addon not loadable in CI: ${nativeCombineStatus()}`);
if (!addon) console.warn(`native router-logits tests SKIPPED: ${nativeCombineStatus()}`);

const seed = (Date.now() ^ (process.pid << 8)) >>> 0;
let s = seed | 0;
function rand(): number {
  s = (s + 0x6d2b79f5) | 0;
  let t = Math.imul(s ^ (s >>> 15), 1 | s);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
/** Mixed scales, so that the sums round often and the order of the additions shows. */
const value = () => (rand() * 2 - 1) * 2 ** Math.floor(rand() * 12 - 6);

describe.skipIf(!addon)(`native router logits (seed ${seed})`, () => {
  const cases: [number, number, number][] = [
    [3, 4096, 8], // Mixtral
    [5, 2048, 128], // Qwen3-30B-A3B
    [2, 7168, 256], // DeepSeek-V3
    [4, 7, 3], // odd width
    [1, 1, 1],
    [6, 33, 1],
    [0, 64, 16], // no tokens
    [3, 96, 72], // a wide block, a block of 8
    [5, 50, 13], // a block of 8, then experts one by one
    [7, 40, 60], // Qwen2-MoE's 60 experts: a full panel, then a narrow one (3 blocks of 8, 4 singles); odd tokens
    [17, 64, 256], // a flush of 17 tokens over 8 full panels
  ];
  for (const [T, d, E] of cases) {
    it(`T=${T} d=${d} E=${E}: the same bits as routerLogits`, () => {
      const x = Float32Array.from({ length: T * d }, value);
      const gate = Float32Array.from({ length: E * d }, value);
      const want = routerLogits(x, gate, d);
      const got = new Float32Array(T * E).fill(Number.NaN);
      addon!.routerLogits(x, transposeGate(gate, E, d), T, d, E, got);
      const a = new Uint32Array(got.buffer);
      const b = new Uint32Array(want.buffer);
      const bad = a.findIndex((v, i) => v !== b[i]);
      expect(bad, bad >= 0 ? `element ${bad}: native ${got[bad]} vs TypeScript ${want[bad]}` : "").toBe(-1);
    });

    it(`T=${T} d=${d} E=${E}: bf16 hidden states give the bits of routerLogits over them widened`, () => {
      const bits = Uint16Array.from({ length: T * d }, () => Math.floor(rand() * 65536) & 0xbfff); // finite values
      const widened = new Float32Array(new Uint32Array(Array.from(bits, (b) => b << 16)).buffer);
      const gate = Float32Array.from({ length: E * d }, value);
      const want = routerLogits(widened, gate, d);
      const got = new Float32Array(T * E).fill(Number.NaN);
      addon!.routerLogits(bits, transposeGate(gate, E, d), T, d, E, got);
      const same = got.every((v, i) => Object.is(v, want[i]) || (Number.isNaN(v) && Number.isNaN(want[i])));
      expect(same).toBe(true);
    });
  }

  for (const [T, d, E, threads] of [
    [2, 7168, 256, 4], // DeepSeek-V3: 8 panels over 4 threads
    [17, 64, 256, 3], // ranges of uneven length
    [7, 40, 60, 8], // more threads than panels (2)
    [5, 50, 13, 1], // one narrow panel on the pool thread alone
    [0, 64, 16, 2],
  ] as const) {
    it(`routerLogitsAsync T=${T} d=${d} E=${E} (threads ${threads}): the same bits as routerLogits`, async () => {
      const x = Float32Array.from({ length: T * d }, value);
      const bits = Uint16Array.from({ length: T * d }, () => Math.floor(rand() * 65536) & 0xbfff);
      const gt = transposeGate(Float32Array.from({ length: E * d }, value), E, d);
      for (const hidden of [x, bits]) {
        const want = new Float32Array(T * E);
        addon!.routerLogits(hidden, gt, T, d, E, want);
        const got = await addon!.routerLogitsAsync(hidden, gt, T, d, E, threads);
        expect(got).toBeInstanceOf(Float32Array);
        expect(got.length).toBe(T * E);
        expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer))).toBe(true);
      }
    });
  }

  it("routerLogitsAsync: many calls at once on the shared gate pool, each the same bits as routerLogits", async () => {
    // More calls than the libuv pool's threads, of different sizes, so that the pool's queue holds several calls'
    // panels at once and a caller takes other calls' panels.
    const calls = Array.from({ length: 24 }, (_, i) => {
      const [T, d, E] = [
        [3, 256, 256],
        [1, 96, 72],
        [9, 128, 33],
        [0, 64, 16],
      ][i % 4];
      const hidden = Float32Array.from({ length: T * d }, value);
      const gt = transposeGate(Float32Array.from({ length: E * d }, value), E, d);
      const want = new Float32Array(T * E);
      addon!.routerLogits(hidden, gt, T, d, E, want);
      return { T, d, E, hidden, gt, want };
    });
    const got = await Promise.all(calls.map((c) => addon!.routerLogitsAsync(c.hidden, c.gt, c.T, c.d, c.E, 4)));
    for (const [i, c] of calls.entries())
      expect(Buffer.from(got[i].buffer).equals(Buffer.from(c.want.buffer))).toBe(true);
  });

  it("routerLogitsAsync with one gate thread (a 2-CPU pod: no pool workers, the callers run every panel)", () => {
    // The pool is made once per process, at its first call: a process of its own, whose first call asks for 1 thread.
    const script = `
      const a = require(${JSON.stringify(ROUTER_ADDON_PATH)});
      const d = 96, E = 72, T = 5;
      const v = (i) => Math.sin(i * 12.9898) * 3;
      const x = Float32Array.from({ length: T * d }, (_, i) => v(i));
      const gt = Float32Array.from({ length: E * d }, (_, i) => v(i + 7));
      const want = new Float32Array(T * E);
      a.routerLogits(x, gt, T, d, E, want);
      Promise.all(Array.from({ length: 8 }, () => a.routerLogitsAsync(x, gt, T, d, E, 1))).then((outs) => {
        const ok = outs.every((o) => Buffer.from(o.buffer).equals(Buffer.from(want.buffer)));
        process.stdout.write(ok ? "same" : "different");
      });`;
    const r = spawnSync(process.execPath, ["-e", script], { encoding: "utf8", timeout: 20_000 });
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe("same");
  });

  it("routerLogitsAsync checks its arguments before it starts", () => {
    const x = new Float32Array(8);
    const gt = new Float32Array(8 * 4);
    expect(() => addon!.routerLogitsAsync(x, gt, 2, 8, 4, 2)).toThrow(/hidden: shorter/);
    expect(() => addon!.routerLogitsAsync(x, gt, 1, 8, 4, 0)).toThrow(/threads: out of range/);
    expect(() => (addon!.routerLogitsAsync as (...a: unknown[]) => unknown)(x, gt, 1, 8, 4)).toThrow(
      /6 arguments expected/,
    );
  });

  it("throws on bad calls instead of reading out of bounds", () => {
    const x = new Float32Array(8);
    const gt = new Float32Array(8 * 4);
    const out = new Float32Array(4);
    expect(() => addon!.routerLogits(x, gt, 2, 8, 4, out)).toThrow(/hidden: shorter/);
    expect(() => addon!.routerLogits(x, gt.subarray(1), 1, 8, 4, out)).toThrow(/gateT: shorter/);
    expect(() => addon!.routerLogits(x, gt, 1, 8, 4, new Float32Array(3))).toThrow(/out: shorter/);
    expect(() => addon!.routerLogits(new Float64Array(8) as unknown as Float32Array, gt, 1, 8, 4, out)).toThrow(
      /hidden: expected a Float32Array \(fp32\) or a Uint16Array \(bf16\)/,
    );
    expect(() => addon!.routerLogits(x, gt, 1, 0, 4, out)).toThrow(/d: out of range/);
    expect(() => addon!.routerLogits(x, gt, 1, 8, 1.5, out)).toThrow(/experts: out of range/);
  });
});
