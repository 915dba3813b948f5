import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { gateConfigFromSpec, generateCheckpoint, openCheckpoint, referenceMoeBlock } from "@switchyard/moe";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type PackedExpert,
  relError,
  unpackLayer,
  type VerifierData,
  type VerifyJob,
  type VerifyResult,
  WidenScratch,
} from "./verifier.js";
import { readSharedLayers, referenceBytes, VerifierPool } from "./verifier-pool.js";

// The threads run the compiled verifier.js (worker threads do not load TypeScript); npm test builds it first.
const SCRIPT = new URL("../../dist/local/verifier.js", import.meta.url);
// and its imports resolve to the packages' dist, not (as vitest's --conditions flag would have it) their sources
const THREAD = { script: SCRIPT, execArgv: [] };
const built = existsSync(fileURLToPath(SCRIPT));
if (!built && process.env.CI === "true") throw new Error(`${fileURLToPath(SCRIPT)} missing in CI (tsc -b runs first)`);
if (!built) console.warn(`verifier pool tests SKIPPED: ${fileURLToPath(SCRIPT)} not built (npm run build)`);

describe("relError", () => {
  it("is max |a - b| / max |b|, NaN where the answer holds one anywhere (not only last)", () => {
    expect(relError(Float32Array.of(1, 2.5), Float32Array.of(1, 2))).toBeCloseTo(0.25);
    expect(relError(Float32Array.of(Number.NaN, 2), Float32Array.of(1, 2))).toBeNaN();
    expect(relError(Float32Array.of(1, Number.NaN), Float32Array.of(1, 2))).toBeNaN();
  });
  it("is infinite for an answer of another length: an empty or shortened answer does not pass", () => {
    const ref = Float32Array.of(1, 2, 3, 4);
    expect(relError(new Float32Array(0), ref)).toBe(Number.POSITIVE_INFINITY);
    expect(relError(ref.subarray(0, 2), ref)).toBe(Number.POSITIVE_INFINITY);
    expect(relError(Float32Array.of(1, 2, 3, 4, 5), ref)).toBe(Number.POSITIVE_INFINITY);
  });
});

