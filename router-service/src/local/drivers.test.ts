// The local mode's load generators against a real router (over fake workers): one driver on this thread and several
// in worker threads run every sequence, count every forward once and hand every answer to the check while it accepts.
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { generateCheckpoint } from "@switchyard/moe";
import { DType } from "@switchyard/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RouterApp, startRouterApp } from "../app.js";
import { FakeWorker } from "../testing/fake-worker.js";
import { addStats, type CheckJob, DriveStats, dealSequences } from "./drive.js";
import { startDrivers } from "./drivers.js";
import { DEFAULT_TRAFFIC } from "./loadgen.js";

// The threads run the compiled drive-thread.js (worker threads do not load TypeScript); npm test builds it first.
const SCRIPT = new URL("../../dist/local/drive-thread.js", import.meta.url);
const THREAD = { script: SCRIPT, execArgv: [] };
const built = existsSync(fileURLToPath(SCRIPT));
if (!built && process.env.CI === "true") throw new Error(`${fileURLToPath(SCRIPT)} missing in CI (tsc -b runs first)`);
if (!built) console.warn(`driver thread tests SKIPPED: ${fileURLToPath(SCRIPT)} not built (npm run build)`);

describe("dealSequences, addStats", () => {
  it("deals the sequences round-robin, never to more drivers than sequences", () => {
    expect(dealSequences(5, 2)).toEqual([
      [0, 2, 4],
      [1, 3],
    ]);
    expect(dealSequences(2, 4)).toEqual([[0], [1]]);
    expect(dealSequences(3, 1)).toEqual([[0, 1, 2]]);
  });
  it("adds counters, concatenates samples and keeps 5 error samples", () => {
    const a = new DriveStats();
    a.tokensDone = 3;
    a.latencies.push(1, 2);
    a.errorSamples.push("a", "b", "c");
    const b = new DriveStats();
    b.tokensDone = 4;
    b.unchecked = 2;
    b.routerMs.push(5);
    b.errorSamples.push("d", "e", "f");
    const s = addStats(new DriveStats(), a, b);
    expect(s).toMatchObject({ tokensDone: 7, unchecked: 2, latencies: [1, 2], routerMs: [5] });
    expect(s.errorSamples).toEqual(["a", "b", "c", "d", "e"]);
  });
});

