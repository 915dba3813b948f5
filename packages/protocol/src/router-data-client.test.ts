import { once } from "node:events";
import { createServer, type Socket } from "node:net";
import { describe, expect, it } from "vitest";
import { FrameReader, ROUTER_DATA_PREFACE, writeFrame } from "./data-path.js";
import { ForwardRequest, ForwardResponse } from "./gen/switchyard/v1/router.js";
import { DType } from "./gen/switchyard/v1/tensor.js";
import { RouterDataClient } from "./router-data-client.js";

const request = (bytes: number, requestId = 5n): ForwardRequest => ({
  pool: "p",
  layer: 0,
  hidden: { dtype: DType.FLOAT32, shape: [bytes / 64, 16], data: Buffer.alloc(bytes) },
  gate: undefined,
  requestId,
});

/** A server speaking the router's data path: it answers each request with an empty reply to its id, once told to read. */
async function stubRouter() {
  let conn: Socket | null = null;
  let reading = false;
  const server = createServer((s) => {
    conn = s;
    if (!reading) s.pause(); // not reading until the test says so
    const reader = new FrameReader(1 << 30, ROUTER_DATA_PREFACE, (f) => {
      const req = ForwardRequest.decode(f);
      writeFrame(s, ForwardResponse.encode({ requestId: req.requestId, hidden: undefined, stats: undefined }).finish());
    });
    s.on("data", (c: Buffer) => reader.push(c));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    port: (server.address() as { port: number }).port,
    read: () => {
      reading = true;
      conn?.resume();
    },
    close: () => {
      conn?.destroy();
      server.close();
    },
  };
}

describe("RouterDataClient", () => {
  it("refuses a request over the message limit alone, naming hidden; the connection and the others carry on", async () => {
    const stub = await stubRouter();
    stub.read();
    const c = new RouterDataClient("127.0.0.1", stub.port, { maxMessageBytes: 1 << 20 });
    try {
      const small = c.forward(request(64, 1n));
      const big = await c.forward(request(2 << 20, 2n)).catch((e) => e);
      expect(big.field).toBe("hidden");
      expect(big.message).toMatch(/over the data path's 1048576-byte message limit/);
      expect((await small).requestId).toBe(1n);
      expect((await c.forward(request(64, 3n))).requestId).toBe(3n);
    } finally {
      c.close();
      stub.close();
    }
  });

  it("keeps its queue of unsent requests bounded while the router does not read, and sends it all once it does", async () => {
    const stub = await stubRouter();
    const c = new RouterDataClient("127.0.0.1", stub.port, { maxQueuedBytes: 2 << 20 });
    try {
      const calls = Array.from({ length: 60 }, (_, i) => c.forward(request(1 << 20, BigInt(i))));
      await new Promise((r) => setTimeout(r, 300));
      // the kernel's buffers hold some; past them the client queues at most its limit plus one request
      expect(c.queuedBytes).toBeLessThanOrEqual((2 << 20) + (1 << 20) + 4096);
      expect(c.inFlight).toBeLessThan(60);
      stub.read();
      const replies = await Promise.all(calls);
      expect(replies.map((r) => r.requestId)).toEqual(Array.from({ length: 60 }, (_, i) => BigInt(i)));
    } finally {
      c.close();
      stub.close();
    }
  });

  it("matches replies to the callers' own ids, which need not be unique", async () => {
    const stub = await stubRouter();
    stub.read();
    const c = new RouterDataClient("127.0.0.1", stub.port);
    try {
      const replies = await Promise.all([1, 2, 3].map(() => c.forward(request(64, 7n))));
      expect(replies.map((r) => r.requestId)).toEqual([7n, 7n, 7n]);
      expect(c.inFlight).toBe(0);
    } finally {
      c.close();
      stub.close();
    }
  });

  it("fails what is in flight and every later call once the connection is gone", async () => {
    const stub = await stubRouter(); // never reads, never answers
    const c = new RouterDataClient("127.0.0.1", stub.port);
    const pending = c.forward(request(64));
    await new Promise((r) => setTimeout(r, 50));
    stub.close();
    await expect(pending).rejects.toThrow(/connection closed|ECONNRESET/);
    await expect(c.forward(request(64))).rejects.toThrow(/router data path/);
  });

  it("rejects a request it cannot encode without counting it in flight, and serves the next", async () => {
    const stub = await stubRouter();
    stub.read();
    const c = new RouterDataClient("127.0.0.1", stub.port);
    try {
      const bad = request(64);
      (bad.hidden as { data: unknown }).data = undefined;
      await expect(c.forward(bad)).rejects.toThrow();
      expect(c.inFlight).toBe(0);
      expect((await c.forward(request(64, 9n))).requestId).toBe(9n);
      expect(c.inFlight).toBe(0);
    } finally {
      c.close();
      stub.close();
    }
  });
});
