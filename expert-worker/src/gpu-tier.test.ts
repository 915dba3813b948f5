// The worker with a device tier of experts (CudaBackend over a fake addon: no GPU needed): --cache-capacity sizes
// the GPU slots and --host-cache-capacity the host tier behind them, GPU cache events reach /metrics, the Prefetch RPC moves experts to the device, and a batch that
// waits behind another has its host-resident experts uploaded while it waits.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { credentials, Metadata, type ServiceError } from "@grpc/grpc-js";
import { generateCheckpoint } from "@switchyard/moe";
import { DType, type ExpertBatch, type ExpertResult, ExpertWorkerClient, encodeTensor } from "@switchyard/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type CudaAddon, CudaBackend } from "./backend/cuda.js";
import { MultiDeviceBackend } from "./backend/multi-device.js";
import type { ExpertBackend } from "./backend/types.js";
import { cacheTiers, startWorker, type WorkerHandle, type WorkerOptions } from "./worker.js";

const D = 32;
const F = 48;

function fakeAddon() {
  const calls = {
    contexts: [] as object[],
    uploads: [] as number[],
    runs: 0,
    last: undefined as RunOptions | undefined,
    /** Set: every upload fails with it (as the addon rejects: an Error with a code). */
    uploadError: undefined as Error | undefined,
  };
  let gate: Promise<void> | undefined;
  const addon: CudaAddon = {
    probe: () => ({ ok: true, name: "fake", sms: 1, totalMem: 1e9, cc: "9.0" }),
    createContext: (o) => {
      calls.contexts.push(o);
      return {};
    },
    upload: async (_ctx, slot) => {
      calls.uploads.push(slot);
      if (calls.uploadError) throw calls.uploadError;
      return 3 * D * F * 2;
    },
    run: async (_ctx, o) => {
      calls.runs++;
      calls.last = o;
      await gate;
      if (!o.sumByToken) return new Uint8Array(o.rows * o.cols * 4);
      // the device's sums: token u's row is u + 1 in every column (fp32), so the test can read them back
      const u = o.tokens.byteLength / (o.cols * 4);
      const out = new Float32Array(u * o.cols);
      for (let t = 0; t < u; t++) out.fill(t + 1, t * o.cols, (t + 1) * o.cols);
      return new Uint8Array(out.buffer);
    },
    stats: () => ({ runs: 0, uploads: 0, uploadBytes: 0, deviceBytes: 0, slots: 0 }),
  };
  return {
    addon,
    calls,
    /** Holds every run until the returned release is called. */
    hold: () => {
      let release = () => {};
      gate = new Promise<void>((r) => {
        release = r;
      });
      return () => {
        gate = undefined;
        release();
      };
    },
  };
}

type RunOptions = Parameters<CudaAddon["run"]>[1];

/**
 * A worker over `backend` on a generated 8-expert checkpoint, for the describe block that calls this. Started cold
 * (no warm-up): the tests count the tiers' misses, uploads and evictions from there. `sizes`: the tiers' flags
 * (default --cache-capacity 4 and no host flag: 4 GPU slots, and a host tier of all 8 experts).
 */
function workerOnFakeGpu(
  backend: ExpertBackend,
  seed: number,
  sizes: Pick<WorkerOptions, "cacheCapacity" | "hostCacheCapacity"> = { cacheCapacity: 4 },
  more: Pick<WorkerOptions, "maxRows" | "log"> = {},
) {
  const h = {} as { w: WorkerHandle; client: ExpertWorkerClient; dir: string };
  beforeAll(async () => {
    h.dir = await mkdtemp(join(tmpdir(), "sy-gpu-tier-"));
    const dims = { layers: 1, experts: 8, hiddenSize: D, intermediateSize: F, seed };
    await generateCheckpoint({ family: "mixtral", dir: h.dir, ...dims });
    h.w = await startWorker({
      checkpoint: h.dir,
      pool: "g",
      workerId: "w0",
      port: 0,
      metricsPort: 0,
      host: "127.0.0.1",
      backend,
      ...sizes,
      warm: false,
      log: () => {},
      ...more,
    });
    h.client = new ExpertWorkerClient(`127.0.0.1:${h.w.port}`, credentials.createInsecure());
  });
  afterAll(async () => {
    h.client?.close();
    await h.w?.close();
    if (h.dir) await rm(h.dir, { recursive: true, force: true });
  });
  return h;
}