describe("the local mode's drivers, through a router", () => {
  const D = 16;
  let dir: string;
  let app: RouterApp;
  let second: RouterApp; // a replica of the router over the same worker
  const worker = new FakeWorker({ id: "w0", expert: null });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sy-drivers-"));
    await generateCheckpoint({
      family: "mixtral",
      dir: join(dir, "ckpt"),
      layers: 2,
      hiddenSize: D,
      intermediateSize: 8,
      experts: 4,
    });
    await worker.start();
    const plan = { version: 1, pool: "local", workers: ["w0"], replicas: [0, 1].map(() => [[0], [0], [0], [0]]) };
    await writeFile(join(dir, "plan.json"), JSON.stringify(plan));
    await writeFile(
      join(dir, "router.json"),
      JSON.stringify({
        pools: [
          {
            name: "local",
            checkpoint: join(dir, "ckpt"),
            planFile: join(dir, "plan.json"),
            endpoints: { w0: `127.0.0.1:${worker.port}` },
          },
        ],
      }),
    );
    const start = () =>
      startRouterApp({
        config: join(dir, "router.json"),
        port: 0,
        metricsPort: null,
        dataPort: 0,
        host: "127.0.0.1",
        log: () => {},
      });
    app = await start();
    second = await start();
  });
  afterAll(async () => {
    await app?.close();
    await second?.close();
    worker.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const run = async (
    drivers: number,
    accepting: () => boolean,
    routers: RouterApp[] = [app],
    engineGate: string | undefined = undefined,
    engineBatch = 1,
    transport: "grpc" | "data" = "grpc",
  ) => {
    const jobs: CheckJob[] = [];
    const r = startDrivers(
      drivers,
      {
        routerAddresses: routers.map((r) => `127.0.0.1:${r.server.port}`),
        ...(transport === "data" ? { routerDataAddresses: routers.map((r) => `127.0.0.1:${r.server.dataPort}`) } : {}),
        layers: [0, 1],
        hidden: D,
        dtype: DType.BFLOAT16,
        prefill: 3,
        traffic: { ...DEFAULT_TRAFFIC, vocab: 64, hidden: D, seed: 1 },
        // threads first load their modules: on a loaded 2-core machine that alone took over 300 ms, and a thread
        // that starts after the end sends nothing (forwards 0)
        endAtEpochMs: Date.now() + (drivers > 1 ? 1500 : 300),
        ...(engineGate ? { engineGate } : {}),
        engineBatch,
      },
      5,
      {
        accepting,
        offer: (j) => {
          jobs.push(j);
          return true;
        },
      },
      THREAD,
    );
    const stats = addStats(new DriveStats(), ...(await r.done));
    return { stats, jobs, live: r.live() };
  };

  it.each([1, 2])("%i driver(s): every sequence runs, every answer is counted once and checked", async (drivers) => {
    if (drivers > 1 && !built) return;
    const { stats, jobs, live } = await run(drivers, () => true);
    expect(stats.errors).toBe(0);
    expect(stats.errorSamples).toEqual([]);
    // each of the 5 sequences sent at least its prefill step through both layers
    expect(stats.tokensDone).toBeGreaterThanOrEqual(5 * 3);
    expect(stats.forwards).toBeGreaterThanOrEqual(5 * 2);
    expect(stats.latencies).toHaveLength(stats.forwards);
    expect(jobs).toHaveLength(stats.forwards);
    expect(stats.unchecked).toBe(0);
    for (const j of jobs) {
      expect([0, 1]).toContain(j.layer);
      expect(j.hidden.length % D).toBe(0);
      expect(j.output.length).toBe(j.hidden.length);
    }
    expect(live.forwards).toBeLessThanOrEqual(stats.forwards);
  });

  it.skipIf(!built)("threads send nothing to check while the check does not accept, and count it", async () => {
    const { stats, jobs } = await run(2, () => false);
    expect(jobs).toHaveLength(0);
    expect(stats.unchecked).toBe(stats.forwards);
    expect(stats.forwards).toBeGreaterThan(0);
  });

  /** A metric's value summed over its series (a histogram's `_count` by its full name). */
  const metric = async (r: RouterApp, name: string, series = name) => {
    const text = await r.router.metrics.registry.getSingleMetricAsString(name);
    return [...text.matchAll(new RegExp(`^${series}\\{[^}]*\\} (\\S+)$`, "gm"))].reduce((a, m) => a + Number(m[1]), 0);
  };
  const tokens = (r: RouterApp) => metric(r, "switchyard_router_tokens_total");

  it.each([1, 2])(
    "%i driver(s) playing the engine send router logits: the router gates none itself",
    async (drivers) => {
      if (drivers > 1 && !built) return;
      const gated = () =>
        metric(app, "switchyard_router_gate_duration_seconds", "switchyard_router_gate_duration_seconds_count");
      const [gates0, tokens0] = [await gated(), await tokens(app)];
      const { stats, jobs } = await run(drivers, () => true, [app], join(dir, "ckpt"));
      expect(stats.errors).toBe(0);
      expect(stats.errorSamples).toEqual([]);
      expect(jobs).toHaveLength(stats.forwards);
      expect((await tokens(app)) - tokens0).toBe(2 * stats.tokensDone);
      expect((await gated()) - gates0).toBe(0); // no flush gated hidden states
      const own = await run(1, () => true); // the same run without: the router gates every flush
      expect(own.stats.errors).toBe(0);
      expect((await gated()) - gates0).toBeGreaterThan(0);
    },
  );

  it.each([1, 2])(
    "%i driver(s) batching like an engine: groups of sequences send one Forward per layer with every token of their step",
    async (drivers) => {
      if (drivers > 1 && !built) return;
      const tokens0 = await tokens(app);
      const { stats, jobs } = await run(drivers, () => true, [app], undefined, 2);
      expect(stats.errors).toBe(0);
      expect(jobs).toHaveLength(stats.forwards);
      expect((await tokens(app)) - tokens0).toBe(2 * stats.tokensDone);
      // 5 sequences: one driver groups [0, 1] [2, 3] [4]; two deal [0, 2, 4] and [1, 3], grouped [0, 2] [4] and [1, 3].
      // A pair's prefill is 2 x 3 tokens in one Forward, its decode steps 2 tokens; the single sequence's 3, then 1.
      const sizes = new Set(jobs.map((j) => j.hidden.length / D));
      expect(sizes.has(6)).toBe(true);
      for (const n of sizes) expect([6, 3, 2, 1]).toContain(n);
      // every Forward of a pair counts its two sequences' tokens: more tokens than forwards per layer
      expect(stats.tokensDone * 2).toBeGreaterThan(stats.forwards);
    },
  );

  it.each([1, 2])(
    "%i driver(s) on the router's TCP data path: every answer checked, the requests counted as ForwardData",
    async (drivers) => {
      if (drivers > 1 && !built) return;
      /** Requests answered, all of them or those of one method. */
      const requests = async (method = "") => {
        const text = await app.router.metrics.registry.getSingleMetricAsString("switchyard_router_requests_total");
        return [...text.matchAll(/^switchyard_router_requests_total\{([^}]*)\} (\S+)$/gm)]
          .filter((m) => m[1]?.includes(method))
          .reduce((a, m) => a + Number(m[2]), 0);
      };
      const [all0, data0] = [await requests(), await requests('method="ForwardData"')];
      const tokens0 = await tokens(app);
      const { stats, jobs } = await run(drivers, () => true, [app], undefined, 2, "data");
      expect(stats.errors).toBe(0);
      expect(stats.errorSamples).toEqual([]);
      expect(jobs).toHaveLength(stats.forwards);
      expect((await tokens(app)) - tokens0).toBe(2 * stats.tokensDone);
      // every request of the run came by the data path, none by gRPC
      expect((await requests('method="ForwardData"')) - data0).toBe(stats.forwards);
      expect((await requests()) - all0).toBe(stats.forwards);
    },
  );

  it.each(["grpc", "data"] as const)("deals the sequences over router replicas (%s)", async (transport) => {
    const before = [await tokens(app), await tokens(second)];
    const { stats } = await run(1, () => true, [app, second], undefined, 1, transport);
    expect(stats.errors).toBe(0);
    const gained = [(await tokens(app)) - before[0], (await tokens(second)) - before[1]];
    // 5 sequences: 0, 2 and 4 on the first router, 1 and 3 on the second; every token of each crosses both layers
    expect(gained[0]).toBeGreaterThan(0);
    expect(gained[1]).toBeGreaterThan(0);
    expect(gained[0] + gained[1]).toBe(2 * stats.tokensDone);
  });
});
