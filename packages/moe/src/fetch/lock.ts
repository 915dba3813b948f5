// The directory's lock: one caller at a time works in a directory; a lock left by a killed caller is broken.
// Separate because its staleness rules and heartbeat are a subject of their own.

import { randomBytes } from "node:crypto";
import { link, open, readFile, rename, rm, stat, utimes } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { type Ctx, LOCK, LOCK_POLL_MS, PROGRESS_EVERY_MS } from "./context.js";
import { sleep } from "./files.js";
import { aborted } from "./http.js";

interface LockInfo {
  host: string;
  pid: number;
  token: string;
  since: string;
}

/** Why a holder's work was stopped when another caller took its lock over. */
class LockLost extends Error {}

/** Tokens of the locks this process holds (another caller of this process waits for them; a leftover does not). */
const heldTokens = new Set<string>();

async function lockState(path: string): Promise<{ info?: LockInfo; mtimeMs: number } | undefined> {
  try {
    const [st, text] = await Promise.all([stat(path), readFile(path, "utf8")]);
    let info: LockInfo | undefined;
    try {
      const j = JSON.parse(text) as LockInfo;
      if (typeof j.token === "string" && typeof j.pid === "number" && typeof j.host === "string") info = j;
    } catch {
      // being written, or a caller killed between creating and writing it: its age tells
    }
    return { info, mtimeMs: st.mtimeMs };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new Error(`${path}: cannot read (${(e as Error).message})`);
  }
}

function processGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "ESRCH";
  }
}

/** Why a lock is left by a caller that is gone, or undefined while its holder may still be working. */
function staleness(ctx: Ctx, s: { info?: LockInfo; mtimeMs: number }): string | undefined {
  const age = Date.now() - s.mtimeMs;
  if (age > ctx.lockStaleMs) return `not refreshed for ${(age / 1000).toFixed(1)} s`;
  const i = s.info;
  if (i && i.host === hostname()) {
    // A restarted container may well get the pid its predecessor had.
    if (i.pid === process.pid && !heldTokens.has(i.token)) return `left by an earlier process ${i.pid} of this host`;
    if (i.pid !== process.pid && processGone(i.pid)) return `process ${i.pid} of this host is gone`;
  }
  return undefined;
}

/** Remove a stale lock, unless another caller replaced it meanwhile (then put that one back). */
async function breakLock(path: string, judged: { info?: LockInfo; mtimeMs: number }): Promise<void> {
  const aside = `${path}.stale.${process.pid}.${randomBytes(4).toString("hex")}`;
  try {
    await rename(path, aside);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
    throw e;
  }
  const moved = await lockState(aside);
  if (moved && (moved.info?.token !== judged.info?.token || moved.mtimeMs !== judged.mtimeMs))
    await link(aside, path).catch(() => {}); // fails when a newer one is there already: that one stands
  await rm(aside, { force: true });
}

/**
 * Take the directory's lock, waiting while another caller holds it. Returns the release function. While held, the
 * lock is refreshed; should another caller take it over (judging it stale), ctx.signal aborts this caller's work.
 */
export async function lockDir(ctx: Ctx, dir: string): Promise<() => Promise<void>> {
  const path = join(dir, LOCK);
  const me: LockInfo = {
    host: hostname(),
    pid: process.pid,
    token: randomBytes(8).toString("hex"),
    since: new Date().toISOString(),
  };
  heldTokens.add(me.token);
  let saidAt: number | undefined;
  try {
    for (;;) {
      if (ctx.signal?.aborted) throw aborted(`${path}: waiting for the lock`, ctx.signal);
      try {
        const fh = await open(path, "wx");
        try {
          await fh.writeFile(`${JSON.stringify(me)}\n`);
        } finally {
          await fh.close();
        }
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST")
          throw new Error(`${path}: cannot create (${(e as Error).message})`);
      }
      const other = await lockState(path);
      if (!other) continue;
      const why = staleness(ctx, other);
      if (why) {
        ctx.log(`${path}: breaking a stale lock (${why})`);
        await breakLock(path, other);
        continue;
      }
      if (saidAt === undefined || performance.now() - saidAt > PROGRESS_EVERY_MS) {
        saidAt = performance.now();
        const i = other.info;
        ctx.log(
          `${dir}: waiting for another download into it (${i ? `${i.host} process ${i.pid} since ${i.since}` : "starting"})`,
        );
      }
      await sleep(LOCK_POLL_MS, ctx.signal).catch(() => {});
    }
  } catch (e) {
    heldTokens.delete(me.token);
    throw e;
  }
  const lost = new AbortController();
  ctx.signal = ctx.signal ? AbortSignal.any([ctx.signal, lost.signal]) : lost.signal;
  held.set(ctx, { path, token: me.token });
  let beating = false;
  const beat = setInterval(
    () => {
      if (beating) return;
      beating = true;
      lockState(path)
        .then(async (s) => {
          if (s?.info?.token === me.token) {
            const now = new Date();
            await utimes(path, now, now);
          } else
            lost.abort(new LockLost(`${path}: the lock was taken over by another caller (judged stale): stopping`));
        })
        .catch(() => {}) // a failed refresh is retried; a lock that goes stale meanwhile is taken over and noticed
        .finally(() => {
          beating = false;
        });
    },
    Math.max(ctx.lockStaleMs / 4, 10),
  );
  beat.unref();
  return async () => {
    clearInterval(beat);
    try {
      if ((await lockState(path))?.info?.token === me.token) await rm(path, { force: true });
    } finally {
      heldTokens.delete(me.token);
    }
  };
}

/**
 * This caller's lock was taken over: what it wrote under names shared across callers (a resumable partial) is the
 * new holder's now, to keep or remove.
 */
export function lockLost(ctx: Ctx): boolean {
  return ctx.signal?.reason instanceof LockLost || lostBy.has(ctx);
}

/** Contexts whose confirmLock found the lock another caller's (before the heartbeat's abort said so). */
const lostBy = new WeakMap<Ctx, LockLost>();

/** The lock each context holds (lockDir), for confirmLock's fresh look. */
const held = new WeakMap<Ctx, { path: string; token: string }>();

/**
 * Right before it writes under a name shared across callers (a partial's record, the rename of a partial into place):
 * this caller still holds the lock, by a fresh read of the lock file, not only by the last heartbeat's (up to
 * lockStaleMs/4 old). A caller whose lock was judged stale while it still ran (clocks apart, a stalled event loop)
 * would otherwise vouch, in the record, for bytes the new holder has truncated, or rename the new holder's
 * unfinished file into place. Throws LockLost (and the caller then leaves those names alone).
 */
export async function confirmLock(ctx: Ctx): Promise<void> {
  if (ctx.signal?.reason instanceof LockLost) throw ctx.signal.reason;
  const h = held.get(ctx);
  if (!h) return;
  if ((await lockState(h.path))?.info?.token !== h.token) {
    const lost = new LockLost(`${h.path}: the lock was taken over by another caller (judged stale): stopping`);
    lostBy.set(ctx, lost);
    throw lost;
  }
}

/** Before a commit point (a complete marker): this caller still holds the lock (and was not stopped). */
export function stillLocked(ctx: Ctx): void {
  if (ctx.signal?.aborted) throw ctx.signal.reason;
}
