// Plan reload as Kubernetes and editors do it: the plan file is never rewritten in place but replaced (a new file
// renamed over it; a mounted ConfigMap swaps its `..data` symlink to a new directory). Every replacement must reach
// the worker, not just the first. A plan file that does not parse names --plan and the file; of two reloads that
// overlap, the newer one's plan stays.

import { mkdir, mkdtemp, rename, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateCheckpoint, openCheckpoint } from "@switchyard/moe";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { checkpointSource, newestOnly, startWorker, type WorkerHandle, type WorkerOptions } from "./worker.js";

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "sy-worker-plan-"));
  await generateCheckpoint({
    family: "mixtral",
    dir,
    layers: 1,
    experts: 4,
    hiddenSize: 16,
    intermediateSize: 24,
    topK: 2,
    dtype: "float32",
    seed: 3,
  });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** One layer of 4 experts over w0 and w1; w0 holds `mine`. */
const plan = (version: number, mine: number[]) =>
  JSON.stringify({
    version,
    pool: "p",
    workers: ["w0", "w1"],
    replicas: [[0, 1, 2, 3].map((e) => [mine.includes(e) ? 0 : 1])],
  });

function start(
  planFile: string,
  checkpoint: WorkerOptions["checkpoint"] = dir,
  cacheCapacity = 4,
): Promise<WorkerHandle> {
  return startWorker({
    checkpoint,
    pool: "p",
    workerId: "w0",
    port: 0,
    metricsPort: 0,
    dataPort: -1,
    host: "127.0.0.1",
    backend: "cpu",
    plan: planFile,
    cacheCapacity,
    log: () => {},
  });
}

const served = (w: WorkerHandle) =>
  w.core
    .status()
    .served.map((k) => k.expert)
    .sort()
    .join();

