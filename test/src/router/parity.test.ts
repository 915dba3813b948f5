// Parity: router + 2 real expert workers (separate gRPC servers, native CPU backend) answer the same as the
// single-process fp32 reference of the whole MoE block (packages/moe referenceMoeBlock), for every family, with
// the gate computed by the router, with router logits, and with explicit assignments; fp32 <= 1e-5 relative,
// bf16 <= 1e-2. Each family runs over both worker transports: the TCP data path (the default once a worker's
// Status offers it) and the RunExpertsStream gRPC stream. The families with a shared expert run it on the workers as
// slices (placed like experts) on the data path, and in the router on the gRPC path.

import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { credentials, Metadata } from "@grpc/grpc-js";
import { startWorker, type WorkerHandle } from "@switchyard/expert-worker";
import {
  generateCheckpoint,
  loadWithSharedSlices,
  type ModelFamily,
  type MoeLayerWeights,
  moeLayers,
  openCheckpoint,
  planPlacement,
  readLayerFloat32,
  referenceMoeBlock,
  resolveRoutingPolicy,
  routerLogits,
  sharedSlices,
} from "@switchyard/moe";
import {
  bytesToFloat32,
  DType,
  encodeTensor,
  type ForwardRequest,
  type ForwardResponse,
  fromGrpcError,
  RouterClient,
} from "@switchyard/protocol";
import { CheckpointModel, Router, type StartedRouter, serveRouter } from "@switchyard/router-service";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

function relErr(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const e = Math.abs(a[i] - b[i]);
    if (!(e <= num)) num = e;
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / Math.max(den, 1e-30);
}

function rand(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}

const FAMILIES: ModelFamily[] = ["mixtral", "qwen2-moe", "qwen3-moe", "deepseek-v3"];

const CASES = FAMILIES.flatMap((f) => (["data", "grpc"] as const).map((t) => [f, t] as const));

