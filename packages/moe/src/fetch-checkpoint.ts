// Downloads a Hugging Face-layout safetensors checkpoint named by an ExpertPool's spec.model.checkpoint.uri: the
// whole of it for a worker (fetchCheckpoint), or only the tensors the router reads, by HTTP Range requests
// (fetchCheckpointTensors). Both run in a pod's initContainer, so they must survive being killed at any point: every
// file is written under a temporary name of its own caller and renamed when whole, and a marker file records the uri
// and the version of each file fetched (the commit of an hf:// revision, else each file's ETag or Last-Modified), so
// a restarted pod resumes only from the same version and a finished one returns without a request. A lock file keeps
// two callers (two pods on one volume, two reloads in the router) from working in one directory at once.

import { randomBytes } from "node:crypto";
import {
  access,
  type FileHandle,
  link,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  utimes,
  writeFile,
} from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { INDEX_FILE, parseIndex, SINGLE_FILE } from "./checkpoint.js";
import {
  buildSafetensorsHeader,
  MAX_HEADER_BYTES,
  parseSafetensorsHeader,
  readSafetensorsHeader,
  type SafetensorsDType,
  type TensorInfo,
} from "./safetensors.js";
import {
  correctionBiasKey,
  gateKey,
  type ModelSpec,
  moeLayers,
  sharedExpertGateKey,
  sharedExpertKeys,
  specFromHfConfig,
} from "./spec.js";

export interface CheckpointSource {
  /** base URL the files are under, ends with "/" */
  base: string;
  headers: Record<string, string>;
}

const SUPPORTED =
  "supported: https://HOST/PATH/ or http://HOST/PATH/ (the checkpoint's directory), hf://ORG/NAME[@REVISION]; " +
  "for S3/GCS use the public https URL of the checkpoint's directory (a presigned URL signs one object, not a directory), or mount the checkpoint from a PVC";

function badUri(uri: string, why: string): Error {
  return new Error(`checkpoint.uri: ${JSON.stringify(uri)}: ${why} (${SUPPORTED})`);
}

