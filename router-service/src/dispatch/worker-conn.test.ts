// WorkerConn's two paths against a fake worker over real sockets: the data path once Status offers it and it is
// connected, the gRPC stream before that and with transport "grpc", a broken data path failing only its own batches
// (UNAVAILABLE naming the path) and the next batches taking the gRPC stream, a refused data port costing nothing.
// Then its health: batch timeouts and retryable error replies take it out of replica choice until a batch succeeds
// (a Status poll does not vouch for batches), a stalled data path is reset, a data port that closes before answering
// backs off.

import { createServer, Socket } from "node:net";
import {
  DType,
  type ExpertResult,
  encodeTensor,
  invalidArgument,
  isSwitchyardError,
  unavailable,
} from "@switchyard/protocol";
import { afterEach, describe, expect, it, vi } from "vitest";
import { FakeWorker } from "../testing/fake-worker.js";
import { encodeExpertBatch } from "../wire/encode.js";
import { hostOf, WorkerConn, type WorkerTransport } from "./worker-conn.js";

const D = 16;
const rows = Float32Array.from({ length: 2 * D }, (_, i) => i * 0.5 - 3);
const tokens = encodeTensor(rows, [2, D], DType.FLOAT32);

let worker: FakeWorker | null = null;
let conn: WorkerConn | null = null;
afterEach(() => {
  vi.restoreAllMocks();
  conn?.close();
  worker?.stop();
  conn = null;
  worker = null;
});

async function setup(
  transport: WorkerTransport = "auto",
  expert: ConstructorParameters<typeof FakeWorker>[0]["expert"] = null,
  cancels = false,
) {
  worker = new FakeWorker({ id: "w0", expert, cancels });
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

const send = (
  c: WorkerConn,
  timeoutMs = 5000,
  check?: Parameters<WorkerConn["run"]>[5],
  onId?: (batchId: number) => void,
): Promise<ExpertResult> =>
  c.run(
    (batchId) => {
      onId?.(Number(batchId));
      return encodeExpertBatch(
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
      );
    },
    0,
    [1],
    timeoutMs,
    2,
    check,
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

  it("turns TCP keepalive on for the data path (a NAT that drops it silently)", async () => {
    const keepAlive = vi.spyOn(Socket.prototype, "setKeepAlive");
    const { conn } = await setup();
    await onDataPath(conn);
    expect(keepAlive).toHaveBeenCalledWith(true, 30_000);
  });
});

