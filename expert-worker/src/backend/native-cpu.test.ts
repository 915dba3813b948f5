// Native CPU backend vs the TypeScript reference (fp32 oracle) vs a float64 computation, on fresh random inputs
// with awkward sizes: 1 token, experts with no tokens, rows in no slice, d not a multiple of 8, 257 experts,
// bf16 / fp16 / fp32 inputs. Also: cancelling a run really stops the kernel (tile counter).

import { spawnSync } from "node:child_process";
import { expertToFloat32, referenceExpertFFN64, type WeightDType } from "@switchyard/moe";
import { bytesToFloat32, DType, dtypeName, valuesToBytes } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import { PROTO_OF, randomExpert, rng, uniform } from "../testing.js";
import { loadNativeAddon, NATIVE_ADDON_PATH, NativeCpuBackend, nativeLoadError } from "./native-cpu.js";
import { ReferenceBackend } from "./reference.js";
import type { ExpertBackend, PreparedExpert } from "./types.js";

const addon = loadNativeAddon();
// CI builds the addon (npm test builds first): not loading there is a failure, not a skip.
if (!addon && process.env.CI === "true") throw new Error(`native addon not loadable in CI: ${nativeLoadError()}`);
if (!addon) console.warn(`native-cpu tests SKIPPED: addon not loadable: ${nativeLoadError()}`);

interface Case {
  name: string;
  d: number;
  f: number;
  weights: WeightDType;
  tokens: DType;
  /** expert per slice and its row count; slices are laid out back to back after `gap` leading free rows. */
  counts: number[];
  gap: number;
  tail: number;
  rowWeights: boolean;
}

const seed = (Date.now() ^ (Math.random() * 2 ** 31)) >>> 0;

function cases(): Case[] {
  const r = rng(seed);
  const counts257 = Array.from({ length: 257 }, () => Math.floor(r() * 3)); // 0, 1 or 2 rows each
  return [
    {
      name: "one token, d=37, fp32",
      d: 37,
      f: 53,
      weights: "float32",
      tokens: DType.FLOAT32,
      counts: [1],
      gap: 0,
      tail: 0,
      rowWeights: false,
    },
    {
      name: "empty experts and free rows, d=45, bf16",
      d: 45,
      f: 70,
      weights: "bfloat16",
      tokens: DType.BFLOAT16,
      counts: [5, 0, 13, 0, 1],
      gap: 2,
      tail: 3,
      rowWeights: true,
    },
    {
      name: "long slices (several row blocks), d=100, fp16",
      d: 100,
      f: 129,
      weights: "float16",
      tokens: DType.FLOAT16,
      counts: [29, 40],
      gap: 0,
      tail: 1,
      rowWeights: true,
    },
    {
      name: "long slices, bf16 weights widened per panel, d=72",
      d: 72,
      f: 100,
      weights: "bfloat16",
      tokens: DType.FLOAT32,
      counts: [15, 33, 3],
      gap: 0,
      tail: 0,
      rowWeights: true,
    },
    {
      name: "f=600 (several K chunks in the down projection), bf16, d=40",
      d: 40,
      f: 600,
      weights: "bfloat16",
      tokens: DType.BFLOAT16,
      counts: [20, 1, 15],
      gap: 0,
      tail: 2,
      rowWeights: true,
    },
    {
      name: "a slice longer than one L2 unit (200 rows at d=1000 split in two), bf16",
      d: 1000,
      f: 40,
      weights: "bfloat16",
      tokens: DType.FLOAT32,
      counts: [200, 7],
      gap: 0,
      tail: 0,
      rowWeights: false,
    },
    {
      name: "257 experts, d=20, bf16 weights, fp32 tokens",
      d: 20,
      f: 24,
      weights: "bfloat16",
      tokens: DType.FLOAT32,
      counts: counts257,
      gap: 1,
      tail: 0,
      rowWeights: true,
    },
  ];
}

async function runCase(
  backend: ExpertBackend,
  c: Case,
  prepared: PreparedExpert[],
  tokens: Uint8Array,
  rowWeights?: Float32Array,
) {
  const slices = [];
  let off = c.gap;
  for (let e = 0; e < c.counts.length; e++) {
    slices.push({ expert: prepared[e], offset: off, count: c.counts[e] });
    off += c.counts[e];
  }
  const rows = off + c.tail;
  const out = await backend.run({ dtype: c.tokens, tokens, rows, cols: c.d, slices, rowWeights });
  return bytesToFloat32(out, c.tokens, true);
}

