import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Checkpoint, expertReader, expertToFloat32, openCheckpoint, sliceSharedExpert } from "./checkpoint.js";
import { generateCheckpoint } from "./generate.js";
import { mulberry32 } from "./random.js";
import { referenceExpertFFN } from "./reference.js";
import { defaultSpec, sharedSlices } from "./spec.js";

let root: string;
let ckpt: Checkpoint;
const d = 24;
const f = 16;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "sy-shared-slices-"));
  // Qwen2-MoE: a shared expert 4x as wide as a routed one, in fp32 so that the sum over slices is compared tightly
  await generateCheckpoint({
    family: "qwen2-moe",
    dir: root,
    seed: 3,
    layers: 2,
    hiddenSize: d,
    intermediateSize: f,
    sharedIntermediateSize: 4 * f,
    dtype: "float32",
  });
  ckpt = await openCheckpoint(root);
});

afterAll(async () => {
  await ckpt?.close();
  await rm(root, { recursive: true, force: true });
});

describe("sharedSlices", () => {
  it("is the shared width over the routed width when it divides, else 0", () => {
    expect(sharedSlices(defaultSpec("qwen2-moe", { intermediateSize: 1408, sharedIntermediateSize: 5632 }))).toBe(4);
    expect(sharedSlices(defaultSpec("deepseek-v3", { intermediateSize: 2048, sharedIntermediateSize: 2048 }))).toBe(1);
    expect(sharedSlices(defaultSpec("qwen2-moe", { intermediateSize: 1408, sharedIntermediateSize: 5000 }))).toBe(0);
    expect(sharedSlices(defaultSpec("mixtral"))).toBe(0);
  });
});

describe("the shared expert as slices", () => {
  it("sums over its slices to the whole MLP", async () => {
    const whole = await ckpt.readSharedExpert(1);
    if (!whole) throw new Error("no shared expert generated");
    const rnd = mulberry32(11);
    const T = 5;
    const x = Float32Array.from({ length: T * d }, () => rnd() * 2 - 1);
    const all = [{ expert: 0, offset: 0, count: T }];
    const want = referenceExpertFFN(x, d, all, () => expertToFloat32(whole));
    const read = expertReader(ckpt);
    const got = new Float32Array(T * d);
    const E = ckpt.spec.experts;
    const worstOff = () => {
      let worst = 0;
      for (let i = 0; i < want.length; i++)
        worst = Math.max(worst, Math.abs(got[i] - want[i]) / (Math.abs(want[i]) + 1e-3));
      return worst;
    };
    for (let j = 0; j < 4; j++) {
      // three slices are not the whole: the test would catch a slice read twice or one left out
      if (j === 3) expect(worstOff()).toBeGreaterThan(1e-2);
      const slice = await read(1, E + j);
      expect([slice.gate.rows, slice.gate.cols, slice.down.rows, slice.down.cols]).toEqual([f, d, d, f]);
      const y = referenceExpertFFN(x, d, all, () => expertToFloat32(slice));
      for (let i = 0; i < y.length; i++) got[i] += y[i];
    }
    expect(worstOff()).toBeLessThan(1e-4);
  });

  it("reads a layer's shared expert once for slices asked for together; routed ids read the expert", async () => {
    const read = expertReader(ckpt);
    const E = ckpt.spec.experts;
    const before = ckpt.bytesRead;
    await Promise.all([0, 1, 2, 3].map((j) => read(0, E + j)));
    expect(ckpt.bytesRead - before).toBe(3 * d * 4 * f * 4); // gate, up, down of width 4f, fp32
    const routed = await read(0, 2);
    expect(routed.gate.data).toEqual((await ckpt.readExpert(0, 2)).gate.data);
  });

  it("holds only its own rows: a slice's matrices are copies, not views of the whole shared expert", async () => {
    const s = await expertReader(ckpt)(0, ckpt.spec.experts + 1);
    for (const m of [s.gate, s.up, s.down]) {
      expect(m.data.byteLength).toBe(f * d * 4);
      expect(m.data.buffer.byteLength).toBe(m.data.byteLength);
    }
  });

  it("rejects ids past the slices and bad slice arguments, naming the field", async () => {
    const read = expertReader(ckpt);
    const E = ckpt.spec.experts;
    await expect(read(0, E + 4)).rejects.toThrow(/expert: must be an integer in \[0, \d+\) \(\d+ experts and 4 shared/);
    const whole = await ckpt.readSharedExpert(0);
    if (!whole) throw new Error("no shared expert generated");
    expect(() => sliceSharedExpert(whole, 4, f)).toThrow(/slice: must be an integer in \[0, 4\)/);
    expect(() => sliceSharedExpert(whole, 0, 15)).toThrow(/sliceWidth: must divide/);
  });
});
