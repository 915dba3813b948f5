import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ManagedProcess, startWatchdog } from "./process.js";
import { freePorts, httpGet, runCommand, waitUntil } from "./util.js";

describe("harness helpers", () => {
  it("freePorts gives distinct bindable ports", async () => {
    const ports = await freePorts(6);
    expect(new Set(ports).size).toBe(6);
    for (const p of ports) expect(p).toBeGreaterThan(0);
  });

  it("httpGet reports status and body, and 0 for a refused connection", async () => {
    const srv = createServer((_req, res) => res.writeHead(418).end("teapot"));
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    const port = (srv.address() as { port: number }).port;
    expect(await httpGet(`http://127.0.0.1:${port}/x`)).toEqual({ status: 418, body: "teapot" });
    await new Promise((r) => srv.close(r));
    expect((await httpGet(`http://127.0.0.1:${port}/x`)).status).toBe(0);
  });

  it("waitUntil polls, times out with the last error, and aborts early", async () => {
    let n = 0;
    await waitUntil(() => ++n >= 3, { what: "three", timeoutMs: 1000, intervalMs: 1 });
    expect(n).toBe(3);
    await expect(
      waitUntil(
        () => {
          throw new Error("nope");
        },
        { what: "never", timeoutMs: 30, intervalMs: 5 },
      ),
    ).rejects.toThrow(/never.*last error: nope/);
    await expect(waitUntil(() => false, { what: "x", timeoutMs: 5000, abortIf: () => "etcd died" })).rejects.toThrow(
      /etcd died/,
    );
  });

  it("runCommand passes stdin, returns output, and rejects on failure unless check is false", async () => {
    expect((await runCommand("cat", [], { input: "hello" })).stdout).toBe("hello");
    await expect(runCommand("sh", ["-c", "echo bad >&2; exit 3"])).rejects.toThrow(/exit 3[\s\S]*bad/);
    expect(await runCommand("sh", ["-c", "exit 3"], { check: false })).toMatchObject({ code: 3 });
  });
});

describe("ManagedProcess", () => {
  it("kills the whole process group and logs output", async () => {
    const dir = mkdtempSync(join(tmpdir(), "proc-test-"));
    try {
      // The shell starts a grandchild; a group kill must take it too.
      const p = new ManagedProcess(
        "sleeper",
        "sh",
        ["-c", "echo started; sleep 300 & wait"],
        join(dir, "log"),
        undefined,
      );
      await waitUntil(() => p.tail().includes("started"), { what: "start", timeoutMs: 5000, intervalMs: 20 });
      expect(p.exited).toBeUndefined();
      const exit = await p.stop(2000);
      expect(exit.signal ?? exit.code).toBeTruthy();
      expect(p.crashed).toBe(false);
      // no process is left in its group
      const pgid = p.pid!;
      await waitUntil(async () => (await runCommand("sh", ["-c", `pgrep -g ${pgid} || true`])).stdout.trim() === "", {
        what: "process group gone",
        timeoutMs: 3000,
        intervalMs: 50,
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("reports a crash and a missing binary", async () => {
    const dir = mkdtempSync(join(tmpdir(), "proc-test-"));
    try {
      const p = new ManagedProcess("crasher", "sh", ["-c", "echo boom; exit 7"], join(dir, "log"));
      await p.wait();
      expect(p.crashed).toBe(true);
      expect(p.describeExit()).toBe("crasher exited (code 7)");
      expect(p.tail()).toContain("boom");
      const q = new ManagedProcess("ghost", join(dir, "no-such-binary"), [], join(dir, "log2"));
      await q.wait();
      expect(q.describeExit()).toMatch(/ghost could not start: .*ENOENT/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("startWatchdog", () => {
  it("kills the component process groups and drops etcd data once the parent is gone", async () => {
    const dir = mkdtempSync(join(tmpdir(), "watchdog-test-"));
    try {
      mkdirSync(join(dir, "etcd"));
      const parent = new ManagedProcess("parent", "sleep", ["300"], join(dir, "parent.log"));
      const component = new ManagedProcess("component", "sh", ["-c", "sleep 300 & wait"], join(dir, "c.log"));
      writeFileSync(join(dir, "pgids"), `${component.pid}\n`);
      const watchdog = startWatchdog(parent.pid!, join(dir, "pgids"), dir);
      expect(watchdog).toBeGreaterThan(0);
      await new Promise((r) => setTimeout(r, 300));
      expect(component.exited).toBeUndefined(); // parent alive: nothing happens
      parent.signal("SIGKILL");
      const exit = await component.wait();
      expect(exit.signal).toBe("SIGKILL");
      await waitUntil(() => !existsSync(join(dir, "etcd")), {
        what: "etcd data removed",
        timeoutMs: 3000,
        intervalMs: 50,
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 15_000);
});
