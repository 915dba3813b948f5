// HTTP: one GET with a deadline on the response headers and on every body chunk (and a minimum throughput), the
// small-file and Range reads built on it. Separate from what is fetched: nothing here writes to the disk.

import { failedPrecondition } from "@switchyard/protocol";
import { MAX_HEADER_BYTES } from "../safetensors.js";
import { type Ctx, MiB, type Pin, pinOf, urlOf } from "./context.js";

export interface Got {
  res: Response;
  /** The body's chunks; each read has its own deadline. */
  chunks(): AsyncGenerator<Uint8Array>;
  /** Drop the body unread (an error status, a 200 where a 206 was asked for). */
  cancel(): Promise<void>;
}

interface GetOptions {
  /** bytes [begin, end), or from begin to the end of the file */
  range?: [begin: number, end?: number];
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

export async function get(ctx: Ctx, url: string, o: GetOptions = {}): Promise<Got> {
  const { range, signal: outer = ctx.signal } = o;
  const bytes = range && `${range[0]}-${range[1] === undefined ? "" : range[1] - 1}`;
  const what = range ? `GET ${url} (bytes ${bytes})` : `GET ${url}`;
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
  if (range) headers["range"] = `bytes=${bytes}`;
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

export function aborted(what: string, signal: AbortSignal): Error {
  const r = signal.reason as { message?: string } | undefined;
  return new Error(`${what}: aborted (${r?.message ?? String(r)})`);
}

/** The error for a non-2xx answer, with the start of its body (the Hub says why in JSON). */
export async function httpError(got: Got, what: string): Promise<Error> {
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
export async function getSmall(
  ctx: Ctx,
  name: string,
  o: { absentOk?: boolean; firstHop?: (res: Response) => void; maxBytes?: number } = {},
): Promise<{ bytes: Uint8Array; pin: Pin } | undefined> {
  const url = urlOf(ctx, name);
  const got = await get(ctx, url, { firstHop: o.firstHop });
  if (o.absentOk && (got.res.status === 404 || got.res.status === 403)) {
    await got.cancel();
    return undefined;
  }
  if (got.res.status !== 200) throw await httpError(got, `GET ${url}`);
  // config.json and the index are kilobytes to megabytes; a huge answer is something else (an HTML page, a wrong URL).
  const max = o.maxBytes ?? MAX_HEADER_BYTES;
  const tooBig = () => failedPrecondition(`GET ${url}: more than ${max} bytes, not a checkpoint's ${name}`);
  if (Number(got.res.headers.get("content-length") ?? 0) > max) {
    await got.cancel();
    throw tooBig();
  }
  const parts: Uint8Array[] = [];
  let n = 0;
  for await (const c of got.chunks()) {
    n += c.byteLength;
    if (n > max) {
      await got.cancel();
      throw tooBig();
    }
    parts.push(c);
  }
  return { bytes: Buffer.concat(parts), pin: pinOf(got.res) };
}

export function parseJson(bytes: Uint8Array, url: string): unknown {
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new Error(`${url}: not valid JSON (${(e as Error).message})`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Range requests (router tensors; resume.ts reads Content-Range too)

/** Parse "bytes FIRST-LAST/TOTAL" (TOTAL may be "*"). */
export function contentRange(v: string | null): { first: number; last: number; total?: number } | undefined {
  const m = v ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(v.trim()) : null;
  if (!m) return undefined;
  return { first: Number(m[1]), last: Number(m[2]), total: m[3] === "*" ? undefined : Number(m[3]) };
}

/**
 * A file's version as its first range read showed it. Every later read of the file must show the same, or the
 * output would mix two versions' bytes (a file replaced between range reads behind an https URL, a server that
 * omits the ETag on 206 answers). Pinned by the ETag, else Last-Modified, and by the total size (Content-Range).
 */
export interface RangePin {
  /** the first read's ETag, else its Last-Modified; undefined when it had neither (only the size then tells) */
  validator?: { header: "ETag" | "Last-Modified"; value: string };
  /** Content-Range's total; undefined for "*" */
  total?: number;
}

export function rangePin(headers: Headers, total: number | undefined): RangePin {
  const etag = headers.get("etag");
  const lastModified = headers.get("last-modified");
  const validator = etag
    ? { header: "ETag" as const, value: etag }
    : lastModified
      ? { header: "Last-Modified" as const, value: lastModified }
      : undefined;
  return { ...(validator ? { validator } : {}), total };
}

/** Why an answer is not of the version `pin` recorded (a phrase for "the file ..."), or undefined when it is. */
export function pinMismatch(pin: RangePin, headers: Headers, total: number | undefined): string | undefined {
  const size = (n: number | undefined) => (n === undefined ? "*" : String(n));
  if (pin.total !== total)
    return `changed while being read (its size was ${size(pin.total)}, now ${size(total)} by Content-Range)`;
  if (!pin.validator) return undefined;
  const { header, value } = pin.validator;
  const now = headers.get(header);
  // A validator the first answer had and a later one lacks can vouch for nothing: the bytes may be another file's.
  if (now === null)
    return `sent no ${header} where its first read had ${value}: whether it changed while being read cannot be told`;
  return now === value ? undefined : `changed while being read (${header} ${value}, now ${now})`;
}

/**
 * If-Range for a pinned file: its strong ETag (RFC 9110 allows no weak one, and a Last-Modified date only under
 * conditions a server's clock decides), so that a server whose file changed answers 200 rather than another file's
 * bytes.
 */
function ifRange(pin: RangePin | undefined): Record<string, string> {
  const v = pin?.validator;
  return v?.header === "ETag" && /^"[^"]*"$/.test(v.value) ? { "if-range": v.value } : {};
}

/**
 * GET bytes [begin, end) of a file as a 206. A 200 means the server ignored Range and would send the whole file: an
 * error, not a silent full download. With `pin` (the file's first read), an answer of another version of the file
 * is an error naming the URL.
 */
export async function getRange(
  ctx: Ctx,
  url: string,
  begin: number,
  end: number,
  o: { signal?: AbortSignal; pin?: RangePin } = {},
): Promise<{ got: Got; total?: number }> {
  const got = await get(ctx, url, { range: [begin, end], signal: o.signal, headers: ifRange(o.pin) });
  const what = `GET ${url} (bytes ${begin}-${end - 1})`;
  if (got.res.status === 200) {
    await got.cancel();
    const etag = got.res.headers.get("etag");
    const sent = ifRange(o.pin)["if-range"];
    if (sent !== undefined && etag !== sent)
      throw failedPrecondition(
        `${what}: the file changed while being read (If-Range ${sent} answered with the whole file, ETag ${etag ?? "none"})`,
      );
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
  const changed = o.pin && pinMismatch(o.pin, got.res.headers, cr.total);
  if (changed) {
    await got.cancel();
    throw failedPrecondition(`${what}: the file ${changed}`);
  }
  return { got, total: cr.total };
}

/** Bytes [begin, end) of a file, and its version as this answer showed it (for the file's first read). */
export async function readRange(
  ctx: Ctx,
  url: string,
  begin: number,
  end: number,
  pin?: RangePin,
): Promise<{ data: Uint8Array; total?: number; pin: RangePin }> {
  const { got, total } = await getRange(ctx, url, begin, end, { pin });
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
  return { data, total, pin: rangePin(got.res.headers, total) };
}
