// generateCheckpoint({ threads }): shards written by worker threads are the same bytes as one at a time. The threads
// run the compiled generate-thread.js, so this test imports the compiled generator (npm test builds it first).
import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import type { generateCheckpoint as Generate } from "./generate.js";

const DIST = new URL("../dist/generate.js", import.meta.url);
const built = existsSync(fileURLToPath(new URL("../dist/generate-thread.js", import.meta.url)));
if (!built && process.env.CI === "true") throw new Error("packages/moe/dist missing in CI (tsc -b runs first)");
if (!built) console.warn("generator thread test SKIPPED: packages/moe/dist not built (npm run build)");

describe.skipIf(!built)("the generator's threads", () => {
  const dirs: string[] = [];
  afterAll(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

  it("write the same shards as one thread, and fail naming the shard when one cannot be written", async () => {
    const { generateCheckpoint } = (await import(DIST.href)) as { generateCheckpoint: typeof Generate };
    const opts = { family: "deepseek-v3" as const, seed: 9, layers: 4, hiddenSize: 32, intermediateSize: 16 };
    const one = await mkdtemp(join(tmpdir(), "sy-gen-1-"));
    const many = await mkdtemp(join(tmpdir(), "sy-gen-n-"));
    dirs.push(one, many);
    const a = await generateCheckpoint({ ...opts, dir: one, shards: 5 });
    const b = await generateCheckpoint({ ...opts, dir: many, shards: 5, threads: 3 });
    expect(b.files).toEqual(a.files);
    expect((await readdir(many)).sort()).toEqual((await readdir(one)).sort());
    for (const f of await readdir(one)) expect(await readFile(join(many, f))).toEqual(await readFile(join(one, f)));
    // a directory where a shard should go: its thread fails, and so does the call
    const bad = await mkdtemp(join(tmpdir(), "sy-gen-bad-"));
    dirs.push(bad);
    await generateCheckpoint({ ...opts, dir: bad, shards: 1 }); // config.json etc.
    const { mkdir } = await import("node:fs/promises");
    await mkdir(join(bad, a.files[2]));
    await expect(generateCheckpoint({ ...opts, dir: bad, shards: 5, threads: 2 })).rejects.toThrow(
      new RegExp(a.files[2].replace(/\./g, "\\.")),
    );
    // and no thread goes on writing after the call failed
    const left = (await readdir(bad)).sort();
    await new Promise((r) => setTimeout(r, 500));
    expect((await readdir(bad)).sort()).toEqual(left);
  });
});
