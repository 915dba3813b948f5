// The Python client of the engines' data path (clients/python) against a real router: clients/python/tests/
// check_router.py drives it (dtypes, router logits, an assignment, 64 requests in flight from 4 threads, bad
// requests, a closed client) and prints what it sent and got; every answer is then sent again through the Node client
// and must come back byte for byte the same. Its gRPC client must answer as its data-path client does.

import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { bf16ToF32, ForwardRequest, f32ToBf16, f32ToF16, RouterDataClient } from "@switchyard/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startRouterDataServer } from "./data-server.js";
import { requestCounter } from "./reply.js";
import { findPython, PYTHON_CLIENT_DEPS, PYTHON_CLIENT_DIR } from "./testing/python-client.js";
import { startTestRouter, type TestRouter } from "./testing/test-router.js";

const run = promisify(execFile);
const D = 16;
const E = 4;

const found = await findPython();
if ("why" in found) console.warn(`Python client test SKIPPED: no python3 with ${PYTHON_CLIENT_DEPS}: ${found.why}`);

describe.skipIf("why" in found)("the Python client's tensor codec", () => {
  it("rounds float32 to bf16 and fp16 and widens bf16 back bit for bit as the TypeScript codec does", async () => {
    // ties (even and odd), the largest values that round up to Inf, subnormals, signed zeros, Inf, quiet and
    // signalling NaNs with payloads, then random bit patterns
    const edge = [
      0x3f808000, 0x3f818000, 0x3f80c000, 0x7f7fffff, 0x7f7f8000, 0x477ff000, 0x477fe000, 0x00000001, 0x00008000,
      0x00400000, 0x80000000, 0x00000000, 0x7f800000, 0xff800000, 0x7fc00001, 0x7f800001, 0xffbfffff, 0x38800000,
      0x33800000, 0x33000001, 0xc7000000,
    ];
    let s = 12345;
    const bits = Uint32Array.from([
      ...edge,
      ...Array.from({ length: 4000 }, () => {
        s = (Math.imul(s, 1103515245) + 12345) >>> 0;
        return (s ^ (s >>> 7) ^ Math.imul(s, 2654435761)) >>> 0;
      }),
    ]);
    const f = new Float32Array(bits.buffer);
    const { stdout } = await new Promise<{ stdout: string }>((resolve, reject) => {
      const child = execFile(
        (found as { python: string }).python,
        ["tests/check_tensor.py"],
        { cwd: PYTHON_CLIENT_DIR, maxBuffer: 64 << 20 },
        (err, stdout) => (err ? reject(err) : resolve({ stdout })),
      );
      child.stdin?.end([...bits].map((b) => b.toString(16)).join("\n"));
    });
    const py = JSON.parse(stdout) as { bf16: number[]; bf16_via_tensor: number[]; f16: number[]; widened: number[] };
    const bf = f32ToBf16(f);
    expect(py.bf16).toEqual([...bf]);
    expect(py.bf16_via_tensor).toEqual([...bf]);
    expect(py.widened).toEqual([...new Uint32Array(bf16ToF32(bf).buffer)]);
    // fp16: numpy's own rounding; NaN payloads may differ between the two, so NaNs are compared as "a NaN"
    const f16 = f32ToF16(f);
    const isNan16 = (h: number) => (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
    for (let i = 0; i < f.length; i++) {
      const [a, b] = [py.f16[i] as number, f16[i] as number];
      if (isNan16(b)) expect(isNan16(a), `value ${i} (0x${bits[i]?.toString(16)})`).toBe(true);
      else expect(a, `value ${i} (0x${bits[i]?.toString(16)})`).toBe(b);
    }
  });
});

describe.skipIf("why" in found)("the Python client of the router's data path", () => {
  let t: TestRouter;
  beforeAll(async () => {
    t = await startTestRouter({
      hidden: D,
      experts: E,
      expert: (layer, e, x) => x.map((v, j) => (e + 1) * v + layer + 0.01 * j),
      policy: { batching: { maxQueueTokens: 1 << 20 } }, // room for the 40 MiB of requests below
    });
  });
  afterAll(() => t?.close());

  it("gets the answers the Node client gets, errors naming the field, and fails once closed; gRPC agrees", async () => {
    const { stdout } = await run(
      (found as { python: string }).python,
      [
        "tests/check_router.py",
        "127.0.0.1",
        String(t.app.server.dataPort),
        String(t.app.server.port),
        "p",
        String(D),
        String(E),
      ],
      { cwd: PYTHON_CLIENT_DIR, timeout: 60_000, maxBuffer: 64 << 20 },
    );
    const out = JSON.parse(stdout) as {
      cases: { name: string; request: string; hidden: string; shape: number[] }[];
      errors: { name: string; code: number; message: string }[];
      checks: Record<string, unknown>;
    };
    expect(out.checks).toEqual({
      "bf16 bits round trip": true,
      asyncio: true,
      "in flight after": 0,
      "serves after errors": true,
      "closed client refuses": true,
      "grpc answers as the data path": [true, true, true, true],
      "grpc errors": [
        [3, expect.stringMatching(/hidden/)],
        [5, expect.stringMatching(/unknown pool "no-such-pool"/)],
      ],
    });
    expect(out.errors).toEqual([
      { name: "wrong hidden size", code: 3, message: expect.stringMatching(/hidden/) },
      { name: "unknown pool", code: 5, message: expect.stringMatching(/unknown pool "no-such-pool"/) },
    ]);
    expect(out.cases.length).toBe(6 + 64);
    const node = new RouterDataClient("127.0.0.1", t.app.server.dataPort as number);
    try {
      for (const c of out.cases) {
        const res = await node.forward(ForwardRequest.decode(Buffer.from(c.request, "base64")));
        expect(res.error, c.name).toBeUndefined();
        expect(res.hidden?.shape, c.name).toEqual(c.shape);
        expect(Buffer.from(res.hidden?.data ?? []).toString("base64"), c.name).toBe(c.hidden);
      }
    } finally {
      node.close();
    }
  });
  it("keeps reading replies while a send waits on a router that stopped reading (no deadlock)", async () => {
    // A router that stops reading at 1 MiB of queued replies, and 40 requests of 1 MiB sent back to back: the
    // sends block while the client's reader thread must go on taking replies, or neither side moves again.
    const capped = await startRouterDataServer(t.app.router, requestCounter(t.app.router), {
      host: "127.0.0.1",
      port: 0,
      maxMessageBytes: 64 << 20,
      maxQueuedReplyBytes: 1 << 20,
      log: () => {},
    });
    try {
      const script = [
        "import sys, numpy as np",
        "sys.path.insert(0, '.')",
        "import time, switchyard_client.data_path as dp",
        "from switchyard_client import RouterDataClient",
        // an engine slow to take its answers, so that they pile up in the router and it stops reading
        "fast = dp.reply_hidden",
        "dp.reply_hidden = lambda res, bits=False: (time.sleep(0.02), fast(res, bits))[1]",
        `c = RouterDataClient('127.0.0.1', ${capped.port})`,
        `h = np.ones((16384, ${D}), np.float32)`,
        "futs = [c.forward_async('p', 0, h) for _ in range(40)]",
        "print(sum(f.result(60).shape[0] for f in futs))",
        "c.close()",
      ].join("\n");
      const { stdout } = await run((found as { python: string }).python, ["-c", script], {
        cwd: PYTHON_CLIENT_DIR,
        timeout: 30_000,
      });
      expect(stdout.trim()).toBe(String(40 * 16384));
    } finally {
      await capped.close();
    }
  });

  // The workers hang (their batches never answer, their Status does), so only the request's deadline ends it. With
  // "stall" (Status silent too) the router gives a worker up after three unanswered Status polls and answers
  // UNAVAILABLE, which a loaded host's slow Python start-up (numpy's import) reached once in CI.
  it("a Python timeout reaches the router as the request's deadline", async () => {
    for (const w of t.workers) w.mode = "hang";
    try {
      const script = [
        "import sys, time, numpy as np",
        "sys.path.insert(0, '.')",
        "from switchyard_client import RouterDataClient, RouterError, forward_request",
        `assert forward_request('p', 0, np.zeros((1, ${D}), np.float32), timeout=1.2345).timeout_ms == 1235`,
        `c = RouterDataClient('127.0.0.1', ${t.app.server.dataPort})`,
        "t0 = time.monotonic()",
        "try:",
        `    c.forward('p', 0, np.ones((2, ${D}), np.float32), timeout=0.2)`,
        "    print('no error')",
        "except RouterError as e:",
        "    print(e.code, round((time.monotonic() - t0) * 1000), e.message)",
        "c.close()",
      ].join("\n");
      const { stdout } = await run((found as { python: string }).python, ["-c", script], {
        cwd: PYTHON_CLIENT_DIR,
        timeout: 30_000,
      });
      const [code, ms, ...message] = stdout.trim().split(" ");
      expect(code).toBe("4"); // DEADLINE_EXCEEDED
      expect(Number(ms)).toBeGreaterThanOrEqual(190);
      expect(Number(ms)).toBeLessThan(5000); // the request's 0.2 s, not the router's default 30 s
      expect(message.join(" ")).toMatch(/deadline exceeded|did not answer within/);
    } finally {
      for (const w of t.workers) w.mode = "ok";
    }
  });
});