describe("WorkerConn health", () => {
  it("a batch timeout is a latency sample of the time waited (a stalled worker looks slow), not a way out of choice", async () => {
    const { worker, conn } = await setup("grpc");
    await conn.refreshStatus();
    expect(echoed(await send(conn))).toBe(true);
    worker.mode = "stall";
    const before = conn.latencyMs;
    const err = await send(conn, 100).catch((e) => e);
    expect(isSwitchyardError(err, "DEADLINE_EXCEEDED")).toBe(true);
    expect(conn.outstandingTokens).toBe(0);
    expect(conn.latencyMs).toBeGreaterThan(before + 10); // 0.2 of a ~100 ms sample
    // still a candidate: with one replica, taking it out would fail every request meanwhile
    expect(conn.healthy).toBe(true);
  });

  it("after two timeouts in a row the stalled data path is reset and the next batch takes the gRPC stream", async () => {
    const { worker, conn } = await setup();
    await onDataPath(conn);
    worker.mode = "stall";
    for (let i = 0; i < 2; i++) {
      const err = await send(conn, 100).catch((e) => e);
      expect(isSwitchyardError(err, "DEADLINE_EXCEEDED")).toBe(true);
    }
    expect(conn.usingDataPath).toBe(false);
    worker.mode = "ok";
    const dataBefore = worker.dataBatches;
    expect(echoed(await send(conn))).toBe(true);
    expect(worker.dataBatches).toBe(dataBefore); // the data path backs off: gRPC carried it
    expect(conn.healthy).toBe(true);
  });

  for (const transport of ["grpc", "auto"] as const)
    it(`batches sent on a new path before its first reply are no latency sample, later ones are (${transport})`, async () => {
      const { conn } = await setup(transport);
      await conn.refreshStatus();
      // a wave on the fresh gRPC stream (auto: the data path connects meanwhile)
      await Promise.all([0, 1, 2, 3].map(() => send(conn)));
      expect(conn.latencyMs).toBe(0);
      expect(conn.latencyAgeMs).toBe(Number.POSITIVE_INFINITY); // still the oldest: a tie sends it the next batch
      if (transport === "auto") {
        expect(conn.usingDataPath).toBe(true);
        await Promise.all([0, 1, 2, 3].map(() => send(conn))); // a wave on the fresh data path
        expect(conn.latencyMs).toBe(0);
      }
      await send(conn);
      expect(conn.latencyMs).toBeGreaterThan(0);
      expect(conn.latencyAgeMs).toBeLessThan(1000);
    });

  it("a retryable error reply doubles the latency average (a fast error must not make it look fastest)", async () => {
    let failing = false;
    const { conn } = await setup("grpc", (_l, _e, x) => {
      if (failing) throw unavailable("expert not loadable");
      return x;
    });
    await conn.refreshStatus();
    await send(conn); // the path's first batch: no sample
    await send(conn);
    const latency = conn.latencyMs;
    expect(latency).toBeGreaterThan(0);
    failing = true;
    for (let i = 1; i <= 3; i++) {
      const err = await send(conn).catch((e) => e);
      expect(isSwitchyardError(err, "UNAVAILABLE")).toBe(true);
      expect(conn.latencyMs).toBeCloseTo(Math.max(latency, 1) * 2 ** i, 6);
    }
    expect(conn.healthy).toBe(true);
    failing = false;
    await send(conn);
    expect(conn.latencyMs).toBeLessThan(Math.max(latency, 1) * 8); // a success brings it back down
  });

  it("failing: set by an error reply the router retries elsewhere, not by a caller's short deadline; cleared by a success", async () => {
    let refuse = false;
    const { worker, conn } = await setup("grpc", (_l, _e, x) => {
      if (refuse) throw invalidArgument("tokens.shape[1]", "expected hidden size 16, got 8");
      return x;
    });
    await conn.refreshStatus();
    await send(conn);
    expect(conn.failing).toBe(false);
    worker.mode = "stall";
    await send(conn, 50).catch(() => {}); // the caller's 50 ms passed: not the worker's failing
    expect(conn.failing).toBe(false);
    worker.mode = "ok";
    refuse = true;
    const err = await send(conn).catch((e) => e);
    expect(isSwitchyardError(err, "INVALID_ARGUMENT")).toBe(true);
    expect(conn.failing).toBe(true);
    refuse = false;
    await send(conn);
    expect(conn.failing).toBe(false);
  });

  it("tells the replica choice how old its latency average is: a sample or a failure makes it fresh", async () => {
    const { conn } = await setup("grpc");
    await conn.refreshStatus();
    // never sampled: the oldest, so that a tie sends it a batch (it read 0 and lost every tie to sampled copies)
    expect(conn.latencyAgeMs).toBe(Number.POSITIVE_INFINITY);
    await send(conn);
    await new Promise((r) => setTimeout(r, 60));
    expect(conn.latencyAgeMs).toBeGreaterThanOrEqual(50);
    await send(conn);
    expect(conn.latencyAgeMs).toBeLessThan(50);
    conn.latencyMs = 7; // staged as a sample now (tests, tools)
    expect(conn.latencyMs).toBe(7);
    expect(conn.latencyAgeMs).toBeLessThan(50);
  });

  it("abandon() settles a batch no request waits for: CANCELLED, its tokens and entry gone, a late reply dropped", async () => {
    const { worker, conn } = await setup("grpc");
    await conn.refreshStatus();
    await send(conn);
    const avg = conn.latencyMs;
    worker.mode = "hang";
    let id = 0;
    const out = send(conn, 3_600_000, undefined, (i) => {
      id = i;
    }).catch((e) => e);
    expect(conn.outstandingTokens).toBe(2);
    conn.abandon(id);
    expect(isSwitchyardError(await out, "CANCELLED")).toBe(true);
    expect(conn.outstandingTokens).toBe(0);
    expect((conn as unknown as { pending: Map<number, unknown> }).pending.size).toBe(0); // holds none of its rows
    expect(conn.latencyMs).toBe(avg); // a wait shorter than the average says nothing about the worker
    expect(conn.failing).toBe(false);
    conn.abandon(id); // settled already: nothing happens
    worker.mode = "ok";
    await send(conn); // the connection is fine, the batch id space moves on
    expect(conn.outstandingTokens).toBe(0);
  });

  for (const transport of ["grpc", "auto"] as const)
    it(`abandon() tells a worker whose Status sets cancels, on the batch's own path (${transport}): the tick's ids in one message`, async () => {
      const { worker, conn } = await setup(transport, null, true);
      await conn.refreshStatus();
      await send(conn); // the data path (auto) is up once a batch has gone
      expect(conn.usingDataPath).toBe(transport === "auto");
      worker.mode = "hang";
      const dataBefore = worker.dataBatches;
      const ids: number[] = [];
      const outs = [0, 1].map(() => send(conn, 3_600_000, undefined, (id) => ids.push(id)).catch((e) => e));
      await new Promise((r) => setTimeout(r, 50)); // both batches are at the worker
      for (const id of ids) conn.abandon(id);
      for (const o of outs) expect(isSwitchyardError(await o, "CANCELLED")).toBe(true);
      const end = Date.now() + 5000;
      while (worker.cancelled.length < 2 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
      expect(worker.cancelled).toEqual(ids.map(BigInt));
      expect(worker.cancelMessages).toBe(1);
      // on the data path: the two batches and the cancel went there; on gRPC, none did
      expect(worker.dataBatches - dataBefore).toBe(transport === "auto" ? 3 : 0);
    });

  it("abandon() sends no cancel to a worker whose Status does not offer it (an older worker)", async () => {
    const { worker, conn } = await setup("grpc");
    await conn.refreshStatus();
    worker.mode = "hang";
    let id = 0;
    const out = send(conn, 3_600_000, undefined, (i) => {
      id = i;
    }).catch((e) => e);
    await new Promise((r) => setTimeout(r, 50));
    conn.abandon(id);
    expect(isSwitchyardError(await out, "CANCELLED")).toBe(true);
    await new Promise((r) => setTimeout(r, 50));
    expect(worker.cancelled).toEqual([]);
  });

  it("a reply the caller's check refuses rejects with its error and counts as a failed batch, not a latency sample", async () => {
    const { conn } = await setup("grpc");
    await conn.refreshStatus();
    await send(conn);
    const latency = conn.latencyMs;
    const refused = unavailable("output: 1 row, expected 2");
    const err = await send(conn, 5000, () => refused).catch((e) => e);
    expect(err).toBe(refused);
    expect(conn.latencyMs).toBeCloseTo(Math.max(latency, 1) * 2, 6);
    expect(conn.outstandingTokens).toBe(0);
  });

  it("three failed Status polls in a row give up the batches sent before the last one (a silently dead worker)", async () => {
    const { worker, conn } = await setup();
    await onDataPath(conn);
    worker.mode = "stall"; // no answers to batches, Status refused
    const early = send(conn, 60_000).catch((e) => e);
    await conn.refreshStatus();
    await conn.refreshStatus();
    expect(conn.outstandingTokens).toBe(2); // two polls: still waiting
    const third = conn.refreshStatus();
    const late = send(conn, 60_000).catch((e) => e); // sent after the third poll began: not given up by it
    await third;
    const err = await early;
    expect(isSwitchyardError(err, "UNAVAILABLE")).toBe(true);
    expect(err.message).toMatch(/w0 .*answered no Status poll 3 times in a row/);
    // the late batch went on the data path, which the give-up reset: it fails there, as a broken path's batches do
    const lateErr = await late;
    expect(isSwitchyardError(lateErr, "UNAVAILABLE")).toBe(true);
    expect(conn.usingDataPath).toBe(false);
    expect(conn.outstandingTokens).toBe(0);
    expect(conn.healthy).toBe(false);
  });

  it("a Status poll that answers clears the count: two failures, an answer, two more give nothing up", async () => {
    const { worker, conn } = await setup("grpc");
    await conn.refreshStatus();
    worker.mode = "stall";
    const pending = send(conn, 60_000).catch((e) => e);
    await conn.refreshStatus();
    await conn.refreshStatus();
    worker.mode = "ok"; // Status answers again (the stalled batch stays unanswered)
    await conn.refreshStatus();
    worker.mode = "stall";
    await conn.refreshStatus();
    await conn.refreshStatus();
    expect(conn.outstandingTokens).toBe(2);
    conn.close();
    expect(isSwitchyardError(await pending, "UNAVAILABLE")).toBe(true);
  });

  it("a data port out of range is no data path: the batches take the gRPC stream, not a throw each", async () => {
    const { worker, conn } = await setup();
    worker.dataPort = 70_000;
    await conn.refreshStatus();
    for (let i = 0; i < 3; i++) expect(echoed(await send(conn))).toBe(true);
    expect(worker.dataBatches).toBe(0);
    expect(conn.healthy).toBe(true);
  });

  it("a data port that closes before its first reply backs off instead of reconnecting per batch", async () => {
    let accepts = 0;
    const bad = createServer((s) => {
      accepts++;
      s.end();
    });
    await new Promise<void>((r) => bad.listen(0, "127.0.0.1", r));
    try {
      const { worker, conn } = await setup();
      worker.dataPort = (bad.address() as { port: number }).port;
      await conn.refreshStatus();
      for (let i = 0; i < 10; i++) {
        expect(echoed(await send(conn))).toBe(true);
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(accepts).toBe(1);
    } finally {
      bad.close();
    }
  });

  it("its re-armed Status timer does not keep the process alive", async () => {
    worker = new FakeWorker({ id: "w0", expert: null });
    const port = await worker.start();
    conn = new WorkerConn({ id: "w0", address: `127.0.0.1:${port}`, statusIntervalMs: 10 });
    const c = conn;
    await until(() => c.lastStatus !== null, "the first Status");
    await new Promise((r) => setTimeout(r, 30)); // re-armed at least once
    const timer = (c as unknown as { statusTimer: NodeJS.Timeout }).statusTimer;
    expect(timer.hasRef()).toBe(false);
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