function call<Req, Res>(
  fn: (req: Req, md: Metadata, opts: object, cb: (err: ServiceError | null, res: Res) => void) => unknown,
  req: Req,
): Promise<Res> {
  return new Promise((resolve, reject) => fn(req, new Metadata(), {}, (e, r) => (e ? reject(e) : resolve(r))));
}

const batch = (experts: number[], id: bigint): ExpertBatch => ({
  pool: "g",
  layer: 0,
  tokens: encodeTensor(new Float32Array(experts.length * D).fill(0.5), [experts.length, D], DType.FLOAT32),
  slices: experts.map((e, i) => ({ expert: e, offset: i, count: 1 })),
  rowWeights: undefined,
  batchId: id,
  timeoutMs: 0,
  tokenRows: [],
  combine: false,
  cancel: [],
});

function metric(text: string, name: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`));
  if (!line) throw new Error(`metric ${name} missing`);
  return Number(line.split(" ").pop());
}

describe("worker with a GPU expert tier (fake CUDA addon)", () => {
  const fake = fakeAddon();
  // SWITCHYARD_CACHE_CAPACITY in the backend's env loses to the worker's --cache-capacity.
  const backend = new CudaBackend(fake.addon, fake.addon.probe(), { SWITCHYARD_CACHE_CAPACITY: "9" });
  const scrape = async () => (await fetch(`http://127.0.0.1:${h.w.metricsPort}/metrics`)).text();

  // host tier = GPU tier, as a pool without cache.hostTier runs
  const h = workerOnFakeGpu(backend, 5, { cacheCapacity: 4, hostCacheCapacity: 4 });

  it("--cache-capacity sizes the GPU slots; misses, hits, evictions and bytes reach /metrics", async () => {
    const before = await scrape();
    expect(metric(before, "switchyard_worker_gpu_cache_capacity_experts")).toBe(0); // nothing prepared yet
    await call<ExpertBatch, ExpertResult>(h.client.runExperts.bind(h.client), batch([0, 1], 1n));
    expect(fake.calls.contexts).toEqual([{ d: D, f: F, slots: 4, device: 0, runsInFlight: 2 }]);
    await call<ExpertBatch, ExpertResult>(h.client.runExperts.bind(h.client), batch([0, 1], 2n));
    await call<ExpertBatch, ExpertResult>(h.client.runExperts.bind(h.client), batch([2, 3, 4], 3n)); // 5 > 4 slots
    const text = await scrape();
    expect(metric(text, "switchyard_worker_gpu_cache_misses_total")).toBe(5);
    expect(metric(text, "switchyard_worker_gpu_cache_hits_total")).toBe(2);
    expect(metric(text, "switchyard_worker_gpu_cache_evictions_total")).toBe(1);
    expect(metric(text, "switchyard_worker_gpu_cache_transfer_bytes_total")).toBe(5 * 3 * D * F * 2);
    expect(metric(text, "switchyard_worker_gpu_cache_resident_experts")).toBe(4);
    expect(metric(text, "switchyard_worker_gpu_cache_capacity_experts")).toBe(4);
    expect(text).toContain('switchyard_worker_gpu_cache_hits_total{pool="g",worker="w0"}');
  });

  it("the Prefetch RPC puts the experts on the GPU: the next batch is all hits", async () => {
    const up0 = fake.calls.uploads.length;
    await call(h.client.prefetch.bind(h.client), { pool: "g", experts: [5, 6].map((e) => ({ layer: 0, expert: e })) });
    expect(fake.calls.uploads.length - up0).toBe(2);
    const res = await call<ExpertBatch, ExpertResult>(h.client.runExperts.bind(h.client), batch([5, 6], 4n));
    expect(res.stats?.cacheHits).toBe(2); // host tier
    expect(fake.calls.uploads.length - up0).toBe(2); // no upload at run time: GPU hits
    expect(backend.deviceCacheStats()?.hits).toBeGreaterThanOrEqual(2);
  });

  it("an expert the host tier lets go leaves the GPU too: its slot is free for the next warm-up or look-ahead", async () => {
    const before = backend.deviceCacheStats()!;
    expect(before.resident).toBe(4);
    const r = await call<{ pool: string; experts: { layer: number; expert: number }[] }, { evicted: unknown[] }>(
      h.client.evict.bind(h.client),
      { pool: "g", experts: [5, 6].map((e) => ({ layer: 0, expert: e })) },
    );
    expect(r.evicted).toHaveLength(2);
    expect(backend.deviceCacheStats()).toMatchObject({ resident: 2, evictions: before.evictions + 2 });
    // a fill that never evicts (the warm-up's) now finds the two free slots
    const up0 = fake.calls.uploads.length;
    // experts 0 and 1, on the host only (the host tier let them go earlier): loaded again, not yet on the GPU
    const prepared = await Promise.all([0, 1].map(async (e) => (await h.w.core.o.cache.get(0, e)).expert));
    await backend.prefetch(prepared, { evict: false });
    expect(fake.calls.uploads.length - up0).toBe(2);
    expect(backend.deviceCacheStats()).toMatchObject({ resident: 4, evictions: before.evictions + 2 });
  });
});

