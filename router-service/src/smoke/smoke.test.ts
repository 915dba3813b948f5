// The smoke check against a real router app (gRPC, data path and HTTP ports) over fake workers, in process and as
// the CLI the chart's `helm test` hook runs.

import { execFile, spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestRouter, type TestRouter } from "../testing/test-router.js";
import type { SmokeArgs } from "./checks.js";
import { runSmoke } from "./smoke.js";

const D = 16;
const expertFn = (layer: number, e: number, x: Float32Array) => x.map((v, j) => (e + 1) * v + layer + 0.01 * j);
const CLI = fileURLToPath(new URL("../../dist/smoke/main.js", import.meta.url));
const ROOT = fileURLToPath(new URL("../../../", import.meta.url));

/** A process's children from /proc: [pid, command line]. */
function childrenOf(pid: number): [number, string][] {
  const out: [number, string][] = [];
  for (const task of readdirSync(`/proc/${pid}/task`))
    for (const id of readFileSync(`/proc/${pid}/task/${task}/children`, "utf8").trim().split(/\s+/).filter(Boolean))
      out.push([Number(id), readFileSync(`/proc/${id}/cmdline`, "utf8").replace(/\0/g, " ")]);
  return out;
}

/** Running, not a zombie. */
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

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

  it("a data port that accepts and never answers fails its check at --timeout-ms, each line printed as it comes", async () => {
    // what a stopped or wedged router's data path looks like from outside: the kernel accepts, nothing answers
    const sockets: Socket[] = [];
    const silent = createServer((s) => sockets.push(s));
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    try {
      const port = (silent.address() as { port: number }).port;
      const seen: [number, string][] = [];
      const t0 = performance.now();
      const r = await runSmoke({ ...args, dataPort: port, timeoutMs: 1500 }, (l) =>
        seen.push([performance.now() - t0, l]),
      );
      expect(performance.now() - t0).toBeLessThan(6000);
      expect(r.ok).toBe(false);
      expect(r.lines.filter((l) => l.startsWith("FAIL"))).toEqual([
        `FAIL  pool p: Forward over data path :${port}, layer 0, 4 tokens: no answer within 1500 ms (--timeout-ms) from 127.0.0.1:${port}`,
      ]);
      expect(r.lines.at(-1)).toBe("smoke: 1 of 6 checks failed");
      // every line went out as its check finished: the ones before the silent check well before its timeout
      expect(seen.map(([, l]) => l)).toEqual(r.lines);
      expect(seen[0]?.[0]).toBeLessThan(1000);
    } finally {
      for (const s of sockets) s.destroy();
      silent.close();
    }
  });

  it("the CLI prints each line as its check finishes and stops on SIGTERM through npm run smoke", async () => {
    expect(existsSync(CLI)).toBe(true);
    const sockets: Socket[] = [];
    const silent = createServer((s) => sockets.push(s));
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    const port = (silent.address() as { port: number }).port;
    // npm runs the script through sh: `exec` makes node npm's child, which gets the SIGTERM npm passes on
    const npm = spawn(
      "npm",
      [
        "run",
        "--silent",
        "smoke",
        "--",
        ...["--router", args.router, "--http", args.http, "--data-port", String(port)],
      ],
      { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] },
    );
    let out = "";
    npm.stdout?.on("data", (c: Buffer) => {
      out += c.toString();
    });
    try {
      const deadline = Date.now() + 20_000;
      // the checks before the silent one are out while it waits (the default --timeout-ms is 20 s)
      while (!/Forward over gRPC/.test(out) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      expect(out).toMatch(/^ok {4}http:.*\/readyz/);
      expect(out).toMatch(/ok {4}pool p: Forward over gRPC/);
      const node = childrenOf(npm.pid as number).find(([, cmd]) => cmd.includes("dist/smoke/main.js"));
      expect(node, "node is npm's own child (exec), not a shell's").toBeDefined();
      npm.kill("SIGTERM");
      await new Promise((r) => npm.once("exit", r));
      const end = Date.now() + 5000;
      while (alive((node as [number, string])[0]) && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
      expect(alive((node as [number, string])[0])).toBe(false);
    } finally {
      if (npm.exitCode === null) npm.kill("SIGKILL");
      for (const s of sockets) s.destroy();
      silent.close();
    }
  }, 30_000);

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
