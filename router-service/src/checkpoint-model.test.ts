import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadNativeAddon } from "@switchyard/expert-worker";
import { generateCheckpoint, openCheckpoint, resolveRoutingPolicy, routerLogits, toFloat32 } from "@switchyard/moe";
import { SwitchyardError } from "@switchyard/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CheckpointModel, gateAsyncMacs, gateThreads, transposeGate } from "./checkpoint-model.js";
import { routerAddon } from "./core/native-combine.js";

describe("CheckpointModel router logits", () => {
  let dir: string;
  let model: CheckpointModel;
  let gate: Float32Array;
  const d = 40;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sy-ckmodel-"));
    await generateCheckpoint({
      family: "qwen3-moe",
      dir,
      seed: 5,
      layers: 2,
      hiddenSize: d,
      intermediateSize: 16,
      experts: 24,
    });
    model = await CheckpointModel.open(dir);
    const ckpt = await openCheckpoint(dir);
    gate = Float32Array.from(toFloat32(await ckpt.readGate(1)));
    await ckpt.close();
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it("are the TypeScript routerLogits' bits, from fp32 and (with the addon) from bf16 hidden states", () => {
    const T = 5;
    const bits = Uint16Array.from({ length: T * d }, (_, i) => 0x3f80 + ((i * 37) % 200) - 100); // ~[0.6, 1.4]
    const widened = new Float32Array(new Uint32Array(Array.from(bits, (b) => b << 16)).buffer);
    const want = routerLogits(widened, gate, d);
    expect(Array.from(model.logits(1, widened, T))).toEqual(Array.from(want));
    const fromBf16 = model.logitsBf16(1, bits, T);
    if (routerAddon()) expect(Array.from(fromBf16!)).toEqual(Array.from(want));
    else expect(fromBf16).toBeNull(); // the router then widens and calls logits()
  });

  it("off the event loop: the same bits, for products worth a thread (else null: the caller gates synchronously)", async () => {
    expect(model.logitsAsync(1, new Float32Array(5 * d), 5)).toBeNull();
    const T = 1100; // 1100 x 40 x 24 multiply-adds, past ASYNC_GATE_MACS
    const x = Float32Array.from({ length: T * d }, (_, i) => Math.sin(i * 0.11));
    const job = model.logitsAsync(1, x, T);
    if (!routerAddon()) {
      expect(job).toBeNull();
      return;
    }
    expect(Array.from(await job!)).toEqual(Array.from(routerLogits(x, gate, d)));
  });

  it("transposeGate: [E, d] -> panels of 32 experts, each [d, width]", () => {
    expect(Array.from(transposeGate(Float32Array.from([1, 2, 3, 4, 5, 6]), 2, 3))).toEqual([1, 4, 2, 5, 3, 6]);
    // 34 experts, d = 2: a panel of 32 ([2, 32]), then one of 2 ([2, 2]) at offset 32 * 2
    const E = 34;
    const g = Float32Array.from({ length: E * 2 }, (_, i) => i); // W[e, i] = 2e + i
    const t = transposeGate(g, E, 2);
    expect(t[0 * 32 + 5]).toBe(2 * 5); // panel 0, row 0, expert 5
    expect(t[1 * 32 + 31]).toBe(2 * 31 + 1); // panel 0, row 1, expert 31
    expect(Array.from(t.subarray(64))).toEqual([64, 66, 65, 67]); // panel 1: rows 0 and 1 of experts 32, 33
  });

  it("gateAsyncMacs: SWITCHYARD_ROUTER_GATE_ASYNC_MACS, default 1M", () => {
    expect(gateAsyncMacs(undefined)).toBe(1 << 20);
    expect(gateAsyncMacs("0")).toBe(0);
    expect(gateAsyncMacs("1000000000000")).toBe(1e12);
    expect(() => gateAsyncMacs("-1")).toThrow(/SWITCHYARD_ROUTER_GATE_ASYNC_MACS: expected an integer >= 0, got "-1"/);
  });

  it("gateThreads: SWITCHYARD_ROUTER_GATE_THREADS, else up to 4 leaving the event loop a core", () => {
    expect(gateThreads(undefined, 16)).toBe(4);
    expect(gateThreads(undefined, 2)).toBe(1);
    expect(gateThreads("", 3)).toBe(2);
    expect(gateThreads("6", 2)).toBe(6);
    expect(() => gateThreads("0")).toThrow(
      /SWITCHYARD_ROUTER_GATE_THREADS: expected an integer in \[1, 256\], got "0"/,
    );
  });
});

