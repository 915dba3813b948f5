// The router process (dist/main.js) stopping on a signal while an engine holds a ForwardStream open: a stream that an
// engine never ends must not keep the router from exiting.

import { type ChildProcess, fork } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { credentials } from "@grpc/grpc-js";
import { RouterClient } from "@switchyard/protocol";
import { afterAll, afterEach, describe, expect, it } from "vitest";

const MAIN = fileURLToPath(new URL("../dist/main.js", import.meta.url));

describe("the router process", () => {
  const dir = mkdtempSync(join(tmpdir(), "router-main-"));
  const config = join(dir, "router.json");
  writeFileSync(config, JSON.stringify({ pools: [] }));
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const c of cleanups.splice(0)) c();
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** A router with an engine's ForwardStream open on it (and never ended). */
  async function routerWithStream(): Promise<{ child: ChildProcess; exited: Promise<number | null> }> {
    const child = fork(MAIN, ["--config", config, "--port", "0", "--metrics-port", "0", "--data-port", "-1"], {
      stdio: ["ignore", "ignore", "ignore", "ipc"],
      execArgv: [], // not vitest's own
      env: { ...process.env, SWITCHYARD_HOST: "127.0.0.1" },
    });
    const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
    cleanups.push(() => child.kill("SIGKILL"));
    const { port } = await new Promise<{ port: number }>((res, rej) => {
      child.once("message", (m) => res(m as { port: number }));
      void exited.then(() => rej(new Error("the router exited before it was ready")));
    });
    const client = new RouterClient(`127.0.0.1:${port}`, credentials.createInsecure());
    const stream = client.forwardStream();
    stream.on("error", () => {});
    cleanups.push(() => client.close());
    // the stream is open at the router once the call's headers went out; a metadata round trip is not offered, so wait
    await new Promise((r) => setTimeout(r, 300));
    return { child, exited };
  }

  const within = <T>(p: Promise<T>, ms: number) =>
    Promise.race([p, new Promise<"still running">((r) => setTimeout(() => r("still running"), ms))]);

  it("a second SIGINT or SIGTERM exits at once", async () => {
    const { child, exited } = await routerWithStream();
    child.kill("SIGTERM");
    await new Promise((r) => setTimeout(r, 500));
    child.kill("SIGINT");
    expect(await within(exited, 3000)).not.toBe("still running");
  });

  it("SIGTERM alone exits within its grace period", async () => {
    const { child, exited } = await routerWithStream();
    child.kill("SIGTERM");
    expect(await within(exited, 14_000)).not.toBe("still running");
  }, 20_000);
});
