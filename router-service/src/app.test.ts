import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { generateCheckpoint } from "@switchyard/moe";
import { DType, encodeTensor } from "@switchyard/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RouterApp, startRouterApp } from "./app.js";
import { parseRouterArgs } from "./args.js";
import { FakeWorker } from "./testing/fake-worker.js";

async function until(f: () => Promise<boolean> | boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await f())) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * A mirror of the Hugging Face Hub serving `ckpt` as `repo`: /ORG/NAME/resolve/REV/FILE with byte ranges and the
 * resolved commit in X-Repo-Commit. `admit` sees each request first; false answers 401 (a gated repository).
 */
async function hubMirror(
  ckpt: string,
  repo: string,
  admit: (req: IncomingMessage) => boolean,
): Promise<ReturnType<typeof createServer>> {
  const server = createServer(async (req, res) => {
    if (!admit(req)) return void res.writeHead(401).end();
    const path = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname);
    const m = path.startsWith(`/${repo}/resolve/`) ? /^\/[^/]+\/[^/]+\/resolve\/[^/]+\/(.+)$/.exec(path) : null;
    try {
      if (!m) throw new Error("not a resolve path");
      const body = await readFile(join(ckpt, m[1]));
      const r = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? "");
      const head = { "x-repo-commit": "0123456789abcdef0123456789abcdef01234567" };
      if (!r) return void res.writeHead(200, head).end(body);
      res.writeHead(206, { ...head, "content-range": `bytes ${r[1]}-${r[2]}/${body.length}` });
      res.end(body.subarray(Number(r[1]), Number(r[2]) + 1));
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return server;
}

describe("router process: config and plan reload without restart", () => {
  let dir: string;
  let app: RouterApp;
  const workers = [new FakeWorker({ id: "w0", expert: null }), new FakeWorker({ id: "w1", expert: null })];
  const logs: string[] = [];
  const plan = (version: number, holder: number) => ({
    version,
    pool: "p",
    workers: ["w0", "w1"],
    replicas: [Array.from({ length: 4 }, () => [holder])],
  });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sy-app-"));
    await generateCheckpoint({
      family: "mixtral",
      dir: join(dir, "ckpt"),
      layers: 1,
      hiddenSize: 16,
      intermediateSize: 8,
      experts: 4,
    });
    for (const w of workers) await w.start();
    await writeFile(join(dir, "plan.json"), JSON.stringify(plan(1, 0)));
    await writeFile(
      join(dir, "router.json"),
      JSON.stringify({
        pools: [
          {
            name: "p",
            checkpoint: join(dir, "ckpt"),
            planFile: join(dir, "plan.json"),
            endpoints: { w0: `127.0.0.1:${workers[0].port}`, w1: `127.0.0.1:${workers[1].port}` },
          },
        ],
      }),
    );
    app = await startRouterApp({
      config: join(dir, "router.json"),
      port: 0,
      metricsPort: null,
      host: "127.0.0.1",
      watchIntervalMs: 50,
      log: (l) => logs.push(l),
    });
  });
  afterAll(async () => {
    await app?.close();
    for (const w of workers) w.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const version = async () => {
    const t = await app.router.metrics.registry.getSingleMetricAsString("switchyard_router_placement_plan_version");
    return Number(/pool="p"} (\d+)/.exec(t)?.[1]);
  };
  const forwardRequest = () => ({
    pool: "p",
    layer: 0,
    hidden: encodeTensor(new Float32Array(16).fill(1), [1, 16], DType.FLOAT32),
    gate: undefined,
    requestId: 0n,
  });
  const forward = () => app.router.forward(forwardRequest());

  it("serves with plan v1, then follows a new plan file", async () => {
    expect(await version()).toBe(1);
    await forward();
    expect(workers[0].rows).toBeGreaterThan(0);
    expect(workers[1].rows).toBe(0);
    await writeFile(join(dir, "plan.json"), JSON.stringify(plan(2, 1)));
    await until(async () => (await version()) === 2);
    await forward();
    expect(workers[1].rows).toBeGreaterThan(0);
  });

  it("keeps the running config when a new one is bad, and says which field", async () => {
    const cfgPath = join(dir, "router.json");
    await writeFile(
      cfgPath,
      JSON.stringify({
        pools: [
          {
            name: "p",
            checkpoint: join(dir, "ckpt"),
            planFile: join(dir, "plan.json"),
            policy: { gating: { topP: 2 } },
          },
        ],
      }),
    );
    await until(() => logs.some((l) => l.includes("pools[0].policy.gating.topP")));
    expect(await app.reload()).toBe(false);
    await forward(); // still serving
  });

  it("one pool it cannot load leaves the others served, says why, and recovers when the config is fixed", async () => {
    const cfgPath = join(dir, "router.json");
    const good = {
      name: "p",
      checkpoint: join(dir, "ckpt"),
      planFile: join(dir, "plan.json"),
      endpoints: { w0: `127.0.0.1:${workers[0].port}`, w1: `127.0.0.1:${workers[1].port}` },
    };
    // The operator writes an ExpertPool's checkpoint.uri as-is: the router has no copy of such a checkpoint.
    const remote = {
      ...good,
      name: "remote",
      checkpoint: "s3://bucket/mixtral",
      planFile: undefined,
      plan: plan(1, 0),
    };
    await writeFile(join(dir, "plan.json"), JSON.stringify(plan(3, 0)));
    await writeFile(cfgPath, JSON.stringify({ pools: [remote, good] }));
    expect(await app.reload()).toBe(false);
    expect(await version()).toBe(3); // the good pool's new plan applied all the same
    await forward();
    const err = await app.router.forward({ ...(await forwardRequest()), pool: "remote" }).then(
      () => undefined,
      (e: Error & { code?: string }) => e,
    );
    expect(err?.code).toBe("UNAVAILABLE");
    expect(err?.message).toMatch(/pool "remote" is configured but could not be loaded: pools\[0\]\.checkpoint: /);
    expect(app.router.unloadedPools().map((u) => u.name)).toEqual(["remote"]);
    expect(logs.some((l) => l.startsWith("pool not loaded") && l.includes("remote: pools[0].checkpoint"))).toBe(true);

    // A fresh router with that config starts and serves the good pool.
    const fresh = await startRouterApp({
      config: cfgPath,
      port: 0,
      metricsPort: null,
      host: "127.0.0.1",
      log: () => {},
    });
    try {
      expect(fresh.router.poolNames()).toEqual(["p"]);
      expect(fresh.router.unloadedPools()).toHaveLength(1);
    } finally {
      await fresh.close();
    }

    await writeFile(cfgPath, JSON.stringify({ pools: [good] }));
    expect(await app.reload()).toBe(true);
    expect(app.router.unloadedPools()).toEqual([]);
  });

  it("refuses a plan that leaves an MoE layer without experts (empty rows are for dense layers), naming the plan", async () => {
    // (after the test above, which leaves a good config: a bad one would be reported first)
    const before = await readFile(join(dir, "plan.json"), "utf8");
    await writeFile(join(dir, "plan.json"), JSON.stringify({ ...plan(7, 0), replicas: [[]] }));
    await until(() => logs.some((l) => /pools\[0\]\.plan: .*replicas\[0\]/.test(l)));
    expect(await app.reload()).toBe(false);
    await forward(); // still serving the last good plan
    await writeFile(join(dir, "plan.json"), before);
    expect(await app.reload()).toBe(true);
  });

  it("serves a pool whose checkpoint is a URL: downloads only the router's tensors, with range reads", async () => {
    // a static file server with byte ranges, as a bucket's public https endpoint or the Hugging Face Hub answers
    const ranges: string[] = [];
    const files = createServer(async (req, res) => {
      try {
        const body = await readFile(
          join(dir, "ckpt", decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname)),
        );
        const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? "");
        if (!m) return void res.end(body);
        ranges.push(req.headers.range as string);
        res.writeHead(206, { "content-range": `bytes ${m[1]}-${m[2]}/${body.length}` });
        res.end(body.subarray(Number(m[1]), Number(m[2]) + 1));
      } catch {
        res.writeHead(404).end();
      }
    });
    await new Promise<void>((r) => files.listen(0, "127.0.0.1", r));
    const cache = join(dir, "cache");
    const url = `http://127.0.0.1:${(files.address() as AddressInfo).port}/`;
    const cfgPath = join(dir, "router-url.json");
    await writeFile(
      cfgPath,
      JSON.stringify({
        pools: [
          {
            name: "p",
            checkpoint: url,
            planFile: join(dir, "plan.json"),
            endpoints: { w0: `127.0.0.1:${workers[0].port}`, w1: `127.0.0.1:${workers[1].port}` },
          },
        ],
      }),
    );
    const lines: string[] = [];
    const fromUrl = await startRouterApp({
      config: cfgPath,
      port: 0,
      metricsPort: null,
      host: "127.0.0.1",
      checkpointCache: cache,
      log: (l) => lines.push(l),
    });
    try {
      // the router serves at once; the pool loads once its download is done (a reload the download triggers)
      expect(fromUrl.router.unloadedPools().map((u) => u.error)).toEqual([
        expect.stringMatching(/^pools\[0\]\.checkpoint: downloading the router's tensors of http:/),
      ]);
      await until(() => fromUrl.router.unloadedPools().length === 0);
      const res = await fromUrl.router.forward(forwardRequest());
      expect(res.hidden?.shape).toEqual([1, 16]);
      expect(ranges.length).toBeGreaterThan(0); // the gate's bytes came by range, not the whole file
      expect(lines.some((l) => l.startsWith(`checkpoint ${url}: the router's 1 tensors in ${cache}/`))).toBe(true);
    } finally {
      await fromUrl.close();
      await new Promise((r) => files.close(r));
    }
  });

  it("downloads an hf:// pool's tensors from the pool's own Hub mirror (hfEndpoint), not HF_ENDPOINT", async () => {
    // a mirror of the Hub: /ORG/NAME/resolve/REV/FILE, the resolved commit in X-Repo-Commit
    const asked: string[] = [];
    const mirror = await hubMirror(join(dir, "ckpt"), "org/m", (req) => {
      asked.push(decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname));
      return true;
    });
    const cfgPath = join(dir, "router-hf.json");
    const pool = {
      name: "p",
      checkpoint: "hf://org/m",
      hfEndpoint: `http://127.0.0.1:${(mirror.address() as AddressInfo).port}`,
      planFile: join(dir, "plan.json"),
      endpoints: { w0: `127.0.0.1:${workers[0].port}`, w1: `127.0.0.1:${workers[1].port}` },
    };
    await writeFile(cfgPath, JSON.stringify({ pools: [pool] }));
    const before = process.env.HF_ENDPOINT;
    process.env.HF_ENDPOINT = "http://127.0.0.1:1"; // the router's own: nothing listens there
    const hf = await startRouterApp({
      config: cfgPath,
      port: 0,
      metricsPort: null,
      host: "127.0.0.1",
      checkpointCache: join(dir, "cache-hf"),
      log: () => {},
    });
    try {
      await until(() => hf.router.unloadedPools().length === 0 && hf.router.poolNames().includes("p"));
      expect((await hf.router.forward(forwardRequest())).hidden?.shape).toEqual([1, 16]);
      expect(asked.some((a) => a.startsWith("/org/m/resolve/"))).toBe(true);
    } finally {
      if (before === undefined) delete process.env.HF_ENDPOINT;
      else process.env.HF_ENDPOINT = before;
      await hf.close();
      await new Promise((r) => mirror.close(r));
    }
    // bad values are refused naming the field
    await writeFile(cfgPath, JSON.stringify({ pools: [{ ...pool, hfEndpoint: "mirror.example.com" }] }));
    await expect(
      startRouterApp({ config: cfgPath, port: 0, metricsPort: null, host: "127.0.0.1", log: () => {} }),
    ).rejects.toThrow(/pools\[0\]\.hfEndpoint: must be an http\(s\) URL/);
    await writeFile(cfgPath, JSON.stringify({ pools: [{ ...pool, checkpoint: join(dir, "ckpt") }] }));
    await expect(
      startRouterApp({ config: cfgPath, port: 0, metricsPort: null, host: "127.0.0.1", log: () => {} }),
    ).rejects.toThrow(/pools\[0\]\.hfEndpoint: goes with an hf:\/\/ checkpoint/);
  });

  it("downloads an hf:// pool's tensors with the pool's own token (hfTokenFile), else the router's HF_TOKEN", async () => {
    // a gated repository on a mirror of the Hub: only the pool's token is let in
    const seen: string[] = [];
    const mirror = await hubMirror(join(dir, "ckpt"), "org/gated", (req) => {
      seen.push(req.headers.authorization ?? "none");
      return req.headers.authorization === "Bearer pool-token";
    });
    const tokens = join(dir, "hf-tokens");
    await mkdir(tokens, { recursive: true });
    await writeFile(join(tokens, "team_p"), "pool-token\n");
    const pool = {
      name: "p",
      checkpoint: "hf://org/gated",
      hfEndpoint: `http://127.0.0.1:${(mirror.address() as AddressInfo).port}`,
      hfTokenFile: join(tokens, "team_p"),
      planFile: join(dir, "plan.json"),
      endpoints: { w0: `127.0.0.1:${workers[0].port}`, w1: `127.0.0.1:${workers[1].port}` },
    };
    const cfgPath = join(dir, "router-token.json");
    const before = process.env.HF_TOKEN;
    process.env.HF_TOKEN = "router-token";
    const start = (cache: string, lines: string[] = []) =>
      startRouterApp({
        config: cfgPath,
        port: 0,
        metricsPort: null,
        host: "127.0.0.1",
        checkpointCache: join(dir, cache),
        log: (l) => lines.push(l),
      });
    try {
      await writeFile(cfgPath, JSON.stringify({ pools: [pool] }));
      const lines: string[] = [];
      const withToken = await start("cache-token", lines);
      try {
        await until(() => withToken.router.unloadedPools().length === 0 && withToken.router.poolNames().includes("p"));
        expect(seen.length).toBeGreaterThan(0);
        expect(new Set(seen)).toEqual(new Set(["Bearer pool-token"]));
        expect(lines.some((l) => l.includes(`with the pool's token (${join(tokens, "team_p")})`))).toBe(true);
      } finally {
        await withToken.close();
      }
      // Two pools on the repository, one with a key in the router's Secret and one without, in one router (the one
      // without sorts first): each downloads with its own token, so the first's refused download does not keep the
      // second unloaded.
      seen.length = 0;
      await writeFile(
        cfgPath,
        JSON.stringify({ pools: [{ ...pool, name: "a-open", hfTokenFile: join(tokens, "team_a-open") }, pool] }),
      );
      const both = await start("cache-both");
      try {
        await until(() => both.router.poolNames().includes("p"));
        expect(both.router.poolNames()).toEqual(["p"]);
        await until(() => both.router.unloadedPools().some((u) => u.name === "a-open" && /401/.test(u.error ?? "")));
        expect(new Set(seen)).toEqual(new Set(["Bearer pool-token", "Bearer router-token"]));
      } finally {
        await both.close();
      }
      // no key for the pool in the router's Secret: the router's own token, which this repository refuses
      seen.length = 0;
      await writeFile(cfgPath, JSON.stringify({ pools: [{ ...pool, hfTokenFile: join(tokens, "team_other") }] }));
      const without = await start("cache-no-token");
      try {
        await until(() => without.router.unloadedPools().some((u) => /401/.test(u.error ?? "")));
        expect(new Set(seen)).toEqual(new Set(["Bearer router-token"]));
      } finally {
        await without.close();
      }
    } finally {
      if (before === undefined) delete process.env.HF_TOKEN;
      else process.env.HF_TOKEN = before;
      await new Promise((r) => mirror.close(r));
    }
    // bad values are refused naming the field
    await writeFile(cfgPath, JSON.stringify({ pools: [{ ...pool, hfTokenFile: "team_p" }] }));
    await expect(start("x")).rejects.toThrow(/pools\[0\]\.hfTokenFile: must be an absolute path/);
    const { hfEndpoint: _e, ...local } = pool;
    await writeFile(cfgPath, JSON.stringify({ pools: [{ ...local, checkpoint: join(dir, "ckpt") }] }));
    await expect(start("x")).rejects.toThrow(/pools\[0\]\.hfTokenFile: goes with an hf:\/\/ checkpoint/);
  });

  it("a URL checkpoint that cannot be downloaded leaves its pool unloaded with the reason, the others served", async () => {
    const cfgPath = join(dir, "router-bad-url.json");
    const good = {
      name: "p",
      checkpoint: join(dir, "ckpt"),
      planFile: join(dir, "plan.json"),
      endpoints: { w0: `127.0.0.1:${workers[0].port}`, w1: `127.0.0.1:${workers[1].port}` },
    };
    // a port nothing listens on: the connection is refused
    const gone = { ...good, name: "gone", checkpoint: "http://127.0.0.1:1/ckpt/" };
    await writeFile(cfgPath, JSON.stringify({ pools: [good, gone] }));
    const lines: string[] = [];
    const app2 = await startRouterApp({
      config: cfgPath,
      port: 0,
      metricsPort: null,
      host: "127.0.0.1",
      checkpointCache: join(dir, "cache-bad"),
      log: (l) => lines.push(l),
    });
    try {
      expect(app2.router.poolNames()).toEqual(["p"]);
      await until(() => app2.router.unloadedPools()[0]?.error.includes("failed") ?? false);
      expect(app2.router.unloadedPools()[0].error).toMatch(
        /^pools\[1\]\.checkpoint: the download of the router's tensors of http:\/\/127\.0\.0\.1:1\/ckpt\/ failed \(retried in \d+ s\): /,
      );
      expect(lines.some((l) => l.includes("failed (retrying in 30 s)"))).toBe(true);
    } finally {
      await app2.close();
    }
  });

  it("follows a config the operator wrote gzipped (router.json pointing at router.json.gz), and its changes", async () => {
    const cfgPath = join(dir, "router.json");
    const gzConfig = (v: number, holder: number) =>
      gzipSync(
        JSON.stringify({
          pools: [
            {
              name: "p",
              checkpoint: join(dir, "ckpt"),
              plan: plan(v, holder),
              endpoints: { w0: `127.0.0.1:${workers[0].port}`, w1: `127.0.0.1:${workers[1].port}` },
            },
          ],
        }),
      );
    await writeFile(join(dir, "router.json.gz"), gzConfig(10, 1));
    await writeFile(cfgPath, JSON.stringify({ gzipFile: "router.json.gz" }));
    // An earlier test started and closed another router on this same file: its close must leave this one's watch
    // (unwatchFile(path) without the listener stopped every watch of the path).
    await until(async () => (await version()) === 10);
    // Only the gzipped document changes (the pointer stays): followed all the same.
    await writeFile(join(dir, "router.json.gz"), gzConfig(11, 0));
    await until(async () => (await version()) === 11);
    const before = workers[0].rows;
    await forward();
    expect(workers[0].rows).toBeGreaterThan(before);

    // A pointer to a file that is not gzip: the running config stays, the log names the file.
    await writeFile(join(dir, "router.json.gz"), "not gzip");
    await until(() => logs.some((l) => l.includes("config.gzipFile") && l.includes("not a gzip stream")));
    expect(await version()).toBe(11);
    await forward();
  });

  it("parses its command line, flags over env", () => {
    expect(
      parseRouterArgs(["--config", "/c.json", "--port=1"], { SWITCHYARD_PORT: "2", SWITCHYARD_METRICS_PORT: "3" }),
    ).toEqual({
      config: "/c.json",
      port: 1,
      metricsPort: 3,
      dataPort: 50052,
      host: "0.0.0.0",
      workerTransport: "auto",
    });
    expect(parseRouterArgs(["--config", "x", "--data-port", "-1"], {}).dataPort).toBeNull();
    expect(parseRouterArgs(["--config", "x"], { SWITCHYARD_DATA_PORT: "0" }).dataPort).toBe(0);
    expect(() => parseRouterArgs(["--config", "x", "--data-port", "-2"], {})).toThrow(
      /--data-port: must be a port number or -1 \(off\), got "-2"/,
    );
    expect(parseRouterArgs(["--config", "x", "--worker-transport", "grpc"], {}).workerTransport).toBe("grpc");
    expect(() => parseRouterArgs(["--config", "x", "--worker-transport", "tcp"], {})).toThrow(
      /--worker-transport: expected auto or grpc, got "tcp"/,
    );
    expect(() => parseRouterArgs([], {})).toThrow(/--config: required/);
    expect(() => parseRouterArgs(["--config", "x", "--port", "http"], {})).toThrow(/--port: must be a port number/);
    expect(() => parseRouterArgs(["--cfg", "x"], {})).toThrow(/unknown flag --cfg/);
  });
});
