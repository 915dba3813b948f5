import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { context, LOCK } from "./context.js";
import { confirmLock, lockDir, lockLost } from "./lock.js";

describe("confirmLock", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sy-lock-"));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it("passes while this caller holds the lock, and throws (lockLost) once another took it, before any heartbeat", async () => {
    // a long stale time: the heartbeat would notice the takeover only lockStaleMs/4 later
    const ctx = context("https://example.invalid/ckpt", { log: () => {}, lockStaleMs: 600_000 });
    const release = await lockDir(ctx, dir);
    await confirmLock(ctx);
    expect(lockLost(ctx)).toBe(false);
    // another caller judged it stale and took it over (clocks apart, a stalled event loop)
    const path = join(dir, LOCK);
    const mine = JSON.parse(await readFile(path, "utf8"));
    await writeFile(path, `${JSON.stringify({ ...mine, token: "someone-else" })}\n`);
    await expect(confirmLock(ctx)).rejects.toThrow(/taken over by another caller/);
    expect(lockLost(ctx)).toBe(true);
    await release(); // leaves the other caller's lock in place
    expect(JSON.parse(await readFile(path, "utf8")).token).toBe("someone-else");
  });
});
