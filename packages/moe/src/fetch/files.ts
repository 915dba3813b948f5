// Local files: existence, temporary names of a caller's own, atomic small writes, leftovers of killed runs; and the
// small helpers (sleep, pool, mib) both kinds of fetch share. Separate: no HTTP, no lock.

import { randomBytes } from "node:crypto";
import { access, readdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { type Ctx, MiB, PARTIAL, TEMPORARY } from "./context.js";

export async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/** A temporary name of this caller's own for `path`: two callers never write to one file. */
export function temporary(path: string): string {
  return `${path}${PARTIAL}.${process.pid}.${randomBytes(4).toString("hex")}`;
}

/** Write a small file whole or not at all (temporary name, then rename). */
export async function writeAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = temporary(path);
  try {
    await writeFile(tmp, data);
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/** Temporary files of callers that no longer hold the lock (killed): with the lock held, nobody writes them. */
export async function removeLeftovers(ctx: Ctx, dir: string): Promise<void> {
  const left = (await readdir(dir)).filter((f) => TEMPORARY.test(f));
  for (const f of left) await rm(join(dir, f), { force: true });
  if (left.length > 0) ctx.log(`${dir}: removed ${left.length} temporary file(s) left by an interrupted run`);
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const done = () => {
      signal?.removeEventListener("abort", stop);
      resolve();
    };
    const t = setTimeout(done, ms);
    const stop = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", stop, { once: true });
  });
}

/** Run `fn` over `items`, `limit` at a time; the first failure stops new starts and is thrown after all settle. */
export async function pool<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let error: { e: unknown } | undefined;
  const runner = async () => {
    while (!error && next < items.length) {
      const item = items[next++];
      try {
        await fn(item);
      } catch (e) {
        error ??= { e };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, runner));
  if (error) throw error.e;
}

export function mib(n: number): string {
  return `${(n / MiB).toFixed(1)} MiB`;
}
