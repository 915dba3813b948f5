// The worker's TCP data path (packages/protocol/src/data-path.ts) against a real worker on a generated checkpoint:
// the same answers as gRPC bit for bit, replies by batch_id, a bad batch answers alone and the connection stays up,
// protocol violations drop the connection, Status advertises the port, --data-port -1 turns it off.

import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { credentials, Metadata, status } from "@grpc/grpc-js";
import { generateCheckpoint } from "@switchyard/moe";
import {
  DATA_PREFACE,
  DType,
  ExpertBatch,
  ExpertResult,
  ExpertWorkerClient,
  encodeTensor,
  FrameReader,
  frameHeader,
  type WorkerStatus,
  writeFrame,
} from "@switchyard/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDataServer } from "./data-server.js";
import { rng, uniform } from "./testing.js";
import { startWorker, type WorkerHandle } from "./worker.js";

const D = 32;
let dir: string;
let w: WorkerHandle;
let client: ExpertWorkerClient;

function batch(over: Partial<ExpertBatch> = {}): ExpertBatch {
  return {
    pool: "p",
    layer: 0,
    tokens: encodeTensor(uniform(5 * D, 1, rng(9)), [5, D], DType.FLOAT32),
    slices: [
      { expert: 0, offset: 0, count: 2 },
      { expert: 2, offset: 2, count: 3 },
    ],
    rowWeights: undefined,
    batchId: 1n,
    timeoutMs: 0,
    tokenRows: [],
    combine: false,
    cancel: [],
    ...over,
  };
}

/** A raw data-path client: frames out, results in, and whether the worker closed the connection. */
async function dataClient(port: number, preface = DATA_PREFACE) {
  const s: Socket = connect(port, "127.0.0.1");
  await once(s, "connect");
  const results: ExpertResult[] = [];
  const waiters: (() => void)[] = [];
  const reader = new FrameReader(1 << 24, false, (f) => {
    results.push(ExpertResult.decode(f));
    for (const r of waiters.splice(0)) r();
  });
  s.on("data", (c) => reader.push(c));
  const closed = once(s, "close");
  s.write(preface);
  return {
    socket: s,
    closed,
    send: (b: ExpertBatch) => writeFrame(s, ExpertBatch.encode(b).finish()),
    async take(n: number): Promise<ExpertResult[]> {
      while (results.length < n) await new Promise<void>((r) => waiters.push(r));
      return results.splice(0, n);
    },
  };
}

const statusOf = (c: ExpertWorkerClient) =>
  new Promise<WorkerStatus>((res, rej) =>
    c.status({}, new Metadata(), { deadline: Date.now() + 5000 }, (e, st) => (e ? rej(e) : res(st))),
  );

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "sy-worker-data-"));
  await generateCheckpoint({
    family: "mixtral",
    dir,
    layers: 1,
    experts: 4,
    hiddenSize: D,
    intermediateSize: 48,
    seed: 4,
  });
  w = await startWorker({
    checkpoint: dir,
    pool: "p",
    workerId: "w0",
    port: 0,
    metricsPort: 0,
    host: "127.0.0.1",
    backend: "cpu",
    maxMessageBytes: 64 * 1024,
    log: () => {},
  });
  await w.warmed;
  client = new ExpertWorkerClient(`127.0.0.1:${w.port}`, credentials.createInsecure());
});