describe.skipIf(!addon)("native CPU backend", () => {
  const native = addon ? new NativeCpuBackend(addon) : (undefined as unknown as NativeCpuBackend);
  const reference = new ReferenceBackend();

  it.each(cases().map((c) => [c.name, c] as const))(
    `matches the reference and float64 (seed ${seed}): %s`,
    async (_, c) => {
      const r = rng(seed ^ c.d);
      const experts = c.counts.map(() => randomExpert(c.d, c.f, c.weights, r));
      const rows = c.gap + c.counts.reduce((a, b) => a + b, 0) + c.tail;
      const x = uniform(rows * c.d, 1, r);
      const tokens = new Uint8Array(valuesToBytes(x, c.tokens));
      const rowWeights = c.rowWeights ? uniform(rows, 1, r) : undefined;

      const nat = await runCase(
        native,
        c,
        await Promise.all(experts.map((w) => native.prepare(w))),
        tokens,
        rowWeights,
      );
      const ref = await runCase(
        reference,
        c,
        await Promise.all(experts.map((w) => reference.prepare(w))),
        tokens,
        rowWeights,
      );

      // float64 over exactly the values the kernels saw (tokens and weights widened from their stored dtype).
      const xs = bytesToFloat32(tokens, c.tokens, true);
      const w32 = experts.map(expertToFloat32);
      const slices = [];
      let off = c.gap;
      for (let e = 0; e < c.counts.length; e++) {
        slices.push({ expert: e, offset: off, count: c.counts[e] });
        off += c.counts[e];
      }
      const exact = referenceExpertFFN64(xs, c.d, slices, (e) => w32[e], rowWeights);

      let maxAbs = 0;
      for (const v of exact) maxAbs = Math.max(maxAbs, Math.abs(v));
      // fp32 accumulation over d and f terms: a few 1e-6 relative to the output scale; a half-type output adds its
      // own rounding (2^-8 for bf16, 2^-11 for fp16) relative to each value.
      const half = c.tokens === DType.BFLOAT16 ? 2 ** -8 : c.tokens === DType.FLOAT16 ? 2 ** -11 : 0;
      let worstNat = 0;
      let worstRef = 0;
      for (let i = 0; i < exact.length; i++) {
        const tol = 2e-5 * maxAbs + 1.05 * half * Math.abs(exact[i]) + 1e-30;
        worstNat = Math.max(worstNat, Math.abs(nat[i] - exact[i]) / tol);
        worstRef = Math.max(worstRef, Math.abs(ref[i] - exact[i]) / tol);
      }
      // Rows in no slice (gap, tail, empty experts) are exactly zero.
      for (let i = 0; i < c.gap * c.d; i++) expect(nat[i]).toBe(0);
      for (let i = (rows - c.tail) * c.d; i < rows * c.d; i++) expect(nat[i]).toBe(0);
      expect(maxAbs, "test data must produce non-trivial outputs").toBeGreaterThan(1e-3);
      expect(worstRef, `reference vs float64 (${dtypeName(c.tokens)})`).toBeLessThanOrEqual(1);
      expect(worstNat, `native vs float64 (${dtypeName(c.tokens)})`).toBeLessThanOrEqual(1);
    },
  );

  it("a raised cancel flag stops the kernel between tiles", async () => {
    const r = rng(seed);
    const d = 512;
    const f = 1024;
    const experts = await Promise.all(
      Array.from({ length: 4 }, () => native.prepare(randomExpert(d, f, "bfloat16", r))),
    );
    // Each expert's slice is long (8 x 96 rows, many tiles) so that the run outlasts the event-loop polling below
    // by far: with 96 rows each, a busy 2-core CI machine once saw the whole run finish before the flag was raised.
    const per = 8 * 96;
    const rows = 4 * per;
    const tokens = new Uint8Array(new Float32Array(uniform(rows * d, 1, r)).buffer);
    const slices = new Uint32Array([0, 0, per, 1, per, per, 2, 2 * per, per, 3, 3 * per, per]);
    const handles = experts.map((e) => (e as unknown as { handle: object }).handle);
    const full = await native.addon.runExperts({
      dtype: DType.FLOAT32,
      tokens,
      rows,
      cols: d,
      slices,
      experts: handles,
    });
    expect(full.tilesDone).toBe(full.tilesTotal);

    const cancel = new Int32Array(new SharedArrayBuffer(4));
    const before = native.addon.stats();
    const p = native.addon.runExperts({
      dtype: DType.FLOAT32,
      tokens,
      rows,
      cols: d,
      slices,
      experts: handles,
      cancel,
    });
    // Raise the flag as soon as the kernel has started (the first tile is counted).
    while (native.addon.stats().tilesDone === before.tilesDone) await new Promise((res) => setImmediate(res));
    Atomics.store(cancel, 0, 1);
    const err = (await p.then(
      () => null,
      (e) => e,
    )) as { code: string; tilesDone: number } | null;
    const after = native.addon.stats();
    expect(err?.code).toBe("CANCELLED");
    expect(after.runsCancelled).toBe(before.runsCancelled + 1);
    expect(after.tilesDone - before.tilesDone).toBeLessThan(full.tilesTotal);
    expect(err?.tilesDone).toBe(after.tilesDone - before.tilesDone);
  });

  it("an aborted signal rejects with the abort reason and never returns output", async () => {
    const r = rng(seed + 1);
    const e = await native.prepare(randomExpert(64, 64, "float32", r));
    const ac = new AbortController();
    ac.abort(new DOMException("deadline", "TimeoutError"));
    await expect(
      native.run({
        dtype: DType.FLOAT32,
        tokens: new Uint8Array(64 * 4),
        rows: 1,
        cols: 64,
        slices: [{ expert: e, offset: 0, count: 1 }],
        signal: ac.signal,
      }),
    ).rejects.toMatchObject({ code: "DEADLINE_EXCEEDED" });
  });

  it("describes itself and reports the FMA peak probe", async () => {
    expect(native.describe()).toMatch(/cpu-native \((avx512|avx2|generic)/);
    const peak = await native.addon.measurePeak(1, 0.05);
    expect(peak.gflops).toBeGreaterThan(1);
    expect(PROTO_OF.bfloat16).toBe(DType.BFLOAT16);
  });
});

// Bad calls straight to the addon's exported functions (the wrapper validates first, but a crash would take the whole
// worker down): each runs in a child process, so a segfault or abort shows as a signal or exit status, not as a dead
// test worker.
describe.skipIf(!addon)("native CPU addon: bad calls throw instead of crashing", () => {
  /** Runs `body` (async, `a` = the addon) in a fresh node; its stdout is the thrown error's name and message. */
  function probe(body: string): { status: number | null; signal: string | null; out: string } {
    const code = `const a = require(${JSON.stringify(NATIVE_ADDON_PATH)});
      (async () => { ${body} })().then(() => console.log("no error"), (e) => console.log(e.name + ": " + e.message));`;
    const r = spawnSync(process.execPath, ["-e", code], {
      encoding: "utf8",
      timeout: 10_000,
      env: { ...process.env, SWITCHYARD_CPU_THREADS: "2" },
    });
    return { status: r.status, signal: r.signal, out: `${r.stdout}${r.stderr}`.trim() };
  }

  it("prepareExpert: rows * cols * 4 wrapping past 2^64 to the empty buffer's length is refused", () => {
    // 2^32 x 2^32 fp32 is 2^66 bytes, 0 modulo 2^64: an int64 product matched the empty Uint8Array.
    const r = probe(`const w = { dtype: 1, rows: 2 ** 32, cols: 2 ** 32, data: new Uint8Array(0) };
      await a.prepareExpert(w, w, w);`);
    expect(r).toMatchObject({ status: 0, signal: null });
    expect(r.out).toMatch(/^RangeError: gate\.rows/);
  });

  it("runExperts: rows * cols * 4 wrapping past 2^64 is refused (was an uncaught std::bad_alloc: abort)", () => {
    const r = probe(`await a.runExperts({ dtype: 1, rows: 2 ** 40, cols: 2 ** 24, tokens: new Uint8Array(0),
      experts: [], slices: new Uint32Array(0) });`);
    expect(r).toMatchObject({ status: 0, signal: null });
    expect(r.out).toMatch(/^RangeError: rows/);
  });

  it("measurePeak / measureReadBandwidth: absurd thread counts and sizes reject (were a hang and an abort)", () => {
    for (const call of [
      "await a.measurePeak(1e9, 0.01)",
      "await a.measurePeak(1, NaN)",
      "await a.measureReadBandwidth(1, 1e9)",
      "await a.measureReadBandwidth(-1, 1)",
    ]) {
      const r = probe(call);
      expect(r, call).toMatchObject({ status: 0, signal: null });
      expect(r.out, call).toMatch(/^RangeError: (threads|seconds|mib)/);
    }
  });
});
