// WorkerConn's two paths against a fake worker over real sockets: the data path once Status offers it and it is
// connected, the gRPC stream before that and with transport "grpc", a broken data path failing only its own batches
// (UNAVAILABLE naming the path) and the next batches taking the gRPC stream, a refused data port costing nothing.

import { DType, type ExpertResult, encodeTensor, isSwitchyardError } from "@switchyard/protocol";
import { afterEach, describe, expect, it } from "vitest";
import { FakeWorker } from "../testing/fake-worker.js";
import { encodeExpertBatch } from "../wire/encode.js";
import { hostOf, WorkerConn, type WorkerTransport } from "./worker-conn.js";

const D = 16;
const rows = Float32Array.from({ length: 2 * D }, (_, i) => i * 0.5 - 3);
const tokens = encodeTensor(rows, [2, D], DType.FLOAT32);

let worker: FakeWorker | null = null;
let conn: WorkerConn | null = null;
afterEach(() => {
  conn?.close();
  worker?.stop();
  conn = null;
  worker = null;
});

async function setup(transport: WorkerTransport = "auto") {
  worker = new FakeWorker({ id: "w0", expert: null });
  const port = await worker.start();
  conn = new WorkerConn({
    id: "w0",
    address: `127.0.0.1:${port}`,
    statusIntervalMs: 0,
    transport,
    dataRetryMs: 60_000,
  });
  return { worker, conn };
}

const send = (c: WorkerConn, timeoutMs = 5000): Promise<ExpertResult> =>
  c.run(
    (batchId) =>
      encodeExpertBatch(
        {
          pool: "p",
          layer: 0,
          dtype: DType.FLOAT32,
          rows: 2,
          hidden: D,
          rowBytes: D * 4,
          slices: [{ expert: 1, offset: 0, count: 2 }],
          batchId,
          timeoutMs,
        },
        (dst, at) => dst.set(tokens.data, at),
      ),
    0,
    [1],
    timeoutMs,
    2,
  );

const echoed = (r: ExpertResult) => Buffer.from(r.output!.data).equals(Buffer.from(tokens.data));

async function until(cond: () => boolean, what: string): Promise<void> {
  const end = Date.now() + 5000;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Status, then one batch (it takes the gRPC stream and starts the data-path connect), then connected. */
async function onDataPath(c: WorkerConn): Promise<void> {
  await c.refreshStatus();
  expect(echoed(await send(c))).toBe(true);
  await until(() => c.usingDataPath, "the data path to connect");
}

describe("WorkerConn paths", () => {
  it("uses the gRPC stream until Status offers the data path, then the data path", async () => {
    const { worker, conn } = await setup();
    expect(echoed(await send(conn))).toBe(true);
    expect(conn.usingDataPath).toBe(false);
    await onDataPath(conn);
    expect(worker.dataBatches).toBe(0); // both batches so far took the gRPC stream
    const rs = await Promise.all([send(conn), send(conn), send(conn)]);
    expect(rs.every(echoed)).toBe(true);
    expect(worker.batches).toBe(5);
    expect(worker.dataBatches).toBe(3);
    expect(conn.outstandingTokens).toBe(0);
  });

  it('stays on the gRPC stream with transport "grpc"', async () => {
    const { worker, conn } = await setup("grpc");
    await conn.refreshStatus();
    expect(echoed(await send(conn))).toBe(true);
    await new Promise((r) => setTimeout(r, 50));
    expect(echoed(await send(conn))).toBe(true);
    expect(conn.usingDataPath).toBe(false);
    expect(worker.dataBatches).toBe(0);
  });

  it("a broken data path fails its own batches with UNAVAILABLE and the next ones take the gRPC stream", async () => {
    const { worker, conn } = await setup();
    await onDataPath(conn);
    worker.mode = "stall";
    const inFlight = send(conn);
    await until(() => worker.dataBatches === 1, "the batch to arrive over the data path");
    worker.dropDataConnections();
    const err = await inFlight.catch((e) => e);
    expect(isSwitchyardError(err, "UNAVAILABLE")).toBe(true);
    expect(err.message).toMatch(/worker w0 .*data path 127\.0\.0\.1:\d+ (failed|ended)/);
    expect(conn.outstandingTokens).toBe(0);
    expect(conn.healthy).toBe(false); // it broke under a batch: down until the next Status
    await conn.refreshStatus();
    worker.mode = "ok";
    expect(echoed(await send(conn))).toBe(true);
    expect(conn.usingDataPath).toBe(false);
    expect(worker.dataBatches).toBe(1);
  });

  it("a refused data port costs no batch and no health: the gRPC stream carries on", async () => {
    const { worker, conn } = await setup();
    await conn.refreshStatus();
    await worker.closeDataPort();
    const rs = [];
    for (let i = 0; i < 5; i++) {
      rs.push(await send(conn));
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(rs.every(echoed)).toBe(true);
    expect(conn.usingDataPath).toBe(false);
    expect(conn.healthy).toBe(true);
    expect(worker.dataBatches).toBe(0);
    expect(worker.batches).toBe(5);
  });

  it("a worker that stops answering on the data path ends in DEADLINE_EXCEEDED at the batch timeout", async () => {
    const { worker, conn } = await setup();
    await onDataPath(conn);
    worker.mode = "stall";
    const err = await send(conn, 100).catch((e) => e);
    expect(isSwitchyardError(err, "DEADLINE_EXCEEDED")).toBe(true);
    expect(conn.usingDataPath).toBe(true);
  });
});

describe("hostOf", () => {
  it.each([
    ["127.0.0.1:50061", "127.0.0.1"],
    ["w-0.pool.ns.svc:50061", "w-0.pool.ns.svc"],
    ["[::1]:50061", "::1"],
    ["dns:///w-0.pool.ns.svc:50061", "w-0.pool.ns.svc"],
    ["dns://8.8.8.8/w-0:1", "w-0"],
    ["unix:/tmp/sock", null],
    [":50061", null],
  ])("%s -> %s", (address, host) => expect(hostOf(address)).toBe(host));
});