afterAll(async () => {
  client?.close();
  await w?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("worker data path", () => {
  it("is advertised in Status", async () => {
    expect(w.dataPort).toBeGreaterThan(0);
    expect((await statusOf(client)).dataPort).toBe(w.dataPort);
  });

  it("answers like RunExperts over gRPC, bit for bit, matched by batch_id", async () => {
    const viaGrpc = await new Promise<ExpertResult>((res, rej) =>
      client.runExperts(batch(), (e, r) => (e ? rej(e) : res(r))),
    );
    const c = await dataClient(w.dataPort);
    c.send(batch({ batchId: 11n }));
    c.send(batch({ batchId: 12n, tokens: encodeTensor(uniform(5 * D, 1, rng(10)), [5, D], DType.FLOAT32) }));
    const got = new Map((await c.take(2)).map((r) => [r.batchId, r]));
    expect([...got.keys()].sort()).toEqual([11n, 12n]);
    expect(Buffer.from(got.get(11n)!.output!.data).equals(Buffer.from(viaGrpc.output!.data))).toBe(true);
    expect(Buffer.from(got.get(12n)!.output!.data).equals(Buffer.from(viaGrpc.output!.data))).toBe(false);
    expect(got.get(11n)!.error).toBeUndefined();
    c.socket.destroy();
  });

  it("answers a bad batch with its own error naming the field and keeps the connection", async () => {
    const c = await dataClient(w.dataPort);
    c.send(batch({ batchId: 21n, slices: [{ expert: 7, offset: 0, count: 1 }] }));
    const [bad] = await c.take(1);
    expect(bad.batchId).toBe(21n);
    expect(bad.error?.code).toBe(status.INVALID_ARGUMENT);
    expect(bad.error?.message).toMatch(/^slices\[0\]\.expert: /);
    c.send(batch({ batchId: 22n }));
    const [ok] = await c.take(1);
    expect(ok.batchId).toBe(22n);
    expect(ok.error).toBeUndefined();
    c.socket.destroy();
  });

  it("refuses on its own a batch whose result would pass the message limit (a router drops such a frame's connection)", async () => {
    // 130 distinct tokens (a 16.6 KB request), each to the 4 experts: 520 rows × 32 × 4 = 66,560 result bytes > 64 KiB
    const U = 130;
    const c = await dataClient(w.dataPort);
    c.send(
      batch({
        batchId: 41n,
        tokens: encodeTensor(uniform(U * D, 1, rng(3)), [U, D], DType.FLOAT32),
        tokenRows: Array.from({ length: 4 * U }, (_, i) => i % U),
        slices: [0, 1, 2, 3].map((e) => ({ expert: e, offset: e * U, count: U })),
      }),
    );
    c.send(batch({ batchId: 42n }));
    const got = new Map((await c.take(2)).map((r) => [r.batchId, r]));
    expect(got.get(41n)?.error?.code).toBe(status.INVALID_ARGUMENT);
    expect(got.get(41n)?.error?.message).toMatch(/^token_rows: the result would be 66560 bytes .* limit of 65536/);
    expect(got.get(42n)?.error).toBeUndefined();
    expect(got.get(42n)?.output?.shape).toEqual([5, D]);
    c.socket.destroy();
  });

  it("drops a connection that breaks the protocol (preface, frame size, malformed message)", async () => {
    const wrong = await dataClient(w.dataPort, Buffer.from("PRI * HTTP/2.0\r\n"));
    await wrong.closed;
    const big = await dataClient(w.dataPort);
    big.socket.write(frameHeader(64 * 1024 + 1));
    await big.closed;
    const junk = await dataClient(w.dataPort);
    writeFrame(junk.socket, Buffer.from([0xff, 0xff, 0xff]));
    await junk.closed;
    // The server is still up for well-behaved clients.
    const c = await dataClient(w.dataPort);
    c.send(batch({ batchId: 31n }));
    expect((await c.take(1))[0].error).toBeUndefined();
    c.socket.destroy();
  });

  it("counts its batches in /metrics under method RunExpertsData", async () => {
    const text = await w.metrics.registry.metrics();
    expect(text).toMatch(/switchyard_worker_requests_total\{method="RunExpertsData",code="OK",[^}]*\} [1-9]/);
    // the unknown expert and the oversized result above
    expect(text).toMatch(/switchyard_worker_requests_total\{method="RunExpertsData",code="INVALID_ARGUMENT",[^}]*\} 2/);
  });

  it("is off with dataPort -1 (Status says 0)", async () => {
    const off = await startWorker({
      checkpoint: dir,
      pool: "p",
      workerId: "w1",
      port: 0,
      metricsPort: 0,
      host: "127.0.0.1",
      backend: "cpu",
      dataPort: -1,
      log: () => {},
    });
    const c = new ExpertWorkerClient(`127.0.0.1:${off.port}`, credentials.createInsecure());
    try {
      expect(off.dataPort).toBe(0);
      expect((await statusOf(c)).dataPort).toBe(0);
    } finally {
      c.close();
      await off.close();
    }
  });

  it("stops reading a peer that does not read its results, and serves it once it does", async () => {
    const capped = await startDataServer(w.core, w.metrics, {
      host: "127.0.0.1",
      port: 0,
      maxMessageBytes: 64 << 20,
      maxQueuedResultBytes: 2 << 20,
      log: () => {},
    });
    const answered = async () => {
      const text = await w.metrics.registry.getSingleMetricAsString("switchyard_worker_requests_total");
      return [...text.matchAll(/^switchyard_worker_requests_total\{([^}]*)\} (\S+)$/gm)]
        .filter((m) => m[1]?.includes('method="RunExpertsData"'))
        .reduce((a, m) => a + Number(m[2]), 0);
    };
    // 40 batches of 8192 rows whose 1 MiB results the peer leaves unread: the kernel's socket buffers hold a few,
    // the worker's queue 2 MiB more, and then it must stop taking batches.
    const N = 40;
    const T = 8192;
    const s = connect({ host: "127.0.0.1", port: capped.port });
    s.on("error", () => {});
    s.pause();
    s.write(DATA_PREFACE);
    const frame = ExpertBatch.encode(
      batch({
        tokens: encodeTensor(uniform(T * D, 1, rng(5)), [T, D], DType.FLOAT32),
        slices: [{ expert: 1, offset: 0, count: T }],
      }),
    ).finish();
    const before = await answered();
    for (let i = 0; i < N; i++) writeFrame(s, frame);
    await new Promise((r) => setTimeout(r, 1500));
    const whilePaused = (await answered()) - before;
    expect(whilePaused).toBeGreaterThan(0);
    expect(whilePaused).toBeLessThan(N);
    // Reading now: every batch is answered, its result whole.
    const results: ExpertResult[] = [];
    const reader = new FrameReader(64 << 20, false, (f) => results.push(ExpertResult.decode(f)));
    s.on("data", (c: Buffer) => reader.push(c));
    s.resume();
    const end = Date.now() + 20_000;
    while (results.length < N && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    expect(results.map((r) => r.error?.message ?? r.output?.shape.join("x"))).toEqual(
      Array.from({ length: N }, () => `${T}x${D}`),
    );
    s.destroy();
    await capped.close();
  });
});