describe("CheckpointModel route", () => {
  it("refuses a policy topK past what a group-limited gate can reach, naming the field", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sy-ckroute-"));
    try {
      // 16 experts in 4 groups, 2 kept per token: 8 reachable
      await generateCheckpoint({
        family: "deepseek-v3",
        dir,
        seed: 3,
        layers: 2,
        hiddenSize: 32,
        intermediateSize: 16,
        experts: 16,
        nGroup: 4,
        topkGroup: 2,
      });
      const model = await CheckpointModel.open(dir);
      const layer = model.isMoeLayer(0) ? 0 : 1;
      const T = 3;
      const logits = Float32Array.from({ length: T * 16 }, (_, i) => Math.sin(i));
      const gating = (topK: number) => resolveRoutingPolicy({ gating: { topK } }).gating;
      expect(model.route(layer, logits, T, gating(8)).slots).toBe(8);
      let err: unknown;
      try {
        model.route(layer, logits, T, gating(9));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(SwitchyardError);
      expect((err as SwitchyardError).field).toBe("policy.gating.topK");
      expect((err as Error).message).toMatch(/9 exceeds the 8 experts a token can reach/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("CheckpointModel shared expert", () => {
  const dirs: string[] = [];
  afterAll(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

  for (const family of ["qwen2-moe", "deepseek-v3"] as const) {
    it(`${family}: the batched native run matches shared() (the TypeScript one) within 1e-3`, async () => {
      const dir = await mkdtemp(join(tmpdir(), "sy-ckshared-"));
      dirs.push(dir);
      const d = 64;
      await generateCheckpoint({ family, dir, seed: 9, layers: 2, hiddenSize: d, intermediateSize: 32, experts: 8 });
      const model = await CheckpointModel.open(dir);
      const T = 7;
      const x = Float32Array.from({ length: T * d }, (_, i) => Math.sin(i * 0.37));
      const layer = model.isMoeLayer(0) ? 0 : 1;
      // The slices' per-token scale: Qwen2-MoE's sigmoid gate; DeepSeek-V3 has none and never widens the rows.
      const scale = model.sharedScale(
        layer,
        () => {
          if (family === "deepseek-v3") throw new Error("hidden states asked for");
          return x;
        },
        T,
      );
      if (family === "deepseek-v3") expect(scale).toBeNull();
      else expect(scale?.length).toBe(T);
      // Not read at open: a router whose workers run the shared expert never holds it.
      expect(() => model.shared(layer, x, T)).toThrow(`the shared expert of layer ${layer} is not loaded`);
      await Promise.all([model.loadShared(layer), model.loadShared(layer)]);
      const want = model.shared(layer, x, T)!;
      const run = model.sharedBatch(layer, x, T);
      if (!loadNativeAddon()) {
        expect(run).toBeNull(); // the router then runs shared() per request
        return;
      }
      const got = await run!;
      let num = 0;
      let den = 0;
      for (let i = 0; i < want.length; i++) {
        num = Math.max(num, Math.abs(got[i] - want[i]));
        den = Math.max(den, Math.abs(want[i]));
      }
      expect(got.length).toBe(T * d);
      expect(den).toBeGreaterThan(0);
      expect(num / den).toBeLessThan(1e-3);
    });
  }
});
