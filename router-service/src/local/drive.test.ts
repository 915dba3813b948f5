// drive() against routers that misbehave: one that takes requests and never answers (stopped, wedged), and one that
// answers with fewer values than asked for. Fake data-path routers on plain TCP, so the misbehaviour is exact.

import { createServer, type Server, type Socket } from "node:net";
import {
  DType,
  encodeTensor,
  ForwardRequest,
  ForwardResponse,
  FrameReader,
  ROUTER_DATA_PREFACE,
  writeFrame,
} from "@switchyard/protocol";
import { afterEach, describe, expect, it } from "vitest";
import { type CheckJob, DriveStats, drive, replyShapeProblem, withDeadline } from "./drive.js";
import { DEFAULT_TRAFFIC } from "./loadgen.js";

const D = 8;

/** A router's data path that reads requests and answers each with `answer(req)`, or never where that is null. */
async function fakeRouter(answer: (req: ForwardRequest) => ForwardResponse | null): Promise<Server> {
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => {});
    const reader = new FrameReader(1 << 20, ROUTER_DATA_PREFACE, (f) => {
      const res = answer(ForwardRequest.decode(f));
      if (res) writeFrame(s, ForwardResponse.encode(res).finish());
    });
    s.on("data", (c: Buffer) => reader.push(c));
  });
  server.on("close", () => {
    for (const s of sockets) s.destroy();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return server;
}

const portOf = (s: Server) => (s.address() as { port: number }).port;

function options(server: Server, ms: number, requestTimeoutMs: number) {
  const addr = `127.0.0.1:${portOf(server)}`;
  return {
    routerAddresses: [addr],
    routerDataAddresses: [addr],
    routerNames: ["router"],
    sequences: [0, 1],
    layers: [0, 1],
    hidden: D,
    dtype: DType.FLOAT32,
    prefill: 2,
    traffic: { ...DEFAULT_TRAFFIC, vocab: 16, hidden: D, seed: 1 },
    endAtEpochMs: Date.now() + ms,
    requestTimeoutMs,
  };
}

describe("drive() against a misbehaving router", () => {
  let server: Server | undefined;
  afterEach(() => {
    server?.close();
    server = undefined;
  });

  it("a router that never answers: each request fails at its deadline naming the router, and the load ends", async () => {
    const seen: ForwardRequest[] = [];
    server = await fakeRouter((req) => {
      seen.push(req);
      return null;
    });
    const stats = new DriveStats();
    const t0 = performance.now();
    await drive(options(server, 200, 300), { wantsCheck: () => true, check: () => {} }, stats);
    // 300 ms deadline + the client's grace for the router's own DEADLINE_EXCEEDED; not forever
    expect(performance.now() - t0).toBeLessThan(10_000);
    expect(stats.errors).toBe(2); // one per sequence: a failed sequence stops
    expect(stats.errorSamples[0]).toMatch(
      /^router \(data path 127\.0\.0\.1:\d+\): no reply within 2300 ms; is it stuck\?/,
    );
    // the router is told the deadline too, and keeps it on its side
    expect(seen.map((r) => r.timeoutMs)).toEqual([300, 300]);
  }, 15_000);

  it("a shortened answer is an error, not an answer to check", async () => {
    server = await fakeRouter((req) => {
      const n = req.hidden?.shape[0] ?? 0;
      // one token's values fewer than asked for, its shape claiming all of them
      return {
        requestId: req.requestId,
        hidden: { ...encodeTensor(new Float32Array((n - 1) * D), [n - 1, D], DType.FLOAT32), shape: [n, D] },
        stats: undefined,
        error: undefined,
      };
    });
    const stats = new DriveStats();
    const jobs: CheckJob[] = [];
    await drive(options(server, 200, 5000), { wantsCheck: () => true, check: (j) => jobs.push(j) }, stats);
    expect(jobs).toEqual([]);
    expect(stats.errors).toBe(2);
    expect(stats.errorSamples[0]).toMatch(
      /^router \(data path [^)]+\): the router answered hidden \[2, 8\] with 32 bytes/,
    );
  });
});

describe("replyShapeProblem", () => {
  const reply = (values: number, shape: number[], dtype = DType.FLOAT32): ForwardResponse => ({
    requestId: 1n,
    hidden: { ...encodeTensor(new Float32Array(values), [values], dtype), shape },
    stats: undefined,
    error: undefined,
  });
  it("passes an [n, d] answer of n * d values, and names every other", () => {
    expect(replyShapeProblem(reply(6, [2, 3]), 2, 3)).toBeNull();
    expect(replyShapeProblem(reply(6, [2, 3], DType.BFLOAT16), 2, 3)).toBeNull();
    expect(replyShapeProblem(reply(0, [0, 3]), 2, 3)).toBe(
      "the router answered hidden of shape [0, 3] for a request of [2, 3]",
    );
    expect(replyShapeProblem(reply(3, [2, 3]), 2, 3)).toMatch(/12 bytes of data, expected 24/);
    expect(replyShapeProblem(reply(6, [6]), 2, 3)).toMatch(/shape \[6\]/);
    expect(replyShapeProblem({ ...reply(0, []), hidden: undefined }, 2, 3)).toMatch(/no hidden states/);
  });
});

describe("withDeadline", () => {
  it("answers a send the channel never answers with DEADLINE_EXCEEDED naming the router, and leaves a prompt one", async () => {
    const never = { send: () => new Promise<ForwardResponse>(() => {}), end: () => {} };
    const req = { pool: "p", layer: 0, hidden: undefined, gate: undefined, requestId: 7n };
    const r = await withDeadline(never, 50, "router1").send(req);
    expect(r.error).toEqual({ code: 4, message: "router1: no reply within 50 ms; is it stuck?" });
    const ok: ForwardResponse = { requestId: 7n, hidden: undefined, stats: undefined, error: undefined };
    const prompt = { send: async () => ok, end: () => {} };
    expect(await withDeadline(prompt, 50, "router1").send(req)).toBe(ok);
  });
});
