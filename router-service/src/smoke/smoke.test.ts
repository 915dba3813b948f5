// The smoke check against a real router app (gRPC, data path and HTTP ports) over fake workers, in process and as
// the CLI the chart's `helm test` hook runs.

import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestRouter, type TestRouter } from "../testing/test-router.js";
import type { SmokeArgs } from "./checks.js";
import { runSmoke } from "./smoke.js";

const D = 16;
const expertFn = (layer: number, e: number, x: Float32Array) => x.map((v, j) => (e + 1) * v + layer + 0.01 * j);
const CLI = fileURLToPath(new URL("../../dist/smoke/main.js", import.meta.url));

describe("router smoke check", () => {
  let t: TestRouter;
  let args: SmokeArgs;

  beforeAll(async () => {
    t = await startTestRouter({ hidden: D, experts: 4, expert: expertFn, metricsPort: 0 });
    const s = t.app.server;
    args = {
      router: `127.0.0.1:${s.port}`,
      http: `http://127.0.0.1:${s.metricsPort}`,
      dataPort: s.dataPort ?? 0,
      pools: [],
      tokens: 4,
      timeoutMs: 5000,
    };
  });
  afterAll(() => t?.close());

  it("passes a healthy router: ready, SERVING, the pool listed, a Forward over gRPC and over the data path", async () => {
    const r = await runSmoke(args);
    expect(
      r.lines.filter((l) => !l.startsWith("ok")),
      r.lines.join("\n"),
    ).toEqual(["smoke: all 6 checks passed"]);
    expect(r.ok).toBe(true);
    expect(r.lines.join("\n")).toMatch(
      /ok {4}pool p: Forward over gRPC, layer 0, 4 tokens: \[4, 16\] bf16, \d+ experts/,
    );
    expect(r.lines.join("\n")).toMatch(/ok {4}pool p: Forward over data path :\d+, layer 0, 4 tokens: \[4, 16\] bf16/);
    expect(r.lines.join("\n")).toMatch(/ok {4}.*\/pools: p \(mixtral, d 16, 2 workers\)/);
  });

  it("fails naming a pool of the router's config that it could not load, and still checks the others", async () => {
    t.app.router.setUnloaded("remote", "pools[1].checkpoint: s3:/bucket/config.json: no such file");
    try {
      const r = await runSmoke(args);
      expect(r.ok).toBe(false);
      expect(r.lines).toContain(
        "FAIL  pool remote: configured but not loaded by the router: pools[1].checkpoint: s3:/bucket/config.json: no such file",
      );
      expect(r.lines.join("\n")).toMatch(/ok {4}pool p: Forward over gRPC/);
    } finally {
      t.app.router.setUnloaded("remote", null);
    }
  });

  it("fails naming a pool the router does not serve", async () => {
    const r = await runSmoke({ ...args, pools: ["nope"] });
    expect(r.ok).toBe(false);
    expect(r.lines).toContain(`FAIL  ${args.http}/pools: pool "nope" is not served (serving: p)`);
  });

  it("fails naming the router it cannot reach", async () => {
    const r = await runSmoke({
      ...args,
      router: "127.0.0.1:1",
      http: "http://127.0.0.1:1",
      dataPort: 0,
      timeoutMs: 2000,
    });
    expect(r.ok).toBe(false);
    expect(r.lines.filter((l) => l.startsWith("FAIL")).length).toBe(3);
    expect(r.lines.at(-1)).toBe("smoke: 3 of 3 checks failed");
  });

  it("runs as the chart's hook runs it: exit 0 on a healthy router, 2 naming a bad flag", async () => {
    expect(existsSync(CLI), `${CLI} is built by npm run build (npm test builds first)`).toBe(true);
    const run = promisify(execFile);
    const ok = await run(process.execPath, [
      CLI,
      "--router",
      args.router,
      "--http",
      args.http,
      "--data-port",
      String(args.dataPort),
      "--tokens",
      "2",
    ]);
    expect(ok.stdout).toMatch(/smoke: all 6 checks passed\n$/);
    const bad = await run(process.execPath, [CLI, "--router", args.router]).catch((e) => e);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^smoke: --http: required\nusage: smoke --router HOST:PORT/);
    const help = await run(process.execPath, [CLI, "--help"]);
    expect(help.stdout).toMatch(/^usage: smoke --router HOST:PORT/);
  });

  // Last: it stops a worker for good.
  it("fails once a worker is down: the pool's worker named, its Forward failing", async () => {
    t.workers[1].stop();
    // the router's Status polls (every second) notice it and back off from the worker
    const deadline = Date.now() + 10_000;
    while (t.app.router.workers("p").find((c) => c.id === "w1")?.healthy && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 100));
    const r = await runSmoke({ ...args, tokens: 16 });
    expect(r.ok).toBe(false);
    const failed = r.lines.filter((l) => l.startsWith("FAIL"));
    expect(failed[0]).toMatch(/^FAIL {2}pool p: worker w1 \(127\.0\.0\.1:\d+\): not answering the router/);
    // 16 tokens at top-2 over 4 experts, half of them on w1: the Forwards need it, and fail naming why
    expect(failed.length, r.lines.join("\n")).toBe(3);
    expect(failed[1]).toMatch(/^FAIL {2}pool p: Forward over gRPC, layer 0, 16 tokens: .*w1/);
    expect(failed[2]).toMatch(/^FAIL {2}pool p: Forward over data path :\d+, layer 0, 16 tokens: .*w1/);
    expect(r.lines.at(-1)).toMatch(/^smoke: 3 of \d+ checks failed$/);
  });
});
