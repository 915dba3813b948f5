// Downloads a Hugging Face-layout safetensors checkpoint named by an ExpertPool's spec.model.checkpoint.uri: the
// whole of it for a worker (fetchCheckpoint), or only the tensors the router reads, by HTTP Range requests
// (fetchCheckpointTensors). Both run in a pod's initContainer, so they must survive being killed at any point: every
// file is written under a temporary name and renamed when whole, and a marker file records the uri once the
// directory holds everything, so a restarted pod resumes and a finished one returns without a request.

import { access, type FileHandle, mkdir, open, readFile, rename, rm, writeFile } from "node:fs/promises";
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
    return { base: `${endpoint}/${org}/${name}/resolve/${encodeURIComponent(revision)}/`, headers };
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
}

const DEFAULT_TIMEOUT_MS = 60_000;
/** Files (or tensor ranges) downloaded at once: one stream rarely fills a data-centre link, dozens would thrash. */
const CONCURRENCY = 4;
const PARTIAL = ".partial";
/** Records what the directory holds; written last, so its presence with complete=true means everything is there. */
const MARKER = ".switchyard-checkpoint.json";
const MiB = 2 ** 20;
const PROGRESS_EVERY_MS = 15_000;

interface Marker {
  uri: string;
  kind: "whole" | "tensors";
  complete: boolean;
  files?: string[];
  tensors?: string[];
}

interface Ctx {
  src: CheckpointSource;
  fetch: typeof globalThis.fetch;
  log: (line: string) => void;
  signal?: AbortSignal;
  timeoutMs: number;
  /** Bytes received over the network (bodies only). */
  bytes: number;
}

function context(uri: string, o: FetchOptions): Ctx {
  const timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0 || timeoutMs > 2 ** 31 - 1)
    throw new Error(`timeoutMs: must be in (0, 2^31-1] ms, got ${timeoutMs}`);
  return {
    src: checkpointSource(uri, o.env),
    fetch: o.fetch ?? globalThis.fetch,
    log: o.log ?? (() => {}),
    signal: o.signal,
    timeoutMs,
    bytes: 0,
  };
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

