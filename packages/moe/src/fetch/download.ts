// One file of a whole checkpoint, downloaded whole: it appears under its own name only once complete and checked.
// A download a later run can continue (resume.ts says which) keeps its bytes under NAME.resumable across a failure
// or a kill and is continued by a Range request; any other goes to a temporary name of this caller's own and is
// removed when it fails. Separate from whole.ts, which decides which files to fetch.

import { type FileHandle, open, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { failedPrecondition } from "@switchyard/protocol";
import { type Ctx, MiB, type Pin, PROGRESS_EVERY_MS, pinOf, urlOf } from "./context.js";
import { mib, temporary } from "./files.js";
import { type Got, get, httpError } from "./http.js";
import { confirmLock, lockLost } from "./lock.js";
import { discardPartial, type PartialPaths, partialPaths, readPartial, writeRecord } from "./partial.js";
import { judgeResume, type PartialRecord, planResume, recordFor } from "./resume.js";

/** The answer a download goes on with: its body is the file from byte `from` on. */
interface Start {
  got: Got;
  from: number;
  /** set when the bytes go to the resumable partial (and a later run may continue them) */
  record?: PartialRecord;
}

/** The body's length, when the bytes written will be the bytes it counts. */
function lengthOf(res: Response): number | undefined {
  if ((res.headers.get("content-encoding") ?? "identity") !== "identity") return undefined;
  const n = Number(res.headers.get("content-length") ?? Number.NaN);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

/**
 * A whole-file answer (200), replacing any partial: resumable later when resume.ts can vouch for it, with its record
 * written before its first byte.
 */
async function whole(got: Got, url: string, paths: PartialPaths, resumable: boolean, commit?: string): Promise<Start> {
  if (got.res.status !== 200) throw await httpError(got, `GET ${url}`);
  const record = resumable ? recordFor(url, commit, got.res.headers.get("etag"), lengthOf(got.res)) : undefined;
  try {
    await discardPartial(paths);
    if (record) await writeRecord(paths, record);
  } catch (e) {
    await got.cancel();
    throw e;
  }
  return { got, from: 0, record };
}

/** The rest of the partial an earlier run left, when the server still has those bytes; else the whole file. */
async function begin(
  ctx: Ctx,
  name: string,
  url: string,
  paths: PartialPaths,
  abort: AbortSignal,
  commit: string | undefined,
  given: Got | undefined,
): Promise<Start> {
  // A given answer (hf:// config.json, asked for by its revision to learn the commit) is a whole file already.
  if (given) return whole(given, url, paths, false);
  const kept = await readPartial(paths);
  if (kept) {
    const plan = planResume(kept, url, commit);
    if (plan.resume) {
      const got = await get(ctx, url, { signal: abort, range: [plan.from], headers: plan.headers });
      const v = judgeResume(got.res.status, got.res.headers, plan.record, plan.from);
      if (v.take === "rest") {
        ctx.log(
          `${name}: resuming at ${mib(plan.from)} of ${mib(plan.record.size)} (the partial download of an earlier run)`,
        );
        return { got, from: plan.from, record: plan.record };
      }
      if (v.take === "error") throw await httpError(got, `GET ${url} (bytes ${plan.from}-)`);
      ctx.log(`${name}: ${v.why}: downloading it from byte 0`);
      if (v.take === "whole") return whole(got, url, paths, true, commit);
      await got.cancel(); // never spliced: its bytes may be of another file, or at another offset
    } else ctx.log(`${name}: ${plan.why}: downloading it from byte 0`);
  }
  return whole(await get(ctx, url, { signal: abort }), url, paths, true, commit);
}

/**
 * Download `name` into dir: check it (`check` gets the path it was written to), then rename it to its own name, so
 * a file under its own name is always complete. hf:// files pinned to `commit`, and files with a strong ETag, are
 * resumable: their bytes survive a failure, a SIGTERM or a kill, and the next call asks only for the rest
 * (Range, If-Range), keeping them only when the server's answer shows the same file. `given`: the file's answer when
 * it was asked for already (hf:// config.json, which resolved the revision). Returns the file's version as the server
 * gave it.
 */
export async function downloadFile(
  ctx: Ctx,
  dir: string,
  name: string,
  check: (path: string, url: string) => Promise<void>,
  abort: AbortSignal,
  o: { commit?: string; given?: { got: Got; url: string }; maxBytes?: number } = {},
): Promise<Pin> {
  const url = o.given?.url ?? urlOf(ctx, name);
  const final = join(dir, name);
  const paths = partialPaths(final);
  const t0 = performance.now();
  const { got, from, record } = await begin(ctx, name, url, paths, abort, o.commit, o.given?.got);
  const size = record?.size ?? lengthOf(got.res);
  // A file that can only be small (config.json): a huge answer is something else, refused before it fills the disk.
  const tooBig = () => failedPrecondition(`GET ${url}: more than ${o.maxBytes} bytes, not a checkpoint's ${name}`);
  if (o.maxBytes !== undefined && size !== undefined && size > o.maxBytes) {
    await got.cancel();
    if (record) await discardPartial(paths);
    throw tooBig();
  }
  const path = record ? paths.data : temporary(final);
  // A caller whose lock was taken over leaves the partial alone: it is the new holder's now.
  const drop = async () => {
    if (!record) await rm(path, { force: true });
    else if (!lockLost(ctx)) await discardPartial(paths);
  };
  let at = from; // the file's offset of the next byte
  let lastLog = t0;
  let lastPoint = t0;
  let fh: FileHandle | undefined;
  // Bytes a server sent past the file's length: it is not sending the file it said, so none of it is kept.
  let overrun = false;
  try {
    fh = await open(path, from > 0 ? "r+" : "wx");
    // What a kill left past the last resume point may never have reached the disk.
    if (from > 0) await fh.truncate(from);
    for await (const c of got.chunks()) {
      if (size !== undefined && at + c.byteLength > size) {
        overrun = true;
        throw new Error(`GET ${url}: more than the file's ${size} bytes`);
      }
      if (o.maxBytes !== undefined && at + c.byteLength > o.maxBytes) {
        overrun = true;
        throw tooBig();
      }
      let done = 0;
      while (done < c.byteLength) done += (await fh.write(c, done, c.byteLength - done, at + done)).bytesWritten;
      at += c.byteLength;
      const now = performance.now();
      // A multi-gigabyte shard takes minutes: say it is moving, or the initContainer looks hung.
      if (now - lastLog > PROGRESS_EVERY_MS) {
        lastLog = now;
        ctx.log(`${name}: ${mib(at)}${size === undefined ? "" : ` of ${mib(size)}`}`);
      }
      if (record && now - lastPoint > ctx.resumePointMs) {
        lastPoint = now;
        await fh.sync();
        await confirmLock(ctx); // the record must not vouch for bytes a new holder of the lock has cut
        await writeRecord(paths, { ...record, durable: at });
      }
    }
    // A pod killed after the rename must not find a file that is whole in name only (node crash, PVC).
    await fh.sync();
  } catch (e) {
    await got.cancel();
    if (!record || !fh || at === 0 || overrun) await drop();
    else if (!lockLost(ctx)) await keep(ctx, name, fh, paths, { ...record, durable: at });
    throw named(e, path);
  } finally {
    await fh?.close();
  }
  try {
    if (size !== undefined && at !== size)
      throw new Error(
        `GET ${url}: got ${at - from} bytes${from > 0 ? ` after the ${from} of an earlier run` : ""}, ` +
          `expected ${size - from} (${from > 0 ? "Content-Range" : "Content-Length"})`,
      );
    await check(path, url);
    // NAME.resumable is shared across callers: only the lock's holder renames it into place
    if (record) await confirmLock(ctx);
    await rename(path, final);
  } catch (e) {
    await drop();
    throw e;
  }
  if (record) await rm(paths.record, { force: true });
  const s = (performance.now() - t0) / 1000;
  const n = at - from;
  ctx.log(
    `fetched ${name}: ${mib(n)}${from > 0 ? ` (after ${mib(from)} of an earlier run)` : ""} in ${s.toFixed(1)} s ` +
      `(${(n / MiB / Math.max(s, 1e-3)).toFixed(1)} MiB/s)`,
  );
  // A 206 may carry no validator of its own: the one the partial was started against is the file's.
  return { ...(record?.etag ? { etag: record.etag } : {}), ...pinOf(got.res), size: at };
}

/** Make the bytes so far a resume point for the next run; a partial that cannot be recorded is not kept. */
async function keep(ctx: Ctx, name: string, fh: FileHandle, paths: PartialPaths, r: PartialRecord): Promise<void> {
  try {
    await fh.sync();
    await confirmLock(ctx);
    await writeRecord(paths, r);
    ctx.log(`${name}: kept ${mib(r.durable)} of ${mib(r.size)} in ${paths.data}, for the next run to resume`);
  } catch (e) {
    if (lockLost(ctx)) return; // the partial is the new holder's
    ctx.log(`${name}: cannot keep its partial download (${(e as Error).message}): removing it`);
    await discardPartial(paths).catch(() => {});
  }
}

/** A file system error (ENOSPC, EIO ...) names the file it was about; HTTP errors name their URL already. */
function named(e: unknown, path: string): unknown {
  const x = e as NodeJS.ErrnoException;
  return x instanceof Error && x.syscall !== undefined && !x.message.includes(path)
    ? new Error(`${path}: ${x.message}`, { cause: e })
    : e;
}
