// RunExpertsStream through real grpc-js on the reference backend: a batch whose result would pass the message limit
// is refused alone (grpc-js would end the stream, every other batch on it lost); a client that does not read its
// results stops the worker reading its batches (and it reads on once the client does); a cancelled stream that
// never half-closed lets go of its deadline timer and listeners; ExpertBatch.cancel takes a waiting batch out of the
// queue on the stream and on the data path.

import { EventEmitter, once } from "node:events";
import { connect } from "node:net";
import { credentials, status } from "@grpc/grpc-js";
import {
  DATA_PREFACE,
  DType,
  ExpertBatch,
  ExpertResult,
  ExpertWorkerClient,
  encodeTensor,
  FrameReader,
  type WorkerStatus,
  writeFrame,
} from "@switchyard/protocol";
import { afterEach, describe, expect, it, vi } from "vitest";
import { ReferenceBackend } from "./backend/reference.js";
import { ResidencyCache } from "./cache.js";
import { type ExpertSource, WorkerCore } from "./core.js";
import { startDataServer } from "./data-server.js";
import { WorkerMetrics } from "./metrics.js";
import { WorkQueue } from "./queue.js";
import { buildHandlers, startGrpcServer } from "./server.js";
import type { StreamGateLimits } from "./stream-gate.js";
import { randomExpert, rng, uniform } from "./testing.js";

const D = 64;
const F = 16;

/** A worker's core and gRPC server over random experts; `runs` counts the backend's runs (batches taken), `rows`
 * their rows. */
async function serve(o: { maxMessageBytes?: number; stream?: StreamGateLimits; slowOneRow?: boolean }) {
  const next = rng(2);
  const source: ExpertSource = {
    layers: 1,
    experts: 8,
    hiddenSize: D,
    intermediateSize: F,
    isMoeLayer: () => true,
    readExpert: async () => randomExpert(D, F, "float32", next),
  };
  const backend = new ReferenceBackend();
  const counter = { runs: 0, rows: 0 };
  const run = backend.run.bind(backend);
  backend.run = async (req) => {
    counter.runs++;
    counter.rows += req.rows;
    // a one-row batch runs long enough for a larger one sent after it to be answered first
    if (o.slowOneRow && req.rows === 1) await new Promise((r) => setTimeout(r, 200));
    return run(req);
  };
  const metrics = new WorkerMetrics({ pool: "p", worker: "w" });
  const cache = new ResidencyCache({
    capacity: 8,
    load: async (id) => ({
      prepared: await backend.prepare(await source.readExpert(id.layer, id.expert)),
      sourceBytes: 1,
    }),
  });
  const core = new WorkerCore({
    pool: "p",
    workerId: "w",
    source,
    backend,
    cache,
    queue: new WorkQueue(4096, 1),
    metrics,
  });
  const grpc = await startGrpcServer(core, metrics, { host: "127.0.0.1", port: 0, ...o });
  const client = new ExpertWorkerClient(`127.0.0.1:${grpc.port}`, credentials.createInsecure());
  return {
    client,
    counter,
    core,
    metrics,
    close: () => {
      client.close();
      grpc.server.forceShutdown();
    },
  };
}

const batch = (rows: number, id: bigint, over: Partial<ExpertBatch> = {}): ExpertBatch => ({
  pool: "p",
  layer: 0,
  tokens: encodeTensor(uniform(rows * D, 1, rng(Number(id))), [rows, D], DType.FLOAT32),
  slices: [{ expert: 0, offset: 0, count: rows }],
  rowWeights: undefined,
  batchId: id,
  timeoutMs: 0,
  tokenRows: [],
  combine: false,
  cancel: [],
  ...over,
});

