// The router process: config file -> pools (checkpoint model, plan, endpoints, policy), reloaded without restart
// when the config or a plan file changes (polling stat, which also sees Kubernetes' ConfigMap symlink swaps).
// A bad reload keeps the running config and logs the error naming the field.

import { createHash } from "node:crypto";
import { type Stats, unwatchFile, watchFile } from "node:fs";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fetchCheckpointTensors, routerTensorNames, validatePlan } from "@switchyard/moe";
import { CheckpointModel } from "./checkpoint-model.js";
import { type PlacementPlan, parsePlan, parseRouterConfig, type RouterConfig } from "./config.js";
import { readConfigFile } from "./config-file.js";
import { nativeCombineStatus } from "./core/native-combine.js";
import type { WorkerTransport } from "./dispatch/worker-conn.js";
import { type PoolSetup, Router } from "./router.js";
import { type StartedRouter, serveRouter } from "./server.js";

export interface RouterAppOptions {
  config: string;
  port: number;
  metricsPort: number | null;
  /** The engines' TCP data path: a port (0: any free one), null / absent: off. */
  dataPort?: number | null;
  host?: string;
  workerTransport?: WorkerTransport;
  /**
   * Where a pool whose checkpoint is a URI (an ExpertPool's checkpoint.uri) gets the router's tensors downloaded,
   * one directory per URI; default: the OS temp dir's switchyard-checkpoints.
   */
  checkpointCache?: string;
  /** stat polling interval for config and plan files */
  watchIntervalMs?: number;
  log?: (line: string) => void;
}

export interface RouterApp {
  router: Router;
  server: StartedRouter;
  /** Re-reads config and plans now; resolves true when applied. */
  reload(): Promise<boolean>;
  close(): Promise<void>;
}

