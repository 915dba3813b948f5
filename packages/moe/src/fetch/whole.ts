// Whole checkpoint (fetchCheckpoint): config.json, the index and every shard, for a worker.
// Separate from the router's tensor-only fetch, which shares only the checks of shard names and safetensors files.

import { mkdir, open, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { INDEX_FILE, MAX_CONFIG_BYTES, MAX_INDEX_BYTES, parseIndex, SINGLE_FILE } from "../checkpoint.js";
import { readSafetensorsHeader } from "../safetensors.js";
import { specFromHfConfig } from "../spec.js";
import {
  CONCURRENCY,
  type Ctx,
  commitOf,
  context,
  type FetchOptions,
  MARKER_VERSION,
  type Marker,
  type Pin,
  pinCommit,
  pinOf,
  TEMPORARY,
  urlOf,
} from "./context.js";
import { downloadFile } from "./download.js";
import { exists, mib, pool, removeLeftovers, writeAtomic } from "./files.js";
import { type Got, get, getSmall, httpError, parseJson } from "./http.js";
import { lockDir, stillLocked } from "./lock.js";
import { checkMarker, readMarker, writeMarker } from "./marker.js";
import { removeStalePartials } from "./partial.js";
import { damagedFiles } from "./verify.js";

export async function checkSafetensors(path: string, url: string): Promise<void> {
  const fh = await open(path, "r");
  try {
    await readSafetensorsHeader(fh, url);
  } finally {
    await fh.close();
  }
}

/**
 * Why the files an interrupted run recorded (`pins`) are not of the version being fetched now, or undefined when
 * they are. hf://: the commit the revision resolved to, then and now. Else each file is asked for again, conditionally
 * (If-None-Match / If-Modified-Since): a 304, or the same ETag (else Last-Modified), means unchanged.
 */
async function changedSince(
  ctx: Ctx,
  marker: Marker,
  commit: string | undefined,
  pins: Record<string, Pin>,
  signal: AbortSignal,
): Promise<string | undefined> {
  if (marker.commit !== undefined || commit !== undefined) {
    if (marker.commit === commit) return undefined;
    if (commit === undefined) return `the interrupted run fetched commit ${marker.commit}, and none is named now`;
    return `${ctx.src.revision} is now commit ${commit}, not ${marker.commit ?? "(none recorded)"} as in the interrupted run`;
  }
  let why: string | undefined;
  await pool(Object.entries(pins), CONCURRENCY, async ([name, pin]) => {
    if (why) return;
    const url = urlOf(ctx, name);
    if (!pin.etag && !pin.lastModified) {
      why = `${url} had no ETag or Last-Modified when fetched, so whether it changed since the interrupted run cannot be told`;
      return;
    }
    const headers: Record<string, string> = pin.etag
      ? { "if-none-match": pin.etag }
      : { "if-modified-since": pin.lastModified! };
    const got = await get(ctx, url, { signal, headers });
    const { status } = got.res;
    if (status !== 200 && status !== 304 && status !== 404 && status !== 403 && status !== 410)
      throw await httpError(got, `GET ${url}`); // a server error says nothing about the file: fail, and retry later
    await got.cancel();
    if (status === 304) return;
    if (status !== 200) {
      why ??= `${url} is gone (HTTP ${status}) since the interrupted run`;
      return;
    }
    const now = pinOf(got.res);
    if (pin.etag && now.etag) {
      if (pin.etag !== now.etag) why ??= `${url} changed (ETag ${pin.etag} -> ${now.etag}) since the interrupted run`;
    } else if (pin.lastModified && now.lastModified) {
      if (pin.lastModified !== now.lastModified)
        why ??= `${url} changed (Last-Modified ${pin.lastModified} -> ${now.lastModified}) since the interrupted run`;
    } else why ??= `${url} no longer has the ${pin.etag ? "ETag" : "Last-Modified"} it had in the interrupted run`;
  });
  return why;
}

type WholeResult = { fetched: string[]; skipped: string[]; bytes: number };

/**
 * A directory that holds this checkpoint already: no lock, no request (it may be mounted read-only). Its files are
 * checked on the disk (verify.ts): one missing or damaged since the marker was written is fetched again.
 */
async function wholeDone(
  ctx: Ctx,
  dir: string,
  uri: string,
  marker: Marker | undefined,
): Promise<WholeResult | undefined> {
  checkMarker(dir, marker, uri, "whole");
  if (!marker?.complete) return undefined;
  const damaged = await damagedFiles(dir, marker.files ?? {});
  if (damaged.size > 0) {
    ctx.log(`${dir}: marked complete, but ${[...damaged.values()].join("; ")}: fetching again`);
    return undefined;
  }
  ctx.log(`${dir}: already holds ${uri}${marker.commit ? ` (commit ${marker.commit})` : ""}`);
  return { fetched: [], skipped: Object.keys(marker.files ?? {}), bytes: 0 };
}

/**
 * Downloads the whole checkpoint into dir: config.json, then the index (a 404 on it means single-file:
 * model.safetensors) and every shard in its weight_map. Each file goes to a temporary name and is renamed when
 * complete; one cut off part-way is continued by Range from where it stopped when the server shows it is still the
 * same file, else fetched from its start (download.ts). An hf:// revision is resolved to a commit by config.json's
 * answer and every other file is fetched from that commit. The marker records the commit (hf://) or each file's
 * ETag / Last-Modified as it is fetched, so a restarted pod keeps the files of an interrupted run only when they are
 * still the version being fetched (the same commit; a 304 to a conditional GET of each), and starts over (saying so
 * in the log) when not; files without such a record are fetched again. Once everything is there the marker says so:
 * a second call with the same uri returns at once, after checking on the disk that the files are still there, of the
 * size recorded, with whole headers (one that is not is fetched again). A lock file makes concurrent callers on one directory wait for
 * each other. Errors name the URL and HTTP status. Returns the files fetched and skipped and the bytes downloaded.
 */
export async function fetchCheckpoint(uri: string, dir: string, o: FetchOptions = {}): Promise<WholeResult> {
  const ctx = context(uri, o);
  await mkdir(dir, { recursive: true });
  const done = await wholeDone(ctx, dir, uri, await readMarker(dir));
  if (done) return done;
  const unlock = await lockDir(ctx, dir);
  try {
    // Another caller may have finished it while this one waited for the lock.
    const marker = await readMarker(dir);
    return (await wholeDone(ctx, dir, uri, marker)) ?? (await fetchWhole(ctx, uri, dir, marker));
  } finally {
    await unlock();
  }
}

async function fetchWhole(ctx: Ctx, uri: string, dir: string, marker: Marker | undefined): Promise<WholeResult> {
  if (marker && marker.version !== MARKER_VERSION)
    ctx.log(`${dir}: its marker records no file versions (an earlier version wrote it): fetching every file again`);
  await removeLeftovers(ctx, dir);
  // One failed file stops the others: their partial files are removed and the error is the first one.
  const stop = new AbortController();
  const abort = ctx.signal ? AbortSignal.any([ctx.signal, stop.signal]) : stop.signal;
  let pins: Record<string, Pin> = { ...(marker?.files ?? {}) };
  // A file the marker records but the disk no longer holds whole is fetched again, not skipped as present.
  for (const [name, why] of await damagedFiles(dir, pins)) {
    if (await exists(join(dir, name))) ctx.log(`${why}: fetching ${name} again`);
    delete pins[name];
    await rm(join(dir, name), { force: true }).catch(() => {}); // a directory stays, and its download fails naming it
  }

  // hf://: config.json's answer names the commit the revision is at now; every other file comes from that commit.
  let commit: string | undefined;
  let config: { got: Got; url: string } | undefined;
  if (ctx.src.hfResolve) {
    const url = urlOf(ctx, "config.json");
    const got = await get(ctx, url, {
      signal: abort,
      firstHop: (r) => {
        commit = commitOf(r);
      },
    });
    if (got.res.status !== 200) throw await httpError(got, `GET ${url}`);
    config = { got, url };
    if (commit) {
      pinCommit(ctx, commit);
      ctx.log(`${uri}: ${ctx.src.revision} is commit ${commit}`);
    } else ctx.log(`${url}: no X-Repo-Commit header: each file is pinned by its ETag or Last-Modified instead`);
  }
  try {
    // A resume keeps only files of the version fetched now: never a mix of two revisions.
    if (marker && Object.keys(pins).length > 0) {
      const why = await changedSince(ctx, marker, commit, pins, abort);
      if (why) {
        ctx.log(`${uri}: ${why}: starting over`);
        await writeMarker(dir, { uri, kind: "whole", complete: false, commit });
        for (const f of Object.keys(pins)) await rm(join(dir, f), { force: true });
        pins = {};
      } else ctx.log(`${uri}: resuming; the ${Object.keys(pins).length} file(s) fetched before are unchanged`);
    }
    // Recorded before the first file, so that a restart with another uri is refused rather than mixing files.
    await writeMarker(dir, { uri, kind: "whole", complete: false, commit, files: pins });
  } catch (e) {
    await config?.got.cancel();
    throw e;
  }
  ctx.log(`fetching ${uri} from ${ctx.src.base} into ${dir}`);

  // Each file's version goes into the marker as soon as the file is in place; one write at a time.
  let writing: Promise<void> = Promise.resolve();
  const record = () => {
    writing = writing
      .catch(() => {})
      .then(() => writeMarker(dir, { uri, kind: "whole", complete: false, commit, files: pins }));
    return writing;
  };
  const fetched: string[] = [];
  const skipped: string[] = [];
  const files: string[] = [];
  const one = async (
    name: string,
    check: (path: string, url: string) => Promise<void>,
    given?: { got: Got; url: string },
    maxBytes?: number,
  ) => {
    files.push(name);
    if (pins[name] && (await exists(join(dir, name)))) {
      await given?.got.cancel();
      skipped.push(name);
      ctx.log(`skipped ${name}: already present`);
      return;
    }
    try {
      pins[name] = await downloadFile(ctx, dir, name, check, abort, { commit, given, maxBytes });
      fetched.push(name);
      await record();
    } catch (e) {
      stop.abort(e);
      throw e;
    }
  };

  // config.json first: a model we cannot serve fails here, not after the shards' gigabytes.
  await one(
    "config.json",
    async (path, url) => {
      specFromHfConfig(parseJson(await readFile(path), url), url);
    },
    config,
    MAX_CONFIG_BYTES,
  );

  let shards: string[];
  let noIndex = false;
  const indexPath = join(dir, INDEX_FILE);
  if (pins[INDEX_FILE] && (await exists(indexPath))) {
    files.push(INDEX_FILE);
    skipped.push(INDEX_FILE);
    ctx.log(`skipped ${INDEX_FILE}: already present`);
    shards = shardNames(parseIndex(parseJson(await readFile(indexPath), indexPath), indexPath), indexPath);
  } else {
    const url = urlOf(ctx, INDEX_FILE);
    const index = await getSmall(ctx, INDEX_FILE, { absentOk: true, maxBytes: MAX_INDEX_BYTES });
    if (index === undefined) {
      ctx.log(`${INDEX_FILE}: not there, single file ${SINGLE_FILE}`);
      shards = [SINGLE_FILE];
      noIndex = true;
    } else {
      shards = shardNames(parseIndex(parseJson(index.bytes, url), url), url);
      await writeAtomic(indexPath, index.bytes);
      files.push(INDEX_FILE);
      fetched.push(INDEX_FILE);
      pins[INDEX_FILE] = { ...index.pin, size: index.bytes.byteLength };
      await record();
      ctx.log(`fetched ${INDEX_FILE}: ${shards.length} shard(s)`);
    }
  }
  await removeStalePartials(ctx, dir, new Set(["config.json", ...shards]));
  await pool(shards, CONCURRENCY, (name) => one(name, checkSafetensors)).catch((e) => {
    if (noIndex && /HTTP 40[34]/.test((e as Error).message))
      throw new Error(`${(e as Error).message} (and ${urlOf(ctx, INDEX_FILE)} is not there either)`);
    throw e;
  });
  await writing;
  stillLocked(ctx);
  const complete = Object.fromEntries(files.map((f) => [f, pins[f] ?? {}]));
  await writeMarker(dir, { uri, kind: "whole", complete: true, commit, files: complete });
  ctx.log(`done: ${fetched.length} fetched, ${skipped.length} skipped, ${mib(ctx.bytes)} downloaded`);
  return { fetched, skipped, bytes: ctx.bytes };
}

/** A weight_map's file name: one in the checkpoint's directory (joined to the directory, and to the base URL). */
function checkShardName(n: string, where: string): void {
  if (/[/\\]/.test(n) || n.includes(".."))
    throw new Error(
      `${where}: weight_map names ${JSON.stringify(n)}, not a file name in the checkpoint's directory ` +
        `(a name with "/", "\\" or ".." is refused)`,
    );
  if (!n.endsWith(".safetensors") || TEMPORARY.test(n))
    throw new Error(`${where}: weight_map names ${JSON.stringify(n)}, expected a .safetensors file name`);
}

/** The distinct shard files of a weight_map; only .safetensors names (so an index cannot overwrite config.json). */
export function shardNames(weightMap: Map<string, string>, where: string): string[] {
  const names = [...new Set(weightMap.values())];
  for (const n of names) checkShardName(n, where);
  if (names.length === 0) throw new Error(`${where}: weight_map is empty`);
  return names;
}
