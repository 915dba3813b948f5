import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadNativeAddon } from "@switchyard/expert-worker";
import {
  generateCheckpoint,
  mulberry32,
  openCheckpoint,
  readLayerFloat32,
  referenceMoeBlock,
  resolveRoutingPolicy,
  roundToDtype,
  routerLogits,
  sharedGateScale,
  toFloat32,
} from "@switchyard/moe";
import { bf16ToF32, DType, f32ToBf16, SwitchyardError } from "@switchyard/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CheckpointModel, gateAsyncMacs, gateThreads, rankExperts, transposeGate } from "./checkpoint-model.js";
import { applyCapacity } from "./core/capacity.js";
import { routerAddon } from "./core/native-combine.js";
import { collectAssignments } from "./core/routing.js";

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
      // a bad logit names the request field it came in (the router passes "router_logits"), for every gate
      logits[16 + 2] = Number.NaN;
      const named = (g: ReturnType<typeof gating>) => {
        try {
          model.route(layer, logits, T, g, DType.FLOAT32, "router_logits");
        } catch (e) {
          return (e as SwitchyardError).field;
        }
        return "accepted";
      };
      expect(named(gating(8))).toBe("router_logits[1, 2]");
      const mdir = join(dir, "mixtral");
      await generateCheckpoint({
        family: "mixtral",
        dir: mdir,
        seed: 4,
        layers: 1,
        hiddenSize: 32,
        intermediateSize: 16,
        experts: 4,
      });
      const mixtral = await CheckpointModel.open(mdir);
      const ml = Float32Array.from({ length: 2 * mixtral.experts }, () => 0.5);
      ml[mixtral.experts + 1] = Number.POSITIVE_INFINITY;
      const mlayer = mixtral.isMoeLayer(0) ? 0 : 1;
      for (const g of [gating(2), resolveRoutingPolicy({ gating: { topP: 0.5 } }).gating]) {
        let field = "accepted";
        try {
          mixtral.route(mlayer, ml, 2, g, DType.FLOAT32, "router_logits");
        } catch (e) {
          field = (e as SwitchyardError).field ?? "none";
        }
        expect(field).toBe("router_logits[1, 1]");
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("CheckpointModel top-p weights follow the model's norm_topk_prob", () => {
  it("qwen2-moe (norm_topk_prob false): top-p that picks the top-k experts gives the top-k weights; mixtral renormalises", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sy-cktopp-"));
    try {
      for (const family of ["qwen2-moe", "mixtral"] as const) {
        const fdir = join(dir, family);
        await generateCheckpoint({
          family,
          dir: fdir,
          seed: 5,
          layers: 2,
          hiddenSize: 32,
          intermediateSize: 16,
          experts: 8,
        });
        const model = await CheckpointModel.open(fdir);
        const layer = model.isMoeLayer(0) ? 0 : 1;
        const k = model.spec.topK;
        const T = 3;
        const logits = Float32Array.from({ length: T * 8 }, (_, i) => Math.sin(i * 1.7) * 2);
        const topK = model.route(layer, logits, T, resolveRoutingPolicy({ gating: { topK: k } }).gating);
        // topP 1 with maxK = k: exactly the top-k experts, so the same weights whatever the convention
        const topP = model.route(layer, logits, T, resolveRoutingPolicy({ gating: { topP: 1, maxK: k } }).gating);
        expect([...topP.experts]).toEqual([...topK.experts]);
        for (let i = 0; i < topK.weights.length; i++) expect(topP.weights[i]).toBeCloseTo(topK.weights[i], 6);
        // and the convention is the model's: renormalised weights sum to 1 per token, Qwen1.5-MoE's do not
        const sum0 = topP.weights.slice(0, k).reduce((a, b) => a + b, 0);
        if (family === "mixtral") expect(sum0).toBeCloseTo(1, 6);
        else expect(sum0).toBeLessThan(0.99);
      }
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

describe("CheckpointModel shared expert in a half-precision model", () => {
  let dir: string;
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it("qwen2-moe: shared(), sharedScale() and sharedBatch() gate as the reference block does for the request's dtype", async () => {
    dir = await mkdtemp(join(tmpdir(), "sy-ckshared-half-"));
    const d = 64;
    await generateCheckpoint({ family: "qwen2-moe", dir, seed: 11, layers: 1, hiddenSize: d, intermediateSize: 16 });
    const model = await CheckpointModel.open(dir);
    const ckpt = await openCheckpoint(dir);
    const spec = ckpt.spec;
    const w = await readLayerFloat32(ckpt, 0);
    await ckpt.close();
    await model.loadShared(0);
    const T = 256;
    const x = bf16ToF32(f32ToBf16(normals(T * d, 3))); // a bf16 request's rows, widened
    // weight 0 on a routed expert: the reference block's output is its shared expert alone
    const routing = { tokens: T, k: 1, ids: new Int32Array(T), weights: new Float32Array(T) };
    const scales: Float32Array[] = [];
    for (const [dtype, activations] of [
      [DType.FLOAT32, "float32"],
      [DType.BFLOAT16, "bfloat16"],
    ] as const) {
      const want = referenceMoeBlock(spec, w, x, { routing, activations }).output;
      expect(Array.from(model.shared(0, x, T, dtype)!)).toEqual(Array.from(want));
      const scale = model.sharedScale(0, () => x, T, dtype)!;
      expect(Array.from(scale)).toEqual(Array.from(sharedGateScale(spec, x, w.sharedGate!, activations)));
      scales.push(scale);
      const run = model.sharedBatch(0, x, T, dtype);
      if (!run) continue; // no native addon: the router runs shared()
      const got = await run;
      let num = 0;
      let den = 0;
      for (let i = 0; i < want.length; i++) {
        num = Math.max(num, Math.abs(got[i] - want[i]));
        den = Math.max(den, Math.abs(want[i]));
      }
      expect(num / den).toBeLessThan(1e-3);
    }
    const [fp32, bf16] = scales;
    // bf16 values, which differ from the fp32 gate's on most tokens
    expect(Array.from(roundToDtype(bf16.slice(), "bfloat16"))).toEqual(Array.from(bf16));
    expect(bf16.filter((v, t) => v !== fp32[t]).length).toBeGreaterThan(T / 2);
    expect(model.shared(0, x, T)).toEqual(model.shared(0, x, T, DType.FLOAT32)); // the default: fp32
  });
});

/** Seeded N(0, 1) values (Box-Muller over mulberry32), so a failing case replays. */
function normals(n: number, seed: number): Float32Array {
  const u = mulberry32(seed);
  return Float32Array.from({ length: n }, () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u()));
}

/** The experts of one ranking row, up to its -1 end. */
function row(ranking: Int32Array, t: number, E: number): number[] {
  const out: number[] = [];
  for (const e of ranking.subarray(t * E, (t + 1) * E)) {
    if (e < 0) break;
    out.push(e);
  }
  return out;
}

describe("CheckpointModel spill ranking", () => {
  const E = 16;
  const groups = 4;
  const per = E / groups;
  let dir: string;
  let model: CheckpointModel;
  let layer: number;
  let bias: Float32Array;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sy-ckrank-"));
    // a wide correction bias, so that logit + bias and sigmoid(logit) + bias disagree often
    await generateCheckpoint({
      family: "deepseek-v3",
      dir,
      seed: 4,
      layers: 2,
      hiddenSize: 16,
      intermediateSize: 16,
      experts: E,
      nGroup: groups,
      topkGroup: 2,
      biasScale: 0.5,
    });
    model = await CheckpointModel.open(dir);
    layer = model.isMoeLayer(0) ? 0 : 1;
    const ckpt = await openCheckpoint(dir);
    const b = await ckpt.readCorrectionBias(layer);
    if (!b) throw new Error("the generated deepseek-v3 checkpoint has no correction bias");
    bias = Float32Array.from(toFloat32(b));
    await ckpt.close();
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  const spill = resolveRoutingPolicy({ gating: { topK: 4, capacityFactor: 1, overflow: "spill" } }).gating;

  /** The groups the gate keeps for token t: the 2 best by the sum of their top-2 sigmoid(logit) + bias. */
  function keptGroups(logits: Float32Array, t: number): Set<number> {
    const score = (e: number) => 1 / (1 + Math.exp(-logits[t * E + e])) + bias[e];
    const gs = Array.from({ length: groups }, (_, g) => {
      const s = Array.from({ length: per }, (_, i) => score(g * per + i)).sort((a, b) => b - a);
      return [s[0] + s[1], g];
    });
    gs.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    return new Set([gs[0][1], gs[1][1]]);
  }

  it("ranks by the gate's own score: each token's ranking starts with the experts the gate chose, in its order", () => {
    const T = 200;
    const logits = normals(T * E, 1);
    const r = model.route(layer, logits, T, spill);
    const ranking = r.ranking as Int32Array;
    for (let t = 0; t < T; t++)
      expect(row(ranking, t, E).slice(0, r.slots)).toEqual([...r.experts.subarray(t * 4, t * 4 + 4)]);
  });

  it("never spills into a group the gate dropped for that token (the reviewer's repro: 200 tokens, cf 1)", () => {
    const T = 200;
    const logits = normals(T * E, 1);
    const r = model.route(layer, logits, T, spill);
    const ranking = r.ranking as Int32Array;
    let spilled = 0;
    let intoDropped = 0;
    const cap = applyCapacity(collectAssignments([r]), E, 1, "spill", [r]);
    for (const a of cap.rounds[0]) {
      if (a.expert === r.experts[a.token * r.slots + a.slot]) continue;
      spilled++;
      if (!keptGroups(logits, a.token).has(Math.floor(a.expert / per))) intoDropped++;
    }
    expect(spilled).toBeGreaterThan(0);
    expect(intoDropped).toBe(0);
    // and the ranking itself holds only the kept groups' experts
    for (let t = 0; t < T; t++) {
      const kept = keptGroups(logits, t);
      const experts = row(ranking, t, E);
      expect(experts).toHaveLength(2 * per);
      for (const e of experts) expect(kept.has(Math.floor(e / per))).toBe(true);
    }
  });

  it("leaves out experts masked with -Infinity (sigmoid gate): they are never spill targets", () => {
    const logits = normals(E, 2);
    // mask all of group 0 but expert 0 and most of group 1: both groups still score, but only 0, 4 are usable there
    for (const e of [1, 2, 3, 5, 6, 7]) logits[e] = Number.NEGATIVE_INFINITY;
    const r = model.route(layer, logits, 1, spill);
    for (const e of row(r.ranking as Int32Array, 0, E)) expect(logits[e]).toBeGreaterThan(Number.NEGATIVE_INFINITY);
  });
});

describe("rankExperts (softmax gates)", () => {
  it("orders by logit (ties: lower id first) and ends at -1 before the experts masked with -Infinity", () => {
    const E = 5;
    const ninf = Number.NEGATIVE_INFINITY;
    const logits = Float32Array.from([0.5, ninf, 2, 0.5, -1, ninf, ninf, ninf, ninf, ninf]);
    const ranking = rankExperts(logits, E, {
      scoring: "softmax",
      topK: 2,
      normTopKProb: true,
      nGroup: 1,
      topkGroup: 1,
      routedScalingFactor: 1,
    });
    expect([...ranking]).toEqual([2, 0, 3, 4, -1, -1, -1, -1, -1, -1]);
  });

  it("spill with such a ranking drops rather than move a token onto a masked expert", () => {
    const E = 3;
    const ninf = Number.NEGATIVE_INFINITY;
    // both tokens top-1 on expert 0; token 1's only other choice is masked
    const logits = Float32Array.from([1, 0, ninf, 1, ninf, ninf]);
    const cfg = {
      scoring: "softmax" as const,
      topK: 1,
      normTopKProb: true,
      nGroup: 1,
      topkGroup: 1,
      routedScalingFactor: 1,
    };
    const ranking = rankExperts(logits, E, cfg);
    const r = {
      tokens: 2,
      slots: 1,
      experts: Int32Array.from([0, 0]),
      weights: Float32Array.from([0.5, 0.9]),
      ranking,
    };
    // 2 assignments, 3 experts, cf 1: capacity 1. Token 1 (weight 0.9) keeps expert 0; token 0 spills to 1.
    const cap = applyCapacity(collectAssignments([r]), E, 1, "spill", [r]);
    expect(cap.rounds[0].map((a) => [a.token, a.expert])).toEqual([
      [0, 1],
      [1, 0],
    ]);
    const r2 = { ...r, weights: Float32Array.from([0.9, 0.5]) };
    // now token 1 overflows, and its ranking has nothing left but masked experts: dropped
    const cap2 = applyCapacity(collectAssignments([r2]), E, 1, "spill", [r2]);
    expect(cap2.dropped.map((a) => a.token)).toEqual([1]);
    expect(cap2.rounds[0].map((a) => [a.token, a.expert])).toEqual([[0, 0]]);
  });
});

describe("CheckpointModel gate precision (bf16 hidden states: the gate computes as transformers' does)", () => {
  let dir: string;
  let qwen: CheckpointModel;
  let dsv3: CheckpointModel;
  const d = 64;
  const T = 256;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sy-ckmodel-half-"));
    await generateCheckpoint({
      family: "qwen3-moe",
      dir: join(dir, "q"),
      seed: 8,
      layers: 1,
      hiddenSize: d,
      intermediateSize: 8,
      experts: 128,
      topK: 8,
    });
    await generateCheckpoint({
      family: "deepseek-v3",
      dir: join(dir, "d"),
      seed: 9,
      layers: 1,
      hiddenSize: d,
      intermediateSize: 8,
      experts: 32,
      topK: 4,
      nGroup: 4,
      topkGroup: 2,
      firstDenseLayers: 0,
    });
    qwen = await CheckpointModel.open(join(dir, "q"));
    dsv3 = await CheckpointModel.open(join(dir, "d"));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  const bf16Hidden = () =>
    bf16ToF32(f32ToBf16(Float32Array.from({ length: T * d }, (_, i) => Math.sin(i * 0.37) * 1.7)));

  it("Qwen from bf16 hidden states: bf16 logits and weights, the reference's experts for every token", async () => {
    const hidden = bf16Hidden();
    const logits = qwen.logits(0, hidden, T);
    const fp32 = logits.slice();
    expect(qwen.roundLogits(logits, DType.BFLOAT16)).toBe(DType.BFLOAT16);
    expect(Array.from(logits)).toEqual(Array.from(bf16ToF32(f32ToBf16(fp32))));
    const policy = resolveRoutingPolicy({}).gating;
    const r = qwen.route(0, logits, T, policy, DType.BFLOAT16);
    const ckpt = await openCheckpoint(join(dir, "q"));
    const ref = referenceMoeBlock(ckpt.spec, await readLayerFloat32(ckpt, 0), hidden, { activations: "bfloat16" });
    await ckpt.close();
    expect(Array.from(r.experts)).toEqual(Array.from(ref.routing.ids));
    expect(Array.from(r.weights)).toEqual(Array.from(ref.routing.weights));
    expect(Array.from(r.weights)).toEqual(Array.from(bf16ToF32(f32ToBf16(r.weights)))); // Qwen's weights are bf16
    // unrounded, some tokens take other experts (ties at the top-k boundary that fp32 breaks)
    const unrounded = qwen.route(0, fp32, T, policy);
    expect(Array.from(unrounded.experts)).not.toEqual(Array.from(r.experts));
  });

  it("fp32 hidden states and DeepSeek-V3's fp32 gate are left as they are", () => {
    const hidden = bf16Hidden();
    const q = qwen.logits(0, hidden, T);
    const qBefore = q.slice();
    expect(qwen.roundLogits(q, DType.FLOAT32)).toBe(DType.FLOAT32);
    expect(q).toEqual(qBefore);
    const l = dsv3.logits(0, hidden, T);
    const before = l.slice();
    expect(dsv3.roundLogits(l, DType.BFLOAT16)).toBe(DType.FLOAT32);
    expect(l).toEqual(before);
  });
});

describe("CheckpointModel.open refuses a checkpoint it would route wrongly with, naming why", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sy-ckmodel-bad-"));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it("an expert count the gate does not have names the config.json key", async () => {
    const ck = join(dir, "count");
    await generateCheckpoint({
      family: "mixtral",
      dir: ck,
      layers: 2,
      hiddenSize: 16,
      intermediateSize: 8,
      experts: 4,
    });
    const config = JSON.parse(await readFile(join(ck, "config.json"), "utf8"));
    await writeFile(join(ck, "config.json"), JSON.stringify({ ...config, num_local_experts: 8 }));
    await expect(CheckpointModel.open(ck)).rejects.toMatchObject({
      code: "FAILED_PRECONDITION",
      message: expect.stringContaining(
        "config.json: num_local_experts (8) and hidden_size (16) say tensor model.layers.0.block_sparse_moe.gate.weight is [8, 16]",
      ),
    });
  });

  it("a NaN gate weight, named at load rather than blamed on every request's logits", async () => {
    const ck = join(dir, "nan");
    await generateCheckpoint({
      family: "mixtral",
      dir: ck,
      layers: 2,
      hiddenSize: 16,
      intermediateSize: 8,
      experts: 4,
    });
    const key = "model.layers.1.block_sparse_moe.gate.weight";
    const ckpt = await openCheckpoint(ck);
    const info = await ckpt.tensorInfo(key);
    await ckpt.close();
    expect(info?.dtype).toBe("BF16");
    const path = join(ck, "model.safetensors");
    const bytes = await readFile(path);
    const header = Number(bytes.readBigUInt64LE(0));
    const { data_offsets } = JSON.parse(bytes.subarray(8, 8 + header).toString())[key];
    bytes.writeUInt16LE(0x7fc0, 8 + header + data_offsets[0] + 2 * (3 * 16 + 9)); // row 3, column 9
    await writeFile(path, bytes);
    await expect(CheckpointModel.open(ck)).rejects.toMatchObject({
      code: "FAILED_PRECONDITION",
      message: `${path}: tensor ${key}[3, 9] (expert 3, column 9): must be finite, got NaN`,
    });
  });
});