describe("RunExpertsStream and the message limit", () => {
  it("answers a batch whose result would not fit with its own error; the other batches on the stream are answered", async () => {
    const w = await serve({ maxMessageBytes: 64 * 1024, slowOneRow: true });
    try {
      const s = w.client.runExpertsStream();
      const got = new Map<bigint, ExpertResult>();
      const done = new Promise<void>((resolve, reject) => {
        s.on("data", (r: ExpertResult) => got.set(r.batchId, r));
        s.on("end", resolve);
        s.on("error", reject);
      });
      // an ordinary batch, still running when the next one is answered
      s.write(batch(1, 1n));
      // 40 distinct tokens (a 10 KB request), each to 8 experts: 320 rows × 64 × 4 = 80 KB of result > 64 KiB
      const U = 40;
      s.write(
        batch(U, 2n, {
          tokenRows: Array.from({ length: 8 * U }, (_, i) => i % U),
          slices: Array.from({ length: 8 }, (_, e) => ({ expert: e, offset: e * U, count: U })),
        }),
      );
      // the same rows summed per token fit (40 × 64 × 4 bytes)
      s.write(
        batch(U, 3n, {
          tokenRows: Array.from({ length: 8 * U }, (_, i) => i % U),
          slices: Array.from({ length: 8 }, (_, e) => ({ expert: e, offset: e * U, count: U })),
          combine: true,
        }),
      );
      s.end();
      await done;
      expect(got.get(2n)?.error?.code).toBe(status.INVALID_ARGUMENT);
      expect(got.get(2n)?.error?.message).toMatch(/^token_rows: the result would be 81920 bytes .* limit of 65536/);
      expect(got.get(1n)?.error).toBeUndefined();
      expect(got.get(1n)?.output?.shape).toEqual([1, D]);
      expect(got.get(3n)?.output?.shape).toEqual([U, D]);
    } finally {
      w.close();
    }
  });

  it("RunExperts refuses it the same way", async () => {
    const w = await serve({ maxMessageBytes: 64 * 1024 });
    try {
      const U = 40;
      const wide = batch(U, 4n, {
        tokenRows: Array.from({ length: 8 * U }, (_, i) => i % U),
        slices: Array.from({ length: 8 }, (_, e) => ({ expert: e, offset: e * U, count: U })),
      });
      const err = await new Promise<{ code?: number; details?: string }>((resolve) =>
        w.client.runExperts(wide, (e) => resolve(e ?? {})),
      );
      expect(err.code).toBe(status.INVALID_ARGUMENT);
      expect(err.details).toMatch(/^token_rows: the result would be 81920 bytes/);
    } finally {
      w.close();
    }
  });
});

describe("RunExpertsStream backpressure", () => {
  it("stops reading a client that stops reading its results, and serves it once it reads again", async () => {
    // 300 batches of 64 rows (16 KiB each way); the client's stream buffer and HTTP/2 window hold a few results,
    // the worker 64 KiB more, and then it must stop taking batches
    const w = await serve({ stream: { maxQueuedBytes: 64 * 1024 } });
    try {
      const N = 300;
      const s = w.client.runExpertsStream();
      const results: ExpertResult[] = [];
      const done = new Promise<void>((resolve, reject) => {
        s.on("end", resolve);
        s.on("error", reject);
      });
      // It takes the first result and then stops reading. (A grpc-js client that never reads at all buffers
      // everything itself: it stops its HTTP/2 stream only once it hands a message on.)
      s.once("data", (r: ExpertResult) => {
        results.push(r);
        s.pause();
      });
      for (let i = 0; i < N; i++) s.write(batch(64, BigInt(i + 1)));
      s.end();
      // wait until the worker has stopped taking batches
      let last = -1;
      while (w.counter.runs !== last) {
        last = w.counter.runs;
        await new Promise((r) => setTimeout(r, 300));
      }
      expect(w.counter.runs).toBeGreaterThan(0);
      expect(w.counter.runs).toBeLessThan(N / 2);
      // reading now: every batch is answered
      s.on("data", (r: ExpertResult) => results.push(r));
      s.resume();
      await done;
      expect(results.length).toBe(N);
      expect(results.every((r) => r.error === undefined && r.output?.shape[0] === 64)).toBe(true);
    } finally {
      w.close();
    }
  }, 20_000);
});

