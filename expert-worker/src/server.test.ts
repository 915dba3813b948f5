// The worker through real gRPC on a generated checkpoint: results against the reference, every bad input answers
// INVALID_ARGUMENT naming the field, the stream answers per batch, deadlines stop native work, a full queue answers
// RESOURCE_EXHAUSTED, Prefetch/Evict/Status, health and /metrics.

import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { credentials, Metadata, makeGenericClientConstructor, type ServiceError, status } from "@grpc/grpc-js";
import { expertToFloat32, generateCheckpoint, openCheckpoint, referenceExpertFFN64 } from "@switchyard/moe";
import {
  bytesToFloat32,
  DATA_PREFACE,
  DType,
  ERROR_FIELD_METADATA_KEY,
  ExpertBatch,
  type ExpertResult,
  ExpertWorkerClient,
  encodeTensor,
  type Tensor,
  writeFrame,
} from "@switchyard/protocol";
import { service as healthService } from "grpc-health-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadNativeAddon, nativeLoadError } from "./backend/native-cpu.js";
import { rng, uniform } from "./testing.js";
import { startWorker, type WorkerHandle } from "./worker.js";

const D = 40;
const F = 56;
let dir: string;
let small: WorkerHandle;
let client: ExpertWorkerClient;

function call<Req, Res>(
  fn: (
    req: Req,
    md: Metadata,
    opts: { deadline?: number },
    cb: (err: ServiceError | null, res: Res) => void,
  ) => unknown,
  req: Req,
  deadlineMs?: number,
): Promise<Res> {
  return new Promise((resolve, reject) =>
    fn(req, new Metadata(), deadlineMs ? { deadline: Date.now() + deadlineMs } : {}, (err, res) =>
      err ? reject(err) : resolve(res),
    ),
  );
}

const tokensOf = (rows: number, seed: number, d = D): Tensor =>
  encodeTensor(uniform(rows * d, 1, rng(seed)), [rows, d], DType.FLOAT32);

function batch(over: Partial<ExpertBatch> = {}): ExpertBatch {
  return {
    pool: "p",
    layer: 1,
    tokens: tokensOf(6, 1),
    slices: [
      { expert: 0, offset: 0, count: 2 },
      { expert: 1, offset: 2, count: 3 },
    ],
    rowWeights: encodeTensor(new Float32Array([1, 0.5, 2, 1, -1, 3]), [6], DType.FLOAT32),
    batchId: 7n,
    timeoutMs: 0,
    tokenRows: [],
    combine: false,
    cancel: [],
    ...over,
  };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "sy-worker-"));
  await generateCheckpoint({
    family: "mixtral",
    dir: join(dir, "small"),
    layers: 2,
    experts: 4,
    hiddenSize: D,
    intermediateSize: F,
    seed: 3,
  });
  small = await startWorker({
    checkpoint: join(dir, "small"),
    pool: "p",
    workerId: "w0",
    port: 0,
    metricsPort: 0,
    host: "127.0.0.1",
    experts: "0-2",
    cacheCapacity: 2,
    backend: "cpu",
    warm: false, // these tests count the cache's misses and evictions from cold
    log: () => {},
  });
  client = new ExpertWorkerClient(`127.0.0.1:${small.port}`, credentials.createInsecure());
});

