// Load signals from a real Prometheus server (Debian `prometheus`, started here on a random port with a temp
// config and data dir). A fake exporter plays two workers' /metrics; Prometheus scrapes it every second; the
// router's PrometheusSignals client queries it. Fresh: the router routes away from the worker Prometheus says is
// queued up. Stale (Prometheus stopped): after stalenessMs the router says stale and decides on its own counters.
// Unreachable or slow: stale at once, no hang.

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { createServer as createNetServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resolveRoutingPolicy } from "@switchyard/moe";
import { DType, encodeTensor } from "@switchyard/protocol";
import { FakeWorker, type PoolModel, PrometheusSignals, Router } from "@switchyard/router-service";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const PROMETHEUS = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"].find((p) => existsSync(p));
// Locally a missing binary skips with the reason printed; under CI it fails, since CI installs it.
const SKIP = !PROMETHEUS && process.env.CI !== "true";
if (SKIP)
  console.warn(
    "load-signals test skipped: no prometheus binary (Debian package `prometheus`; scripts/ci/install-system-deps.sh installs it)",
  );

function freePort(): Promise<number> {
  return new Promise((res) => {
    const s = createNetServer();
    s.listen(0, "127.0.0.1", () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => res(p));
    });
  });
}

async function until<T>(
  what: string,
  f: () => Promise<T | null | undefined | false>,
  timeoutMs: number,
  giveUp: () => boolean = () => false,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f().catch(() => null);
    if (giveUp()) throw new Error(`gave up waiting for ${what}`);
    if (v) return v as T;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// One layer, two experts, both on both workers: the choice between w0 and w1 is pure load.
const model: PoolModel = {
  family: "toy",
  layers: 1,
  experts: 2,
  hiddenSize: 4,
  hasShared: false,
  isMoeLayer: () => true,
  logits: (_l, _h, T) => new Float32Array(T * 2),
  route: (_l, _logits, T) => ({
    tokens: T,
    slots: 1,
    experts: new Int32Array(T),
    weights: new Float32Array(T).fill(1),
  }),
  shared: () => null,
};

/**
 * Two installs' pools of one name, "p", in namespaces prod and staging, each with a worker pod w0 (worker ids are pod
 * names): only the namespace (the scrape's target label in a cluster, the exporter's own label here) tells them apart.
 */
const SAME_NAMED = [
  "# TYPE switchyard_worker_queued_rows gauge",
  'switchyard_worker_queued_rows{pool="p",namespace="prod",worker="w0"} 500',
  'switchyard_worker_queued_rows{pool="p",namespace="staging",worker="w0"} 9',
  "",
].join("\n");

describe.skipIf(SKIP)("load signals from a real Prometheus", () => {
  let dir: string;
  let prom: ChildProcess | null = null;
  let promPort: number;
  let exporter: Server;
  const workers = [new FakeWorker({ id: "w0", expert: null }), new FakeWorker({ id: "w1", expert: null })];
  // what the exporter reports: w0 is swamped
  const depth: Record<string, number> = { w0: 500, w1: 0 };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sy-prom-"));
    exporter = createServer((req, res) => {
      if (req.url !== "/metrics") return void res.writeHead(404).end();
      res.writeHead(200, { "Content-Type": "text/plain; version=0.0.4" });
      res.end(
        `# TYPE switchyard_worker_queue_depth gauge\n${Object.entries(depth)
          .map(([w, v]) => `switchyard_worker_queue_depth{pool="p",worker="${w}"} ${v}`)
          .join("\n")}\n${SAME_NAMED}`,
      );
    });
    await new Promise<void>((r) => exporter.listen(0, "127.0.0.1", () => r()));
    const exporterPort = (exporter.address() as { port: number }).port;
    await writeFile(
      join(dir, "prometheus.yml"),
      `global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: workers\n    static_configs:\n      - targets: ["127.0.0.1:${exporterPort}"]\n`,
    );
    if (!PROMETHEUS)
      throw new Error("no prometheus binary: run scripts/ci/install-system-deps.sh (Debian `prometheus`)");
    // The free port can be taken between probing and Prometheus binding it (other suites run beside this one):
    // a Prometheus that exits during start-up is started again on a new port.
    for (let attempt = 1; ; attempt++) {
      promPort = await freePort();
      prom = spawn(
        PROMETHEUS,
        [
          `--config.file=${join(dir, "prometheus.yml")}`,
          `--storage.tsdb.path=${join(dir, "data")}`,
          `--web.listen-address=127.0.0.1:${promPort}`,
          "--log.level=warn",
        ],
        { stdio: ["ignore", "ignore", "pipe"] },
      );
      let stderr = "";
      prom.stderr!.on("data", (c: Buffer) => {
        stderr += c.toString();
      });
      const started = prom;
      try {
        // Ready and holding a scrape of both workers.
        await until(
          "prometheus to scrape the exporter",
          async () => {
            if (started.exitCode !== null)
              throw new Error(`prometheus exited ${started.exitCode}: ${stderr.slice(-500)}`);
            const r = await fetch(`http://127.0.0.1:${promPort}/api/v1/query?query=switchyard_worker_queue_depth`);
            const b = (await r.json()) as { data?: { result?: unknown[] } };
            return (b.data?.result?.length ?? 0) >= 2;
          },
          90_000,
          () => started.exitCode !== null,
        );
        break;
      } catch (e) {
        if (started.exitCode === null) started.kill("SIGKILL");
        if (attempt >= 3) throw new Error(`${(e as Error).message}; prometheus stderr: ${stderr.slice(-500)}`);
      }
    }
    for (const w of workers) await w.start();
  }, 300_000);

  afterAll(async () => {
    if (prom && prom.exitCode === null) prom.kill("SIGKILL");
    for (const w of workers) w.stop();
    exporter?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const policy = (url: string | null, extra: Record<string, unknown> = {}) =>
    resolveRoutingPolicy({
      placement: { cacheAffinity: 0, load: 1, latency: 0 },
      loadSignals: {
        prometheusUrl: url,
        queries: { queueDepth: 'sum by (worker) (switchyard_worker_queue_depth{pool="$pool"})', latencySeconds: null },
        refreshMs: 200,
        stalenessMs: 1500,
        timeoutMs: 500,
        ...extra,
      },
    });

  it("fresh: reads per-worker queue depth, and the router routes around the busy worker", async () => {
    const s = new PrometheusSignals(policy(`http://127.0.0.1:${promPort}`).loadSignals, "p");
    expect(s.stale).toBe(true); // nothing read yet
    await s.refresh();
    expect(s.lastError).toBeNull();
    expect(s.stale).toBe(false);
    expect(s.fresh()!.queueDepth.get("w0")).toBe(500);
    expect(s.fresh()!.queueDepth.get("w1")).toBe(0);

    const router = new Router({ statusIntervalMs: 0 });
    try {
      router.setPool({
        name: "p",
        model,
        plan: {
          version: 1,
          pool: "p",
          workers: ["w0", "w1"],
          replicas: [
            [
              [0, 1],
              [0, 1],
            ],
          ],
        },
        endpoints: { w0: `127.0.0.1:${workers[0].port}`, w1: `127.0.0.1:${workers[1].port}` },
        policy: policy(`http://127.0.0.1:${promPort}`),
      });
      await until("router signals fresh", async () => !router.signalsStale("p"), 5000);
      const before = workers.map((w) => w.rows);
      for (let i = 0; i < 5; i++) {
        await router.forward({
          pool: "p",
          layer: 0,
          hidden: encodeTensor(new Float32Array(8), [2, 4], DType.FLOAT32),
          gate: undefined,
          requestId: 0n,
        });
      }
      expect(workers[0].rows - before[0]).toBe(0);
      expect(workers[1].rows - before[1]).toBe(10);
      router.sampleGauges();
      expect(await router.metrics.registry.getSingleMetricAsString("switchyard_router_load_signal_stale")).toMatch(
        /pool="p"} 0/,
      );
    } finally {
      router.close();
    }
  });

  it("the default queries read the pool's own namespace: same-named pools of two installs do not add up", async () => {
    const url = `http://127.0.0.1:${promPort}`;
    const defaults = resolveRoutingPolicy({ loadSignals: { prometheusUrl: url, refreshMs: 200, timeoutMs: 500 } });
    const quiet = () => {};
    // the router of the prod install, which serves its own namespace's pool as "p" (POD_NAMESPACE prod)
    const prod = new PrometheusSignals(defaults.loadSignals, "p", undefined, undefined, quiet, "prod");
    await prod.refresh();
    expect(prod.lastError).toBeNull();
    expect([...prod.fresh()!.queueDepth]).toEqual([["w0", 500]]);
    const staging = new PrometheusSignals(defaults.loadSignals, "p", undefined, undefined, quiet, "staging");
    await staging.refresh();
    expect([...staging.fresh()!.queueDepth]).toEqual([["w0", 9]]);
    // a router that cannot tell its namespace (no POD_NAMESPACE) reads both, as every router did before $namespace
    const unknown = new PrometheusSignals(defaults.loadSignals, "p", undefined, undefined, quiet, null);
    await unknown.refresh();
    expect([...unknown.fresh()!.queueDepth]).toEqual([["w0", 509]]);
  });

  it("stale: once Prometheus stops answering, signals age out and the router falls back to its own counters", async () => {
    const router = new Router({ statusIntervalMs: 0 });
    try {
      router.setPool({
        name: "p",
        model,
        plan: {
          version: 1,
          pool: "p",
          workers: ["w0", "w1"],
          replicas: [
            [
              [0, 1],
              [0, 1],
            ],
          ],
        },
        endpoints: { w0: `127.0.0.1:${workers[0].port}`, w1: `127.0.0.1:${workers[1].port}` },
        policy: policy(`http://127.0.0.1:${promPort}`),
      });
      await until("router signals fresh", async () => !router.signalsStale("p"), 5000);
      prom!.kill("SIGKILL");
      await new Promise((r) => prom!.once("exit", r));
      // Still fresh right after: the last good answer is younger than stalenessMs.
      expect(router.signalsStale("p")).toBe(false);
      await until("signals to go stale", async () => router.signalsStale("p"), 5000);
      router.sampleGauges();
      expect(await router.metrics.registry.getSingleMetricAsString("switchyard_router_load_signal_stale")).toMatch(
        /pool="p"} 1/,
      );
      // Own counters: nothing outstanding anywhere, so the tie goes to w0, which Prometheus had called busy.
      const before = workers.map((w) => w.rows);
      await router.forward({
        pool: "p",
        layer: 0,
        hidden: encodeTensor(new Float32Array(8), [2, 4], DType.FLOAT32),
        gate: undefined,
        requestId: 0n,
      });
      expect(workers[0].rows - before[0]).toBe(2);
      expect(workers[1].rows - before[1]).toBe(0);
    } finally {
      router.close();
    }
  });

  it("unreachable or slow Prometheus: stale at once, the query times out instead of hanging", async () => {
    const closed = await freePort();
    const down = new PrometheusSignals(policy(`http://127.0.0.1:${closed}`).loadSignals, "p");
    await down.refresh();
    expect(down.stale).toBe(true);
    expect(down.lastError).toMatch(/fetch failed|ECONNREFUSED/);

    // accepts connections, never answers
    const hang = createServer(() => {});
    await new Promise<void>((r) => hang.listen(0, "127.0.0.1", () => r()));
    try {
      const slow = new PrometheusSignals(
        policy(`http://127.0.0.1:${(hang.address() as { port: number }).port}`).loadSignals,
        "p",
      );
      const t0 = Date.now();
      await slow.refresh();
      expect(Date.now() - t0).toBeLessThan(4000); // timeoutMs 500: the query was abandoned, not awaited
      expect(slow.stale).toBe(true);
      expect(slow.lastError).toMatch(/timeout|aborted/i);
    } finally {
      hang.closeAllConnections();
      hang.close();
    }
  });
});
