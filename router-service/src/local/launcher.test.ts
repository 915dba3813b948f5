// `npm start` as a user runs it (the compiled launcher, dist/local/main.js, with its workers and router as processes):
// what the run says and leaves behind when a flag contradicts the model, when one of its processes dies during the
// load, and when the launcher itself is stopped or killed.

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { generateCheckpoint } from "@switchyard/moe";
import { afterEach, describe, expect, it } from "vitest";
import { localModel } from "./main.js";

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const LAUNCHER = join(ROOT, "router-service/dist/local/main.js");

interface Run {
  child: ChildProcess;
  output(): string;
  waitFor(re: RegExp, ms?: number): Promise<void>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function launch(args: string[]): Run {
  const child = spawn(process.execPath, [LAUNCHER, ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  const waiters: (() => void)[] = [];
  const take = (c: Buffer) => {
    out += c.toString();
    for (const w of waiters) w();
  };
  child.stdout?.on("data", take);
  child.stderr?.on("data", take);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.once("exit", (code, signal) => r({ code, signal })),
  );
  return {
    child,
    output: () => out,
    exited,
    waitFor: (re, ms = 40_000) =>
      new Promise<void>((res, rej) => {
        const t = setTimeout(() => rej(new Error(`no ${re} after ${ms} ms:\n${out}`)), ms);
        const check = () => {
          if (re.test(out)) {
            clearTimeout(t);
            res();
          }
        };
        waiters.push(check);
        void exited.then(() => {
          clearTimeout(t);
          if (!re.test(out)) rej(new Error(`the launcher exited before ${re}:\n${out}`));
        });
        check();
      }),
  };
}

/** A process's children, from /proc: [pid, command line]. */
function childrenOf(pid: number): [number, string][] {
  const out: [number, string][] = [];
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    const ids = readFileSync(`/proc/${pid}/task/${task}/children`, "utf8").trim().split(/\s+/).filter(Boolean);
    for (const id of ids) {
      const cmd = readFileSync(`/proc/${id}/cmdline`, "utf8").replace(/\0/g, " ");
      out.push([Number(id), cmd]);
    }
  }
  return out;
}

/** Running (a zombie nobody reaps has exited). */
function running(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

async function gone(pids: number[], ms: number): Promise<number[]> {
  const end = Date.now() + ms;
  for (;;) {
    const left = pids.filter(running);
    if (left.length === 0 || Date.now() > end) return left;
    await new Promise((r) => setTimeout(r, 200));
  }
}

const noStack = /^\s+at .+[:(]/m;

describe.skipIf(process.platform !== "linux")("npm start, the launcher", () => {
  // whatever a test leaves running (a failed one, the processes it is about)
  const spawned: number[] = [];
  afterEach(() => {
    for (const pid of spawned.splice(0)) if (running(pid)) process.kill(pid, "SIGKILL");
  });
  const track = (r: Run) => {
    spawned.push(r.child.pid as number);
    return r;
  };
  const kids = (r: Run) => {
    const k = childrenOf(r.child.pid as number);
    spawned.push(...k.map(([pid]) => pid));
    return k;
  };

  it("a flag the model contradicts is one line naming it and exit 2, before anything starts", async () => {
    const r = track(launch(["--shared-experts", "workers"]));
    expect(await r.exited).toEqual({ code: 2, signal: null });
    expect(r.output().trim()).toMatch(/^--shared-experts workers: mixtral has no shared expert[^\n]*$/);
  });

  it("a stale checkpoint in the cache is one line saying what to delete, no stack trace", async () => {
    // where `--seed 918273` keeps Mixtral tiny, another model's checkpoint (as an older layout of the cache left it)
    const dir = join(ROOT, ".cache/checkpoints/mixtral-tiny-seed918273");
    try {
      await generateCheckpoint({ family: "deepseek-v3", dir, seed: 1, ...localModel("deepseek-v3", "tiny") });
      const r = track(launch(["--seed", "918273"]));
      expect(await r.exited).toEqual({ code: 1, signal: null });
      expect(r.output()).toMatch(/^local: \S+mixtral-tiny-seed918273 holds a different model .*delete it/m);
      expect(r.output()).not.toMatch(noStack);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a worker that dies during the load is named, and the run exits 1 without a stack trace", async () => {
    const r = track(launch(["--duration", "8", "--concurrency", "2"]));
    await r.waitFor(/driving load/);
    const w0 = kids(r).find(([, cmd]) => cmd.includes("--worker-id w0"));
    expect(w0).toBeDefined();
    process.kill((w0 as [number, string])[0], "SIGKILL");
    expect(await r.exited).toEqual({ code: 1, signal: null });
    expect(r.output()).toMatch(/w0 exited on SIGKILL during the run/);
    expect(r.output()).toMatch(/FAILED: .*w0 exited on SIGKILL/);
    expect(r.output()).not.toMatch(noStack);
  });

  it("SIGTERM stops the workers and the router, removes the run's files and exits 143", async () => {
    const r = track(launch(["--duration", "30", "--concurrency", "2"]));
    await r.waitFor(/driving load/);
    const pids = kids(r).map(([pid]) => pid);
    expect(pids.length).toBe(3); // 2 workers, 1 router
    r.child.kill("SIGTERM");
    expect(await r.exited).toEqual({ code: 143, signal: null });
    expect(await gone(pids, 15_000)).toEqual([]);
    expect(existsSync(join(ROOT, ".cache/local", `run-${r.child.pid}`))).toBe(false);
  });

  it("a router that stops answering (SIGSTOP) fails the run naming it, within the load and its deadlines", async () => {
    const r = track(launch(["--duration", "3", "--concurrency", "2", "--request-timeout", "2"]));
    await r.waitFor(/driving load/);
    const k = kids(r);
    const router = k.find(([, cmd]) => cmd.includes("router-service/dist/main.js"));
    expect(router).toBeDefined();
    await new Promise((res) => setTimeout(res, 1000));
    process.kill((router as [number, string])[0], "SIGSTOP");
    const t0 = Date.now();
    // before: every sequence waited on the stopped router forever
    expect(await r.exited).toEqual({ code: 1, signal: null });
    expect(Date.now() - t0).toBeLessThan(40_000);
    expect(r.output()).toMatch(/error: router \(data path 127\.0\.0\.1:\d+\): no reply within 4000 ms; is it stuck\?/);
    expect(r.output()).toMatch(/FAILED: router: its metrics at :\d+ did not answer .*is it stuck\?; \d+ errors/);
    expect(r.output()).not.toMatch(noStack);
    // the stopped router was continued and stopped with the others
    expect(
      await gone(
        k.map(([pid]) => pid),
        15_000,
      ),
    ).toEqual([]);
  }, 60_000);

  it("SIGHUP (a closed terminal) stops the workers and the router too, exit 129", async () => {
    const r = track(launch(["--duration", "30", "--concurrency", "2"]));
    await r.waitFor(/driving load/);
    const pids = kids(r).map(([pid]) => pid);
    r.child.kill("SIGHUP");
    expect(await r.exited).toEqual({ code: 129, signal: null });
    expect(await gone(pids, 15_000)).toEqual([]);
  });

  it("npm start execs the launcher: npm's SIGTERM reaches it, not a shell that leaves it running", () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { scripts: Record<string, string> };
    expect(pkg.scripts.start).toMatch(/&& exec node router-service\/dist\/local\/main\.js$/);
    expect(pkg.scripts.smoke).toMatch(/^exec node router-service\/dist\/smoke\/main\.js$/);
  });

  it("--seed past 32 bits and a policy the model cannot route are flag errors: exit 2, one line", async () => {
    const seed = track(launch(["--seed", "9999999999"]));
    expect(await seed.exited).toEqual({ code: 2, signal: null });
    expect(seed.output().trim()).toMatch(/^--seed: must be an integer in \[0, 4294967295\], got "9999999999"$/);
    const policy = track(launch(["--policy", '{"gating":{"topK":20}}']));
    expect(await policy.exited).toEqual({ code: 2, signal: null });
    expect(policy.output().trim()).toMatch(/^--policy: gating\.topK 20 exceeds the 8 experts of mixtral/);
  });

  it("the workers and the router go with a launcher that is killed outright (SIGKILL)", async () => {
    const r = track(launch(["--duration", "30", "--concurrency", "2"]));
    await r.waitFor(/driving load/);
    const pids = kids(r).map(([pid]) => pid);
    expect(pids.length).toBe(3);
    r.child.kill("SIGKILL");
    await r.exited;
    expect(await gone(pids, 15_000)).toEqual([]);
    rmSync(join(ROOT, ".cache/local", `run-${r.child.pid}`), { recursive: true, force: true }); // no one else can
  });
});