/** `outer` (default ctx.signal) cancels the request too: the caller's signal, or a sibling download's failure. */
async function get(ctx: Ctx, url: string, range?: [number, number], outer = ctx.signal): Promise<Got> {
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
  const headers: Record<string, string> = { "accept-encoding": "identity", ...ctx.src.headers };
  if (range) headers["range"] = `bytes=${range[0]}-${range[1] - 1}`;
  const res = await deadline(ctx.fetch(url, { headers, signal, redirect: "follow" }), "response");
  let received = 0;
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

/** A small file's bytes, or undefined when `absentOk` and the server says it is not there (404, or S3's 403). */
async function getSmall(ctx: Ctx, name: string, absentOk = false): Promise<Uint8Array | undefined> {
  const url = urlOf(ctx, name);
  const got = await get(ctx, url);
  if (absentOk && (got.res.status === 404 || got.res.status === 403)) {
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
  return Buffer.concat(parts);
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

/** Write a small file whole or not at all (temporary name, then rename). */
async function writeAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = path + PARTIAL;
  await writeFile(tmp, data);
  await rename(tmp, path);
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
    if (typeof m.uri === "string" && (m.kind === "whole" || m.kind === "tensors")) return m;
  } catch {
    // fall through
  }
  throw new Error(`${path}: not a checkpoint marker; remove it or use an empty directory`);
}

function writeMarker(dir: string, m: Marker): Promise<void> {
  return writeAtomic(join(dir, MARKER), `${JSON.stringify(m, null, 2)}\n`);
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
 * Stream one file to `name` + PARTIAL (truncating any earlier attempt's), check it (`check` gets the temporary path),
 * then rename it to `name`. On failure the temporary file is removed.
 */
async function downloadFile(
  ctx: Ctx,
  dir: string,
  name: string,
  check: (path: string, url: string) => Promise<void>,
  abort: AbortSignal,
): Promise<number> {
  const url = urlOf(ctx, name);
  const final = join(dir, name);
  const tmp = final + PARTIAL;
  const t0 = performance.now();
  const got = await get(ctx, url, undefined, abort);
  if (got.res.status !== 200) throw await httpError(got, `GET ${url}`);
  const lengthHeader = got.res.headers.get("content-length");
  const encoded = (got.res.headers.get("content-encoding") ?? "identity") !== "identity";
  const expected = lengthHeader === null || encoded ? undefined : Number(lengthHeader);
  let n = 0;
  let lastLog = t0;
  try {
    const fh = await open(tmp, "w");
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
  return n;
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
 * Downloads the whole checkpoint into dir: config.json, then the index (a 404 on it means single-file:
 * model.safetensors) and every shard in its weight_map. Each file goes to a temporary name and is renamed when
 * complete, so a file present under its own name is whole; files already present are skipped (a restarted pod
 * resumes). A marker file records the uri once everything is there: a second call with the same uri returns at once.
 * Errors name the URL and HTTP status. Returns the files fetched and skipped and the bytes downloaded.
 */
export async function fetchCheckpoint(
  uri: string,
  dir: string,
  o: FetchOptions = {},
): Promise<{ fetched: string[]; skipped: string[]; bytes: number }> {
  const ctx = context(uri, o);
  await mkdir(dir, { recursive: true });
  const marker = await readMarker(dir);
  checkMarker(dir, marker, uri, "whole");
  if (marker?.complete) {
    ctx.log(`${dir}: already holds ${uri}`);
    return { fetched: [], skipped: marker.files ?? [], bytes: 0 };
  }
  // Recorded before the first file, so that a restart with another uri is refused rather than mixing files.
  if (!marker) await writeMarker(dir, { uri, kind: "whole", complete: false });
  ctx.log(`fetching ${uri} from ${ctx.src.base} into ${dir}`);

  const fetched: string[] = [];
  const skipped: string[] = [];
  const files: string[] = [];
  // One failed file stops the others: their partial files are removed and the error is the first one.
  const stop = new AbortController();
  const abort = ctx.signal ? AbortSignal.any([ctx.signal, stop.signal]) : stop.signal;
  const one = async (name: string, check: (path: string, url: string) => Promise<void>) => {
    files.push(name);
    if (await exists(join(dir, name))) {
      skipped.push(name);
      ctx.log(`skipped ${name}: already present`);
      return;
    }
    try {
      await downloadFile(ctx, dir, name, check, abort);
    } catch (e) {
      stop.abort(e);
      throw e;
    }
    fetched.push(name);
  };

  // config.json first: a model we cannot serve fails here, not after the shards' gigabytes.
  await one("config.json", async (path, url) => {
    specFromHfConfig(parseJson(await readFile(path), url), url);
  });

  let shards: string[];
  let noIndex = false;
  const indexPath = join(dir, INDEX_FILE);
  if (await exists(indexPath)) {
    files.push(INDEX_FILE);
    skipped.push(INDEX_FILE);
    ctx.log(`skipped ${INDEX_FILE}: already present`);
    shards = shardNames(parseIndex(parseJson(await readFile(indexPath), indexPath), indexPath), indexPath);
  } else {
    const url = urlOf(ctx, INDEX_FILE);
    const bytes = await getSmall(ctx, INDEX_FILE, true);
    if (bytes === undefined) {
      ctx.log(`${INDEX_FILE}: not there, single file ${SINGLE_FILE}`);
      shards = [SINGLE_FILE];
      noIndex = true;
    } else {
      shards = shardNames(parseIndex(parseJson(bytes, url), url), url);
      await writeAtomic(indexPath, bytes);
      files.push(INDEX_FILE);
      fetched.push(INDEX_FILE);
      ctx.log(`fetched ${INDEX_FILE}: ${shards.length} shard(s)`);
    }
  }
  await pool(shards, CONCURRENCY, (name) => one(name, checkSafetensors)).catch((e) => {
    if (noIndex && /HTTP 40[34]/.test((e as Error).message))
      throw new Error(`${(e as Error).message} (and ${urlOf(ctx, INDEX_FILE)} is not there either)`);
    throw e;
  });
  await writeMarker(dir, { uri, kind: "whole", complete: true, files });
  ctx.log(`done: ${fetched.length} fetched, ${skipped.length} skipped, ${mib(ctx.bytes)} downloaded`);
  return { fetched, skipped, bytes: ctx.bytes };
}

/** The distinct shard files of a weight_map; only .safetensors names (so an index cannot overwrite config.json). */
function shardNames(weightMap: Map<string, string>, where: string): string[] {
  const names = [...new Set(weightMap.values())];
  for (const n of names)
    if (!n.endsWith(".safetensors") || n.endsWith(PARTIAL))
      throw new Error(`${where}: weight_map names ${JSON.stringify(n)}, expected a .safetensors file name`);
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
  const got = await get(ctx, url, [begin, end], signal);
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
): Promise<{ data: Uint8Array; total?: number }> {
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
  return { data, total };
}

/** A remote safetensors header: the 8-byte length, then the JSON. */
async function remoteHeader(ctx: Ctx, file: string): Promise<Map<string, TensorInfo>> {
  const url = urlOf(ctx, file);
  const { data: lenBytes, total } = await readRange(ctx, url, 0, 8);
  const len = Number(new DataView(lenBytes.buffer).getBigUint64(0, true));
  if (len === 0 || len > MAX_HEADER_BYTES)
    throw new Error(`${url}: bad safetensors header: header length ${len} out of range (1..${MAX_HEADER_BYTES})`);
  const { data: json } = await readRange(ctx, url, 8, 8 + len);
  // Without a total size the truncation check cannot run here; a short tensor read still fails below.
  return parseSafetensorsHeader(json, url, total ?? Number.MAX_SAFE_INTEGER).tensors;
}

/** One request: a run of contiguous source bytes and where each wanted tensor in it goes in the output file. */
interface RangeJob {
  file: string;
  begin: number;
  end: number;
  parts: { begin: number; end: number; out: number }[];
}

/**
 * The router's share of a checkpoint: config.json plus only the named tensors, read with HTTP Range requests (each
 * shard's 8-byte header length and JSON header, then each wanted tensor's bytes), written into dir as config.json +
 * one model.safetensors holding just those tensors (same names, dtypes, shapes). `names(spec)` gets the spec parsed
 * from config.json (specFromHfConfig). A server that ignores Range (200 instead of 206) is an error naming the URL.
 * A wanted tensor missing from the checkpoint is an error naming it. Skips everything when dir already holds the
 * result for this uri (marker).
 */
export async function fetchCheckpointTensors(
  uri: string,
  dir: string,
  names: (spec: ModelSpec) => string[],
  o: FetchOptions = {},
): Promise<{ tensors: number; bytes: number }> {
  const ctx = context(uri, o);
  await mkdir(dir, { recursive: true });
  const marker = await readMarker(dir);
  checkMarker(dir, marker, uri, "tensors");
  const configPath = join(dir, "config.json");
  if (marker?.complete && (await exists(configPath))) {
    // The names depend on the spec: the local config.json gives them without a request.
    const wanted = [...new Set(names(specFromHfConfig(parseJson(await readFile(configPath), configPath), configPath)))];
    if (sameSet(wanted, marker.tensors ?? [])) {
      ctx.log(`${dir}: already holds the ${wanted.length} router tensors of ${uri}`);
      return { tensors: wanted.length, bytes: 0 };
    }
  }
  // A whole checkpoint's index would make openCheckpoint look past the model.safetensors written here.
  if (!marker && (await exists(join(dir, INDEX_FILE))))
    throw new Error(`${dir}: holds ${INDEX_FILE} (a whole checkpoint?): use an empty directory for router tensors`);
  await writeMarker(dir, { uri, kind: "tensors", complete: false });
  ctx.log(`fetching router tensors of ${uri} from ${ctx.src.base} into ${dir}`);

  const configUrl = urlOf(ctx, "config.json");
  const configBytes = (await getSmall(ctx, "config.json"))!;
  const spec = specFromHfConfig(parseJson(configBytes, configUrl), configUrl);
  const wanted = [...new Set(names(spec))];

  // Which file holds each tensor.
  const indexUrl = urlOf(ctx, INDEX_FILE);
  const indexBytes = await getSmall(ctx, INDEX_FILE, true);
  const weightMap = indexBytes && parseIndex(parseJson(indexBytes, indexUrl), indexUrl);
  const byFile = new Map<string, string[]>();
  for (const name of wanted) {
    const file = weightMap ? weightMap.get(name) : SINGLE_FILE;
    if (!file) throw new Error(`${indexUrl}: tensor ${name} is not in weight_map`);
    byFile.set(file, [...(byFile.get(file) ?? []), name]);
  }

  // Every needed header first: the output header (names, dtypes, shapes, offsets) is known before any data.
  const headers = new Map<string, Map<string, TensorInfo>>();
  await pool([...byFile.keys()], CONCURRENCY, async (file) => {
    headers.set(file, await remoteHeader(ctx, file));
  });
  const infos: (TensorInfo & { file: string })[] = [];
  for (const [file, list] of byFile) {
    for (const name of list) {
      const info = headers.get(file)!.get(name);
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
    } else jobs.push({ file: t.file, begin: t.begin, end: t.end, parts: [part] });
  }

  const outPath = join(dir, SINGLE_FILE);
  const tmp = outPath + PARTIAL;
  const fh = await open(tmp, "w");
  try {
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
    await writeAtomic(configPath, configBytes);
    await rename(tmp, outPath);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
  await writeMarker(dir, { uri, kind: "tensors", complete: true, tensors: wanted });
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
