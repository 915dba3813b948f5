// Resuming a whole-file download that an earlier run left part of: what a partial must have been started against for
// its bytes to be kept, the Range request that continues it, and whether the server's answer continues those same
// bytes. Pure decisions: partial.ts keeps the files, download.ts does the requests and writes.

import { contentRange } from "./http.js";

/** The record's format; one of another version is not trusted. */
const RECORD_VERSION = 1;

/** What a partial download was started against, kept beside it (NAME.resumable.json). */
export interface PartialRecord {
  version: number;
  /** the URL fetched; for hf:// it names the pinned commit */
  url: string;
  /** hf://: the commit the URL is pinned to (a commit's files never change) */
  commit?: string;
  /** the file's strong ETag, sent as If-Range */
  etag?: string;
  /** the whole file's length */
  size: number;
  /** bytes synced to the disk: a kill may leave the file longer, and what lies past them unwritten */
  durable: number;
}

/** An ETag If-Range may carry: a weak one (W/"...") names no exact bytes, so a server must not resume by it. */
export function strongEtag(etag: string | null | undefined): string | undefined {
  const e = etag?.trim();
  return e && /^"[^"]*"$/.test(e) ? e : undefined;
}

/**
 * The record a download answered by a whole file (a 200) starts, or undefined when a later run could not prove the
 * server still sends the same bytes: that takes a pinned hf:// commit or a strong ETag, and the file's length.
 */
export function recordFor(
  url: string,
  commit: string | undefined,
  etag: string | null,
  size: number | undefined,
): PartialRecord | undefined {
  // A pinned commit fixes the bytes; the ETag an hf:// answer carries is its CDN's (after the Hub's redirect), which
  // may differ between edges and would then refuse every resume for nothing.
  const strong = commit === undefined ? strongEtag(etag) : undefined;
  if (size === undefined || size <= 0 || (commit === undefined && strong === undefined)) return undefined;
  const r: PartialRecord = { version: RECORD_VERSION, url, size, durable: 0 };
  if (commit !== undefined) r.commit = commit;
  if (strong !== undefined) r.etag = strong;
  return r;
}

/** A record's text, or undefined when it is not one this version wrote whole (then its partial is not trusted). */
export function parseRecord(text: string): PartialRecord | undefined {
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof j !== "object" || j === null || Array.isArray(j)) return undefined;
  const { version, url, commit, etag, size, durable } = j as Record<string, unknown>;
  const count = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
  if (version !== RECORD_VERSION || typeof url !== "string" || !count(size) || !count(durable) || durable > size)
    return undefined;
  if ((commit !== undefined && typeof commit !== "string") || (etag !== undefined && typeof etag !== "string"))
    return undefined;
  const r = recordFor(url, commit, etag ?? null, size);
  return r && r.etag === etag ? { ...r, durable } : undefined;
}

export type Plan =
  | { resume: true; record: PartialRecord; from: number; headers: Record<string, string> }
  | { resume: false; why: string };

/**
 * How to go on from a partial an earlier run left (`bytes` long on the disk), for `url` of the version pinned now
 * (`commit`, hf:// only): ask for its bytes from `from` on, If-Range its ETag; or why it is of no use.
 */
export function planResume(
  kept: { record?: PartialRecord; bytes: number },
  url: string,
  commit: string | undefined,
): Plan {
  const r = kept.record;
  if (!r) return { resume: false, why: "no readable record of what its partial download was started against" };
  const pinned = (c: string | undefined) => (c ? `commit ${c}` : "no pinned commit");
  if (r.commit !== commit)
    return { resume: false, why: `its partial download is of ${pinned(r.commit)}, this run fetches ${pinned(commit)}` };
  if (r.url !== url) return { resume: false, why: `its partial download came from ${r.url}, not ${url}` };
  const usable = Math.min(r.durable, kept.bytes);
  if (usable === 0) return { resume: false, why: "none of its partial download was recorded as on the disk" };
  // A partial that is whole (killed between its last write and its rename) asks for its last byte: the 206 still
  // shows that the server's file is the one it was started against.
  const from = Math.min(usable, r.size - 1);
  if (from === 0) return { resume: false, why: "a one-byte file is not worth resuming" };
  return { resume: true, record: r, from, headers: r.etag ? { "if-range": r.etag } : {} };
}

export type Verdict =
  /** a 206 that continues the partial: append its body at `from` */
  | { take: "rest" }
  /** a 200: the whole file (the server ignored Range, or If-Range found the file changed); write it from byte 0 */
  | { take: "whole"; why: string }
  /** an answer whose bytes must not be spliced onto the partial: drop it and ask for the whole file */
  | { take: "restart"; why: string }
  /** an error status: fail with it, as a whole-file GET would */
  | { take: "error" };

/** What to do with the answer to the Range request planResume made (`from` on, for the partial `r`). */
export function judgeResume(status: number, headers: Headers, r: PartialRecord, from: number): Verdict {
  const etag = headers.get("etag");
  const changed =
    r.etag !== undefined && etag !== null && etag !== r.etag
      ? `changed since its partial download (ETag ${r.etag} -> ${etag})`
      : undefined;
  if (status === 200) return { take: "whole", why: changed ?? "the server ignored the Range request (HTTP 200)" };
  if (status === 206) {
    // A server that ignores If-Range sends the new file's tail.
    if (changed) return { take: "restart", why: `${changed}, yet the server sent part of it (HTTP 206)` };
    // Only the ETag vouches for an https file: a 206 without it (a proxy that strips it and ignores If-Range) may be
    // another file of the same size; RFC 9110 has a 206 carry the ETag a 200 would, so a server that does loses nothing.
    if (r.commit === undefined && r.etag !== undefined && etag === null)
      return { take: "restart", why: "HTTP 206 without the ETag its partial download was started against" };
    const raw = headers.get("content-range");
    const cr = contentRange(raw);
    const want = `bytes ${from}-${r.size - 1}/${r.size}`;
    if (!cr || cr.first !== from || cr.last !== r.size - 1 || cr.total !== r.size)
      return { take: "restart", why: `HTTP 206 with Content-Range ${JSON.stringify(raw)}, not "${want}"` };
    return { take: "rest" };
  }
  if (status === 416)
    return {
      take: "restart",
      why: `HTTP 416 for bytes ${from}- (Content-Range ${JSON.stringify(headers.get("content-range"))}): not the ${r.size} bytes its partial download was started against`,
    };
  // A server may refuse the precondition instead of ignoring it; the whole file is still to be had.
  if (status === 412) return { take: "restart", why: "the server refused If-Range (HTTP 412)" };
  return { take: "error" };
}