describe("worker with a GPU tier smaller than the host tier: look-ahead upload for the next batch", () => {
  const fake = fakeAddon();
  // 2 GPU slots (explicit override) under 4 host slots: experts can be on the host and not on the GPU. One run in
  // flight, so that a second batch waits in the queue behind the running one (the look-ahead's case).
  const backend = new CudaBackend(fake.addon, fake.addon.probe(), {
    SWITCHYARD_GPU_CACHE_SLOTS: "2",
    SWITCHYARD_CUDA_RUNS_IN_FLIGHT: "1",
  });

  const h = workerOnFakeGpu(backend, 6);

  it("the batch queued behind the running one has its experts uploaded while it waits", async () => {
    await call(h.client.prefetch.bind(h.client), {
      pool: "g",
      experts: [0, 1, 2].map((e) => ({ layer: 0, expert: e })),
    });
    expect([0, 1, 2].every((e) => h.w.core.o.cache.peek(0, e) !== undefined)).toBe(true); // all on the host
    // 0 and 1 on the GPU; 2 found every slot still loading (prefetch is best effort) and stays on the host only.
    expect(backend.deviceCacheStats()).toMatchObject({ resident: 2, evictions: 0 });
    expect(fake.calls.uploads).toHaveLength(2);
    const release = fake.hold();
    const first = call<ExpertBatch, ExpertResult>(h.client.runExperts.bind(h.client), batch([1], 1n));
    for (let i = 0; i < 500 && fake.calls.runs === 0; i++) await new Promise((r) => setTimeout(r, 2));
    expect(fake.calls.runs).toBe(1); // batch 1 is on the "GPU", held there
    const uploads = fake.calls.uploads.length;
    const second = call<ExpertBatch, ExpertResult>(h.client.runExperts.bind(h.client), batch([2], 2n));
    for (let i = 0; i < 500 && fake.calls.uploads.length === uploads; i++) await new Promise((r) => setTimeout(r, 2));
    // Expert 2 went up while batch 1 still computes (its expert 1 is pinned, so 0 made room).
    expect(fake.calls.uploads.length).toBe(uploads + 1);
    expect(fake.calls.runs).toBe(1);
    const misses = backend.deviceCacheStats()?.misses ?? 0;
    release();
    await Promise.all([first, second]);
    expect(backend.deviceCacheStats()?.misses).toBe(misses); // batch 2 found expert 2 on the GPU
    expect(backend.deviceCacheStats()?.evictions).toBe(1);
    expect(fake.calls.uploads.length).toBe(uploads + 1);
  });
  it("a deduplicated batch reaches the GPU as it came: the distinct tokens, their rows, the sum asked of the device", async () => {
    const w8 = new Float32Array([0.25, 0.5, 0.75, 1, 2]);
    const r = await call<ExpertBatch, ExpertResult>(h.client.runExperts.bind(h.client), {
      ...batch([], 20n),
      tokens: encodeTensor(new Float32Array(2 * D).fill(0.5), [2, D], DType.FLOAT32),
      tokenRows: [0, 1, 0, 1, 0],
      slices: [
        { expert: 0, offset: 0, count: 2 },
        { expert: 1, offset: 2, count: 3 },
      ],
      rowWeights: encodeTensor(w8, [5], DType.FLOAT32),
      combine: true,
      cancel: [],
    });
    const o = fake.calls.last as RunOptions;
    expect(o.tokens.byteLength).toBe(2 * D * 4); // not expanded to 5 rows on the host
    expect([...(o.tokenRows ?? [])]).toEqual([0, 1, 0, 1, 0]);
    expect(o.sumByToken).toBe(true);
    expect([...(o.rowWeights ?? [])]).toEqual([...w8]); // the sum's weights; the rows run unscaled on the device
    expect(r.output?.dtype).toBe(DType.FLOAT32);
    expect(r.output?.shape).toEqual([2, D]);
    const got = new Float32Array(new Uint8Array(r.output!.data).buffer);
    expect([got[0], got[D]]).toEqual([1, 2]); // the device's sums, passed on as they are

    // token rows without the sum: the rows, still gathered on the device
    await call<ExpertBatch, ExpertResult>(h.client.runExperts.bind(h.client), {
      ...batch([], 21n),
      tokens: encodeTensor(new Float32Array(2 * D).fill(0.5), [2, D], DType.FLOAT32),
      tokenRows: [1, 0, 1],
      slices: [{ expert: 0, offset: 0, count: 3 }],
      rowWeights: encodeTensor(w8.subarray(0, 3), [3], DType.FLOAT32),
    });
    expect(fake.calls.last).toMatchObject({ rows: 3, sumByToken: false });
    expect([...(fake.calls.last?.rowWeights ?? [])]).toEqual([...w8.subarray(0, 3)]);
  });
});