afterAll(async () => {
  client?.close();
  await small?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("RunExperts", () => {
  it("computes the batch like the float64 reference and reports stats", async () => {
    const res = await call<ExpertBatch, ExpertResult>(client.runExperts.bind(client), batch());
    expect(res.batchId).toBe(7n);
    expect(res.output?.shape).toEqual([6, D]);
    expect(res.stats).toMatchObject({ tokens: 5, experts: 2, cacheMisses: 2, cacheHits: 0 });
    expect(res.stats?.backend).toBe(loadNativeAddon() ? "cpu-native" : "cpu-reference");
    const ckpt = await openCheckpoint(join(dir, "small"));
    const w = [expertToFloat32(await ckpt.readExpert(1, 0)), expertToFloat32(await ckpt.readExpert(1, 1))];
    await ckpt.close();
    const b = batch();
    const exact = referenceExpertFFN64(
      bytesToFloat32(b.tokens?.data as Uint8Array, DType.FLOAT32, true),
      D,
      b.slices,
      (e) => w[e],
      bytesToFloat32(b.rowWeights?.data as Uint8Array, DType.FLOAT32, true),
    );
    const got = bytesToFloat32(res.output?.data as Uint8Array, DType.FLOAT32, true);
    const maxAbs = exact.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    expect(maxAbs).toBeGreaterThan(1e-3);
    for (let i = 0; i < exact.length; i++) expect(Math.abs(got[i] - exact[i])).toBeLessThanOrEqual(2e-5 * maxAbs);
    // Row 5 is in no slice.
    expect(got.subarray(5 * D).every((v) => v === 0)).toBe(true);
    const again = await call<ExpertBatch, ExpertResult>(client.runExperts.bind(client), batch());
    expect(again.stats).toMatchObject({ cacheHits: 2, cacheMisses: 0 });
  });

  const bad: [string, Partial<ExpertBatch>][] = [
    ["pool", { pool: "other" }],
    ["layer", { layer: 2 }],
    ["tokens", { tokens: undefined }],
    ["tokens.dtype", { tokens: { ...tokensOf(6, 1), dtype: DType.INT32 } }],
    ["tokens.dtype", { tokens: { ...tokensOf(6, 1), dtype: DType.DTYPE_UNSPECIFIED } }],
    ["tokens.shape", { tokens: { ...tokensOf(6, 1), shape: [6 * D] } }],
    ["tokens.shape[1]", { tokens: tokensOf(6, 1, D + 1) }],
    ["tokens.data", { tokens: { ...tokensOf(6, 1), data: Buffer.alloc(6 * D * 4 - 2) } }],
    [
      "slices[1].count",
      {
        slices: [
          { expert: 0, offset: 0, count: 2 },
          { expert: 1, offset: 4, count: 3 },
        ],
      },
    ],
    ["slices[0].offset", { slices: [{ expert: 0, offset: 9, count: 0 }] }],
    [
      "slices[1]",
      {
        slices: [
          { expert: 0, offset: 0, count: 3 },
          { expert: 1, offset: 2, count: 2 },
        ],
      },
    ],
    ["slices[0].expert", { slices: [{ expert: 4, offset: 0, count: 1 }] }],
    ["row_weights.shape", { rowWeights: encodeTensor(new Float32Array(5), [5], DType.FLOAT32) }],
    ["row_weights.dtype", { rowWeights: encodeTensor(new Float32Array(6), [6], DType.BFLOAT16) }],
    // a NaN weight would turn its row (and, summed, its token) into NaN that the router passes on silently
    [
      "row_weights.data",
      { rowWeights: encodeTensor(new Float32Array([1, 1, Number.NaN, 1, 1, 1]), [6], DType.FLOAT32) },
    ],
    [
      "row_weights.data",
      { rowWeights: encodeTensor(new Float32Array([1, 1, 1, 1, 1, Number.NEGATIVE_INFINITY]), [6], DType.FLOAT32) },
    ],
    // deduplicated batches: 3 distinct tokens read by the 6 assignment rows
    ["token_rows[4]", { tokens: tokensOf(3, 1), tokenRows: [0, 1, 2, 0, 3, 1] }],
    ["combine", { combine: true }],
    [
      "row_weights.shape", // 6 weights for the 4 assignment rows
      {
        tokens: tokensOf(3, 1),
        tokenRows: [0, 1, 2, 0],
        combine: true,
        cancel: [],
        slices: [
          { expert: 0, offset: 0, count: 2 },
          { expert: 1, offset: 2, count: 2 },
        ],
      },
    ],
  ];
  it("an expert that exists but this worker does not serve answers FAILED_PRECONDITION naming the field", async () => {
    // not the request's fault: a plan that reached the router before this worker (the router tries another replica)
    const over = { slices: [{ expert: 3, offset: 0, count: 1 }] }; // this worker serves 0-2
    const err = (await call(client.runExperts.bind(client), batch(over)).catch((e) => e)) as ServiceError;
    expect(err.code).toBe(status.FAILED_PRECONDITION);
    expect(err.metadata.get(ERROR_FIELD_METADATA_KEY)[0]).toBe("slices[0].expert");
    expect(err.details).toMatch(/^slices\[0\]\.expert: expert 3 of layer \d+ is not served by this worker$/);
  });

  it.each(bad.map(([field, over], i) => [i, field, over] as const))(
    "bad input #%i answers INVALID_ARGUMENT naming %s",
    async (_, field, over) => {
      const err = (await call(client.runExperts.bind(client), batch(over)).catch((e) => e)) as ServiceError;
      expect(err.code).toBe(status.INVALID_ARGUMENT);
      expect(err.metadata.get(ERROR_FIELD_METADATA_KEY)[0]).toBe(field);
      expect(err.details.startsWith(`${field}: `)).toBe(true);
    },
  );
});

describe("deduplicated batches (token_rows, combine)", () => {
  // 3 distinct tokens; the 6 assignment rows read tokens 0 1 2 | 0 2 1 (experts 0 and 1), row weights as batch()'s
  const distinct = tokensOf(3, 5);
  const tokenRows = [0, 1, 2, 0, 2, 1];
  const slices = [
    { expert: 0, offset: 0, count: 3 },
    { expert: 1, offset: 3, count: 3 },
  ];
  const expanded = (): Tensor => {
    const x = bytesToFloat32(distinct.data, DType.FLOAT32, true);
    const out = new Float32Array(6 * D);
    tokenRows.forEach((u, r) => {
      out.set(x.subarray(u * D, (u + 1) * D), r * D);
    });
    return encodeTensor(out, [6, D], DType.FLOAT32);
  };

  it("token_rows alone: the same rows as the batch with every row spelled out", async () => {
    const full = await call<ExpertBatch, ExpertResult>(
      client.runExperts.bind(client),
      batch({ tokens: expanded(), slices }),
    );
    const dedup = await call<ExpertBatch, ExpertResult>(
      client.runExperts.bind(client),
      batch({ tokens: distinct, tokenRows, slices }),
    );
    expect(dedup.output?.shape).toEqual([6, D]);
    expect(dedup.stats?.tokens).toBe(6);
    expect(Buffer.from(dedup.output!.data).equals(Buffer.from(full.output!.data))).toBe(true);
  });

  it("combine: one FLOAT32 row per distinct token, the fp32 sum of its rows times their weights", async () => {
    const w = bytesToFloat32(batch().rowWeights!.data, DType.FLOAT32, true);
    for (const dtype of [DType.FLOAT32, DType.BFLOAT16]) {
      const x = bytesToFloat32(distinct.data, DType.FLOAT32, true);
      // the rows unweighted, as the backend rounds them to the batch's dtype: the router's combine scales those
      const full = await call<ExpertBatch, ExpertResult>(
        client.runExperts.bind(client),
        batch({
          tokens: encodeTensor(bytesToFloat32(expanded().data, DType.FLOAT32, true), [6, D], dtype),
          slices,
          rowWeights: undefined,
        }),
      );
      const sums = await call<ExpertBatch, ExpertResult>(
        client.runExperts.bind(client),
        batch({ tokens: encodeTensor(x, [3, D], dtype), tokenRows, slices, combine: true }),
      );
      expect(sums.output?.dtype).toBe(DType.FLOAT32);
      expect(sums.output?.shape).toEqual([3, D]);
      const rows = bytesToFloat32(full.output!.data, dtype, true);
      const want = new Float32Array(3 * D);
      tokenRows.forEach((u, r) => {
        for (let j = 0; j < D; j++) want[u * D + j] += w[r] * rows[r * D + j];
      });
      const got = bytesToFloat32(sums.output!.data, DType.FLOAT32, true);
      // fp32 adds in row order; the native sum rounds each product (or fuses it), JavaScript's adds in double
      const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      for (let i = 0; i < want.length; i++) expect(Math.abs(got[i] - want[i])).toBeLessThanOrEqual(1e-6 * scale);
      expect(want.some((v) => v !== 0)).toBe(true);
    }
  });
});

describe("RunExpertsStream", () => {
  it("answers every batch by batch_id, errors per batch, and keeps the stream up", async () => {
    const s = client.runExpertsStream();
    const replies = new Map<bigint, ExpertResult>();
    const done = new Promise<void>((resolve, reject) => {
      s.on("data", (r: ExpertResult) => replies.set(r.batchId, r));
      s.on("end", resolve);
      s.on("error", reject);
    });
    s.write(batch({ batchId: 1n }));
    s.write(batch({ batchId: 2n, layer: 9 }));
    s.write(batch({ batchId: 3n, tokens: tokensOf(6, 5) }));
    s.end();
    await done;
    expect([...replies.keys()].sort()).toEqual([1n, 2n, 3n]);
    expect(replies.get(1n)?.output?.shape).toEqual([6, D]);
    expect(replies.get(2n)?.error).toMatchObject({ code: status.INVALID_ARGUMENT });
    expect(replies.get(2n)?.error?.message).toMatch(/^layer: /);
    expect(replies.get(3n)?.error).toBeUndefined();
  });
});

describe("Prefetch, Evict, Status, health, metrics", () => {
  it("manages residency and reports it", async () => {
    const pre = await call(client.prefetch.bind(client), { pool: "p", experts: [{ layer: 0, expert: 2 }] });
    expect(pre.loaded).toEqual([{ layer: 0, expert: 2 }]);
    const st = await call(client.status.bind(client), {});
    expect(st).toMatchObject({
      workerId: "w0",
      pool: "p",
      backend: "cpu",
      capacity: 2,
      hiddenSize: D,
      layers: 2,
      experts: 4,
    });
    expect(st.resident).toContainEqual({ layer: 0, expert: 2 });
    expect(st.served).toHaveLength(2 * 3);
    const ev = await call(client.evict.bind(client), { pool: "p", experts: [{ layer: 0, expert: 2 }] });
    expect(ev.evicted).toEqual([{ layer: 0, expert: 2 }]);
    const err = (await call(client.prefetch.bind(client), { pool: "p", experts: [{ layer: 0, expert: 3 }] }).catch(
      (e) => e,
    )) as ServiceError;
    expect(err.code).toBe(status.FAILED_PRECONDITION); // exists, but this worker does not serve it
    expect(err.details).toMatch(/^experts\[0\]\.expert: /);
    // an expert named twice is one expert: both fit the cache of 2, each reported once
    const [a, b] = [
      { layer: 1, expert: 1 },
      { layer: 1, expert: 2 },
    ];
    await call(client.evict.bind(client), { pool: "p", experts: [a, b] });
    const twice = await call(client.prefetch.bind(client), { pool: "p", experts: [a, b, a, b] });
    expect(twice.loaded).toEqual([a, b]);
    expect(twice.alreadyResident).toEqual([]);
  });

  it("serves grpc.health.v1 and Prometheus metrics with the contract names", async () => {
    const Health = makeGenericClientConstructor(healthService, "Health");
    const h = new Health(`127.0.0.1:${small.port}`, credentials.createInsecure()) as unknown as {
      check(req: { service: string }, cb: (e: Error | null, r: { status: string }) => void): void;
      close(): void;
    };
    const r = await new Promise<{ status: string }>((res, rej) =>
      h.check({ service: "" }, (e, x) => (e ? rej(e) : res(x))),
    );
    h.close();
    expect(r.status).toBe("SERVING");
    const text = await (await fetch(`http://127.0.0.1:${small.metricsPort}/metrics`)).text();
    for (const name of [
      'switchyard_worker_requests_total{method="RunExperts",code="OK",pool="p",worker="w0"}',
      'switchyard_worker_requests_total{method="RunExperts",code="INVALID_ARGUMENT",pool="p",worker="w0"}',
      "switchyard_worker_tokens_total",
      'switchyard_worker_expert_tokens_total{layer="1",expert="0",pool="p",worker="w0"}',
      "switchyard_worker_batch_tokens_bucket",
      "switchyard_worker_run_duration_seconds_bucket",
      "switchyard_worker_queue_wait_seconds_bucket",
      "switchyard_worker_compute_duration_seconds_bucket",
      // the GPU's own clock: exported by CPU workers too, never observed there
      'switchyard_worker_device_compute_duration_seconds_count{pool="p",worker="w0"} 0',
      "switchyard_worker_cache_hits_total",
      "switchyard_worker_cache_misses_total",
      "switchyard_worker_cache_evictions_total",
      "switchyard_worker_cache_transfer_bytes_total",
      'switchyard_worker_cache_resident_experts{pool="p",worker="w0"}',
      'switchyard_worker_cache_capacity_experts{pool="p",worker="w0"} 2',
      "switchyard_worker_queue_depth",
      'switchyard_worker_gpu_cache_hits_total{pool="p",worker="w0"} 0', // GPU tier series exist on CPU too, at 0
      'switchyard_worker_gpu_cache_capacity_experts{pool="p",worker="w0"} 0',
      `switchyard_worker_backend_info{backend="cpu",pool="p",worker="w0"} 1`,
      'switchyard_worker_devices{pool="p",worker="w0"} 0', // on CPU
      'switchyard_worker_ready{pool="p",worker="w0"} 1', // started with warm: false: ready at once
      'switchyard_worker_warmup_target_experts{pool="p",worker="w0"} 0',
    ])
      expect(text).toContain(name);
    expect((await fetch(`http://127.0.0.1:${small.metricsPort}/readyz`)).status).toBe(200);
    expect((await fetch(`http://127.0.0.1:${small.metricsPort}/healthz`)).status).toBe(200);
  });
});

const nativeAddon = loadNativeAddon();
// CI builds the addon: not loading there is a failure, not a skip. Locally the reason is printed.
if (!nativeAddon && process.env.CI === "true") throw new Error(`native addon not loadable in CI: ${nativeLoadError()}`);
if (!nativeAddon) console.warn(`deadline/queue tests SKIPPED: native addon not loadable: ${nativeLoadError()}`);

describe.skipIf(!nativeAddon)("deadlines and the queue bound (native backend)", () => {
  // Big enough that one batch takes tens of milliseconds: d=512, f=2048, 4 experts x 128 rows.
  const d = 512;
  let big: WorkerHandle;
  let bigClient: ExpertWorkerClient;
  const bigBatch = (id: bigint, timeoutMs = 0): ExpertBatch => ({
    tokenRows: [],
    combine: false,
    cancel: [],
    pool: "big",
    layer: 0,
    tokens: tokensOf(512, 9, d),
    slices: [0, 1, 2, 3].map((e) => ({ expert: e, offset: e * 128, count: 128 })),
    rowWeights: undefined,
    batchId: id,
    timeoutMs,
  });
  beforeAll(async () => {
    await generateCheckpoint({
      family: "mixtral",
      dir: join(dir, "big"),
      layers: 1,
      experts: 4,
      hiddenSize: d,
      intermediateSize: 2048,
      seed: 4,
    });
    big = await startWorker({
      checkpoint: join(dir, "big"),
      pool: "big",
      workerId: "w1",
      port: 0,
      metricsPort: 0,
      host: "127.0.0.1",
      backend: "cpu",
      queueCapacity: 0,
      warm: false,
      log: () => {},
    });
    bigClient = new ExpertWorkerClient(`127.0.0.1:${big.port}`, credentials.createInsecure());
    await call(bigClient.prefetch.bind(bigClient), {
      pool: "big",
      experts: [0, 1, 2, 3].map((e) => ({ layer: 0, expert: e })),
    });
  });
  afterAll(async () => {
    bigClient?.close();
    await big?.close();
  });

  const settledRuns = async (addon: NonNullable<ReturnType<typeof loadNativeAddon>>) => {
    const settled = () => {
      const s = addon.stats();
      return s.runsStarted === s.runsCompleted + s.runsCancelled;
    };
    for (let i = 0; i < 400 && !settled(); i++) await new Promise((r) => setTimeout(r, 5));
  };

  it("a client cancel stops the native kernel mid-run", async () => {
    const addon = loadNativeAddon();
    if (!addon) throw new Error("unreachable");
    const s0 = addon.stats().tilesDone;
    await call<ExpertBatch, ExpertResult>(bigClient.runExperts.bind(bigClient), bigBatch(1n));
    const completeRunTiles = addon.stats().tilesDone - s0;
    const before = addon.stats();
    let code: number | undefined;
    const c = bigClient.runExperts(bigBatch(2n), (err) => {
      code = err?.code;
    });
    // Cancel once the kernel is busy with this batch (the worker runs in this process: its counters are visible).
    await kernelStarted(addon, before.tilesDone);
    c.cancel();
    await settledRuns(addon);
    const after = addon.stats();
    expect(code).toBe(status.CANCELLED);
    expect(after.runsCancelled - before.runsCancelled).toBe(1);
    expect(after.tilesDone - before.tilesDone).toBeLessThan(completeRunTiles);
  });

  it("closing the data-path connection stops the native kernel mid-run", async () => {
    const addon = loadNativeAddon();
    if (!addon) throw new Error("unreachable");
    const s0 = addon.stats().tilesDone;
    await call<ExpertBatch, ExpertResult>(bigClient.runExperts.bind(bigClient), bigBatch(1n));
    const completeRunTiles = addon.stats().tilesDone - s0;
    await settledRuns(addon);
    const before = addon.stats();
    const sock = connect(big.dataPort, "127.0.0.1");
    await once(sock, "connect");
    sock.write(DATA_PREFACE);
    let replies = 0;
    sock.on("data", () => replies++);
    writeFrame(sock, ExpertBatch.encode(bigBatch(3n)).finish());
    await kernelStarted(addon, before.tilesDone);
    sock.destroy();
    await settledRuns(addon);
    const after = addon.stats();
    expect(replies).toBe(0);
    expect(after.runsCancelled - before.runsCancelled).toBe(1);
    expect(after.tilesDone - before.tilesDone).toBeLessThan(completeRunTiles);
  });

  it("an exceeded deadline answers DEADLINE_EXCEEDED and stops the native kernel mid-run", async () => {
    const addon = loadNativeAddon();
    if (!addon) throw new Error("unreachable");
    const s0 = addon.stats().tilesDone;
    const t0 = performance.now();
    await call<ExpertBatch, ExpertResult>(bigClient.runExperts.bind(bigClient), bigBatch(1n));
    let deadlineMs = (performance.now() - t0) / 2;
    const completeRunTiles = addon.stats().tilesDone - s0;
    // The server's deadline (its receive time + the client's timeout) must pass after the batch reached the kernel
    // and before the kernel finished. On a busy machine both ends move, so the deadline adapts: shorter when the
    // run completed, longer when it never started. A worker that does not cancel never passes.
    const outcomes: unknown[] = [];
    for (let attempt = 0; attempt < 8; attempt++) {
      const before = addon.stats();
      const err = (await call(bigClient.runExperts.bind(bigClient), bigBatch(2n), Math.max(2, deadlineMs)).catch(
        (e) => e,
      )) as ServiceError | undefined;
      await settledRuns(addon);
      await new Promise((r) => setTimeout(r, 20)); // a run still queued at the deadline would show up now
      await settledRuns(addon);
      const after = addon.stats();
      const o = {
        deadlineMs: Math.round(deadlineMs),
        code: err?.code,
        started: after.runsStarted - before.runsStarted,
        cancelled: after.runsCancelled - before.runsCancelled,
        tiles: after.tilesDone - before.tilesDone,
      };
      outcomes.push(o);
      if (o.code === status.DEADLINE_EXCEEDED && o.cancelled === 1) {
        expect(o.tiles).toBeLessThan(completeRunTiles);
        return;
      }
      deadlineMs = o.started === 0 ? deadlineMs * 1.5 : deadlineMs * 0.6;
    }
    throw new Error(`no attempt cancelled a running kernel: ${JSON.stringify(outcomes)}`);
  });

  it("a stream batch whose timeout_ms passes answers DEADLINE_EXCEEDED and stops the native kernel mid-run", async () => {
    const addon = loadNativeAddon();
    if (!addon) throw new Error("unreachable");
    const s0 = addon.stats().tilesDone;
    const t0 = performance.now();
    await call<ExpertBatch, ExpertResult>(bigClient.runExperts.bind(bigClient), bigBatch(1n));
    let timeoutMs = (performance.now() - t0) / 2;
    const completeRunTiles = addon.stats().tilesDone - s0;
    // The stream itself has no deadline: only the batch's timeout_ms can stop it. Same adaptive search as above.
    const stream = bigClient.runExpertsStream();
    const replies = new Map<bigint, (r: ExpertResult) => void>();
    stream.on("data", (r: ExpertResult) => replies.get(r.batchId)?.(r));
    const outcomes: unknown[] = [];
    try {
      for (let attempt = 0; attempt < 8; attempt++) {
        const id = BigInt(100 + attempt);
        const before = addon.stats();
        const reply = new Promise<ExpertResult>((resolve) => replies.set(id, resolve));
        stream.write(bigBatch(id, Math.max(2, Math.round(timeoutMs))));
        const r = await reply;
        await settledRuns(addon);
        await new Promise((res) => setTimeout(res, 20));
        await settledRuns(addon);
        const after = addon.stats();
        const o = {
          timeoutMs: Math.round(timeoutMs),
          code: r.error?.code,
          message: r.error?.message,
          started: after.runsStarted - before.runsStarted,
          cancelled: after.runsCancelled - before.runsCancelled,
          tiles: after.tilesDone - before.tilesDone,
        };
        outcomes.push(o);
        if (o.code === status.DEADLINE_EXCEEDED && o.cancelled === 1) {
          expect(r.output).toBeUndefined();
          expect(o.message).toMatch(/timeout_ms/);
          expect(o.tiles).toBeLessThan(completeRunTiles);
          // The stream stays up: a batch without a timeout still runs to completion on it.
          const okReply = new Promise<ExpertResult>((resolve) => replies.set(999n, resolve));
          stream.write(bigBatch(999n));
          const ok = await okReply;
          expect(ok.error).toBeUndefined();
          expect(ok.output?.shape).toEqual([512, d]);
          return;
        }
        timeoutMs = o.started === 0 ? timeoutMs * 1.5 : timeoutMs * 0.6;
      }
      throw new Error(`no attempt cancelled a running kernel: ${JSON.stringify(outcomes)}`);
    } finally {
      stream.end();
    }
  });

  it("a full queue answers RESOURCE_EXHAUSTED", async () => {
    const queue = big.core.o.queue;
    const until = async (cond: () => boolean) => {
      for (let i = 0; i < 1000 && !cond(); i++) await new Promise((r) => setTimeout(r, 2));
    };
    await until(() => queue.depth === 0); // the previous test's last run has fully left the queue
    // Occupy the one running slot (capacity 0: nothing may wait) with a job this test releases, so the outcome
    // does not depend on how fast the kernel is.
    let release: () => void = () => {};
    const blocker = queue.submit({
      run: () =>
        new Promise<void>((r) => {
          release = r;
        }),
    });
    const err = (await call(bigClient.runExperts.bind(bigClient), bigBatch(5n)).catch((e) => e)) as ServiceError;
    expect(err.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(err.details).toMatch(/queue full/);
    release();
    await blocker;
    expect((await call<ExpertBatch, ExpertResult>(bigClient.runExperts.bind(bigClient), bigBatch(6n))).batchId).toBe(
      6n,
    );
  });
});

/**
 * Waits until the native kernel has done a tile past `tilesBefore` (the batch is running), by the clock rather than by
 * a count of event-loop turns: a loaded CI host may take longer to start it. Fails naming the wait when it never does.
 */
async function kernelStarted(addon: { stats(): { tilesDone: number } }, tilesBefore: number): Promise<void> {
  const end = Date.now() + 10_000;
  while (addon.stats().tilesDone === tilesBefore) {
    if (Date.now() > end) throw new Error("the native kernel did not start the batch within 10 s");
    await new Promise((r) => setImmediate(r));
  }
}