describe.skipIf(!built)("the local mode's reference threads", () => {
  let dir: string;
  let data: VerifierData;
  const d = 32;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sy-verifier-"));
    await generateCheckpoint({ family: "mixtral", dir, seed: 3, layers: 2, hiddenSize: d, intermediateSize: 48 });
    const ckpt = await openCheckpoint(dir);
    data = { init: { topK: null, topP: null, maxK: null }, spec: ckpt.spec, layers: await readSharedLayers(ckpt) };
    expect(referenceBytes(ckpt.spec)).toBe(4 * 2 * 3 * d * 48 * ckpt.spec.experts);
    await ckpt.close();
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  /** A job whose answer is the reference's, or that answer with one element moved by `off`. */
  function job(id: number, layer: number, off = 0): VerifyJob {
    const hidden = Float32Array.from({ length: 2 * d }, (_, i) => Math.sin(i * 0.7 + id));
    const output = referenceMoeBlock(data.spec, unpackLayer(data.layers[layer]), hidden, {
      gate: gateConfigFromSpec(data.spec),
    }).output;
    output[5] += off;
    return { id, layer, hidden, activations: "float32", output };
  }

  it("checks every answer in 'all' mode, on weights shared by the threads, and tells a wrong one", async () => {
    const got: VerifyResult[] = [];
    const pool = await VerifierPool.start(2, "all", data, (r) => got.push(r), THREAD);
    expect((data.layers[0].experts[0].gate as Float32Array).buffer).toBeInstanceOf(SharedArrayBuffer);
    for (let i = 1; i <= 6; i++) expect(pool.offer(job(i, i % 2, i === 4 ? 1 : 0))).toBe(true);
    await pool.drain();
    await pool.close();
    expect(pool.checked).toBe(6);
    got.sort((a, b) => a.id - b.id);
    expect(got.map((r) => r.id)).toEqual([1, 2, 3, 4, 5, 6]);
    for (const r of got) {
      if (r.id === 4) expect(r.relErr).toBeGreaterThan(1e-2);
      else expect(r.relErr).toBeLessThan(1e-6);
    }
  });

  it("in 'sample' mode takes an answer only while a thread is idle", async () => {
    let results = 0;
    const pool = await VerifierPool.start(1, "sample", data, () => results++, THREAD);
    expect(pool.accepting).toBe(true);
    expect(pool.offer(job(1, 0))).toBe(true);
    expect(pool.accepting).toBe(false);
    expect(pool.offer(job(2, 0))).toBe(false);
    await pool.drain();
    expect(pool.accepting).toBe(true);
    expect(pool.offer(job(3, 1))).toBe(true);
    await pool.drain();
    await pool.close();
    expect({ results, offered: pool.offered, checked: pool.checked }).toEqual({ results: 2, offered: 2, checked: 2 });
  });

  it("a thread that fails does not leave the driver waiting: drain rejects naming the answer", async () => {
    const pool = await VerifierPool.start(1, "all", data, () => {}, THREAD);
    pool.offer(job(7, 0));
    pool.offer({ ...job(8, 0), layer: 9 }); // no weights for layer 9: the thread throws
    pool.offer(job(9, 1));
    await expect(pool.drain()).rejects.toThrow(/answer #8.*no weights for layer 9/);
    expect(pool.accepting).toBe(false);
    await pool.close();
  });
});

// Packed: the experts kept as the checkpoint's bf16 bits (half the memory), widened per expert in each thread.
describe.skipIf(!built)("the reference threads on packed (16-bit) experts", () => {
  let dir: string;
  let fp32: VerifierData;
  let packed: VerifierData;
  const d = 24;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sy-verifier-packed-"));
    // Qwen2-MoE: routed experts and a gated shared expert, both packed
    await generateCheckpoint({ family: "qwen2-moe", dir, seed: 5, layers: 2, hiddenSize: d, intermediateSize: 16 });
    const ckpt = await openCheckpoint(dir);
    const init = { topK: null, topP: null, maxK: null };
    fp32 = { init, spec: ckpt.spec, layers: await readSharedLayers(ckpt) };
    packed = { init, spec: ckpt.spec, layers: await readSharedLayers(ckpt, true) };
    expect(referenceBytes(ckpt.spec, true) * 2).toBe(referenceBytes(ckpt.spec));
    await ckpt.close();
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it("gives the fp32 reference's answers bit for bit, the shared expert included", () => {
    const e0 = packed.layers[1].experts[0] as PackedExpert;
    expect(e0.packed).toBe("bfloat16");
    expect(e0.gate).toBeInstanceOf(Uint16Array);
    expect(e0.gate.buffer).toBeInstanceOf(SharedArrayBuffer);
    const hidden = Float32Array.from({ length: 3 * d }, (_, i) => Math.cos(i * 0.3));
    const gate = { gate: gateConfigFromSpec(fp32.spec) };
    for (const layer of [0, 1]) {
      const want = referenceMoeBlock(fp32.spec, unpackLayer(fp32.layers[layer]), hidden, gate).output;
      const got = referenceMoeBlock(packed.spec, unpackLayer(packed.layers[layer]), hidden, gate).output;
      expect(got).toEqual(want);
    }
  });

  it("widens an expert once while it stays in the scratch, into one buffer for all layers", () => {
    const scratch = new WidenScratch();
    const l0 = unpackLayer(packed.layers[0], scratch);
    const l1 = unpackLayer(packed.layers[1], scratch);
    const a = l0.experts[0];
    expect(l0.experts[0]).toBe(a); // the same expert again: not widened again
    const b = l1.experts[1];
    expect(b.gate.buffer).toBe(a.gate.buffer); // another layer's expert reuses the buffer
    expect(l1.shared).toBe(l1.shared); // and the shared expert has its own
    expect(l1.shared!.gate.buffer).not.toBe(b.gate.buffer);
  });

  it("checks answers in the threads and tells a wrong one", async () => {
    const got: VerifyResult[] = [];
    const pool = await VerifierPool.start(2, "all", packed, (r) => got.push(r), THREAD);
    for (let i = 1; i <= 4; i++) {
      const hidden = Float32Array.from({ length: 2 * d }, (_, j) => Math.sin(j * 0.5 + i));
      const output = referenceMoeBlock(fp32.spec, unpackLayer(fp32.layers[i % 2]), hidden, {
        gate: gateConfigFromSpec(fp32.spec),
      }).output;
      if (i === 3) output[2] += 1;
      pool.offer({ id: i, layer: i % 2, hidden, activations: "float32", output });
    }
    await pool.drain();
    await pool.close();
    got.sort((a, b) => a.id - b.id);
    expect(got.map((r) => r.id)).toEqual([1, 2, 3, 4]);
    for (const r of got) {
      if (r.id === 3) expect(r.relErr).toBeGreaterThan(1e-2);
      else expect(r.relErr).toBeLessThan(1e-6);
    }
  });
});
