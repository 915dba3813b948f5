// The Python client of the engines' data path (clients/python) against a real router: clients/python/tests/
// check_router.py drives it (dtypes, router logits, an assignment, 64 requests in flight from 4 threads, bad
// requests, a closed client) and prints what it sent and got; every answer is then sent again through the Node client
// and must come back byte for byte the same. Its gRPC client must answer as its data-path client does.

import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { ForwardRequest, RouterDataClient } from "@switchyard/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestRouter, type TestRouter } from "./testing/test-router.js";

const run = promisify(execFile);
const CLIENT_DIR = fileURLToPath(new URL("../../clients/python", import.meta.url));
const D = 16;
const E = 4;

/** The first Python with the client's dependencies (Debian: python3-protobuf, python3-numpy, python3-grpcio), or why
 * none. */
async function findPython(): Promise<{ python: string } | { why: string }> {
  const tried: string[] = [];
  for (const py of [process.env.SWITCHYARD_PYTHON, "python3", "/usr/bin/python3"].filter(Boolean) as string[]) {
    try {
      await run(py, ["-c", "import google.protobuf, numpy, grpc"]);
      return { python: py };
    } catch (e) {
      tried.push(`${py}: ${((e as { stderr?: string }).stderr ?? String(e)).trim().split("\n").at(-1)}`);
    }
  }
  return { why: tried.join("; ") };
}

const found = await findPython();
if ("why" in found)
  console.warn(
    `Python client test SKIPPED: no python3 with protobuf, numpy and grpcio (apt-get install python3-protobuf python3-numpy python3-grpcio): ${found.why}`,
  );

describe.skipIf("why" in found)("the Python client of the router's data path", () => {
  let t: TestRouter;
  beforeAll(async () => {
    t = await startTestRouter({
      hidden: D,
      experts: E,
      expert: (layer, e, x) => x.map((v, j) => (e + 1) * v + layer + 0.01 * j),
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
      { cwd: CLIENT_DIR, timeout: 60_000, maxBuffer: 64 << 20 },
    );
    const out = JSON.parse(stdout) as {
      cases: { name: string; request: string; hidden: string; shape: number[] }[];
      errors: { name: string; code: number; message: string }[];
      checks: Record<string, unknown>;
    };
    expect(out.checks).toEqual({
      "bf16 bits round trip": true,
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
    expect(out.cases.length).toBe(5 + 64);
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
});