// Hub repo ids: letters, digits, "-", "_", "." (no leading "." or "-"); revisions are branch/tag names or commits.
const HF_URI = /^hf:\/\/([A-Za-z0-9][\w.-]*)\/([A-Za-z0-9][\w.-]*)(?:@([^\s?#@]+))?\/?$/;

/**
 * https:// or http:// URL of the checkpoint's directory; hf://ORG/NAME[@REVISION] ->
 * ${HF_ENDPOINT ?? "https://huggingface.co"}/ORG/NAME/resolve/${REVISION ?? "main"}/ with
 * Authorization: Bearer ${HF_TOKEN} when env HF_TOKEN is set. Anything else throws an Error whose message starts with
 * "checkpoint.uri: " and says what is supported.
 */
export function checkpointSource(uri: string, env: NodeJS.ProcessEnv = process.env): CheckpointSource {
  const { base, headers } = source(uri, env);
  return { base, headers };
}

interface Source extends CheckpointSource {
  /** hf:// only: ENDPOINT/ORG/NAME/resolve/, to which a commit and "/" are appended once the revision is resolved */
  hfResolve?: string;
  /** hf:// only: the revision asked for */
  revision?: string;
}

function source(uri: string, env: NodeJS.ProcessEnv = process.env): Source {
  if (typeof uri !== "string" || uri.trim() === "") throw badUri(String(uri), "empty");
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(uri)?.[1]?.toLowerCase();
  if (scheme === "hf") {
    const m = HF_URI.exec(uri);
    if (!m) throw badUri(uri, "expected hf://ORG/NAME or hf://ORG/NAME@REVISION");
    const [, org, name, revision = "main"] = m;
    const endpoint = (env.HF_ENDPOINT?.trim() || "https://huggingface.co").replace(/\/+$/, "");
    if (!/^https?:\/\/[^/]/i.test(endpoint))
      throw new Error(`HF_ENDPOINT: must be an http(s) URL, got ${JSON.stringify(env.HF_ENDPOINT)} (for ${uri})`);
    const headers: Record<string, string> = {};
    const token = env.HF_TOKEN?.trim();
    if (token) headers["authorization"] = `Bearer ${token}`;
    // A revision may be a branch like "refs/pr/1": the Hub takes it URL-encoded as one path segment.
    const hfResolve = `${endpoint}/${org}/${name}/resolve/`;
    return { base: `${hfResolve}${encodeURIComponent(revision)}/`, headers, hfResolve, revision };
  }
  if (scheme === "https" || scheme === "http") {
    let url: URL;
    try {
      url = new URL(uri);
    } catch {
      throw badUri(uri, "not a valid URL");
    }
    // A query (a presigned URL's signature) belongs to one object: it cannot be carried to the other files.
    if (url.search || url.hash) throw badUri(uri, "a query string or fragment cannot apply to every file");
    // fetch refuses URLs with credentials; say so here, where the uri is named.
    if (url.username || url.password) throw badUri(uri, "credentials in the URL are not supported");
    const base = url.href.endsWith("/") ? url.href : `${url.href}/`;
    return { base, headers: {} };
  }
  if (scheme === "s3" || scheme === "gs" || scheme === "gcs") throw badUri(uri, `${scheme}:// is not fetched directly`);
  if (scheme === undefined || uri.startsWith("/") || uri.startsWith("."))
    throw badUri(uri, "a file path is not a URI (mount it from a PVC or host path instead)");
  throw badUri(uri, `unsupported scheme ${scheme}://`);
}

export interface FetchOptions {
  env?: NodeJS.ProcessEnv;
  fetch?: typeof globalThis.fetch;
  log?: (line: string) => void;
  signal?: AbortSignal;
  /** per request, until headers and between body chunks; default 60_000 */
  timeoutMs?: number;
  /**
   * A response body slower than this, in bytes per second over throughputWindowMs (measured from timeoutMs after its
   * headers), fails; 0: no minimum. Default 1 MiB/s.
   */
  minBytesPerSecond?: number;
  /** the window minBytesPerSecond is measured over; default 60_000 */
  throughputWindowMs?: number;
  /**
   * The directory's lock file, refreshed every lockStaleMs/4 by its holder, is taken as left by a killed caller when
   * not refreshed for this long (or at once when it names a process of this host that is gone). Default 120_000.
   */
  lockStaleMs?: number;
}

const DEFAULT_TIMEOUT_MS = 60_000;
const DEFAULT_MIN_BYTES_PER_SECOND = 2 ** 20;
const DEFAULT_THROUGHPUT_WINDOW_MS = 60_000;
const DEFAULT_LOCK_STALE_MS = 120_000;
const LOCK_POLL_MS = 100;
/** Files (or tensor ranges) downloaded at once: one stream rarely fills a data-centre link, dozens would thrash. */
const CONCURRENCY = 4;
/** Temporary files: NAME.partial.PID.RANDOM, one per caller and file (NAME.partial: written by earlier versions). */
const PARTIAL = ".partial";
const TEMPORARY = /\.partial(\.\d+\.[0-9a-f]+)?$/;
/** Records what the directory holds; written last, so its presence with complete=true means everything is there. */
const MARKER = ".switchyard-checkpoint.json";
const MARKER_VERSION = 2;
/** Held (created exclusively) by the one caller working in the directory. */
const LOCK = ".switchyard-checkpoint.lock";
const MiB = 2 ** 20;
const PROGRESS_EVERY_MS = 15_000;

/** What a server said about the version of a file it sent. */
interface Pin {
  etag?: string;
  lastModified?: string;
}

interface Marker {
  /** MARKER_VERSION; a marker without it records no versions: its files are not trusted. */
  version?: number;
  uri: string;
  kind: "whole" | "tensors";
  complete: boolean;
  /** hf:// revisions: the commit every file came from */
  commit?: string;
  /** whole: each file present and whole, with its version when it was fetched */
  files?: Record<string, Pin>;
  tensors?: string[];
}

interface Ctx {
  src: Source;
  fetch: typeof globalThis.fetch;
  log: (line: string) => void;
  signal?: AbortSignal;
  timeoutMs: number;
  minBytesPerSecond: number;
  throughputWindowMs: number;
  lockStaleMs: number;
  /** Bytes received over the network (bodies only). */
  bytes: number;
}

function context(uri: string, o: FetchOptions): Ctx {
  const ms = (name: string, v: number) => {
    if (!Number.isFinite(v) || v <= 0 || v > 2 ** 31 - 1)
      throw new Error(`${name}: must be in (0, 2^31-1] ms, got ${v}`);
    return v;
  };
  const minBytesPerSecond = o.minBytesPerSecond ?? DEFAULT_MIN_BYTES_PER_SECOND;
  if (!Number.isFinite(minBytesPerSecond) || minBytesPerSecond < 0)
    throw new Error(`minBytesPerSecond: must be a number >= 0, got ${minBytesPerSecond}`);
  return {
    src: source(uri, o.env),
    fetch: o.fetch ?? globalThis.fetch,
    log: o.log ?? (() => {}),
    signal: o.signal,
    timeoutMs: ms("timeoutMs", o.timeoutMs ?? DEFAULT_TIMEOUT_MS),
    minBytesPerSecond,
    throughputWindowMs: ms("throughputWindowMs", o.throughputWindowMs ?? DEFAULT_THROUGHPUT_WINDOW_MS),
    lockStaleMs: ms("lockStaleMs", o.lockStaleMs ?? DEFAULT_LOCK_STALE_MS),
    bytes: 0,
  };
}

/** hf://: fetch every further file from `commit`, whatever the revision (a branch) points to meanwhile. */
function pinCommit(ctx: Ctx, commit: string): void {
  ctx.src = { ...ctx.src, base: `${ctx.src.hfResolve}${commit}/` };
}

/** The commit the Hub resolved a revision to (its resolve answers, 200 or 302, carry X-Repo-Commit). */
function commitOf(res: Response): string | undefined {
  const c = res.headers.get("x-repo-commit")?.trim();
  return c && /^[0-9a-f]{40}([0-9a-f]{24})?$/i.test(c) ? c.toLowerCase() : undefined;
}

function pinOf(res: Response): Pin {
  const pin: Pin = {};
  const etag = res.headers.get("etag");
  const lastModified = res.headers.get("last-modified");
  if (etag) pin.etag = etag;
  if (lastModified) pin.lastModified = lastModified;
  return pin;
}

function urlOf(ctx: Ctx, name: string): string {
  return ctx.src.base + encodeURIComponent(name);
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP: one GET with a deadline on the response headers and on every body chunk

interface Got {
  res: Response;
  /** The body's chunks; each read has its own deadline. */
  chunks(): AsyncGenerator<Uint8Array>;
  /** Drop the body unread (an error status, a 200 where a 206 was asked for). */
  cancel(): Promise<void>;
}

interface GetOptions {
  range?: [number, number];
  /** cancels the request too (default ctx.signal): the caller's signal, or a sibling download's failure */
  signal?: AbortSignal;
  headers?: Record<string, string>;
  /**
   * Sees the first answer before a redirect is followed (the Hub's, whose X-Repo-Commit a CDN's answer lacks). The
   * redirect is then followed here, without the Authorization header when it leads to another origin.
   */
  firstHop?: (res: Response) => void;
}

/** Body bytes per second, for messages. */
function rate(bps: number): string {
  if (bps < 1024) return `${bps.toFixed(1)} B/s`;
  if (bps < MiB) return `${(bps / 1024).toFixed(1)} KiB/s`;
  return `${(bps / MiB).toFixed(1)} MiB/s`;
}

async function get(ctx: Ctx, url: string, o: GetOptions = {}): Promise<Got> {
  const { range, signal: outer = ctx.signal } = o;
  const what = range ? `GET ${url} (bytes ${range[0]}-${range[1] - 1})` : `GET ${url}`;
  if (outer?.aborted) throw aborted(what, outer);
  const ctrl = new AbortController();
  const signal = outer ? AbortSignal.any([outer, ctrl.signal]) : ctrl.signal;
  const failed = (e: unknown): Error => {
    if (outer?.aborted) return aborted(what, outer);
    const cause = (e as { cause?: { message?: string } }).cause?.message;
    return new Error(`${what}: ${(e as Error).message}${cause ? ` (${cause})` : ""}`);
  };
  // Racing a timer (not only aborting) keeps the deadline even for a fetch that ignores its signal.
  const deadline = <T>(p: Promise<T>, waitingFor: string): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      const t = setTimeout(() => {
        reject(new Error(`${what}: timed out, no ${waitingFor} within ${ctx.timeoutMs} ms`));
        ctrl.abort();
      }, ctx.timeoutMs);
      p.then(
        (v) => {
          clearTimeout(t);
          resolve(v);
        },
        (e) => {
          clearTimeout(t);
          reject(failed(e));
        },
      );
    });
  // identity: fetch would otherwise ask for gzip and inflate it, and Content-Length / Content-Range offsets would
  // then count other bytes than the ones we write.
  const headers: Record<string, string> = { "accept-encoding": "identity", ...ctx.src.headers, ...o.headers };
  if (range) headers["range"] = `bytes=${range[0]}-${range[1] - 1}`;
  const request = async (): Promise<Response> => {
    if (!o.firstHop) return ctx.fetch(url, { headers, signal, redirect: "follow" });
    const first = await ctx.fetch(url, { headers, signal, redirect: "manual" });
    o.firstHop(first);
    const location = first.headers.get("location");
    if (first.status < 300 || first.status > 399 || !location) return first;
    await first.body?.cancel().catch(() => {});
    const next = new URL(location, url);
    const h = { ...headers };
    if (next.origin !== new URL(url).origin) delete h["authorization"];
    return ctx.fetch(next.href, { headers: h, signal, redirect: "follow" });
  };
  const res = await deadline(request(), "response");
  const t0 = performance.now();
  let received = 0;
  // Throughput, from timeoutMs after the headers, over windows of throughputWindowMs: a body that trickles (a byte
  // within every timeoutMs) would otherwise hold a download for days.
  let span: { t: number; n: number } | undefined;
  const checkRate = () => {
    if (ctx.minBytesPerSecond === 0) return;
    const now = performance.now();
    if (now - t0 < ctx.timeoutMs) return;
    if (!span) span = { t: now, n: received };
    else if (now - span.t >= ctx.throughputWindowMs) {
      const s = (now - span.t) / 1000;
      const bps = (received - span.n) / s;
      if (bps < ctx.minBytesPerSecond)
        throw new Error(
          `${what}: too slow: ${rate(bps)} over the last ${s.toFixed(1)} s, under the minimum ` +
            `${ctx.minBytesPerSecond < 1024 ? `${ctx.minBytesPerSecond} B/s` : rate(ctx.minBytesPerSecond)} (minBytesPerSecond)`,
        );
      span = { t: now, n: received };
    }
  };
  return {
    res,
    async *chunks() {
      if (!res.body) return;
      const reader = res.body.getReader();
      try {
        for (;;) {
          const { done, value } = await deadline(reader.read(), `data after ${received} bytes`);
          if (done) return;
          received += value.byteLength;
          ctx.bytes += value.byteLength;
          checkRate();
          yield value;
        }
      } finally {
        ctrl.abort(); // no-op once the body is done; frees the connection when the consumer stops early
        try {
          reader.releaseLock();
        } catch {
          // a read still pending after a timeout: the abort above ends it
        }
      }
    },
    async cancel() {
      ctrl.abort();
      await res.body?.cancel().catch(() => {});
    },
  };
}

function aborted(what: string, signal: AbortSignal): Error {
  const r = signal.reason as { message?: string } | undefined;
  return new Error(`${what}: aborted (${r?.message ?? String(r)})`);
}

/** The error for a non-2xx answer, with the start of its body (the Hub says why in JSON). */
async function httpError(got: Got, what: string): Promise<Error> {
  let detail = "";
  try {
    for await (const c of got.chunks()) {
      detail = new TextDecoder().decode(c.subarray(0, 200)).replace(/\s+/g, " ").trim();
      break;
    }
  } catch {
    // the status alone is enough
  }
  await got.cancel();
  const { status, statusText } = got.res;
  return new Error(`${what}: HTTP ${status}${statusText ? ` ${statusText}` : ""}${detail ? `: ${detail}` : ""}`);
}

/**
 * A small file's bytes and version, or undefined when `absentOk` and the server says it is not there (404, or S3's
 * 403).
 */
async function getSmall(
  ctx: Ctx,
  name: string,
  o: { absentOk?: boolean; firstHop?: (res: Response) => void } = {},
): Promise<{ bytes: Uint8Array; pin: Pin } | undefined> {
  const url = urlOf(ctx, name);
  const got = await get(ctx, url, { firstHop: o.firstHop });
  if (o.absentOk && (got.res.status === 404 || got.res.status === 403)) {
    await got.cancel();
    return undefined;
  }
  if (got.res.status !== 200) throw await httpError(got, `GET ${url}`);
  const parts: Uint8Array[] = [];
  let n = 0;
  for await (const c of got.chunks()) {
    n += c.byteLength;
    // config.json and the index are kilobytes; a huge answer is something else (an HTML page, a wrong URL).
    if (n > MAX_HEADER_BYTES) {
      await got.cancel();
      throw new Error(`GET ${url}: more than ${MAX_HEADER_BYTES} bytes, not a checkpoint's ${name}`);
    }
    parts.push(c);
  }
  return { bytes: Buffer.concat(parts), pin: pinOf(got.res) };
}

function parseJson(bytes: Uint8Array, url: string): unknown {
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new Error(`${url}: not valid JSON (${(e as Error).message})`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Local files

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/** A temporary name of this caller's own for `path`: two callers never write to one file. */
function temporary(path: string): string {
  return `${path}${PARTIAL}.${process.pid}.${randomBytes(4).toString("hex")}`;
}

/** Write a small file whole or not at all (temporary name, then rename). */
async function writeAtomic(path: string, data: string | Uint8Array): Promise<void> {
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
async function removeLeftovers(ctx: Ctx, dir: string): Promise<void> {
  const left = (await readdir(dir)).filter((f) => TEMPORARY.test(f));
  for (const f of left) await rm(join(dir, f), { force: true });
  if (left.length > 0) ctx.log(`${dir}: removed ${left.length} temporary file(s) left by an interrupted run`);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
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

// ---------------------------------------------------------------------------------------------------------------
// The directory's lock

interface LockInfo {
  host: string;
  pid: number;
  token: string;
  since: string;
}

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
async function lockDir(ctx: Ctx, dir: string): Promise<() => Promise<void>> {
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
          } else lost.abort(new Error(`${path}: the lock was taken over by another caller (judged stale): stopping`));
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

/** Before a commit point (a complete marker): this caller still holds the lock (and was not stopped). */
function stillLocked(ctx: Ctx): void {
  if (ctx.signal?.aborted) throw ctx.signal.reason;
}

async function readMarker(dir: string): Promise<Marker | undefined> {
  const path = join(dir, MARKER);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new Error(`${path}: cannot read (${(e as Error).message})`);
  }
  try {
    const m = JSON.parse(text) as Marker;
    if (typeof m.uri === "string" && (m.kind === "whole" || m.kind === "tensors")) {
      if (
        m.version === MARKER_VERSION &&
        (m.files === undefined || (typeof m.files === "object" && !Array.isArray(m.files)))
      )
        return m;
      // Written before versions were recorded: what it lists may mix revisions; only its uri still counts.
      return { uri: m.uri, kind: m.kind, complete: false };
    }
  } catch {
    // fall through
  }
  throw new Error(`${path}: not a checkpoint marker; remove it or use an empty directory`);
}

function writeMarker(dir: string, m: Marker): Promise<void> {
  return writeAtomic(join(dir, MARKER), `${JSON.stringify({ ...m, version: MARKER_VERSION }, null, 2)}\n`);
}

/**
 * Refuse a directory that holds (part of) another checkpoint: skipping files present under their names would mix
 * two checkpoints' files.
 */
function checkMarker(dir: string, m: Marker | undefined, uri: string, kind: Marker["kind"]): void {
  if (m && (m.uri !== uri || m.kind !== kind)) {
    const what = m.kind === "whole" ? "checkpoint" : "router tensors of";
    throw new Error(
      `${dir}: holds ${m.complete ? "" : "part of "}the ${what} ${m.uri}, not ${uri}: use another directory or empty it`,
    );
  }
}

/** Run `fn` over `items`, `limit` at a time; the first failure stops new starts and is thrown after all settle. */
async function pool<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
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

function mib(n: number): string {
  return `${(n / MiB).toFixed(1)} MiB`;
}

// ---------------------------------------------------------------------------------------------------------------
// Whole checkpoint

/**
 * Stream one file to a temporary name of this caller's own, check it (`check` gets the temporary path), then rename
 * it to `name`: a file under its own name is always one caller's complete bytes. On failure the temporary file is
 * removed. `given`: the file's answer when it was asked for already (hf:// config.json, which resolved the revision).
 * Returns the file's version as the server gave it.
 */
async function downloadFile(
  ctx: Ctx,
  dir: string,
  name: string,
  check: (path: string, url: string) => Promise<void>,
  abort: AbortSignal,
  given?: { got: Got; url: string },
): Promise<Pin> {
  const url = given?.url ?? urlOf(ctx, name);
  const final = join(dir, name);
  const tmp = temporary(final);
  const t0 = performance.now();
  const got = given?.got ?? (await get(ctx, url, { signal: abort }));
  if (got.res.status !== 200) throw await httpError(got, `GET ${url}`);
  const lengthHeader = got.res.headers.get("content-length");
  const encoded = (got.res.headers.get("content-encoding") ?? "identity") !== "identity";
  const expected = lengthHeader === null || encoded ? undefined : Number(lengthHeader);
  let n = 0;
  let lastLog = t0;
  try {
    const fh = await open(tmp, "wx");
    try {
      for await (const c of got.chunks()) {
        let done = 0;
        while (done < c.byteLength) done += (await fh.write(c, done, c.byteLength - done)).bytesWritten;
        n += c.byteLength;
        // A multi-gigabyte shard takes minutes: say it is moving, or the initContainer looks hung.
        if (performance.now() - lastLog > PROGRESS_EVERY_MS) {
          lastLog = performance.now();
          ctx.log(`${name}: ${mib(n)}${expected === undefined ? "" : ` of ${mib(expected)}`}`);
        }
      }
      // A pod killed after the rename must not find a file that is whole in name only (node crash, PVC).
      await fh.sync();
    } finally {
      await fh.close();
    }
    if (expected !== undefined && Number.isFinite(expected) && n !== expected)
      throw new Error(`GET ${url}: got ${n} bytes, Content-Length said ${expected}`);
    await check(tmp, url);
    await rename(tmp, final);
  } catch (e) {
    await got.cancel();
    await rm(tmp, { force: true });
    throw e;
  }
  const s = (performance.now() - t0) / 1000;
  ctx.log(`fetched ${name}: ${mib(n)} in ${s.toFixed(1)} s (${(n / MiB / Math.max(s, 1e-3)).toFixed(1)} MiB/s)`);
  return pinOf(got.res);
}

async function checkSafetensors(path: string, url: string): Promise<void> {
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

/** A directory that holds this checkpoint already: no lock, no request (it may be mounted read-only). */
function wholeDone(ctx: Ctx, dir: string, uri: string, marker: Marker | undefined): WholeResult | undefined {
  checkMarker(dir, marker, uri, "whole");
  if (!marker?.complete) return undefined;
  ctx.log(`${dir}: already holds ${uri}${marker.commit ? ` (commit ${marker.commit})` : ""}`);
  return { fetched: [], skipped: Object.keys(marker.files ?? {}), bytes: 0 };
}

/**
 * Downloads the whole checkpoint into dir: config.json, then the index (a 404 on it means single-file:
 * model.safetensors) and every shard in its weight_map. Each file goes to a temporary name and is renamed when
 * complete. An hf:// revision is resolved to a commit by config.json's answer and every other file is fetched from
 * that commit. The marker records the commit (hf://) or each file's ETag / Last-Modified as it is fetched, so a
 * restarted pod keeps the files of an interrupted run only when they are still the version being fetched (the same
 * commit; a 304 to a conditional GET of each), and starts over (saying so in the log) when not; files without such a
 * record are fetched again. Once everything is there the marker says so: a second call with the same uri returns at
 * once. A lock file makes concurrent callers on one directory wait for each other. Errors name the URL and HTTP
 * status. Returns the files fetched and skipped and the bytes downloaded.
 */
export async function fetchCheckpoint(uri: string, dir: string, o: FetchOptions = {}): Promise<WholeResult> {
  const ctx = context(uri, o);
  await mkdir(dir, { recursive: true });
  const done = wholeDone(ctx, dir, uri, await readMarker(dir));
  if (done) return done;
  const unlock = await lockDir(ctx, dir);
  try {
    // Another caller may have finished it while this one waited for the lock.
    const marker = await readMarker(dir);
    return wholeDone(ctx, dir, uri, marker) ?? (await fetchWhole(ctx, uri, dir, marker));
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
  ) => {
    files.push(name);
    if (pins[name] && (await exists(join(dir, name)))) {
      await given?.got.cancel();
      skipped.push(name);
      ctx.log(`skipped ${name}: already present`);
      return;
    }
    try {
      pins[name] = await downloadFile(ctx, dir, name, check, abort, given);
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
    const index = await getSmall(ctx, INDEX_FILE, { absentOk: true });
    if (index === undefined) {
      ctx.log(`${INDEX_FILE}: not there, single file ${SINGLE_FILE}`);
      shards = [SINGLE_FILE];
      noIndex = true;
    } else {
      shards = shardNames(parseIndex(parseJson(index.bytes, url), url), url);
      await writeAtomic(indexPath, index.bytes);
      files.push(INDEX_FILE);
      fetched.push(INDEX_FILE);
      pins[INDEX_FILE] = index.pin;
      await record();
      ctx.log(`fetched ${INDEX_FILE}: ${shards.length} shard(s)`);
    }
  }
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
function shardNames(weightMap: Map<string, string>, where: string): string[] {
  const names = [...new Set(weightMap.values())];
  for (const n of names) checkShardName(n, where);
  if (names.length === 0) throw new Error(`${where}: weight_map is empty`);
  return names;
}

// ---------------------------------------------------------------------------------------------------------------
// Only some tensors, by Range requests

/** Parse "bytes FIRST-LAST/TOTAL" (TOTAL may be "*"). */
function contentRange(v: string | null): { first: number; last: number; total?: number } | undefined {
  const m = v ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(v.trim()) : null;
  if (!m) return undefined;
  return { first: Number(m[1]), last: Number(m[2]), total: m[3] === "*" ? undefined : Number(m[3]) };
}

/**
 * GET bytes [begin, end) of a file as a 206. A 200 means the server ignored Range and would send the whole file: an
 * error, not a silent full download.
 */
async function getRange(
  ctx: Ctx,
  url: string,
  begin: number,
  end: number,
  signal?: AbortSignal,
): Promise<{ got: Got; total?: number }> {
  const got = await get(ctx, url, { range: [begin, end], signal });
  const what = `GET ${url} (bytes ${begin}-${end - 1})`;
  if (got.res.status === 200) {
    await got.cancel();
    throw new Error(
      `${what}: the server ignored the Range request (HTTP 200, not 206); router tensors need a server with Range support`,
    );
  }
  if (got.res.status !== 206) throw await httpError(got, what);
  const cr = contentRange(got.res.headers.get("content-range"));
  if (!cr || cr.first !== begin || cr.last !== end - 1) {
    await got.cancel();
    throw new Error(
      `${what}: Content-Range ${JSON.stringify(got.res.headers.get("content-range"))} is not the range asked for`,
    );
  }
  return { got, total: cr.total };
}

async function readRange(
  ctx: Ctx,
  url: string,
  begin: number,
  end: number,
): Promise<{ data: Uint8Array; total?: number; etag?: string }> {
  const { got, total } = await getRange(ctx, url, begin, end);
  const data = new Uint8Array(end - begin);
  let n = 0;
  for await (const c of got.chunks()) {
    if (n + c.byteLength > data.byteLength) {
      await got.cancel();
      throw new Error(`GET ${url} (bytes ${begin}-${end - 1}): more bytes than asked for`);
    }
    data.set(c, n);
    n += c.byteLength;
  }
  if (n !== data.byteLength)
    throw new Error(`GET ${url} (bytes ${begin}-${end - 1}): got ${n} of ${data.byteLength} bytes`);
  return { data, total, etag: got.res.headers.get("etag") ?? undefined };
}

/** A file replaced between two range reads (an https URL; hf:// reads one commit) would mix two files' bytes. */
function sameEtag(what: string, first: string | undefined, now: string | null): void {
  if (first !== undefined && now !== null && now !== first)
    throw new Error(`${what}: the file changed while being read (ETag ${first}, now ${now})`);
}

/** A remote safetensors header: the 8-byte length, then the JSON; and the file's ETag. */
async function remoteHeader(ctx: Ctx, file: string): Promise<{ tensors: Map<string, TensorInfo>; etag?: string }> {
  const url = urlOf(ctx, file);
  const { data: lenBytes, total, etag } = await readRange(ctx, url, 0, 8);
  const len = Number(new DataView(lenBytes.buffer).getBigUint64(0, true));
  if (len === 0 || len > MAX_HEADER_BYTES)
    throw new Error(`${url}: bad safetensors header: header length ${len} out of range (1..${MAX_HEADER_BYTES})`);
  const { data: json, etag: etag2 } = await readRange(ctx, url, 8, 8 + len);
  sameEtag(`GET ${url} (bytes 8-${8 + len - 1})`, etag, etag2 ?? null);
  // Without a total size the truncation check cannot run here; a short tensor read still fails below.
  return { tensors: parseSafetensorsHeader(json, url, total ?? Number.MAX_SAFE_INTEGER).tensors, etag };
}

/** One request: a run of contiguous source bytes and where each wanted tensor in it goes in the output file. */
interface RangeJob {
  file: string;
  /** the file's ETag when its header was read */
  etag?: string;
  begin: number;
  end: number;
  parts: { begin: number; end: number; out: number }[];
}

/**
 * The router's share of a checkpoint: config.json plus only the named tensors, read with HTTP Range requests (each
 * shard's 8-byte header length and JSON header, then each wanted tensor's bytes), written into dir as config.json +
 * one model.safetensors holding just those tensors (same names, dtypes, shapes). `names(spec)` gets the spec parsed
 * from config.json (specFromHfConfig). An hf:// revision is resolved to a commit by config.json's answer, and the
 * rest is read from that commit; over https, a file whose ETag changes between its range reads is an error. A server
 * that ignores Range (200 instead of 206) is an error naming the URL. A wanted tensor missing from the checkpoint is
 * an error naming it. Skips everything when dir already holds the result for this uri (marker). A lock file makes
 * concurrent callers on one directory wait for each other; the output is written under a temporary name of this
 * caller's own and renamed when whole.
 */
export async function fetchCheckpointTensors(
  uri: string,
  dir: string,
  names: (spec: ModelSpec) => string[],
  o: FetchOptions = {},
): Promise<{ tensors: number; bytes: number }> {
  const ctx = context(uri, o);
  await mkdir(dir, { recursive: true });
  const done = await tensorsDone(ctx, dir, uri, names, await readMarker(dir));
  if (done) return done;
  const unlock = await lockDir(ctx, dir);
  try {
    // Another caller may have finished it while this one waited for the lock.
    const marker = await readMarker(dir);
    return (await tensorsDone(ctx, dir, uri, names, marker)) ?? (await fetchTensors(ctx, uri, dir, names, marker));
  } finally {
    await unlock();
  }
}

async function tensorsDone(
  ctx: Ctx,
  dir: string,
  uri: string,
  names: (spec: ModelSpec) => string[],
  marker: Marker | undefined,
): Promise<{ tensors: number; bytes: number } | undefined> {
  checkMarker(dir, marker, uri, "tensors");
  const configPath = join(dir, "config.json");
  if (!marker?.complete || !(await exists(configPath))) return undefined;
  // The names depend on the spec: the local config.json gives them without a request.
  const wanted = [...new Set(names(specFromHfConfig(parseJson(await readFile(configPath), configPath), configPath)))];
  if (!sameSet(wanted, marker.tensors ?? [])) return undefined;
  ctx.log(`${dir}: already holds the ${wanted.length} router tensors of ${uri}`);
  return { tensors: wanted.length, bytes: 0 };
}

async function fetchTensors(
  ctx: Ctx,
  uri: string,
  dir: string,
  names: (spec: ModelSpec) => string[],
  marker: Marker | undefined,
): Promise<{ tensors: number; bytes: number }> {
  const configPath = join(dir, "config.json");
  // A whole checkpoint's index would make openCheckpoint look past the model.safetensors written here.
  if (!marker && (await exists(join(dir, INDEX_FILE))))
    throw new Error(`${dir}: holds ${INDEX_FILE} (a whole checkpoint?): use an empty directory for router tensors`);
  await removeLeftovers(ctx, dir);
  await writeMarker(dir, { uri, kind: "tensors", complete: false });

  // hf://: config.json's answer names the commit the revision is at; the index and the tensors come from that commit.
  const configUrl = urlOf(ctx, "config.json");
  let commit: string | undefined;
  const { bytes: configBytes } = (await getSmall(ctx, "config.json", {
    firstHop: ctx.src.hfResolve
      ? (r) => {
          commit = commitOf(r);
        }
      : undefined,
  }))!;
  if (ctx.src.hfResolve) {
    if (commit) {
      pinCommit(ctx, commit);
      ctx.log(`${uri}: ${ctx.src.revision} is commit ${commit}`);
    } else ctx.log(`${configUrl}: no X-Repo-Commit header: the revision cannot be pinned to a commit`);
  }
  ctx.log(`fetching router tensors of ${uri} from ${ctx.src.base} into ${dir}`);
  const spec = specFromHfConfig(parseJson(configBytes, configUrl), configUrl);
  const wanted = [...new Set(names(spec))];

  // Which file holds each tensor.
  const indexUrl = urlOf(ctx, INDEX_FILE);
  const index = await getSmall(ctx, INDEX_FILE, { absentOk: true });
  const weightMap = index && parseIndex(parseJson(index.bytes, indexUrl), indexUrl);
  if (weightMap) shardNames(weightMap, indexUrl);
  const byFile = new Map<string, string[]>();
  for (const name of wanted) {
    const file = weightMap ? weightMap.get(name) : SINGLE_FILE;
    if (!file) throw new Error(`${indexUrl}: tensor ${name} is not in weight_map`);
    byFile.set(file, [...(byFile.get(file) ?? []), name]);
  }

  // Every needed header first: the output header (names, dtypes, shapes, offsets) is known before any data.
  const headers = new Map<string, { tensors: Map<string, TensorInfo>; etag?: string }>();
  await pool([...byFile.keys()], CONCURRENCY, async (file) => {
    headers.set(file, await remoteHeader(ctx, file));
  });
  const infos: (TensorInfo & { file: string })[] = [];
  for (const [file, list] of byFile) {
    for (const name of list) {
      const info = headers.get(file)!.tensors.get(name);
      if (!info) throw new Error(`${urlOf(ctx, file)}: tensor ${name} not found in its safetensors header`);
      infos.push({ ...info, file });
    }
  }
  // Source order, so that tensors stored side by side are read in one request.
  infos.sort((a, b) => (a.file === b.file ? a.begin - b.begin : a.file < b.file ? -1 : 1));
  const { header, dataBytes } = buildSafetensorsHeader(
    infos.map((t) => ({ name: t.name, dtype: t.dtype as SafetensorsDType, shape: t.shape })),
    { format: "pt" },
  );
  const jobs: RangeJob[] = [];
  let out = header.byteLength;
  for (const t of infos) {
    const last = jobs.at(-1);
    const part = { begin: t.begin, end: t.end, out };
    out += t.end - t.begin;
    if (t.end === t.begin) continue; // an empty tensor has no bytes to read
    if (last && last.file === t.file && last.end === t.begin) {
      last.end = t.end;
      last.parts.push(part);
    } else jobs.push({ file: t.file, etag: headers.get(t.file)!.etag, begin: t.begin, end: t.end, parts: [part] });
  }

  const outPath = join(dir, SINGLE_FILE);
  const tmp = temporary(outPath);
  try {
    const fh = await open(tmp, "wx");
    try {
      await fh.write(header, 0, header.byteLength, 0);
      // Sizes the file up front: a tensor left unwritten by a bug would read as zeros, so each range is checked below.
      await fh.truncate(header.byteLength + dataBytes);
      // One failed range stops the others.
      const stop = new AbortController();
      const signal = ctx.signal ? AbortSignal.any([ctx.signal, stop.signal]) : stop.signal;
      await pool(jobs, CONCURRENCY, async (job) => {
        try {
          await copyRange(ctx, job, fh, signal);
        } catch (e) {
          stop.abort(e);
          throw e;
        }
      });
      await fh.sync();
    } finally {
      await fh.close();
    }
    await checkSafetensors(tmp, tmp);
    stillLocked(ctx);
    await writeAtomic(configPath, configBytes);
    await rename(tmp, outPath);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
  await writeMarker(dir, { uri, kind: "tensors", complete: true, commit, tensors: wanted });
  ctx.log(
    `done: ${infos.length} tensors (${mib(dataBytes)}) from ${byFile.size} file(s) in ${jobs.length} range request(s), ` +
      `${mib(ctx.bytes)} downloaded`,
  );
  return { tensors: infos.length, bytes: ctx.bytes };
}

/** Stream one range into the output file, each wanted tensor's bytes to its place. */
async function copyRange(ctx: Ctx, job: RangeJob, fh: FileHandle, signal: AbortSignal): Promise<void> {
  const url = urlOf(ctx, job.file);
  const { got } = await getRange(ctx, url, job.begin, job.end, signal);
  try {
    sameEtag(`GET ${url} (bytes ${job.begin}-${job.end - 1})`, job.etag, got.res.headers.get("etag"));
  } catch (e) {
    await got.cancel();
    throw e;
  }
  let at = job.begin; // source offset of the next byte
  for await (const c of got.chunks()) {
    const cEnd = at + c.byteLength;
    if (cEnd > job.end) {
      await got.cancel();
      throw new Error(`GET ${url} (bytes ${job.begin}-${job.end - 1}): more bytes than asked for`);
    }
    for (const p of job.parts) {
      const from = Math.max(at, p.begin);
      const to = Math.min(cEnd, p.end);
      if (from >= to) continue;
      let done = 0;
      while (done < to - from)
        done += (await fh.write(c, from - at + done, to - from - done, p.out + (from - p.begin) + done)).bytesWritten;
    }
    at = cEnd;
  }
  if (at !== job.end)
    throw new Error(
      `GET ${url} (bytes ${job.begin}-${job.end - 1}): got ${at - job.begin} of ${job.end - job.begin} bytes`,
    );
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  const s = new Set(b);
  return a.length === s.size && a.every((x) => s.has(x));
}

/**
 * The tensors the router reads (router-service/src/checkpoint-model.ts): per MoE layer the gate, DeepSeek-V3's
 * e_score_correction_bias, the shared expert's gate/up/down and Qwen2-MoE's shared_expert_gate, where the spec has
 * them.
 */
export function routerTensorNames(spec: ModelSpec): string[] {
  const out: string[] = [];
  for (const l of moeLayers(spec)) {
    out.push(gateKey(spec, l));
    const bias = correctionBiasKey(spec, l);
    if (bias) out.push(bias);
    const sk = sharedExpertKeys(spec, l);
    if (sk) out.push(sk.gate, sk.up, sk.down);
    const sg = sharedExpertGateKey(spec, l);
    if (sg) out.push(sg);
  }
  return out;
}
