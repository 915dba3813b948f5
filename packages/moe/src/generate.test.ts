import { execFile, spawnSync } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openCheckpoint, readLayerFloat32 } from "./checkpoint.js";
import { routerLogits } from "./gating.js";
import {
  checkpointTempDir,
  generateCheckpoint,
  generateCheckpointAtomic,
  removeStaleCheckpointTemps,
  uniformTensor,
} from "./generate.js";
import { referenceMoeBlock } from "./reference.js";

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "gen-"));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const small = { layers: 2, hiddenSize: 32, intermediateSize: 48 } as const;

describe("generateCheckpoint", () => {
  it("is deterministic per seed, and sharding does not change the tensors", async () => {
    const a = await generateCheckpoint({ family: "qwen2-moe", dir: join(root, "a"), seed: 5, ...small });
    const b = await generateCheckpoint({ family: "qwen2-moe", dir: join(root, "b"), seed: 5, ...small });
    const c = await generateCheckpoint({ family: "qwen2-moe", dir: join(root, "c"), seed: 6, ...small });
    const s = await generateCheckpoint({ family: "qwen2-moe", dir: join(root, "s"), seed: 5, shards: 3, ...small });
    expect(await readFile(join(a.dir, "model.safetensors"))).toEqual(await readFile(join(b.dir, "model.safetensors")));
    expect(await readFile(join(a.dir, "model.safetensors"))).not.toEqual(
      await readFile(join(c.dir, "model.safetensors")),
    );
    expect((await readdir(s.dir)).sort()).toEqual([
      "config.json",
      "model-00001-of-00003.safetensors",
      "model-00002-of-00003.safetensors",
      "model-00003-of-00003.safetensors",
      "model.safetensors.index.json",
    ]);
    const index = JSON.parse(await readFile(join(s.dir, "model.safetensors.index.json"), "utf8"));
    expect(index.metadata.total_size).toBe(s.totalBytes);
    const ca = await openCheckpoint(a.dir);
    const cs = await openCheckpoint(s.dir);
    for (const l of [0, 1]) {
      const [x, y] = [await ca.readExpert(l, 7), await cs.readExpert(l, 7)];
      expect(x.down.data).toEqual(y.down.data);
    }
    await ca.close();
    await cs.close();
  });

  it("regenerated into the same directory, serves the new weights: the old shards and index are gone", async () => {
    const dir = join(root, "again");
    await generateCheckpoint({ family: "mixtral", dir, seed: 1, shards: 2, ...small });
    const fresh = await generateCheckpoint({ family: "mixtral", dir, seed: 2, ...small });
    expect((await readdir(dir)).sort()).toEqual(["config.json", "model.safetensors"]);
    const want = await generateCheckpoint({ family: "mixtral", dir: join(root, "again-ref"), seed: 2, ...small });
    const [c, r] = [await openCheckpoint(fresh.dir), await openCheckpoint(want.dir)];
    expect((await c.readExpert(1, 3)).down.data).toEqual((await r.readExpert(1, 3)).down.data);
    await c.close();
    await r.close();
  });

  it("writes config.json last, so that a run cut short leaves no directory that looks whole", async () => {
    const dir = join(root, "cut");
    // a shard path that cannot be written (a directory in its place) stands for a run killed half-way
    await generateCheckpoint({ family: "mixtral", dir, seed: 1, shards: 2, ...small });
    await rm(join(dir, "model-00002-of-00002.safetensors"));
    await mkdir(join(dir, "model-00002-of-00002.safetensors", "x"), { recursive: true });
    await expect(generateCheckpoint({ family: "mixtral", dir, seed: 1, shards: 2, ...small })).rejects.toThrow();
    expect(await readdir(dir)).not.toContain("config.json");
  });

  it("atomically: two runs at once each write their own temp directory; the first renamed into place stays", async () => {
    const parent = join(root, "atomic");
    const dir = join(parent, "mixtral-seed1");
    // interleaved on one event loop: each deletes and rewrites only its own files (in place, they clobbered each
    // other's shards and config.json)
    const [a, b] = await Promise.all([
      generateCheckpointAtomic({ family: "mixtral", dir, seed: 1, shards: 2, ...small }),
      generateCheckpointAtomic({ family: "mixtral", dir, seed: 1, shards: 2, ...small }),
    ]);
    expect([a.published, b.published].sort()).toEqual([false, true]);
    expect(a.dir).toBe(dir);
    expect(await readdir(parent)).toEqual(["mixtral-seed1"]); // the loser's temp directory is gone
    expect((await readdir(dir)).sort()).toEqual([
      "config.json",
      "model-00001-of-00002.safetensors",
      "model-00002-of-00002.safetensors",
      "model.safetensors.index.json",
    ]);
    const ref = await generateCheckpoint({ family: "mixtral", dir: join(root, "atomic-ref"), seed: 1, ...small });
    const [c, r] = [await openCheckpoint(dir), await openCheckpoint(ref.dir)];
    expect((await c.readExpert(1, 5)).up.data).toEqual((await r.readExpert(1, 5)).up.data);
    await c.close();
    await r.close();
  });

  it("atomically: a directory left without config.json (cut short in place) is replaced; a failure leaves no temp", async () => {
    const parent = join(root, "atomic2");
    const dir = join(parent, "ck");
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, "model-00001-of-00002.safetensors"), "partial");
    const g = await generateCheckpointAtomic({ family: "mixtral", dir, seed: 1, ...small });
    expect(g.published).toBe(true);
    expect((await readdir(dir)).sort()).toEqual(["config.json", "model.safetensors"]);
    expect(await readdir(parent)).toEqual(["ck"]);
    await expect(
      generateCheckpointAtomic({ family: "mixtral", dir: join(parent, "bad"), seed: 2 ** 32, ...small }),
    ).rejects.toThrow(/seed/);
    expect(await readdir(parent)).toEqual(["ck"]);
  });

  it("removes the temp directories of processes that have gone, not a live one's", async () => {
    const parent = join(root, "stale");
    // a pid that has exited: a child that ran and was reaped
    const dead = spawnSync(process.execPath, ["-e", "process.exit(0)"]).pid as number;
    const stale = checkpointTempDir(join(parent, "mixtral-tiny-seed1"), dead);
    const live = checkpointTempDir(join(parent, "mixtral-tiny-seed2"));
    for (const d of [stale, live, join(parent, "mixtral-tiny-seed3")]) {
      await mkdir(d, { recursive: true });
      await writeFile(join(d, "model.safetensors"), Buffer.alloc(1000));
    }
    const r = await removeStaleCheckpointTemps(parent);
    expect(r).toEqual({ removed: [stale.slice(parent.length + 1)], bytes: 1000 });
    expect((await readdir(parent)).sort()).toEqual(["mixtral-tiny-seed3", live.slice(parent.length + 1)].sort());
    expect(await removeStaleCheckpointTemps(join(root, "nowhere"))).toEqual({ removed: [], bytes: 0 });
  });

  it("has a realistic init scale: router logits and block outputs stay O(1) for O(1) inputs", async () => {
    for (const family of ["mixtral", "qwen2-moe", "deepseek-v3"] as const) {
      const g = await generateCheckpoint({
        family,
        dir: join(root, `scale-${family}`),
        seed: 1,
        layers: 1,
        hiddenSize: 256,
        intermediateSize: 512,
      });
      const ckpt = await openCheckpoint(g.dir);
      const w = await readLayerFloat32(ckpt, 0);
      const h = uniformTensor(9, "h", 16 * 256, Math.sqrt(3)); // std 1
      const rms = (a: Float32Array) => Math.sqrt(a.reduce((s, v) => s + v * v, 0) / a.length);
      const logits = routerLogits(h, w.gate, 256);
      expect(rms(logits)).toBeGreaterThan(0.3);
      expect(rms(logits)).toBeLessThan(3);
      const y = referenceMoeBlock(ckpt.spec, w, h).output;
      expect(rms(y)).toBeGreaterThan(0.05);
      expect(rms(y)).toBeLessThan(5);
      // routing spreads over experts (not all tokens on one)
      const r = referenceMoeBlock(ckpt.spec, w, h).routing;
      expect(new Set(r.ids).size).toBeGreaterThan(ckpt.spec.topK);
      await ckpt.close();
    }
  });

  it("uniformTensor has the requested range and std", () => {
    const v = uniformTensor(1, "t", 100_000, 0.5);
    let min = Infinity;
    let max = -Infinity;
    let ss = 0;
    for (const x of v) {
      min = Math.min(min, x);
      max = Math.max(max, x);
      ss += x * x;
    }
    expect(min).toBeGreaterThanOrEqual(-0.5);
    expect(max).toBeLessThan(0.5);
    expect(Math.sqrt(ss / v.length)).toBeCloseTo(0.5 / Math.sqrt(3), 2);
    expect(Array.from(uniformTensor(1, "t", 8, 1))).not.toEqual(Array.from(uniformTensor(1, "u", 8, 1)));
  });

  it("rejects bad options", async () => {
    await expect(generateCheckpoint({ family: "mixtral", dir: join(root, "bad"), topK: 9 })).rejects.toThrow(
      "spec.topK: 9 exceeds experts (8)",
    );
    await expect(generateCheckpoint({ family: "mixtral", dir: join(root, "bad"), shards: 0 })).rejects.toThrow(
      "shards: must be a positive integer, got 0",
    );
  });

  it("refuses a seed outside [0, 2^32) or not an integer (2^32 would write seed 0's tensors, 1.7 seed 1's)", async () => {
    for (const seed of [2 ** 32, 1.7, -1, Number.NaN]) {
      const dir = join(root, `bad-seed-${seed}`);
      await expect(generateCheckpoint({ family: "mixtral", dir, seed, ...small })).rejects.toThrow(
        `seed: must be an integer in [0, 2^32), got ${seed}`,
      );
      await expect(readdir(dir), "nothing written").rejects.toThrow(/ENOENT/);
    }
    expect(() => uniformTensor(2 ** 32, "t", 4, 1)).toThrow(/^seed: /);
    await expect(
      generateCheckpoint({ family: "mixtral", dir: join(root, "max-seed"), seed: 2 ** 32 - 1, ...small }),
    ).resolves.toMatchObject({ files: ["model.safetensors"] });
  });

  it("refuses a biasScale that is not a finite number >= 0", async () => {
    for (const biasScale of [-0.1, Number.NaN, Number.POSITIVE_INFINITY]) {
      const dir = join(root, `bad-bias-${biasScale}`);
      await expect(generateCheckpoint({ family: "deepseek-v3", dir, biasScale, ...small })).rejects.toThrow(
        `biasScale: must be a finite number >= 0, got ${biasScale}`,
      );
      await expect(readdir(dir), "nothing written").rejects.toThrow(/ENOENT/);
    }
  });

  it("--shared-experts 0 for a family with a gated shared expert turns the gate off too", async () => {
    const g = await generateCheckpoint({
      family: "qwen2-moe",
      dir: join(root, "no-shared"),
      sharedExperts: 0,
      ...small,
    });
    expect(g.spec).toMatchObject({ sharedExperts: 0, sharedIntermediateSize: 0, sharedExpertGate: false });
    const ckpt = await openCheckpoint(g.dir);
    expect(ckpt.spec).toEqual(g.spec);
    await ckpt.close();
  });
});

