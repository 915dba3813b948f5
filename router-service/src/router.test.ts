import { credentials, Metadata } from "@grpc/grpc-js";
import { type GatingPolicy, resolveRoutingPolicy } from "@switchyard/moe";
import {
  bf16ToF32,
  bytesToFloat32,
  DType,
  encodeTensor,
  type ForwardRequest,
  type ForwardResponse,
  f32ToBf16,
  failedPrecondition,
  fromGrpcError,
  fromRpcError,
  invalidArgument,
  isRetryable,
  RouterClient,
  type SwitchyardError,
} from "@switchyard/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { PlacementPlan } from "./config.js";
import type { TokenRouting } from "./core/routing.js";
import type { PoolModel } from "./model.js";
import { dedupMinBytes, gateAhead, type PoolSummary, Router, refusedSlice } from "./router.js";
import { type StartedRouter, serveRouter } from "./server.js";
import { FakeWorker } from "./testing/fake-worker.js";

// A toy pool: linear gate, softmax top-2 renormalised, expert e of layer l maps x -> (e + 1) * x + l,
// one shared expert (computed by the router) with weight sigmoid(sum(x)) mapping x -> -x.
const L = 2;
const E = 4;
const D = 8;
const K = 2;

function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}
const r0 = rng(7);
const gateW = Array.from({ length: L }, () => Float32Array.from({ length: D * E }, () => r0()));

const toy: PoolModel = {
  family: "toy",
  layers: L,
  experts: E,
  hiddenSize: D,
  hasShared: true,
  isMoeLayer: () => true,
  logits(layer, h, T) {
    const out = new Float32Array(T * E);
    for (let t = 0; t < T; t++)
      for (let e = 0; e < E; e++) {
        let s = 0;
        for (let j = 0; j < D; j++) s += h[t * D + j] * gateW[layer][j * E + e];
        out[t * E + e] = s;
      }
    return out;
  },
  route(_layer, logits, T, g: GatingPolicy): TokenRouting {
    const k = g.topK ?? K;
    const experts = new Int32Array(T * k);
    const weights = new Float32Array(T * k);
    const ranking = new Int32Array(T * E);
    for (let t = 0; t < T; t++) {
      const row = Array.from(logits.subarray(t * E, (t + 1) * E));
      const order = row
        .map((v, i) => [v, i])
        .sort((a, b) => b[0] - a[0] || a[1] - b[1])
        .map((x) => x[1]);
      ranking.set(order, t * E);
      const top = order.slice(0, k);
      const ex = top.map((i) => Math.exp(row[i] - row[order[0]]));
      const z = ex.reduce((a, b) => a + b, 0);
      top.forEach((e, s) => {
        experts[t * k + s] = e;
        weights[t * k + s] = ex[s] / z;
      });
    }
    return { tokens: T, slots: k, experts, weights, ranking };
  },
  shared(layer, h, T) {
    const w = sharedW(h, T);
    const out = new Float32Array(T * D);
    for (let t = 0; t < T; t++) {
      const y = expertFn(layer, E, h.subarray(t * D, (t + 1) * D));
      for (let j = 0; j < D; j++) out[t * D + j] = w[t] * y[j];
    }
    return out;
  },
};

function sharedW(h: Float32Array, T: number): Float32Array {
  const w = new Float32Array(T);
  for (let t = 0; t < T; t++) {
    let s = 0;
    for (let j = 0; j < D; j++) s += h[t * D + j];
    w[t] = 1 / (1 + Math.exp(-s));
  }
  return w;
}

const expertFn = (layer: number, e: number, x: Float32Array) =>
  e === E ? x.map((v) => -v) : x.map((v) => (e + 1) * v + layer);

function reference(
  layer: number,
  h: Float32Array,
  T: number,
  routing?: { ids: number[][]; w: number[][] },
): Float32Array {
  const r = routing
    ? (() => {
        const k = routing.ids[0].length;
        return { slots: k, experts: Int32Array.from(routing.ids.flat()), weights: Float32Array.from(routing.w.flat()) };
      })()
    : toy.route(layer, toy.logits(layer, h, T), T, resolveRoutingPolicy({}).gating);
  const sw = sharedW(h, T);
  const out = new Float32Array(T * D);
  for (let t = 0; t < T; t++) {
    const x = h.subarray(t * D, (t + 1) * D);
    for (let s = 0; s < r.slots; s++) {
      const e = r.experts[t * r.slots + s];
      if (e < 0) continue;
      const y = expertFn(layer, e, x);
      for (let j = 0; j < D; j++) out[t * D + j] += r.weights[t * r.slots + s] * y[j];
    }
    const y = expertFn(layer, E, x);
    for (let j = 0; j < D; j++) out[t * D + j] += sw[t] * y[j];
  }
  return out;
}

