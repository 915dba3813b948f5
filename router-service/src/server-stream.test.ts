import { EventEmitter } from "node:events";
import { connect } from "node:http2";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { DType, encodeTensor, ForwardRequest, ForwardResponse } from "@switchyard/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CallerScope } from "./caller-scope.js";
import { requestCounter } from "./reply.js";
import type { Router } from "./router.js";
import { ROUTER_SERVICE, raiseServerWindow, routerHandlers, SERVER_OPTIONS } from "./server.js";
import { startTestRouter, type TestRouter } from "./testing/test-router.js";

const D = 16;

const request = (T: number, requestId: bigint): ForwardRequest => ({
  pool: "p",
  layer: 0,
  hidden: encodeTensor(new Float32Array(T * D).fill(0.25), [T, D], DType.FLOAT32),
  gate: undefined,
  requestId,
});

describe("ForwardStream with a client that does not read its replies", () => {
  let t: TestRouter;
  let server: Server;
  let port: number;

  beforeAll(async () => {
    t = await startTestRouter({
      hidden: D,
      experts: 4,
      expert: (_l, e, x) => x.map((v) => (e + 1) * v),
      policy: { batching: { maxQueueTokens: 1 << 22 } },
    });
    server = new Server(SERVER_OPTIONS);
    raiseServerWindow(server);
    server.addService(
      ROUTER_SERVICE,
      routerHandlers(t.app.router, requestCounter(t.app.router), { maxInFlight: 4, maxQueuedReplyBytes: 2 << 20 }),
    );
    port = await new Promise<number>((res, rej) =>
      server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))),
    );
  });
  afterAll(async () => {
    server?.forceShutdown();
    await t?.close();
  });

  const answered = async () => {
    const text = await t.app.router.metrics.registry.getSingleMetricAsString("switchyard_router_requests_total");
    return [...text.matchAll(/^switchyard_router_requests_total\{([^}]*)\} (\S+)$/gm)]
      .filter((m) => m[1]?.includes('method="ForwardStream"'))
      .reduce((a, m) => a + Number(m[2]), 0);
  };

  it("stops taking its requests while its replies pile up in the router, and serves it once it reads", async () => {
    // 60 requests of 1 MiB whose 1 MiB replies the client leaves unread. A grpc-js client buffers every reply it
    // is sent whether or not it is read, so this one is plain HTTP/2: its paused stream stops granting flow-control
    // window, and without backpressure all 60 MiB of replies would wait in the router's memory.
    const N = 60;
    const T = 16384;
    // Room for all 60 MiB of requests queued in the session while the router does not take them.
    const session = connect(`http://127.0.0.1:${port}`, { maxSessionMemory: 1024 });
    session.on("error", () => {});
    try {
      const call = session.request({
        ":method": "POST",
        ":path": "/switchyard.v1.Router/ForwardStream",
        "content-type": "application/grpc",
        te: "trailers",
      });
      call.on("error", () => {});
      call.pause();
      const before = await answered();
      for (let i = 0; i < N; i++) {
        const body = ForwardRequest.encode(request(T, BigInt(i + 1))).finish();
        const head = Buffer.alloc(5);
        head.writeUInt32BE(body.byteLength, 1);
        call.write(Buffer.concat([head, body]));
      }
      // The count while the client reads nothing, once it has stopped moving (or has reached them all).
      let whileUnread = (await answered()) - before;
      for (let still = 0, until = Date.now() + 15_000; still < 3 && whileUnread < N && Date.now() < until; ) {
        await new Promise((r) => setTimeout(r, 300));
        const now = (await answered()) - before;
        still = now === whileUnread && now > 0 ? still + 1 : 0;
        whileUnread = now;
      }
      expect(whileUnread).toBeGreaterThan(0);
      expect(whileUnread).toBeLessThan(N);
      // Reading now: every request is answered, its reply whole.
      const replies: ForwardResponse[] = [];
      let buf = Buffer.alloc(0);
      call.on("data", (c: Buffer) => {
        buf = Buffer.concat([buf, c]);
        while (buf.length >= 5 && buf.length >= 5 + buf.readUInt32BE(1)) {
          const n = buf.readUInt32BE(1);
          replies.push(ForwardResponse.decode(buf.subarray(5, 5 + n)));
          buf = buf.subarray(5 + n);
        }
      });
      const ended = new Promise((r) => call.on("end", r));
      call.end();
      call.resume();
      await ended;
      expect(replies.map((r) => r.error?.message ?? r.hidden?.shape.join("x"))).toEqual(
        Array.from({ length: N }, () => `${T}x${D}`),
      );
      expect(replies.map((r) => r.requestId).sort((a, b) => Number(a - b))).toEqual(
        Array.from({ length: N }, (_, i) => BigInt(i + 1)),
      );
    } finally {
      session.close();
    }
  }, 40_000);
});

describe("ForwardStream that fails", () => {
  it("cancels its requests still in the router (nothing more can be answered on it)", () => {
    const scopes: CallerScope[] = [];
    const router = {
      forward: (_req: ForwardRequest, _deadline: number, scope: CallerScope) => {
        scopes.push(scope);
        return new Promise<ForwardResponse>(() => {}); // still queued
      },
    } as unknown as Router;
    const call = Object.assign(new EventEmitter(), {
      cancelled: false,
      getDeadline: () => Number.POSITIVE_INFINITY,
      write: () => true,
      end: () => {},
      pause: () => {},
      resume: () => {},
    });
    routerHandlers(router, () => {}).forwardStream(call as never);
    call.emit("data", request(1, 1n));
    expect(scopes[0]?.closed).toBe(false);
    call.emit("error", new Error("Error deserializing request"));
    expect(scopes[0]?.closed).toBe(true);
  });
});
