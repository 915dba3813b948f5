import { describe, expect, it } from "vitest";
import { judgeResume, type PartialRecord, parseRecord, planResume, recordFor, strongEtag } from "./resume.js";

const url = "https://example.com/m/model-00001-of-00002.safetensors";
const etag = '"abc"';
const record: PartialRecord = { version: 1, url, etag, size: 1000, durable: 400 };

describe("recordFor / parseRecord", () => {
  it("vouches for a partial only with a pinned commit or a strong ETag, and a known length", () => {
    expect(strongEtag('W/"abc"')).toBeUndefined();
    expect(strongEtag("abc")).toBeUndefined();
    expect(strongEtag(' "abc" ')).toBe(etag);
    expect(recordFor(url, undefined, etag, 1000)).toEqual({ version: 1, url, etag, size: 1000, durable: 0 });
    expect(recordFor(url, "c0ffee", null, 1000)).toEqual({ version: 1, url, commit: "c0ffee", size: 1000, durable: 0 });
    // a pinned commit fixes the bytes: the CDN's ETag (which may differ between its edges) is not recorded
    expect(recordFor(url, "c0ffee", etag, 1000)).toEqual({ version: 1, url, commit: "c0ffee", size: 1000, durable: 0 });
    expect(recordFor(url, undefined, 'W/"abc"', 1000)).toBeUndefined();
    expect(recordFor(url, undefined, null, 1000)).toBeUndefined();
    expect(recordFor(url, undefined, etag, undefined)).toBeUndefined();
    expect(recordFor(url, "c0ffee", etag, 0)).toBeUndefined();
  });

  it("reads back what it wrote, and nothing torn, of another version or vouching for more than the file", () => {
    expect(parseRecord(JSON.stringify(record))).toEqual(record);
    for (const bad of [
      "",
      '{"version":1,"url":',
      "[]",
      JSON.stringify({ ...record, version: 2 }),
      JSON.stringify({ ...record, durable: 1001 }),
      JSON.stringify({ ...record, durable: -1 }),
      JSON.stringify({ ...record, size: "1000" }),
      JSON.stringify({ ...record, etag: 'W/"abc"' }),
      JSON.stringify({ ...record, etag: undefined }),
      JSON.stringify({ ...record, commit: 7 }),
    ])
      expect(parseRecord(bad), bad).toBeUndefined();
  });
});

describe("planResume", () => {
  it("continues from the bytes both on the disk and synced, If-Range the ETag", () => {
    expect(planResume({ record, bytes: 700 }, url, undefined)).toEqual({
      resume: true,
      record,
      from: 400,
      headers: { "if-range": etag },
    });
    expect(planResume({ record, bytes: 300 }, url, undefined)).toMatchObject({ resume: true, from: 300 });
    // a whole partial: its last byte is asked for again, to learn that the server's file is still this one
    expect(planResume({ record: { ...record, durable: 1000 }, bytes: 1000 }, url, undefined)).toMatchObject({
      resume: true,
      from: 999,
    });
    const pinned = { ...record, etag: undefined, commit: "c1" };
    expect(planResume({ record: pinned, bytes: 700 }, url, "c1")).toMatchObject({ resume: true, headers: {} });
  });

  it("says why a partial is of no use", () => {
    const no = (kept: { record?: PartialRecord; bytes: number }, u = url, commit?: string) => {
      const p = planResume(kept, u, commit);
      return p.resume ? "resumes" : p.why;
    };
    expect(no({ bytes: 700 })).toMatch(/no readable record/);
    expect(no({ record, bytes: 0 })).toMatch(/none of its partial download was recorded as on the disk/);
    expect(no({ record: { ...record, durable: 0 }, bytes: 700 })).toMatch(/none of its partial/);
    expect(no({ record: { ...record, size: 1, durable: 1 }, bytes: 1 })).toMatch(/one-byte file/);
    expect(no({ record, bytes: 700 }, `${url}x`)).toBe(`its partial download came from ${url}, not ${url}x`);
    expect(no({ record: { ...record, commit: "c1" }, bytes: 700 }, url, "c2")).toBe(
      "its partial download is of commit c1, this run fetches commit c2",
    );
    expect(no({ record, bytes: 700 }, url, "c2")).toBe(
      "its partial download is of no pinned commit, this run fetches commit c2",
    );
  });
});

describe("judgeResume", () => {
  const h = (o: Record<string, string>) => new Headers(o);
  const rest = "bytes 400-999/1000";
  it("appends only a 206 that is the rest of the same file", () => {
    expect(judgeResume(206, h({ "content-range": rest, etag }), record, 400)).toEqual({ take: "rest" });
    // only the ETag vouches for this https file: a 206 without one may be another file of the same size
    expect(judgeResume(206, h({ "content-range": rest }), record, 400)).toEqual({
      take: "restart",
      why: "HTTP 206 without the ETag its partial download was started against",
    });
    // an hf:// partial is pinned by its commit (no ETag recorded): its 206 needs none
    const pinned = { ...record, commit: "c1", etag: undefined };
    expect(judgeResume(206, h({ "content-range": rest }), pinned, 400)).toEqual({ take: "rest" });
    expect(judgeResume(206, h({ "content-range": rest, etag: '"cdn-edge-2"' }), pinned, 400)).toEqual({ take: "rest" });
    for (const cr of ["bytes 0-999/1000", "bytes 400-998/1000", "bytes 400-999/1001", "bytes 400-999/*", "x", ""])
      expect(judgeResume(206, h({ "content-range": cr, etag }), record, 400), cr).toEqual({
        take: "restart",
        why: `HTTP 206 with Content-Range ${JSON.stringify(cr)}, not "${rest}"`,
      });
    expect(judgeResume(206, h({ etag }), record, 400)).toMatchObject({ take: "restart", why: /Content-Range null/ });
    expect(judgeResume(206, h({ "content-range": rest, etag: '"new"' }), record, 400)).toEqual({
      take: "restart",
      why: `changed since its partial download (ETag ${etag} -> "new"), yet the server sent part of it (HTTP 206)`,
    });
  });

  it("writes a 200 from byte 0; restarts on 412 and 416; fails on an error status", () => {
    expect(judgeResume(200, h({ etag: '"new"' }), record, 400)).toEqual({
      take: "whole",
      why: `changed since its partial download (ETag ${etag} -> "new")`,
    });
    expect(judgeResume(200, h({ etag }), record, 400)).toEqual({
      take: "whole",
      why: "the server ignored the Range request (HTTP 200)",
    });
    expect(judgeResume(416, h({ "content-range": "bytes */300" }), record, 400)).toMatchObject({
      take: "restart",
      why: /^HTTP 416 for bytes 400- \(Content-Range "bytes \*\/300"\)/,
    });
    expect(judgeResume(412, h({}), record, 400)).toMatchObject({ take: "restart" });
    for (const status of [401, 403, 404, 500, 503])
      expect(judgeResume(status, h({}), record, 400)).toEqual({ take: "error" });
  });
});