async function until(w: WorkerHandle, want: string): Promise<string> {
  const deadline = Date.now() + 5_000;
  while (served(w) !== want && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
  return served(w);
}

describe("plan reload", () => {
  it("follows a plan file replaced by rename, again and again", async () => {
    const d = await mkdtemp(join(dir, "rename-"));
    const file = join(d, "plan.json");
    await writeFile(file, plan(1, [0]));
    const w = await start(file);
    try {
      await w.warmed;
      for (const [v, mine] of [
        [2, [1]],
        [3, [2]],
        [4, [3]],
      ] as const) {
        await writeFile(join(d, "plan.json.tmp"), plan(v, [...mine]));
        await rename(join(d, "plan.json.tmp"), file);
        expect(await until(w, String(mine[0]))).toBe(String(mine[0]));
      }
    } finally {
      await w.close();
    }
  });

  it("follows a mounted ConfigMap's symlink swaps", async () => {
    // the kubelet's layout: plan.json -> ..data/plan.json, ..data -> ..<timestamp>/, swapped by renaming a new link
    const d = await mkdtemp(join(dir, "cm-"));
    const version = async (v: number, mine: number[]) => {
      const ts = join(d, `..ts-${v}`);
      await mkdir(ts);
      await writeFile(join(ts, "plan.json"), plan(v, mine));
      await symlink(`..ts-${v}`, join(d, "..data_tmp"));
      await rename(join(d, "..data_tmp"), join(d, "..data"));
      if (v > 1) await rm(join(d, `..ts-${v - 1}`), { recursive: true });
    };
    await version(1, [0]);
    await symlink("..data/plan.json", join(d, "plan.json"));
    const w = await start(join(d, "plan.json"));
    try {
      await w.warmed;
      for (const [v, mine] of [
        [2, [1]],
        [3, [2]],
      ] as const) {
        await version(v, [...mine]);
        expect(await until(w, String(mine[0]))).toBe(String(mine[0]));
      }
    } finally {
      await w.close();
    }
  });

  it("a plan change during the start-up warm-up: ready with the new plan's experts, the old ones not kept", async () => {
    const d = await mkdtemp(join(dir, "mid-"));
    const file = join(d, "plan.json");
    await writeFile(file, plan(1, [0, 1]));
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const src = checkpointSource(await openCheckpoint(dir));
    // the first plan's reads are held until the second plan is in force
    const held = {
      ...src,
      readExpert: async (l: number, e: number) => {
        if (e < 2) await gate;
        return src.readExpert(l, e);
      },
    };
    const w = await start(file, held, 2);
    try {
      await writeFile(join(d, "plan.json.tmp"), plan(2, [2, 3]));
      await rename(join(d, "plan.json.tmp"), file);
      expect(await until(w, "2,3")).toBe("2,3");
      open();
      await w.warmed;
      const resident = () =>
        w.core
          .status()
          .resident.map((k) => k.expert)
          .sort()
          .join();
      expect(resident()).toBe("2,3");
      await new Promise((r) => setTimeout(r, 50)); // nothing of the old plan arrives later
      expect(resident()).toBe("2,3");
      expect(w.core.status().cacheEvictions).toBe(0n);
    } finally {
      await w.close();
      await src.close?.();
    }
  });
});

describe("cache capacity from the plan's share (no --cache-capacity: what the operator passes a pool by default)", () => {
  const startSized = (file: string, sizes: Pick<WorkerOptions, "cacheCapacity" | "hostCacheCapacity">) =>
    startWorker({
      checkpoint: dir,
      pool: "p",
      workerId: "w0",
      port: 0,
      metricsPort: 0,
      dataPort: -1,
      host: "127.0.0.1",
      backend: "cpu",
      plan: file,
      ...sizes,
      log: () => {},
    });
  const capacityMetric = async (w: WorkerHandle) => {
    const text = await (await fetch(`http://127.0.0.1:${w.metricsPort}/metrics`)).text();
    return Number(/^switchyard_worker_cache_capacity_experts\{[^}]*\} (\S+)$/m.exec(text)?.[1]);
  };

  it("follows the share: a scale-down's larger share is all kept, a scale-up's smaller one is shrunk to", async () => {
    const d = await mkdtemp(join(dir, "share-"));
    const file = join(d, "plan.json");
    await writeFile(file, plan(1, [0]));
    const w = await startSized(file, {});
    try {
      await w.warmed;
      expect(w.core.status().capacity).toBe(1);
      // the pool shrank: w0 now holds three experts, and keeps all three resident (the warm-up fills them)
      await writeFile(join(d, "plan.json.tmp"), plan(2, [0, 1, 2]));
      await rename(join(d, "plan.json.tmp"), file);
      expect(await until(w, "0,1,2")).toBe("0,1,2");
      expect(w.core.status().capacity).toBe(3);
      expect(await capacityMetric(w)).toBe(3);
      const deadline = Date.now() + 5_000;
      while (w.core.status().resident.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
      expect(w.core.status().resident).toHaveLength(3);
      expect(w.core.status().cacheEvictions).toBe(0n);
      // the pool grew again: two experts
      await writeFile(join(d, "plan.json.tmp"), plan(3, [2, 3]));
      await rename(join(d, "plan.json.tmp"), file);
      expect(await until(w, "2,3")).toBe("2,3");
      expect(w.core.status().capacity).toBe(2);
      expect(await capacityMetric(w)).toBe(2);
    } finally {
      await w.close();
    }
  });

  it("a capacity given by flag stays as given across plans", async () => {
    for (const sizes of [{ cacheCapacity: 2 }, { hostCacheCapacity: 2 }]) {
      const d = await mkdtemp(join(dir, "fixed-"));
      const file = join(d, "plan.json");
      await writeFile(file, plan(1, [0]));
      const w = await startSized(file, sizes);
      try {
        await writeFile(join(d, "plan.json.tmp"), plan(2, [0, 1, 2]));
        await rename(join(d, "plan.json.tmp"), file);
        expect(await until(w, "0,1,2")).toBe("0,1,2");
        expect(w.core.status().capacity).toBe(2);
      } finally {
        await w.close();
      }
    }
  });
});

describe("plan file errors and overlapping reloads", () => {
  it("a --plan file that is not JSON fails the start naming --plan and the file", async () => {
    const file = join(await mkdtemp(join(dir, "bad-")), "plan.json");
    await writeFile(file, "{ not json");
    await expect(start(file)).rejects.toThrow(new RegExp(`^--plan ${file.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}: `));
  });

  it("newestOnly: a read that settles after a newer one began is stale, whatever it read", async () => {
    const pending: { resolve: (v: number) => void; reject: (e: Error) => void }[] = [];
    const read = newestOnly(() => new Promise<number>((resolve, reject) => pending.push({ resolve, reject })));
    const older = read();
    const newer = read();
    pending[1].resolve(2);
    pending[0].resolve(1); // the older plan's read finishes last
    expect(await newer).toEqual({ value: 2 });
    expect(await older).toBe("stale");
    const failedOld = read();
    const latest = read();
    pending[2].reject(new Error("gone"));
    pending[3].resolve(3);
    expect(await failedOld).toBe("stale");
    expect(await latest).toEqual({ value: 3 });
    const alone = read();
    pending[4].reject(new Error("bad plan"));
    await expect(alone).rejects.toThrow("bad plan");
  });
});