describe("generate-checkpoint CLI", () => {
  const run = promisify(execFile);
  const cli = join(import.meta.dirname, "cli", "generate-checkpoint.ts");
  const tsx = ["--import", "tsx", "--conditions=switchyard-source", cli];
  it("writes a checkpoint and reports it; bad flags exit 2 with a message", async () => {
    const dir = join(root, "cli");
    const { stdout } = await run(process.execPath, [
      ...tsx,
      "--family",
      "deepseek-v3",
      "--dir",
      dir,
      "--hidden-size",
      "16",
      "--intermediate-size",
      "8",
      "--shards",
      "2",
      "--seed",
      "3",
    ]);
    expect(stdout).toMatch(/wrote .*cli: deepseek-v3 layers=2 experts=16 d=16 f=8 top-k=4 bfloat16, 2 file\(s\)/);
    const ckpt = await openCheckpoint(dir);
    expect(ckpt.spec.hiddenSize).toBe(16);
    await ckpt.close();
    const err = await run(process.execPath, [...tsx, "--family", "llama", "--dir", dir]).catch((e) => e);
    expect(err.code).toBe(2);
    expect(err.stderr).toMatch(/--family: one of mixtral, qwen2-moe, qwen3-moe, deepseek-v3, custom/);
    const noShared = join(root, "cli-no-shared");
    const qwen = await run(process.execPath, [
      ...tsx,
      ...["--family", "qwen2-moe", "--dir", noShared, "--shared-experts", "0", "--hidden-size", "16"],
      ...["--intermediate-size", "8"],
    ]);
    expect(qwen.stdout).toMatch(/wrote .*cli-no-shared: qwen2-moe /);
    const seed = await run(process.execPath, [
      ...tsx,
      "--family",
      "mixtral",
      "--dir",
      dir,
      "--seed",
      "4294967296",
    ]).catch((e) => e);
    expect(seed.code).toBe(2);
    expect(seed.stderr).toMatch(/seed: must be an integer in \[0, 2\^32\), got 4294967296/);
  }, 60_000);
});