describe("worker with two runs in flight on the GPU (the CUDA backend's default)", () => {
  const fake = fakeAddon();
  // 2 GPU slots: two running batches can need more experts between them than there are slots
  const backend = new CudaBackend(fake.addon, fake.addon.probe(), { SWITCHYARD_GPU_CACHE_SLOTS: "2" });

  const h = workerOnFakeGpu(backend, 7);

  const settled = async (n: () => boolean) => {
    for (let i = 0; i < 500 && !n(); i++) await new Promise((r) => setTimeout(r, 2));
  };

  it("the next batch is handed to the GPU while the one before still computes", async () => {
    expect(backend.runsInFlight).toBe(2);
    const release = fake.hold();
    const first = call<ExpertBatch, ExpertResult>(h.client.runExperts.bind(h.client), batch([1], 1n));
    const second = call<ExpertBatch, ExpertResult>(h.client.runExperts.bind(h.client), batch([2], 2n));
    await settled(() => fake.calls.runs === 2);
    expect(fake.calls.runs).toBe(2); // both on the "GPU" at once, the first still held there
    release();
    const [a, b] = await Promise.all([first, second]);
    expect([a.batchId, b.batchId]).toEqual([1n, 2n]);
  });

  it("a batch whose experts find both slots pinned by the running one waits for them, and then runs", async () => {
    const runs = fake.calls.runs;
    const release = fake.hold();
    const first = call<ExpertBatch, ExpertResult>(h.client.runExperts.bind(h.client), batch([3, 4], 3n));
    await settled(() => fake.calls.runs === runs + 1);
    const second = call<ExpertBatch, ExpertResult>(h.client.runExperts.bind(h.client), batch([5], 4n));
    await new Promise((r) => setTimeout(r, 30));
    expect(fake.calls.runs).toBe(runs + 1); // expert 5 has no slot while 3 and 4 are pinned: not failed, waiting
    release();
    const [a, b] = await Promise.all([first, second]);
    expect([a.batchId, b.batchId]).toEqual([3n, 4n]);
    expect(fake.calls.runs).toBe(runs + 2);
  });
});