describe.each(CASES)("router parity: %s, 2 workers, %s path", (family, transport) => {
  let dir: string;
  let workers: WorkerHandle[] = [];
  let router: Router;
  let served: StartedRouter;
  let client: RouterClient;
  let weights: Map<number, MoeLayerWeights>;
  let spec: Awaited<ReturnType<typeof openCheckpoint>>["spec"];
  let layers: number[];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), `sy-parity-${family}-`));
    const experts = family === "deepseek-v3" ? 16 : 8;
    // Qwen2-MoE's shared expert twice a routed expert's width: 2 slices; DeepSeek-V3's one shared expert: 1
    const shared = family === "qwen2-moe" ? { sharedIntermediateSize: 192 } : {};
    await generateCheckpoint({
      family,
      dir,
      seed: 11,
      layers: 2,
      hiddenSize: 64,
      intermediateSize: 96,
      experts,
      ...shared,
    });
    const ckpt = await openCheckpoint(dir);
    spec = ckpt.spec;
    const slices = transport === "data" ? sharedSlices(spec) : 0;
    if (spec.sharedExperts > 0 && transport === "data") expect(slices).toBe(family === "qwen2-moe" ? 2 : 1);
    layers = moeLayers(spec);
    weights = new Map();
    for (const l of layers) weights.set(l, await readLayerFloat32(ckpt, l));
    await ckpt.close();
    const ids = ["w0", "w1"];
    // Each expert on one worker, a quarter of them on both: replica choice and grouping both get exercised.
    const { plan } = planPlacement({
      pool: "p",
      layers: spec.layers,
      experts: spec.experts + slices,
      workers: ids,
      redundantExperts: experts / 4,
      load: slices > 0 ? loadWithSharedSlices(undefined, spec.layers, spec.experts, slices, spec.topK) : undefined,
    });
    const planFile = join(dir, "plan.json");
    await writeFile(planFile, JSON.stringify(plan));
    workers = await Promise.all(
      ids.map((id) =>
        startWorker({
          checkpoint: dir,
          pool: "p",
          workerId: id,
          port: 0,
          metricsPort: 0,
          host: "127.0.0.1",
          plan: planFile,
          log: () => {},
        }).then(async (w) => {
          await w.warmed;
          return w;
        }),
      ),
    );
    router = new Router({ statusIntervalMs: 0, workerTransport: transport === "data" ? "auto" : "grpc" });
    router.setPool({
      name: "p",
      model: await CheckpointModel.open(dir),
      plan,
      endpoints: Object.fromEntries(ids.map((id, i) => [id, `127.0.0.1:${workers[i].port}`])),
      policy: resolveRoutingPolicy({ batching: { maxWaitMs: 5 } }),
    });
    // No periodic polls in tests: one Status now tells each connection its worker's data port.
    await router.refreshWorkers("p");
    // the slices are served by the workers (ids from E on), so the router does not compute the shared expert
    const servedIds = workers.flatMap((w) => w.core.status().served.map((k) => k.expert));
    expect(servedIds.filter((e) => e >= spec.experts).length > 0).toBe(slices > 0);
    served = await serveRouter(router, { port: 0, host: "127.0.0.1" });
    client = new RouterClient(`127.0.0.1:${served.port}`, credentials.createInsecure());
  });

  afterAll(async () => {
    client?.close();
    await served?.close();
    router?.close();
    await Promise.all(workers.map((w) => w.close()));
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const forward = (req: Partial<ForwardRequest>) =>
    new Promise<ForwardResponse>((resolve, reject) =>
      client.forward(
        { pool: "p", layer: 0, hidden: undefined, gate: undefined, requestId: 0n, ...req },
        new Metadata(),
        { deadline: Date.now() + 20_000 },
        (e, r) => (e ? reject(fromGrpcError(e)) : resolve(r)),
      ),
    );

  const hiddenOf = (T: number, seed: number) => {
    const r = rand(seed);
    return Float32Array.from({ length: T * spec.hiddenSize }, () => r() * 4);
  };

  it("gate computed by the router, fp32 <= 1e-5", async () => {
    for (const layer of layers) {
      const T = 13;
      const h = hiddenOf(T, 100 + layer);
      const res = await forward({ layer, hidden: encodeTensor(h, [T, spec.hiddenSize], DType.FLOAT32) });
      const ref = referenceMoeBlock(spec, weights.get(layer)!, h);
      expect(res.hidden!.dtype).toBe(DType.FLOAT32);
      expect(relErr(bytesToFloat32(res.hidden!.data, DType.FLOAT32, true), ref.output)).toBeLessThanOrEqual(1e-5);
      expect(res.stats!.workersUsed).toBeGreaterThanOrEqual(1);
    }
  });

  it("bf16 in, bf16 out, <= 1e-2", async () => {
    const T = 9;
    const layer = layers[layers.length - 1];
    const t = encodeTensor(hiddenOf(T, 7), [T, spec.hiddenSize], DType.BFLOAT16);
    const res = await forward({ layer, hidden: t });
    expect(res.hidden!.dtype).toBe(DType.BFLOAT16);
    const ref = referenceMoeBlock(spec, weights.get(layer)!, bytesToFloat32(t.data, DType.BFLOAT16));
    expect(relErr(bytesToFloat32(res.hidden!.data, DType.BFLOAT16), ref.output)).toBeLessThanOrEqual(1e-2);
  });

  it("router logits and explicit assignments, fp32 <= 1e-5", async () => {
    const T = 6;
    const layer = layers[0];
    const w = weights.get(layer)!;
    const h = hiddenOf(T, 3);
    const logits = routerLogits(h, w.gate, spec.hiddenSize);
    // shifted logits: a routing the router cannot have guessed from hidden alone
    for (let i = 0; i < logits.length; i++) logits[i] += (i % 5) * 0.3;
    const res = await forward({
      layer,
      hidden: encodeTensor(h, [T, spec.hiddenSize], DType.FLOAT32),
      gate: { $case: "routerLogits", value: encodeTensor(logits, [T, spec.experts], DType.FLOAT32) },
    });
    const ref = referenceMoeBlock(spec, w, h, { logits });
    expect(relErr(bytesToFloat32(res.hidden!.data, DType.FLOAT32, true), ref.output)).toBeLessThanOrEqual(1e-5);

    const k = 3;
    const ids = Int32Array.from({ length: T * k }, (_, i) => (i * 5 + Math.floor(i / k)) % spec.experts);
    for (let t = 0; t < T; t++) if (new Set(ids.subarray(t * k, t * k + k)).size < k) ids[t * k + 2] = -1;
    const wts = Float32Array.from({ length: T * k }, (_, i) => (ids[i] < 0 ? 0 : 0.2 + (i % 3) * 0.3));
    const res2 = await forward({
      layer,
      hidden: encodeTensor(h, [T, spec.hiddenSize], DType.FLOAT32),
      gate: {
        $case: "assignment",
        value: { expertIds: encodeTensor(ids, [T, k], DType.INT32), weights: encodeTensor(wts, [T, k], DType.FLOAT32) },
      },
    });
    const ref2 = referenceMoeBlock(spec, w, h, { routing: { tokens: T, k, ids, weights: wts } });
    expect(relErr(bytesToFloat32(res2.hidden!.data, DType.FLOAT32, true), ref2.output)).toBeLessThanOrEqual(1e-5);
  });

  it("concurrent stream requests merged into shared flushes stay exact", async () => {
    const stream = client.forwardStream();
    const N = 12;
    const reqs = Array.from({ length: N }, (_, i) => ({
      layer: layers[i % layers.length],
      h: hiddenOf(1 + (i % 4), 500 + i),
    }));
    const got = new Map<bigint, ForwardResponse>();
    const done = new Promise<void>((resolve, reject) => {
      stream.on("data", (r: ForwardResponse) => {
        got.set(r.requestId, r);
        if (got.size === N) resolve();
      });
      stream.on("error", reject);
    });
    for (const [i, r] of reqs.entries()) {
      stream.write({
        pool: "p",
        layer: r.layer,
        hidden: encodeTensor(r.h, [r.h.length / spec.hiddenSize, spec.hiddenSize], DType.FLOAT32),
        gate: undefined,
        requestId: BigInt(i + 1),
      });
    }
    await done;
    stream.end();
    let merged = 0;
    for (const [i, r] of reqs.entries()) {
      const res = got.get(BigInt(i + 1))!;
      expect(res.error).toBeUndefined();
      merged = Math.max(merged, res.stats!.batchRequests);
      const ref = referenceMoeBlock(spec, weights.get(r.layer)!, r.h);
      expect(relErr(bytesToFloat32(res.hidden!.data, DType.FLOAT32, true), ref.output)).toBeLessThanOrEqual(1e-5);
    }
    expect(merged).toBeGreaterThan(1);
  });

  it(`carried the batches over the ${transport} path`, () => {
    const onData = transport === "data";
    expect(router.workers("p").map((c) => c.usingDataPath)).toEqual([onData, onData]);
  });
});