async function readJson(path: string, what: string): Promise<unknown> {
  const text = await readFile(path, "utf8").catch((e: Error) => {
    throw new Error(`${what} ${path}: cannot read (${e.message})`);
  });
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${what} ${path}: not valid JSON (${(e as Error).message})`);
  }
}

/**
 * A pool's Hub token from its file (the router's optional Secret, one key per pool); undefined when there is no such
 * file, so the router's own HF_TOKEN applies. Other read errors throw (the download fails with the reason).
 */
async function poolToken(path: string): Promise<string | undefined> {
  try {
    return (await readFile(path, "utf8")).trim() || undefined;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new Error(`hfTokenFile ${path}: cannot read (${(e as Error).message})`);
  }
}

/**
 * What a pool's checkpoint is downloaded, cached and opened by: the URI with the pool's own Hub mirror and token file,
 * so that two teams' pools on one repository do not share a download (one's refused token failing the other's pool)
 * or tensors one of them could not fetch. A pool with neither keeps the URI alone (and its cache directory).
 */
function sourceKey(checkpoint: string, hfEndpoint: string | null, hfTokenFile: string | null): string {
  return hfEndpoint === null && hfTokenFile === null
    ? checkpoint
    : JSON.stringify([checkpoint, hfEndpoint, hfTokenFile]);
}

/** A URL scheme (https://, hf://): a checkpoint to download rather than a directory. */
const URI = /^[a-z][a-z0-9+.-]*:\/\//i;
/** After a failed download of a URI checkpoint's router tensors, the next try. */
const DOWNLOAD_RETRY_MS = 30_000;

interface Download {
  dir: string;
  started: number;
  state: "loading" | "done" | "failed";
  error?: string;
  retryAt?: number;
}

export async function startRouterApp(o: RouterAppOptions): Promise<RouterApp> {
  const log = o.log ?? ((l: string) => console.log(`[router] ${l}`));
  const router = new Router({ workerTransport: o.workerTransport });
  log(`combine: ${nativeCombineStatus()}`);
  const models = new Map<string, CheckpointModel>();
  // Each path's own listener: unwatchFile(path) alone would also stop another app's watch of the same file.
  const watched = new Map<string, (cur: Stats, prev: Stats) => void>();

  // Downloads of URI checkpoints run beside the config, not inside an apply: a pool whose download is under way (or
  // failed, until its retry) is unloaded with that reason, the other pools' changes apply meanwhile, and the router
  // starts serving (/healthz) before a download of gigabytes is done. A finished download triggers a reload.
  const downloads = new Map<string, Download>();
  const stopDownloads = new AbortController();

  const startDownload = (uri: string, hfEndpoint: string | null, hfTokenFile: string | null): Download => {
    const key = sourceKey(uri, hfEndpoint, hfTokenFile);
    const dir = join(
      o.checkpointCache ?? join(tmpdir(), "switchyard-checkpoints"),
      createHash("sha256").update(key).digest("hex").slice(0, 16),
    );
    const d: Download = { dir, started: Date.now(), state: "loading" };
    downloads.set(key, d);
    // a pool's own Hub mirror (ExpertPool checkpoint.endpoint) over the router's HF_ENDPOINT, and its own token (read
    // at each try: a key added to the router's Secret after a refused download is used by the retry)
    const download = async () => {
      const env: NodeJS.ProcessEnv = { ...process.env, ...(hfEndpoint ? { HF_ENDPOINT: hfEndpoint } : {}) };
      const token = hfTokenFile ? await poolToken(hfTokenFile) : undefined;
      if (token !== undefined) env.HF_TOKEN = token;
      log(
        `checkpoint ${uri}: downloading the router's tensors with ${token !== undefined ? `the pool's token (${hfTokenFile})` : env.HF_TOKEN ? "the router's HF_TOKEN" : "no token"}`,
      );
      return fetchCheckpointTensors(uri, dir, routerTensorNames, { log, signal: stopDownloads.signal, env });
    };
    download().then(
      (r) => {
        d.state = "done";
        log(`checkpoint ${uri}: the router's ${r.tensors} tensors in ${dir} (${r.bytes} bytes downloaded)`);
        if (!stopDownloads.signal.aborted) void reload();
      },
      (e: Error) => {
        if (stopDownloads.signal.aborted) return;
        d.state = "failed";
        d.error = e.message;
        d.retryAt = Date.now() + DOWNLOAD_RETRY_MS;
        log(
          `checkpoint ${uri}: the download of the router's tensors failed (retrying in ${DOWNLOAD_RETRY_MS / 1000} s): ${e.message}`,
        );
        setTimeout(() => void reload(), DOWNLOAD_RETRY_MS).unref();
        void reload(); // the pool's reason changes from "downloading" to the failure
      },
    );
    return d;
  };

  /**
   * The directory to open for a pool's checkpoint: the path itself, or for a URI the router's share of it (gate,
   * correction bias, shared expert: fetchCheckpointTensors, HTTP range reads) once downloaded into the cache; until
   * then throws why (the pool is unloaded with that reason).
   */
  const localCheckpoint = (checkpoint: string, hfEndpoint: string | null, hfTokenFile: string | null): string => {
    if (!URI.test(checkpoint)) return checkpoint;
    let d = downloads.get(sourceKey(checkpoint, hfEndpoint, hfTokenFile));
    if (!d || (d.state === "failed" && Date.now() >= (d.retryAt ?? 0)))
      d = startDownload(checkpoint, hfEndpoint, hfTokenFile);
    if (d.state === "done") return d.dir;
    if (d.state === "failed")
      throw new Error(
        `the download of the router's tensors of ${checkpoint} failed (retried in ${Math.max(0, Math.round(((d.retryAt ?? 0) - Date.now()) / 1000))} s): ${d.error}`,
      );
    throw new Error(
      `downloading the router's tensors of ${checkpoint} (for ${Math.round((Date.now() - d.started) / 1000)} s); the pool loads when it is done`,
    );
  };

  /** One pool of the config, ready for router.setPool; throws naming the field. */
  const poolSetup = async (p: RouterConfig["pools"][number], i: number): Promise<PoolSetup> => {
    const source = sourceKey(p.checkpoint, p.hfEndpoint, p.hfTokenFile);
    let model = models.get(source);
    if (!model) {
      try {
        model = await CheckpointModel.open(localCheckpoint(p.checkpoint, p.hfEndpoint, p.hfTokenFile));
      } catch (e) {
        throw new Error(`pools[${i}].checkpoint: ${(e as Error).message}`);
      }
      models.set(source, model);
    }
    let plan: PlacementPlan;
    if (p.planFile) {
      const raw = await readJson(p.planFile, `pools[${i}].planFile`);
      plan = parsePlan(raw, `pools[${i}].planFile`);
    } else plan = p.plan!;
    try {
      validatePlan(plan, {
        layers: model.layers,
        experts: model.experts,
        sharedSlices: model.sharedSlices,
        // an empty row is right for a dense layer only (the operator gives those none)
        isMoeLayer: (l) => model.isMoeLayer(l),
      });
    } catch (e) {
      throw new Error(`pools[${i}].plan: ${(e as Error).message}`);
    }
    return { name: p.name, model, plan, endpoints: p.endpoints, policy: p.policy };
  };

  /**
   * Applies the config file. A file that does not parse changes nothing (throws). Otherwise each pool stands alone:
   * one the router cannot load (its checkpoint unreadable from here, a bad plan file, a policy its model refuses)
   * keeps its running version if it has one, is listed in GET /pools as unloaded with the reason, and its requests
   * are told that reason; the other pools are applied. Returns the pools that failed.
   */
  const apply = async (): Promise<string[]> => {
    const file = await readConfigFile(o.config);
    for (const f of file.files) watch(f);
    const cfg = parseRouterConfig(file.doc);
    const failed: string[] = [];
    const applied: string[] = [];
    for (const [i, p] of cfg.pools.entries()) {
      try {
        const setup = await poolSetup(p, i);
        router.setPool(setup);
        router.setUnloaded(p.name, null);
        applied.push(`${p.name} (plan v${setup.plan.version})`);
      } catch (e) {
        const why = (e as Error).message;
        router.setUnloaded(p.name, why);
        failed.push(`${p.name}: ${why}`);
      }
      if (p.planFile) watch(p.planFile);
    }
    for (const name of router.poolNames()) if (!cfg.pools.some((p) => p.name === name)) router.removePool(name);
    for (const u of router.unloadedPools())
      if (!cfg.pools.some((p) => p.name === u.name)) router.setUnloaded(u.name, null);
    log(`config applied: ${applied.join(", ") || "no pools"}`);
    for (const f of failed) log(`pool not loaded (a running version of it keeps serving): ${f}`);
    return failed;
  };

  /** True when the config and every pool in it applied. */
  // Reloads run one at a time, in order: two applies at once could finish out of order (an older config's pool
  // set applied over a newer one's).
  let last: Promise<boolean> = Promise.resolve(true);
  const reload = (): Promise<boolean> => {
    const run = async () => {
      try {
        return (await apply()).length === 0;
      } catch (e) {
        log(`config not applied, keeping the running one: ${(e as Error).message}`);
        return false;
      }
    };
    last = last.then(run, run);
    return last;
  };

  const interval = o.watchIntervalMs ?? 1000;
  let pending: NodeJS.Timeout | null = null;
  const onChange = () => {
    if (pending) clearTimeout(pending);
    pending = setTimeout(() => void reload(), 50); // coalesce the writes of one update
  };
  function watch(path: string) {
    if (watched.has(path)) return;
    const listener = (cur: Stats, prev: Stats) => {
      if (cur.mtimeMs !== prev.mtimeMs || cur.size !== prev.size || cur.ino !== prev.ino) onChange();
    };
    watched.set(path, listener);
    watchFile(path, { interval, persistent: false }, listener);
  }

  // The first load's file must parse (a router without config has nothing to serve); a pool that cannot be loaded
  // does not keep the others from serving.
  // In the reloads' line too: a download that finishes meanwhile reloads after it.
  const first = apply();
  last = first.then(
    (failed) => failed.length === 0,
    () => false,
  );
  await first;
  watch(o.config);
  const server = await serveRouter(router, {
    port: o.port,
    host: o.host,
    metricsPort: o.metricsPort,
    dataPort: o.dataPort,
    log,
  });
  log(
    `serving ${router.poolNames().join(", ")} on :${server.port}${server.dataPort !== null ? `, data path on :${server.dataPort}` : ""}${server.metricsPort ? `, metrics on :${server.metricsPort}` : ""}`,
  );
  return {
    router,
    server,
    reload,
    async close() {
      stopDownloads.abort();
      if (pending) clearTimeout(pending);
      for (const [p, listener] of watched) unwatchFile(p, listener);
      await server.close();
      router.close();
    },
  };
}