describe("worker over two GPUs (gpusPerWorker 2; fake CUDA addon)", () => {
  const fake = fakeAddon();
  const devices = [0, 1].map(
    (i) => new CudaBackend(fake.addon, { ...fake.addon.probe(), devices: 2 }, {}, undefined, i),
  );
  const backend = new MultiDeviceBackend(devices);
  const h = workerOnFakeGpu(backend, 9);

  it("a context per device with half the cache capacity each; a batch's experts run on both; /metrics sums them", async () => {
    const res = await call<ExpertBatch, ExpertResult>(h.client.runExperts.bind(h.client), batch([0, 1, 2, 3], 1n));
    expect(res.output?.shape).toEqual([4, D]);
    expect(fake.calls.contexts).toEqual([
      { d: D, f: F, slots: 2, device: 0, runsInFlight: 2 },
      { d: D, f: F, slots: 2, device: 1, runsInFlight: 2 },
    ]);
    expect(fake.calls.runs).toBe(2); // one per device
    expect(fake.calls.uploads).toHaveLength(4);
    const text = await (await fetch(`http://127.0.0.1:${h.w.metricsPort}/metrics`)).text();
    expect(metric(text, "switchyard_worker_gpu_cache_capacity_experts")).toBe(4);
    expect(metric(text, "switchyard_worker_devices")).toBe(2);
    expect(backend.describe()).toMatch(/^2 devices, experts split among them: \[0\] cuda \(device 0, fake/);
  });
});

describe("--host-cache-capacity: a host tier larger than the GPU slots (cache.hostTier; fake CUDA addon)", () => {
  const fake = fakeAddon();
  const backend = new CudaBackend(fake.addon, fake.addon.probe(), {});
  const h = workerOnFakeGpu(backend, 11, { cacheCapacity: 2, hostCacheCapacity: 6 });

  it("2 GPU slots under 6 host slots: experts the GPU let go stay in host memory, read from the checkpoint once", async () => {
    expect(h.w.core.status().capacity).toBe(6);
    const metrics = await (await fetch(`http://127.0.0.1:${h.w.metricsPort}/metrics`)).text();
    expect(metric(metrics, "switchyard_worker_cache_capacity_experts")).toBe(6);
    for (const [i, es] of [
      [0, 1],
      [2, 3],
      [4, 5],
      [0, 1],
    ].entries())
      await call<ExpertBatch, ExpertResult>(h.client.runExperts.bind(h.client), batch(es, BigInt(i + 1)));
    expect(fake.calls.contexts).toEqual([{ d: D, f: F, slots: 2, device: 0, runsInFlight: 2 }]);
    // 0 and 1 came back from the host tier (hits there), uploaded again to the GPU (its misses)
    expect(h.w.core.status()).toMatchObject({ cacheHits: 2n, cacheMisses: 6n, cacheEvictions: 0n });
    expect(backend.deviceCacheStats()).toMatchObject({ capacity: 2, misses: 8, evictions: 6 });
  });
});

describe("cacheTiers: the tiers' sizes from the flags and the served experts", () => {
  it("CUDA: --cache-capacity is the GPU slots; the host tier is --host-cache-capacity, else every served expert", () => {
    expect(cacheTiers({ cacheCapacity: 4, hostCacheCapacity: 10 }, 20, true)).toEqual({
      host: 10,
      device: 4,
      followsServed: false,
    });
    expect(cacheTiers({ cacheCapacity: 4 }, 20, true)).toEqual({ host: 20, device: 4, followsServed: true });
    // never fewer host slots than GPU slots asked for (a plan's share below them: a pool without hostTier)
    expect(cacheTiers({ cacheCapacity: 4 }, 3, true)).toEqual({ host: 4, device: 4, followsServed: true });
    // no --cache-capacity: the backend's own GPU default (what fits on the device)
    expect(cacheTiers({}, 20, true)).toEqual({ host: 20, device: undefined, followsServed: true });
    expect(cacheTiers({}, 0, true).host).toBe(1);
  });
  it("CPU: one tier, --cache-capacity, else --host-cache-capacity, else every served expert", () => {
    expect(cacheTiers({ cacheCapacity: 4, hostCacheCapacity: 10 }, 20, false)).toEqual({
      host: 4,
      followsServed: false,
    });
    expect(cacheTiers({ hostCacheCapacity: 10 }, 20, false)).toEqual({ host: 10, followsServed: false });
    expect(cacheTiers({}, 20, false)).toEqual({ host: 20, followsServed: true });
  });
  it("refuses a host tier smaller than the GPU slots, naming the flag", () => {
    expect(() => cacheTiers({ cacheCapacity: 4, hostCacheCapacity: 3 }, 20, true)).toThrow(
      /^--host-cache-capacity: 3 is less than --cache-capacity 4/,
    );
  });
});

describe("a Prefetch whose uploads fail (fake CUDA addon)", () => {
  const failing = fakeAddon();
  const hf = workerOnFakeGpu(new CudaBackend(failing.addon, failing.addon.probe(), {}), 11);

  it("the Prefetch RPC fails, naming the upload's error, when experts did not reach the GPU", async () => {
    failing.calls.uploadError = Object.assign(
      new Error("cudaHostAlloc(&p, bytes, cudaHostAllocDefault): out of memory"),
      {
        code: "CUDA_OOM",
      },
    );
    try {
      const err = await call(hf.client.prefetch.bind(hf.client), {
        pool: "g",
        experts: [1, 2].map((e) => ({ layer: 0, expert: e })),
      }).catch((e: ServiceError) => e);
      expect((err as ServiceError).code).toBe(8); // RESOURCE_EXHAUSTED
      expect((err as ServiceError).details).toMatch(
        /^2 of 2 experts failed to upload to the GPU: GPU upload on CUDA device 0: .*out of memory/,
      );
    } finally {
      failing.calls.uploadError = undefined;
    }
  });
});

describe("the rows of a GPU run (fake CUDA addon)", () => {
  const lines: string[] = [];
  const log = (l: string) => lines.push(l);
  // the override and --max-rows both below free memory's bound: the least of them, 3
  const fake = fakeAddon();
  fake.addon.memInfo = () => ({ free: 40 * 2 ** 30, total: 80 * 2 ** 30 });
  const backend = new CudaBackend(fake.addon, fake.addon.probe(), { SWITCHYARD_GPU_MAX_ROWS: "3" });
  const h = workerOnFakeGpu(backend, 13, { cacheCapacity: 4 }, { maxRows: 5, log });
  const capped = fakeAddon();
  capped.addon.memInfo = () => ({ free: 40 * 2 ** 30, total: 80 * 2 ** 30 });
  const h2 = workerOnFakeGpu(new CudaBackend(capped.addon, capped.addon.probe(), {}), 14, {}, { maxRows: 5, log });
  const scrape = async (w: WorkerHandle) => (await fetch(`http://127.0.0.1:${w.metricsPort}/metrics`)).text();

  it("a batch with more rows than a run holds runs in parts; the limit is logged once and on /metrics", async () => {
    expect(metric(await scrape(h.w), "switchyard_worker_gpu_max_run_rows")).toBe(0); // no context yet
    const res = await call<ExpertBatch, ExpertResult>(h.client.runExperts.bind(h.client), batch([0, 1, 2, 0, 1], 1n));
    expect(res.output?.shape).toEqual([5, D]);
    expect(fake.calls.runs).toBe(2); // 3 rows, then 2
    expect(metric(await scrape(h.w), "switchyard_worker_gpu_max_run_rows")).toBe(3);
    expect(lines.filter((l) => l.includes("at most 3 rows each"))).toEqual([
      expect.stringMatching(/^GPU runs on CUDA device 0: at most 3 rows each \(SWITCHYARD_GPU_MAX_ROWS=3 /),
    ]);
  });

  it("free memory's bound, far above --max-rows, is capped by it", async () => {
    await call<ExpertBatch, ExpertResult>(h2.client.runExperts.bind(h2.client), batch([0, 1, 2, 3, 4], 1n));
    expect(capped.calls.runs).toBe(1);
    expect(metric(await scrape(h2.w), "switchyard_worker_gpu_max_run_rows")).toBe(5);
    expect(lines).toContainEqual(
      expect.stringMatching(
        /at most 5 rows each \(40\.0 GiB free after the expert slots, .* bytes per row .*; --max-rows 5\)/,
      ),
    );
  });
});