describe("a cancelled stream", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("that never half-closed lets go of its deadline timer and listeners", () => {
    vi.useFakeTimers();
    // no batch comes: the handler does not reach the core
    const handlers = buildHandlers({} as WorkerCore, new WorkerMetrics({ pool: "p", worker: "w" }));
    // the parts of a grpc-js ServerDuplexStream the handler uses
    const call = Object.assign(new EventEmitter(), {
      getDeadline: () => new Date(Date.now() + 3600_000),
      write: () => true,
      end: () => {},
      pause: () => {},
      resume: () => {},
    });
    handlers.runExpertsStream(call as never);
    expect(vi.getTimerCount()).toBe(1); // the call's deadline
    call.emit("cancelled");
    expect(vi.getTimerCount()).toBe(0);
    expect(call.listenerCount("drain")).toBe(0);
  });
});

describe("ExpertBatch.cancel", () => {
  const cancelOnly = (ids: bigint[]) => ExpertBatch.fromPartial({ cancel: ids });

  // Batch 1 (one row) runs 200 ms; 2 and 3 wait behind it. Cancelling 2 answers it CANCELLED without running it;
  // the cancel-only messages get no reply of their own, and an id unknown on this connection changes nothing.
  const expectCancelled = (got: Map<bigint, ExpertResult>, runs: { rows: number }) => {
    expect([...got.keys()].sort()).toEqual([1n, 2n, 3n]);
    expect(got.get(1n)?.output?.shape).toEqual([1, D]);
    expect(got.get(2n)?.error?.code).toBe(status.CANCELLED);
    expect(got.get(2n)?.error?.message).toMatch(/batch 2 cancelled by the router \(ExpertBatch.cancel\)/);
    expect(got.get(3n)?.output?.shape).toEqual([3, D]);
    expect(runs.rows).toBe(1 + 3); // batch 2's rows never reached the backend
  };

  it("on RunExpertsStream", async () => {
    const w = await serve({ slowOneRow: true });
    try {
      expect(
        (await new Promise<WorkerStatus>((res, rej) => w.client.status({}, (e, st) => (e ? rej(e) : res(st))))).cancels,
      ).toBe(true);
      const s = w.client.runExpertsStream();
      const got = new Map<bigint, ExpertResult>();
      const done = new Promise<void>((resolve, reject) => {
        s.on("data", (r: ExpertResult) => got.set(r.batchId, r));
        s.on("end", resolve);
        s.on("error", reject);
      });
      s.write(batch(1, 1n));
      s.write(batch(2, 2n));
      s.write(batch(3, 3n));
      s.write(cancelOnly([2n, 99n]));
      s.end();
      await done;
      expectCancelled(got, w.counter);
    } finally {
      w.close();
    }
  });

  it("on the data path", async () => {
    const w = await serve({ slowOneRow: true });
    const data = await startDataServer(w.core, w.metrics, {
      host: "127.0.0.1",
      port: 0,
      maxMessageBytes: 64 << 20,
      log: () => {},
    });
    const sock = connect({ host: "127.0.0.1", port: data.port });
    try {
      await once(sock, "connect");
      const got = new Map<bigint, ExpertResult>();
      const reader = new FrameReader(64 << 20, false, (f) => {
        const r = ExpertResult.decode(f);
        got.set(r.batchId, r);
      });
      sock.on("data", (c: Buffer) => reader.push(c));
      sock.write(DATA_PREFACE);
      for (const b of [batch(1, 1n), batch(2, 2n), batch(3, 3n), cancelOnly([2n, 99n])])
        writeFrame(sock, ExpertBatch.encode(b).finish());
      const end = Date.now() + 10_000;
      while (got.size < 3 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setTimeout(r, 50)); // a reply to the cancel-only message would come by now
      expectCancelled(got, w.counter);
    } finally {
      sock.destroy();
      await data.close();
      w.close();
    }
  });
});
