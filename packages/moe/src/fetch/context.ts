// What one fetch call carries: its options (FetchOptions) checked into a Ctx, the shared constants, the marker's
// shape, and the version pins (commit, ETag, Last-Modified) that tie every file to one version of the checkpoint.

import { type Source, source } from "./uri.js";

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
  /**
   * A download that can be resumed is synced and its record advanced this often: the most of it that a kill without
   * warning (SIGKILL, a lost node) costs, whatever the link's speed. Default 10_000.
   */
  resumePointMs?: number;
}

const DEFAULT_TIMEOUT_MS = 60_000;
const DEFAULT_MIN_BYTES_PER_SECOND = 2 ** 20;
const DEFAULT_THROUGHPUT_WINDOW_MS = 60_000;
const DEFAULT_LOCK_STALE_MS = 120_000;
const DEFAULT_RESUME_POINT_MS = 10_000;
export const LOCK_POLL_MS = 100;
/** Files (or tensor ranges) downloaded at once: one stream rarely fills a data-centre link, dozens would thrash. */
export const CONCURRENCY = 4;
/** Temporary files: NAME.partial.PID.RANDOM, one per caller and file (NAME.partial: written by earlier versions). */
export const PARTIAL = ".partial";
export const TEMPORARY = /\.partial(\.\d+\.[0-9a-f]+)?$/;
/**
 * A download a later run can continue by Range: NAME.resumable, and what it was started against in
 * NAME.resumable.json. One name per file, not per caller, so that the next run finds it; only the lock's holder
 * touches it.
 */
export const RESUMABLE = ".resumable";
export const RESUMABLE_FILE = /\.resumable(\.json)?$/;
/** Records what the directory holds; written last, so its presence with complete=true means everything is there. */
export const MARKER = ".switchyard-checkpoint.json";
export const MARKER_VERSION = 2;
/** Held (created exclusively) by the one caller working in the directory. */
export const LOCK = ".switchyard-checkpoint.lock";
export const MiB = 2 ** 20;
export const PROGRESS_EVERY_MS = 15_000;

/** What a server said about the version of a file it sent, and the file's size once in place. */
export interface Pin {
  etag?: string;
  lastModified?: string;
  /** bytes on the disk when the file was put in place: a later call checks it without a request (verify.ts) */
  size?: number;
}

export interface Marker {
  /** MARKER_VERSION; a marker without it records no versions: its files are not trusted. */
  version?: number;
  uri: string;
  kind: "whole" | "tensors";
  complete: boolean;
  /** hf:// revisions: the commit every file came from */
  commit?: string;
  /** each file present and whole, with its version (whole) and size when it was fetched */
  files?: Record<string, Pin>;
  tensors?: string[];
}

export interface Ctx {
  src: Source;
  fetch: typeof globalThis.fetch;
  log: (line: string) => void;
  signal?: AbortSignal;
  timeoutMs: number;
  minBytesPerSecond: number;
  throughputWindowMs: number;
  lockStaleMs: number;
  resumePointMs: number;
  /** Bytes received over the network (bodies only). */
  bytes: number;
}

export function context(uri: string, o: FetchOptions): Ctx {
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
    resumePointMs: ms("resumePointMs", o.resumePointMs ?? DEFAULT_RESUME_POINT_MS),
    bytes: 0,
  };
}

/** hf://: fetch every further file from `commit`, whatever the revision (a branch) points to meanwhile. */
export function pinCommit(ctx: Ctx, commit: string): void {
  ctx.src = { ...ctx.src, base: `${ctx.src.hfResolve}${commit}/` };
}

/** The commit the Hub resolved a revision to (its resolve answers, 200 or 302, carry X-Repo-Commit). */
export function commitOf(res: Response): string | undefined {
  const c = res.headers.get("x-repo-commit")?.trim();
  return c && /^[0-9a-f]{40}([0-9a-f]{24})?$/i.test(c) ? c.toLowerCase() : undefined;
}

export function pinOf(res: Response): Pin {
  const pin: Pin = {};
  const etag = res.headers.get("etag");
  const lastModified = res.headers.get("last-modified");
  if (etag) pin.etag = etag;
  if (lastModified) pin.lastModified = lastModified;
  return pin;
}

export function urlOf(ctx: Ctx, name: string): string {
  return ctx.src.base + encodeURIComponent(name);
}