async function until(cond: () => boolean, what: string): Promise<void> {
  const end = Date.now() + 5000;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function hidden(T: number, seed: number): Float32Array {
  const g = rng(seed);
  return Float32Array.from({ length: T * D }, () => g() * 2);
}

function plan(replicas: number[][][]): PlacementPlan {
  return { version: 1, pool: "toy", workers: ["w0", "w1", "w2"], replicas };
}
// every expert on two of three workers
const twoReplicas = Array.from({ length: L }, () => Array.from({ length: E }, (_, e) => [e % 3, (e + 1) % 3]));

function maxRelErr(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / Math.max(den, 1e-30);
}

/** A router serving the toy pool over three fake workers, and a client to it; setPool() swaps the policy or plan. */
interface ToyRouter {
  router: Router;
  served: StartedRouter;
  client: RouterClient;
  setPool(policy?: unknown, replicas?: number[][][]): void;
  close(): Promise<void>;
}

async function startToyRouter(
  workers: FakeWorker[],
  model: PoolModel,
  o: { transport?: "data" | "grpc" | "dedup"; policy?: unknown; gateAhead?: boolean } = {},
): Promise<ToyRouter> {
  for (const w of workers) await w.start();
  const router = new Router({
    statusIntervalMs: 0,
    workerTransport: o.transport === "grpc" ? "grpc" : "auto",
    // "dedup": the data path, every batch that repeats a token sent deduplicated (the toy rows are too small for
    // the default threshold) and, where the sums are smaller, combined on the worker
    dedupMinBytes: o.transport === "dedup" ? 0 : Number.POSITIVE_INFINITY,
    ...(o.gateAhead !== undefined ? { gateAhead: o.gateAhead } : {}),
  });
  const setPool = (policy: unknown = o.policy ?? {}, replicas = twoReplicas) =>
    router.setPool({
      name: "toy",
      model,
      plan: plan(replicas),
      endpoints: Object.fromEntries(workers.map((w) => [w.o.id, `127.0.0.1:${w.port}`])),
      policy: resolveRoutingPolicy(policy),
    });
  setPool();
  // No periodic polls in tests: one Status now tells each connection its worker's data port.
  await router.refreshWorkers("toy");
  const served = await serveRouter(router, { port: 0, host: "127.0.0.1", metricsPort: 0 });
  const client = new RouterClient(`127.0.0.1:${served.port}`, credentials.createInsecure());
  return {
    router,
    served,
    client,
    setPool,
    async close() {
      client.close();
      await served.close();
      router.close();
      for (const w of workers) w.stop();
    },
  };
}

// Both worker transports: the TCP data path (the default once a worker's Status offers it) and the gRPC stream; and
// the data path with deduplicated, worker-combined batches (ExpertBatch.token_rows / combine).
describe.each(["data", "grpc", "dedup"] as const)("router end to end (fake workers, %s path)", (transport) => {
  const workers = [0, 1, 2].map((i) => new FakeWorker({ id: `w${i}`, expert: expertFn }));
  let t: ToyRouter;
  let router: Router;
  let served: StartedRouter;
  let client: RouterClient;
  const setPool = (policy?: unknown, replicas?: number[][][]) => t.setPool(policy, replicas);

  beforeAll(async () => {
    t = await startToyRouter(workers, toy, { transport });
    ({ router, served, client } = t);
  });
  afterAll(() => t?.close());

  const call = (req: Partial<ForwardRequest>, deadlineMs = 5000) =>
    new Promise<ForwardResponse>((resolve, reject) =>
      client.forward(
        { pool: "toy", layer: 0, hidden: undefined, gate: undefined, requestId: 0n, ...req },
        new Metadata(),
        { deadline: Date.now() + deadlineMs },
        (e, r) => (e ? reject(fromGrpcError(e)) : resolve(r)),
      ),
    );
  const callErr = async (req: Partial<ForwardRequest>, deadlineMs = 5000): Promise<SwitchyardError> => {
    try {
      await call(req, deadlineMs);
    } catch (e) {
      return e as SwitchyardError;
    }
    throw new Error("expected an error");
  };

  it("computes the gate, dispatches, combines (fp32 parity)", async () => {
    for (const layer of [0, 1]) {
      const h = hidden(5, 11 + layer);
      const res = await call({ layer, hidden: encodeTensor(h, [5, D], DType.FLOAT32) });
      const got = bytesToFloat32(res.hidden!.data, DType.FLOAT32, true);
      expect(res.hidden!.shape).toEqual([5, D]);
      expect(maxRelErr(got, reference(layer, h, 5))).toBeLessThanOrEqual(1e-6);
      expect(res.stats!.expertsTouched).toBeGreaterThan(0);
      expect(res.stats!.workersUsed).toBeGreaterThan(0);
    }
  });

  it("returns the request dtype (bf16 within 1e-2)", async () => {
    const h = hidden(7, 3);
    const res = await call({ hidden: encodeTensor(h, [7, D], DType.BFLOAT16) });
    expect(res.hidden!.dtype).toBe(DType.BFLOAT16);
    const hb = bytesToFloat32(encodeTensor(h, [7, D], DType.BFLOAT16).data, DType.BFLOAT16);
    expect(maxRelErr(bytesToFloat32(res.hidden!.data, DType.BFLOAT16), reference(0, hb, 7))).toBeLessThanOrEqual(1e-2);
  });

  it("accepts explicit assignments and router logits", async () => {
    const h = hidden(3, 5);
    const ids = [
      [1, 3],
      [0, -1],
      [2, 1],
    ];
    const w = [
      [0.7, 0.3],
      [1, 0],
      [0.5, 0.5],
    ];
    const res = await call({
      hidden: encodeTensor(h, [3, D], DType.FLOAT32),
      gate: {
        $case: "assignment",
        value: {
          expertIds: encodeTensor(Int32Array.from(ids.flat()), [3, 2], DType.INT32),
          weights: encodeTensor(Float32Array.from(w.flat()), [3, 2], DType.FLOAT32),
        },
      },
    });
    expect(
      maxRelErr(bytesToFloat32(res.hidden!.data, DType.FLOAT32, true), reference(0, h, 3, { ids, w })),
    ).toBeLessThanOrEqual(1e-6);
    const logits = toy.logits(1, h, 3);
    const res2 = await call({
      layer: 1,
      hidden: encodeTensor(h, [3, D], DType.FLOAT32),
      gate: { $case: "routerLogits", value: encodeTensor(logits, [3, E], DType.FLOAT32) },
    });
    expect(maxRelErr(bytesToFloat32(res2.hidden!.data, DType.FLOAT32, true), reference(1, h, 3))).toBeLessThanOrEqual(
      1e-6,
    );
    // bf16 router logits, as a bf16 engine's gate gives them: widened, and gated as bf16 (Qwen rounds its weights)
    const route = toy.route;
    const dtypes: (DType | undefined)[] = [];
    toy.route = (l, lg, T, g, dt) => {
      dtypes.push(dt);
      return route.call(toy, l, lg, T, g, dt);
    };
    try {
      const bf16Logits = bf16ToF32(f32ToBf16(logits));
      const res3 = await call({
        layer: 1,
        hidden: encodeTensor(h, [3, D], DType.FLOAT32),
        gate: { $case: "routerLogits", value: encodeTensor(bf16Logits, [3, E], DType.BFLOAT16) },
      });
      expect(res3.error).toBeUndefined();
      expect(dtypes).toEqual([DType.BFLOAT16]);
      const want = reference(
        1,
        h,
        3,
        (() => {
          const r = route.call(toy, 1, bf16Logits, 3, resolveRoutingPolicy({}).gating);
          const k = r.slots;
          return {
            ids: Array.from({ length: 3 }, (_, t) => Array.from(r.experts.subarray(t * k, (t + 1) * k))),
            w: Array.from({ length: 3 }, (_, t) => Array.from(r.weights.subarray(t * k, (t + 1) * k))),
          };
        })(),
      );
      expect(maxRelErr(bytesToFloat32(res3.hidden!.data, DType.FLOAT32, true), want)).toBeLessThanOrEqual(1e-6);
    } finally {
      toy.route = route;
    }
  });

  it("merges concurrent stream requests into one flush (one gate product for its tokens), answers each correctly", async () => {
    setPool({ batching: { maxWaitMs: 20, maxBatchTokens: 1024 } });
    // The gate's calls: the flush gates every request that came with hidden states only, together.
    const gateCalls: number[] = [];
    const ownLogits = toy.logits;
    toy.logits = (layer, h, T) => {
      gateCalls.push(T);
      return ownLogits.call(toy, layer, h, T);
    };
    const stream = client.forwardStream();
    const N = 24;
    const hs = Array.from({ length: N }, (_, i) => hidden(1 + (i % 3), 100 + i));
    const got = new Map<bigint, ForwardResponse>();
    const done = new Promise<void>((resolve, reject) => {
      stream.on("data", (r: ForwardResponse) => {
        got.set(r.requestId, r);
        if (got.size === N) resolve();
      });
      stream.on("error", reject);
    });
    for (const [i, h] of hs.entries()) {
      stream.write({
        pool: "toy",
        layer: i % 2,
        hidden: encodeTensor(h, [h.length / D, D], DType.FLOAT32),
        gate: undefined,
        requestId: BigInt(i + 1),
      });
    }
    await done;
    toy.logits = ownLogits;
    stream.end();
    const tokens = hs.reduce((n, h) => n + h.length / D, 0);
    expect(gateCalls.reduce((a, b) => a + b, 0)).toBe(tokens);
    expect(gateCalls.length).toBeLessThan(N);
    expect(Math.max(...gateCalls)).toBeGreaterThan(3); // more tokens than any one request has
    let maxMerged = 0;
    hs.forEach((h, i) => {
      const r = got.get(BigInt(i + 1))!;
      expect(r.error).toBeUndefined();
      expect(
        maxRelErr(bytesToFloat32(r.hidden!.data, DType.FLOAT32, true), reference(i % 2, h, h.length / D)),
      ).toBeLessThanOrEqual(1e-6);
      maxMerged = Math.max(maxMerged, r.stats!.batchRequests);
    });
    expect(maxMerged).toBeGreaterThan(1);
    setPool();
  });

  it("rejects alone a request of a flush whose hidden states gate to NaN, and answers the others", async () => {
    setPool({ batching: { maxWaitMs: 20, maxBatchTokens: 1024 } });
    // The toy gate checks its logits as the real one does (packages/moe gating: a NaN logit names its element).
    const ownRoute = toy.route;
    const routeCalls: number[] = [];
    toy.route = (layer, logits, T, g) => {
      routeCalls.push(T);
      const bad = logits.findIndex((v) => Number.isNaN(v));
      if (bad >= 0) throw invalidArgument(`logits[${Math.floor(bad / E)}, ${bad % E}]`, "must be finite");
      return ownRoute.call(toy, layer, logits, T, g);
    };
    try {
      const hs = Array.from({ length: 5 }, (_, i) => hidden(2, 400 + i));
      hs[2][D + 3] = Number.NaN; // request 3's second token
      const replies = await Promise.allSettled(
        hs.map((h, i) => call({ layer: 0, hidden: encodeTensor(h, [2, D], DType.FLOAT32), requestId: BigInt(i + 1) })),
      );
      expect(Math.max(...routeCalls)).toBeGreaterThan(2); // a flush-wide gate call first
      hs.forEach((h, i) => {
        const r = replies[i];
        if (i === 2) {
          expect(r.status).toBe("rejected");
          const e = (r as PromiseRejectedResult).reason as SwitchyardError;
          expect(e.code).toBe("INVALID_ARGUMENT");
          expect(e.message).toBe("hidden[1, 3]: must be finite, got NaN (its router logits are NaN)");
          return;
        }
        expect(r.status).toBe("fulfilled");
        const res = (r as PromiseFulfilledResult<ForwardResponse>).value;
        expect(
          maxRelErr(bytesToFloat32(res.hidden!.data, DType.FLOAT32, true), reference(0, h, 2)),
        ).toBeLessThanOrEqual(1e-6);
      });
    } finally {
      toy.route = ownRoute;
      setPool();
    }
  });

  it("takes the flush's gate off the event loop where the model offers it (logitsAsync), same answers", async () => {
    setPool({ batching: { maxWaitMs: 20, maxBatchTokens: 1024 } });
    const asyncCalls: number[] = [];
    toy.logitsAsync = (layer, h, T) => {
      asyncCalls.push(T);
      // resolved on a later turn of the event loop, as the addon's thread pool does
      return new Promise((res) => setImmediate(() => res(toy.logits(layer, h as Float32Array, T))));
    };
    try {
      const hs = Array.from({ length: 6 }, (_, i) => hidden(2, 300 + i));
      const replies = await Promise.all(
        hs.map((h, i) => call({ layer: 1, hidden: encodeTensor(h, [2, D], DType.FLOAT32), requestId: BigInt(i + 1) })),
      );
      hs.forEach((h, i) => {
        expect(replies[i].error).toBeUndefined();
        expect(
          maxRelErr(bytesToFloat32(replies[i].hidden!.data, DType.FLOAT32, true), reference(1, h, 2)),
        ).toBeLessThanOrEqual(1e-6);
      });
      expect(asyncCalls.reduce((a, b) => a + b, 0)).toBe(12);
      expect(asyncCalls.length).toBeLessThan(6);
    } finally {
      delete toy.logitsAsync;
      setPool();
    }
  });

  it("reports per-item errors on the stream without closing it", async () => {
    const stream = client.forwardStream();
    const replies: ForwardResponse[] = [];
    const done = new Promise<void>((resolve) =>
      stream.on("data", (r: ForwardResponse) => replies.push(r) === 2 && resolve()),
    );
    stream.write({
      pool: "toy",
      layer: 9,
      hidden: encodeTensor(hidden(1, 1), [1, D], DType.FLOAT32),
      gate: undefined,
      requestId: 1n,
    });
    stream.write({
      pool: "toy",
      layer: 0,
      hidden: encodeTensor(hidden(1, 1), [1, D], DType.FLOAT32),
      gate: undefined,
      requestId: 2n,
    });
    await done;
    stream.end();
    const bad = replies.find((r) => r.requestId === 1n)!;
    expect(bad.error?.code).toBe(3);
    expect(fromRpcError(bad.error!).message).toMatch(/^layer: /);
    expect(replies.find((r) => r.requestId === 2n)!.error).toBeUndefined();
  });

  it("answers INVALID_ARGUMENT naming the field", async () => {
    const h = hidden(2, 1);
    expect((await callErr({ hidden: encodeTensor(h, [4, 4], DType.FLOAT32) })).message).toMatch(
      /^hidden\.shape\[1\]: expected hidden size 8, got 4/,
    );
    expect((await callErr({ layer: 2, hidden: encodeTensor(h, [2, D], DType.FLOAT32) })).field).toBe("layer");
    expect((await callErr({})).field).toBe("hidden");
    const e = await callErr({
      hidden: encodeTensor(h, [2, D], DType.FLOAT32),
      gate: {
        $case: "assignment",
        value: {
          expertIds: encodeTensor(Int32Array.from([0, 9]), [2, 1], DType.INT32),
          weights: encodeTensor(Float32Array.from([1, 1]), [2, 1], DType.FLOAT32),
        },
      },
    });
    expect(e.code).toBe("INVALID_ARGUMENT");
    expect(e.field).toBe("assignment.expert_ids[1][0]");
    const e2 = await callErr({
      hidden: encodeTensor(h, [2, D], DType.FLOAT32),
      gate: { $case: "routerLogits", value: encodeTensor(new Float32Array(2 * 3), [2, 3], DType.FLOAT32) },
    });
    expect(e2.field).toBe("router_logits.shape[1]");
    expect((await callErr({ pool: "nope", hidden: encodeTensor(h, [2, D], DType.FLOAT32) })).code).toBe("NOT_FOUND");
  });

  it("refuses more assignment slots than experts, and finds a duplicate past any run of empty slots", async () => {
    const h = hidden(1, 3);
    const assign = (ids: number[]) => ({
      hidden: encodeTensor(h, [1, D], DType.FLOAT32),
      gate: {
        $case: "assignment" as const,
        value: {
          expertIds: encodeTensor(Int32Array.from(ids), [1, ids.length], DType.INT32),
          weights: encodeTensor(new Float32Array(ids.length).fill(0.1), [1, ids.length], DType.FLOAT32),
        },
      },
    });
    // one slot more than the pool's experts, all empty but the last: refused before any per-slot work
    const many = await callErr(assign([...new Array(E).fill(-1), 0]));
    expect(many.field).toBe("assignment.expert_ids.shape[1]");
    expect(many.message).toMatch(new RegExp(`${E + 1} slots per token exceed the pool's ${E} experts`));
    const dup = await callErr(assign([1, -1, -1, 1]));
    expect(dup.field).toBe("assignment.expert_ids[0]");
    expect(dup.message).toMatch(/expert 1 listed twice/);
  });

  it("clips a long unknown pool name in its NOT_FOUND (a 100 KB one hung the caller's gRPC connection)", async () => {
    const e = await callErr({ pool: "x".repeat(100_000), hidden: encodeTensor(hidden(1, 1), [1, D], DType.FLOAT32) });
    expect(e.code).toBe("NOT_FOUND");
    expect(e.message).toMatch(/unknown pool "x{128}"\.\.\. \(100000 characters\)/);
    expect(e.message.length).toBeLessThan(400);
  });

  it("retries a failed worker's rows on another replica", async () => {
    workers[1].mode = "fail";
    try {
      const h = hidden(16, 21);
      const res = await call({ hidden: encodeTensor(h, [16, D], DType.FLOAT32) });
      expect(maxRelErr(bytesToFloat32(res.hidden!.data, DType.FLOAT32, true), reference(0, h, 16))).toBeLessThanOrEqual(
        1e-6,
      );
    } finally {
      workers[1].mode = "ok";
    }
  });

  it("fails UNAVAILABLE naming the expert when no replica is left", async () => {
    // expert 2 only on w1, which fails
    const only = Array.from({ length: L }, () => Array.from({ length: E }, (_, e) => (e === 2 ? [1] : [0, 2])));
    setPool({}, only);
    workers[1].mode = "fail";
    try {
      const ids = [[2]];
      const e = await callErr({
        hidden: encodeTensor(hidden(1, 2), [1, D], DType.FLOAT32),
        gate: {
          $case: "assignment",
          value: {
            expertIds: encodeTensor(Int32Array.from(ids.flat()), [1, 1], DType.INT32),
            weights: encodeTensor(Float32Array.from([1]), [1, 1], DType.FLOAT32),
          },
        },
      });
      expect(e.code).toBe("UNAVAILABLE");
      expect(e.message).toMatch(/layer 0 expert 2/);
      expect(e.message).toMatch(/\(w1: .*fake worker w1 failing on purpose\)/); // the worker's own reason
    } finally {
      workers[1].mode = "ok";
      setPool();
    }
  });

  it("never hangs: a stalled worker ends in DEADLINE_EXCEEDED at the caller's deadline", async () => {
    for (const w of workers) w.mode = "stall";
    try {
      const t0 = Date.now();
      const e = await callErr({ hidden: encodeTensor(hidden(2, 4), [2, D], DType.FLOAT32) }, 300);
      expect(e.code).toBe("DEADLINE_EXCEEDED");
      expect(Date.now() - t0).toBeLessThan(5000); // far below the 30 s default: the deadline, not a fallback, ended it
    } finally {
      for (const w of workers) w.mode = "ok";
    }
  });

  it("a request's own timeout_ms ends it when earlier than the call's deadline", async () => {
    for (const w of workers) w.mode = "stall";
    try {
      const t0 = Date.now();
      const e = await callErr({ hidden: encodeTensor(hidden(2, 5), [2, D], DType.FLOAT32), timeoutMs: 200 }, 20_000);
      expect(e.code).toBe("DEADLINE_EXCEEDED");
      const took = Date.now() - t0;
      expect(took).toBeGreaterThanOrEqual(190);
      expect(took).toBeLessThan(5000); // the request's 200 ms, not the call's 20 s
    } finally {
      for (const w of workers) w.mode = "ok";
    }
  });

  it("a call the client cancels while it is queued gives its place in the queue back at once", async () => {
    // 6 of 8 tokens wait for the batch to fill (maxWait 2 s): the queue has no room for 4 more
    setPool({ batching: { maxBatchTokens: 8, maxQueueTokens: 8, maxWaitMs: 2000 } });
    try {
      const req = {
        pool: "toy",
        layer: 0,
        hidden: encodeTensor(hidden(6, 6), [6, D], DType.FLOAT32),
        gate: undefined,
        requestId: 0n,
      };
      const queued = client.forward(req, new Metadata(), { deadline: Date.now() + 20_000 }, () => {});
      await new Promise((r) => setTimeout(r, 150)); // taken, and waiting in the batcher
      expect((await callErr({ hidden: encodeTensor(hidden(4, 7), [4, D], DType.FLOAT32) })).code).toBe(
        "RESOURCE_EXHAUSTED",
      );
      queued.cancel();
      // Its 6 tokens are released when the cancel arrives, not at its 20 s deadline: 2 more fill the batch, which
      // goes at once (a dispatched request's tokens stay counted until its batch settles: hung-worker.test.ts).
      const t0 = Date.now();
      let last: unknown;
      while (Date.now() - t0 < 3000) {
        try {
          await call({ hidden: encodeTensor(hidden(2, 8), [2, D], DType.FLOAT32) });
          last = undefined;
          break;
        } catch (e) {
          last = e;
          await new Promise((r) => setTimeout(r, 20));
        }
      }
      expect(last).toBeUndefined();
      expect(Date.now() - t0).toBeLessThan(1500);
    } finally {
      setPool();
    }
  });

  it("answers RESOURCE_EXHAUSTED when the queue is full, INVALID_ARGUMENT for a request that can never fit", async () => {
    setPool({ batching: { maxBatchTokens: 4, maxQueueTokens: 4 } });
    for (const w of workers) w.mode = "stall";
    try {
      // 4 tokens out on the stalled workers: the queue is full for now (retryable)
      const stuck = call({ hidden: encodeTensor(hidden(4, 3), [4, D], DType.FLOAT32) }, 300).catch((e) => e);
      await new Promise((r) => setTimeout(r, 100));
      const full = await callErr({ hidden: encodeTensor(hidden(1, 4), [1, D], DType.FLOAT32) });
      expect(full.code).toBe("RESOURCE_EXHAUSTED");
      expect(isRetryable(full)).toBe(true);
      await stuck;
      // 5 tokens never fit under maxQueueTokens 4: not RESOURCE_EXHAUSTED, which a client would retry for good
      const never = await callErr({ hidden: encodeTensor(hidden(5, 4), [5, D], DType.FLOAT32) });
      expect(never.code).toBe("INVALID_ARGUMENT");
      expect(isRetryable(never)).toBe(false);
      expect(never.field).toBe("hidden.shape[0]");
      expect(never.message).toMatch(/5 tokens exceed pool toy's maxQueueTokens 4 .*split the request/);
    } finally {
      for (const w of workers) w.mode = "ok";
      setPool();
    }
  });

  it("drops over capacity and counts the drops", async () => {
    setPool({ gating: { capacityFactor: 0.5, overflow: "drop" } });
    try {
      const res = await call({ hidden: encodeTensor(hidden(32, 9), [32, D], DType.FLOAT32) });
      expect(res.stats!.droppedAssignments).toBeGreaterThan(0);
      const text = await router.metrics.registry.getSingleMetricAsString("switchyard_router_dropped_assignments_total");
      expect(text).toMatch(/pool="toy"} [1-9]/);
    } finally {
      setPool();
    }
  });

  it("spills over capacity to the next-best experts, and reports the experts that ran", async () => {
    setPool({ gating: { capacityFactor: 0.5, overflow: "spill" } });
    try {
      // four equal tokens choose the same two experts; capacity 1 each (0.5 * 4 * 2 / 4): one token keeps them,
      // one spills to the other two experts, two find no room
      const row = hidden(1, 5);
      const h = new Float32Array(4 * D);
      for (let t = 0; t < 4; t++) h.set(row, t * D);
      const seen = workers.map((w) => w.seen.length);
      const res = await call({ hidden: encodeTensor(h, [4, D], DType.FLOAT32) });
      const ran = new Set(workers.flatMap((w, i) => w.seen.slice(seen[i]).flatMap((b) => b.experts)));
      expect(ran.size).toBe(4);
      expect(res.stats!.expertsTouched).toBe(ran.size);
      expect(res.stats!.droppedAssignments).toBe(4);
    } finally {
      setPool();
    }
  });

  it("serves several pools side by side", async () => {
    router.setPool({
      name: "toy-b",
      model: toy,
      plan: {
        version: 7,
        pool: "toy-b",
        workers: ["w2"],
        replicas: Array.from({ length: L }, () => Array.from({ length: E }, () => [0])),
      },
      endpoints: { w2: `127.0.0.1:${workers[2].port}` },
      policy: resolveRoutingPolicy({}),
    });
    try {
      const h = hidden(4, 77);
      const before = workers[2].rows;
      const [a, b] = await Promise.all([
        call({ hidden: encodeTensor(h, [4, D], DType.FLOAT32) }),
        call({ pool: "toy-b", hidden: encodeTensor(h, [4, D], DType.FLOAT32) }),
      ]);
      for (const r of [a, b])
        expect(maxRelErr(bytesToFloat32(r.hidden!.data, DType.FLOAT32, true), reference(0, h, 4))).toBeLessThanOrEqual(
          1e-6,
        );
      expect(workers[2].rows - before).toBeGreaterThanOrEqual(8); // toy-b's 4 tokens x top-2 all went to its only worker
      expect(router.poolNames().sort()).toEqual(["toy", "toy-b"]);
    } finally {
      router.removePool("toy-b");
    }
  });

  it("serves /pools: each pool's dimensions, MoE layers, plan version and workers", async () => {
    const res = await fetch(`http://127.0.0.1:${served.metricsPort}/pools`);
    expect(res.headers.get("content-type")).toMatch(/application\/json/);
    const { pools } = (await res.json()) as { pools: PoolSummary[] };
    expect(pools).toEqual([
      {
        name: "toy",
        family: toy.family,
        layers: L,
        moeLayers: Array.from({ length: L }, (_, l) => l),
        experts: E,
        hiddenSize: D,
        planVersion: 1,
        workers: workers.map((w) => ({
          id: w.o.id,
          address: `127.0.0.1:${w.port}`,
          healthy: true,
          // Whether a worker's data path is open now depends on the earlier tests: they stall and fail workers on
          // purpose, after which it stays off for its back-off (5 s, doubling), and which replicas served since.
          // "carried the batches over the data path" checks that it carries them.
          dataPath: transport === "grpc" ? false : expect.any(Boolean),
        })),
      },
    ]);
  });

  it("serves /metrics with the contract names", async () => {
    const text = await (await fetch(`http://127.0.0.1:${served.metricsPort}/metrics`)).text();
    for (const name of [
      "switchyard_router_requests_total",
      "switchyard_router_tokens_total",
      "switchyard_router_request_duration_seconds",
      "switchyard_router_queue_wait_seconds",
      "switchyard_router_gate_duration_seconds",
      "switchyard_router_gate_ahead_tokens_total",
      "switchyard_router_experts_per_batch",
      "switchyard_router_tokens_per_expert_call",
      "switchyard_router_batch_tokens",
      "switchyard_router_dispatch_duration_seconds",
      "switchyard_router_worker_tokens_total",
      "switchyard_router_expert_tokens_total",
      "switchyard_router_load_signal_stale",
      "switchyard_router_placement_plan_version",
    ]) {
      expect(text).toContain(name);
    }
    expect(text).toMatch(/switchyard_router_requests_total\{pool="toy",method="Forward",code="OK"\} \d+/);
    expect(text).toMatch(
      transport !== "grpc"
        ? /switchyard_router_worker_data_path\{pool="toy",worker="[^"]+"\} 1/
        : /switchyard_router_worker_data_path\{pool="toy",worker="[^"]+"\} 0/,
    );
  });

  it(`carried the batches over the ${transport} path`, () => {
    const viaData = workers.map((w) => w.dataBatches);
    if (transport !== "grpc") expect(viaData.every((n) => n > 0)).toBe(true);
    else expect(viaData).toEqual([0, 0, 0]);
  });

  if (transport === "dedup")
    it("sends deduplicated batches, summed on the worker where a token's experts are all there", async () => {
      const seen = workers.flatMap((w) => w.seen);
      expect(seen.some((b) => b.rows < b.assignments)).toBe(true);
      expect(seen.every((b) => b.rows <= b.assignments)).toBe(true);
      // Every expert on w0: each token's top-2 rows go there, fp32 rows, so its sums are half their bytes.
      setPool(
        {},
        Array.from({ length: L }, () => Array.from({ length: E }, () => [0])),
      );
      try {
        const before = workers[0].batches;
        const h = hidden(12, 77);
        const res = await call({ hidden: encodeTensor(h, [12, D], DType.FLOAT32) });
        expect(
          maxRelErr(bytesToFloat32(res.hidden!.data, DType.FLOAT32, true), reference(0, h, 12)),
        ).toBeLessThanOrEqual(1e-6);
        const mine = workers[0].seen.slice(-(workers[0].batches - before));
        expect(mine.some((b) => b.combine && b.rows === 12 && b.assignments >= 24)).toBe(true);
      } finally {
        setPool();
        await router.refreshWorkers("toy");
      }
    });

  // Only the data path has a connection of its own to cut under a call.
  if (transport !== "grpc")
    it("a data connection that drops under a call: its rows go to another replica", async () => {
      // Every expert on w1 and w2: with both resident and idle the tie goes to the lower index, w1. Without the
      // latency term: the earlier tests leave the two with different dispatch-latency averages, and on a loaded
      // machine w2's could win every row of the call (CI saw that once), so w1 would never see it.
      setPool(
        { placement: { latency: 0 } },
        Array.from({ length: L }, () => Array.from({ length: E }, () => [1, 2])),
      );
      try {
        await call({ hidden: encodeTensor(hidden(12, 41), [12, D], DType.FLOAT32) });
        await until(() => router.workers("toy")[1].usingDataPath, "the data path to w1");
        workers[1].mode = "stall";
        const before = workers[1].dataBatches;
        const h = hidden(12, 42);
        const pending = call({ hidden: encodeTensor(h, [12, D], DType.FLOAT32) });
        await until(() => workers[1].dataBatches > before, "w1 to receive a batch over its data path");
        workers[1].dropDataConnections();
        const res = await pending;
        const got = bytesToFloat32(res.hidden!.data, DType.FLOAT32, true);
        expect(maxRelErr(got, reference(0, h, 12))).toBeLessThanOrEqual(1e-6);
      } finally {
        workers[1].mode = "ok";
        setPool();
        await router.refreshWorkers("toy"); // w1 back in replica choice
      }
    });
});

// The shared expert computed once per flush (PoolModel.sharedBatch, CheckpointModel's native path) instead of per
// request: same answers, fewer runs, and a failing run fails its requests instead of hanging them.
describe("router: the shared expert batched per flush", () => {
  const workers = [0, 1, 2].map((i) => new FakeWorker({ id: `w${i}`, expert: expertFn }));
  let t: ToyRouter;
  let mode: "ok" | "fail" | "none" = "ok";
  const runs: number[] = []; // tokens per sharedBatch run
  const dtypes: (DType | undefined)[] = []; // what sharedBatch and shared were told the hidden states came in
  const batched: PoolModel = {
    ...toy,
    shared(layer, h, T, dtype) {
      dtypes.push(dtype);
      return toy.shared(layer, h, T);
    },
    sharedBatch(layer, h, T, dtype) {
      dtypes.push(dtype);
      if (mode === "none") return null;
      runs.push(T);
      return new Promise((res, rej) =>
        setTimeout(() => (mode === "fail" ? rej(new Error("shared run failed")) : res(toy.shared(layer, h, T)!)), 5),
      );
    },
  };

  beforeAll(async () => {
    // a long wait, so that concurrent requests share a flush
    t = await startToyRouter(workers, batched, { policy: { batching: { maxWaitMs: 30 } } });
  });
  afterAll(() => t?.close());

  const call = (h: Float32Array, T: number, dtype = DType.FLOAT32) =>
    new Promise<ForwardResponse>((resolve, reject) =>
      t.client.forward(
        { pool: "toy", layer: 1, hidden: encodeTensor(h, [T, D], dtype), gate: undefined, requestId: 0n },
        new Metadata(),
        { deadline: Date.now() + 5000 },
        (e, r) => (e ? reject(fromGrpcError(e)) : resolve(r)),
      ),
    );

  it("gives every request its rows of one run over the flush", async () => {
    mode = "ok";
    runs.length = 0;
    const sizes = [1, 3, 2, 1, 4, 2];
    const hs = sizes.map((T, i) => hidden(T, 40 + i));
    const res = await Promise.all(hs.map((h, i) => call(h, sizes[i])));
    for (const [i, r] of res.entries()) {
      const got = bytesToFloat32(r.hidden!.data, DType.FLOAT32, true);
      expect(maxRelErr(got, reference(1, hs[i], sizes[i]))).toBeLessThanOrEqual(1e-6);
    }
    expect(runs.reduce((a, b) => a + b, 0)).toBe(13);
    expect(runs.length).toBeLessThan(sizes.length);
  });

  it("fails the flush's requests when the run fails, without hanging them", async () => {
    mode = "fail";
    const out = await Promise.allSettled([call(hidden(2, 50), 2), call(hidden(1, 51), 1)]);
    for (const o of out) {
      expect(o.status).toBe("rejected");
      expect(String((o as PromiseRejectedResult).reason?.message)).toMatch(/shared run failed/);
    }
  });

  it("falls back to shared() per request when the model cannot batch", async () => {
    mode = "none";
    runs.length = 0;
    const h = hidden(3, 52);
    const r = await call(h, 3);
    expect(maxRelErr(bytesToFloat32(r.hidden!.data, DType.FLOAT32, true), reference(1, h, 3))).toBeLessThanOrEqual(
      1e-6,
    );
    expect(runs).toEqual([]);
  });

  it("tells the model the dtype the hidden states came in (Qwen2-MoE's shared gate rounds to it)", async () => {
    for (const m of ["ok", "none"] as const) {
      mode = m;
      dtypes.length = 0;
      await call(hidden(2, 53), 2, DType.BFLOAT16);
      await call(hidden(2, 54), 2);
      // batched: one sharedBatch call each; else the batch declines and shared() runs
      expect(dtypes).toEqual(
        m === "ok" ? [DType.BFLOAT16, DType.FLOAT32] : [DType.BFLOAT16, DType.BFLOAT16, DType.FLOAT32, DType.FLOAT32],
      );
    }
  });
});

// The shared expert run by the workers as slices placed like experts (ids E, E+1): the router adds a slot per slice
// to every token, weighted by the model's shared scale, and never computes the shared expert itself.
describe("router: the shared expert on the workers, as slices", () => {
  const SLICES = 2;
  // slice j of the toy's shared expert (x -> -x) is x -> -x/2: the slices sum to the whole
  const sliceFn = (layer: number, e: number, x: Float32Array) =>
    e >= E ? x.map((v) => -v / SLICES) : expertFn(layer, e, x);
  // every worker's Status lists every expert and slice as served (the router checks the slices' before it uses them)
  const everything = Array.from({ length: L }, (_, layer) =>
    Array.from({ length: E + SLICES }, (_, expert) => ({ layer, expert })),
  ).flat();
  const workers = [0, 1, 2].map((i) => new FakeWorker({ id: `w${i}`, expert: sliceFn, served: everything }));
  let t: ToyRouter;
  let sharedCalls = 0;
  const scaleDtypes: (DType | undefined)[] = [];
  const sliced: PoolModel = {
    ...toy,
    sharedSlices: SLICES,
    sharedScale: (_layer, h, T, dtype) => {
      scaleDtypes.push(dtype);
      return sharedW(h(), T);
    },
    shared(layer, h, T) {
      sharedCalls++;
      return toy.shared(layer, h, T);
    },
  };
  // the routed experts as before, and each slice on two workers
  const withSlices = twoReplicas.map((l) => [...l, [0, 1], [1, 2]]);
  const sliceIds = (w: FakeWorker) => w.seen.flatMap((s) => s.experts).filter((e) => e >= E);

  beforeAll(async () => {
    t = await startToyRouter(workers, sliced);
    t.setPool({}, withSlices);
  });
  afterAll(() => t?.close());

  const call = (req: Partial<ForwardRequest>) =>
    new Promise<ForwardResponse>((resolve, reject) =>
      t.client.forward(
        { pool: "toy", layer: 1, hidden: undefined, gate: undefined, requestId: 0n, ...req },
        new Metadata(),
        { deadline: Date.now() + 5000 },
        (e, r) => (e ? reject(fromGrpcError(e)) : resolve(r)),
      ),
    );
  const got = (r: ForwardResponse) => bytesToFloat32(r.hidden!.data, DType.FLOAT32, true);

  it("sends every token to every slice and matches the reference, without computing it in the router", async () => {
    sharedCalls = 0;
    for (const w of workers) w.seen.length = 0;
    for (const T of [1, 5]) {
      const h = hidden(T, 60 + T);
      const r = await call({ hidden: encodeTensor(h, [T, D], DType.FLOAT32) });
      expect(maxRelErr(got(r), reference(1, h, T))).toBeLessThanOrEqual(1e-6);
      if (T === 1) expect(r.stats!.expertsTouched).toBe(K); // routed experts only, not the slices
    }
    const ids = workers.flatMap(sliceIds);
    expect(ids.filter((e) => e === E).length).toBeGreaterThan(0);
    expect(ids.filter((e) => e === E + 1).length).toBeGreaterThan(0);
    expect(sharedCalls).toBe(0);
    // the heat counts the slices' tokens under their ids (the operator's rebalance reads them): 1 + 5 tokens each
    t.router.sampleGauges();
    const heat = await t.router.metrics.registry.getSingleMetricAsString("switchyard_router_expert_tokens_total");
    expect(heat).toMatch(/layer="1",expert="4"} 6\b/);
    expect(heat).toMatch(/layer="1",expert="5"} 6\b/);
  });

  it("tells the model's shared scale the dtype the hidden states came in", async () => {
    scaleDtypes.length = 0;
    await call({ hidden: encodeTensor(hidden(2, 72), [2, D], DType.BFLOAT16) });
    await call({ hidden: encodeTensor(hidden(2, 73), [2, D], DType.FLOAT32) });
    expect(scaleDtypes).toEqual([DType.BFLOAT16, DType.FLOAT32]);
  });

  it("adds the slices to explicit assignments too", async () => {
    const h = hidden(2, 70);
    const ids = [
      [1, 3],
      [0, -1],
    ];
    const w = [
      [0.6, 0.4],
      [1, 0],
    ];
    const r = await call({
      hidden: encodeTensor(h, [2, D], DType.FLOAT32),
      gate: {
        $case: "assignment",
        value: {
          expertIds: encodeTensor(Int32Array.from(ids.flat()), [2, 2], DType.INT32),
          weights: encodeTensor(Float32Array.from(w.flat()), [2, 2], DType.FLOAT32),
        },
      },
    });
    expect(maxRelErr(got(r), reference(1, h, 2, { ids, w }))).toBeLessThanOrEqual(1e-6);
    expect(sharedCalls).toBe(0);
  });

  it("never drops a slice under a capacity factor: only routed assignments count", async () => {
    t.setPool({ gating: { capacityFactor: 0.5, overflow: "drop" } }, withSlices);
    try {
      for (const w of workers) w.seen.length = 0;
      const T = 32;
      const r = await call({ hidden: encodeTensor(hidden(T, 71), [T, D], DType.FLOAT32) });
      expect(r.stats!.droppedAssignments).toBeGreaterThan(0);
      // each slice still reached a worker (the answer itself lacks the dropped experts, so it is not compared)
      expect(new Set(workers.flatMap(sliceIds))).toEqual(new Set([E, E + 1]));
    } finally {
      t.setPool({}, withSlices);
    }
  });

  it("computes it in the router again under a plan without the slices", async () => {
    t.setPool({}, twoReplicas);
    try {
      sharedCalls = 0;
      for (const w of workers) w.seen.length = 0;
      const h = hidden(3, 72);
      const r = await call({ hidden: encodeTensor(h, [3, D], DType.FLOAT32) });
      expect(maxRelErr(got(r), reference(1, h, 3))).toBeLessThanOrEqual(1e-6);
      expect(sharedCalls).toBe(1);
      expect(workers.flatMap(sliceIds)).toEqual([]);
    } finally {
      t.setPool({}, withSlices);
    }
  });

  it("fails a request gated under the slices whose flush finds a plan without them, naming the expert", async () => {
    t.setPool({ batching: { maxWaitMs: 50 } }, withSlices);
    try {
      const h = hidden(2, 73);
      const pending = t.router.forward({
        pool: "toy",
        layer: 1,
        hidden: encodeTensor(h, [2, D], DType.FLOAT32),
        gate: undefined,
        requestId: 0n,
      });
      t.setPool({ batching: { maxWaitMs: 50 } }, twoReplicas); // before the flush
      await expect(pending).rejects.toThrow(/layer 1 expert 4: no worker in the placement plan holds it/);
    } finally {
      t.setPool({}, withSlices);
    }
  });

  it("leaves the shared expert out for routed_only requests (the engine computes it), under either plan", async () => {
    const h = hidden(3, 74);
    const all = reference(1, h, 3);
    const shared = reference(1, h, 3, { ids: [[-1], [-1], [-1]], w: [[0], [0], [0]] }); // the shared expert alone
    const routed = all.map((v, i) => v - shared[i]);
    for (const replicas of [withSlices, twoReplicas]) {
      t.setPool({}, replicas);
      sharedCalls = 0;
      for (const w of workers) w.seen.length = 0;
      const r = await call({ hidden: encodeTensor(h, [3, D], DType.FLOAT32), routedOnly: true });
      expect(maxRelErr(got(r), routed)).toBeLessThanOrEqual(1e-5);
      expect(sharedCalls).toBe(0);
      expect(workers.flatMap(sliceIds)).toEqual([]);
    }
    t.setPool({}, withSlices);
  });

  it("computes the shared expert itself until the workers report serving the slices (a plan not loaded yet)", async () => {
    const h = hidden(2, 75);
    for (const w of workers) w.o.served = everything.filter((k) => k.expert < E);
    await t.router.refreshWorkers("toy");
    sharedCalls = 0;
    for (const w of workers) w.seen.length = 0;
    let r = await call({ hidden: encodeTensor(h, [2, D], DType.FLOAT32) });
    expect(maxRelErr(got(r), reference(1, h, 2))).toBeLessThanOrEqual(1e-6);
    expect(sharedCalls).toBe(1);
    expect(workers.flatMap(sliceIds)).toEqual([]);
    // one replica of each slice is enough
    workers[1].o.served = everything;
    await t.router.refreshWorkers("toy");
    sharedCalls = 0;
    r = await call({ hidden: encodeTensor(h, [2, D], DType.FLOAT32) });
    expect(maxRelErr(got(r), reference(1, h, 2))).toBeLessThanOrEqual(1e-6);
    expect(sharedCalls).toBe(0);
    expect(new Set(workers.flatMap(sliceIds))).toEqual(new Set([E, E + 1]));
    for (const w of workers) w.o.served = everything;
    await t.router.refreshWorkers("toy");
  });

  it("places the slices per layer: a layer the plan gives none computes the shared expert in the router", async () => {
    t.setPool({}, [withSlices[0], twoReplicas[1]]);
    try {
      for (const layer of [0, 1]) {
        sharedCalls = 0;
        for (const w of workers) w.seen.length = 0;
        const h = hidden(2, 76 + layer);
        const r = await call({ layer, hidden: encodeTensor(h, [2, D], DType.FLOAT32) });
        expect(maxRelErr(got(r), reference(layer, h, 2))).toBeLessThanOrEqual(1e-6);
        expect(sharedCalls).toBe(layer === 0 ? 0 : 1);
        expect(workers.flatMap(sliceIds).length > 0).toBe(layer === 0);
      }
    } finally {
      t.setPool({}, withSlices);
    }
  });

  it("rejects a plan whose layers list neither the experts nor the experts and slices, naming the field", () => {
    expect(() =>
      t.setPool(
        {},
        twoReplicas.map((l) => [...l, [0]]),
      ),
    ).toThrow(/replicas\[0\].*one entry per expert \(4, or 6 with the shared expert's 2 slices\), got 5/);
  });
});

describe("refusedSlice: the slice a worker's refusal names", () => {
  it("reads the field, or the message's start where only the message crossed the wire; null for none of the batch's", () => {
    expect(refusedSlice(failedPrecondition("expert 1 of layer 0 is not served", "slices[1].expert"), 2)).toBe(1);
    expect(refusedSlice(fromRpcError({ code: 9, message: "slices[0].expert: not served" }), 1)).toBe(0);
    expect(refusedSlice(invalidArgument("slices[3]", "rows overlap"), 2)).toBeNull(); // not a slice it was sent
    expect(refusedSlice(invalidArgument("tokens.shape[1]", "expected hidden size 16, got 8"), 2)).toBeNull();
    expect(refusedSlice(new Error("boom"), 2)).toBeNull();
  });
});

describe("dedupMinBytes (SWITCHYARD_ROUTER_DEDUP_MIN_BYTES)", () => {
  it("defaults to 256 KiB, takes a byte count or off, and names the variable when it is neither", () => {
    expect(dedupMinBytes(undefined)).toBe(256 * 1024);
    expect(dedupMinBytes("")).toBe(256 * 1024);
    expect(dedupMinBytes("0")).toBe(0);
    expect(dedupMinBytes("off")).toBe(Number.POSITIVE_INFINITY);
    expect(() => dedupMinBytes("-1")).toThrow(/SWITCHYARD_ROUTER_DEDUP_MIN_BYTES/);
    expect(() => dedupMinBytes("lots")).toThrow(/SWITCHYARD_ROUTER_DEDUP_MIN_BYTES/);
  });
});

// A gate product that takes GATE_MS (as DeepSeek-V3's does a flush on the H200 host, ~3 ms) keeps a flush running,
// so the requests that come meanwhile are held behind it (flushesInFlight 1).
const GATE_MS = 50;
describe.each([true, false])("router: gates started while requests wait for their flush (gateAhead %s)", (ahead) => {
  const workers = [0, 1, 2].map((i) => new FakeWorker({ id: `w${i}`, expert: expertFn }));
  let t: ToyRouter;
  const calls: { T: number; at: number }[] = [];
  let failNext = false;
  const slowGate: PoolModel = {
    ...toy,
    gatesOffLoop: () => true,
    logitsAsync(layer, h, T) {
      calls.push({ T, at: performance.now() });
      const fail = failNext;
      failNext = false;
      return new Promise((res, rej) =>
        setTimeout(
          () => (fail ? rej(new Error("gate failed")) : res(toy.logits(layer, h as Float32Array, T))),
          GATE_MS,
        ),
      );
    },
  };

  beforeAll(async () => {
    t = await startToyRouter(workers, slowGate, {
      policy: { batching: { maxWaitMs: 1, maxBatchTokens: 1024, flushesInFlight: 1 } },
      gateAhead: ahead,
    });
  });
  afterAll(() => t?.close());

  const call = (h: Float32Array, T: number) =>
    new Promise<ForwardResponse>((resolve, reject) =>
      t.client.forward(
        { pool: "toy", layer: 0, hidden: encodeTensor(h, [T, D], DType.FLOAT32), gate: undefined, requestId: 0n },
        new Metadata(),
        { deadline: Date.now() + 5000 },
        (e, r) => (e ? reject(fromGrpcError(e)) : resolve(r)),
      ),
    );
  const firstGateStarted = async () => {
    while (calls.length === 0) await new Promise((r) => setTimeout(r, 1));
  };
  const aheadTokens = async () => {
    const text = await (await fetch(`http://127.0.0.1:${t.served.metricsPort}/metrics`)).text();
    const m = text.match(/^switchyard_router_gate_ahead_tokens_total\{pool="toy"\} (\d+)/m);
    return m ? Number(m[1]) : 0;
  };

  it(
    !ahead
      ? "gates queued requests at their flush, after the wait"
      : "gates queued requests while they wait (held too), same answers",
    async () => {
      calls.length = 0;
      const before = await aheadTokens();
      const first = hidden(2, 900);
      const firstReply = call(first, 2);
      await firstGateStarted(); // the first flush is gating: what comes now is held
      const sizes = [1, 3, 2];
      const hs = sizes.map((T, i) => hidden(T, 910 + i));
      const replies = await Promise.all(hs.map((h, i) => call(h, sizes[i])));
      const r0 = await firstReply;
      expect(
        maxRelErr(bytesToFloat32(r0.hidden!.data, DType.FLOAT32, true), reference(0, first, 2)),
      ).toBeLessThanOrEqual(1e-6);
      for (const [i, r] of replies.entries()) {
        expect(r.error).toBeUndefined();
        expect(
          maxRelErr(bytesToFloat32(r.hidden!.data, DType.FLOAT32, true), reference(0, hs[i], sizes[i])),
        ).toBeLessThanOrEqual(1e-6);
      }
      // every token gated once: the first flush's 2, then the held 6 (ahead in one or more products, or at their flush)
      expect(calls.reduce((n, c) => n + c.T, 0)).toBe(8);
      // the first flush's gate resolves GATE_MS after it started: ahead, the held requests' gate starts before that
      const startedDuringFirst = calls.slice(1).filter((c) => c.at < calls[0].at + GATE_MS);
      const gatedAhead = (await aheadTokens()) - before;
      // ahead: the first request's gate too, during its maxWait
      expect(gatedAhead).toBe(ahead ? 8 : 0);
      expect(startedDuringFirst.reduce((n, c) => n + c.T, 0)).toBe(ahead ? 6 : 0);
    },
  );

  it("fails only the held requests whose gate failed, naming the cause, and answers the rest", async () => {
    calls.length = 0;
    const firstReply = call(hidden(1, 920), 1);
    await firstGateStarted();
    failNext = true; // the next gate product: ahead, the held request's; else the flush's of it
    const held = await Promise.allSettled([call(hidden(2, 921), 2)]);
    expect((await firstReply).error).toBeUndefined();
    expect(held[0].status).toBe("rejected");
    expect(String((held[0] as PromiseRejectedResult).reason)).toMatch(/gate failed/);
    const after = await call(hidden(1, 922), 1); // the pool still serves
    expect(after.error).toBeUndefined();
  });
});

describe("gateAhead (SWITCHYARD_ROUTER_GATE_AHEAD)", () => {
  it("is on by default, takes on or off, and names the variable otherwise", () => {
    expect(gateAhead(undefined)).toBe(true);
    expect(gateAhead("")).toBe(true);
    expect(gateAhead("on")).toBe(true);
    expect(gateAhead("off")).toBe(false);
    expect(() => gateAhead("queued")).toThrow(/SWITCHYARD_ROUTER_GATE_AHEAD/);
  });
});
