import { execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { type Checkpoint, INDEX_FILE, openCheckpoint, SINGLE_FILE } from "./checkpoint.js";
import {
  checkpointSource,
  type FetchOptions,
  fetchCheckpoint,
  fetchCheckpointTensors,
  routerTensorNames,
} from "./fetch-checkpoint.js";
import { type GeneratedCheckpoint, generateCheckpoint } from "./generate.js";
import { SafetensorsFile } from "./safetensors.js";
import { moeLayers } from "./spec.js";

// A real HTTP server over generated checkpoints. URLs are /MODE/CHECKPOINT/FILE, so each test picks the server's
// behaviour in its uri:
//   ok       files, with single-range Range support (206 + Content-Range) and If-Range
//   norange  ignores Range: always 200 and the whole file
//   noifrange as ok, but ignores If-Range: a Range is answered from the file as it is now
//   badrange answers a Range request with a 206 from byte 0 (Content-Range "bytes 0-…"), whatever was asked for
//   badtotal answers a Range request with the bytes asked for, but a Content-Range total one byte too many
//   missing  404 for the file names in `missing`
//   stallhdr never answers a shard request; stallbody sends a shard's headers and 100 bytes, then nothing
//   trickle  sends a shard's body one byte every 50 ms
//   plain    as missing, without ETag or Last-Modified
//   slow     as ok, but sends a shard's body 4 KiB every 10 ms
// Files carry an ETag (a hash of their bytes) and Last-Modified, and If-None-Match is answered with a 304, except in
// plain mode. CHECKPOINT may be an alias (`aliases`): a URL whose files are replaced behind it. A file named in
// `cuts` is cut off once, in any mode: its next answer stops (the connection closed) at that byte of the file.
// /hfroot/acme/tiny/resolve/REV/FILE is the Hub's layout: it needs `Authorization: Bearer hf-secret`, maps REV (a
// ref in `hfRefs`, or a commit) to a commit, and redirects (302 with X-Repo-Commit, as the Hub does to its CDN) to
// /missing/CHECKPOINT/FILE of that commit's checkpoint (`hfCommits`).
// /evil/x/FILE serves single's config.json and an index whose weight_map names `evilName`.

interface Logged {
  path: string;
  range?: string;
  ifRange?: string;
  auth?: string;
  encoding?: string;
}

let root: string;
let server: Server;
let base: string;
const sources: Record<string, GeneratedCheckpoint> = {};
const requests: Logged[] = [];
/** Body bytes sent, by checkpoint name. */
const sent = new Map<string, number>();
const missing = new Set<string>();
const aliases: Record<string, string> = {};
const cuts = new Map<string, number>();
const C1 = "1".repeat(40);
const C2 = "2".repeat(40);
const C3 = "3".repeat(40);
const hfCommits: Record<string, string> = { [C1]: "single", [C2]: "sharded", [C3]: "ds" };
const hfRefs: Record<string, string> = {};
let evilName = "";
const etags = new Map<string, string>();

const small = { hiddenSize: 64, intermediateSize: 64, seed: 7 };

async function serveFile(req: IncomingMessage, res: ServerResponse, ckpt: string, file: string, mode: string) {
  const src = sources[aliases[ckpt] ?? ckpt];
  const path = src && join(src.dir, file);
  const size = path
    ? await stat(path).then(
        (s) => s.size,
        () => undefined,
      )
    : undefined;
  if (size === undefined || ((mode === "missing" || mode === "plain") && missing.has(file))) {
    res.writeHead(404, { "content-type": "application/json" }).end(`{"error":"Entry not found: ${file}"}`);
    return;
  }
  const shard = file.endsWith(".safetensors");
  if (mode === "stallhdr" && shard) return; // never answers
  if (mode === "stallbody" && shard) {
    res.writeHead(200, { "content-length": size });
    res.write((await readFile(path)).subarray(0, 100));
    return; // and nothing more
  }
  if (mode === "trickle" && shard) {
    res.writeHead(200, { "content-length": size });
    const bytes = await readFile(path);
    let i = 0;
    const t = setInterval(() => res.write(bytes.subarray(i, ++i)), 50);
    res.on("close", () => clearInterval(t));
    return;
  }
  const validators: Record<string, string> = {};
  if (mode !== "plain") {
    if (!etags.has(path))
      etags.set(
        path,
        `"${createHash("sha1")
          .update(await readFile(path))
          .digest("hex")}"`,
      );
    validators["etag"] = etags.get(path)!;
    validators["last-modified"] = new Date(Math.floor((await stat(path)).mtimeMs / 1000) * 1000).toUTCString();
    if (req.headers["if-none-match"] === validators["etag"]) {
      res.writeHead(304, validators).end();
      return;
    }
  }
  let start = 0;
  let end = size - 1;
  const headers: Record<string, string | number> = { ...validators };
  const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
  // If-Range: the Range holds only while the file still has that ETag
  const ifRange = req.headers["if-range"];
  const changed = ifRange !== undefined && ifRange !== validators["etag"] && mode !== "noifrange";
  if (m && mode !== "norange" && !changed) {
    start = Number(m[1]);
    end = m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1);
    if (start >= size) {
      res.writeHead(416, { "content-range": `bytes */${size}` }).end();
      return;
    }
    if (mode === "badrange") start = 0;
    headers["content-range"] = `bytes ${start}-${end}/${mode === "badtotal" ? size + 1 : size}`;
  }
  headers["content-length"] = end - start + 1;
  res.writeHead(headers["content-range"] ? 206 : 200, headers);
  if (mode === "slow" && shard) {
    const bytes = (await readFile(path)).subarray(start, end + 1);
    let i = 0;
    const t = setInterval(() => {
      res.write(bytes.subarray(i, i + 4096));
      i += 4096;
      if (i >= bytes.byteLength) res.end();
    }, 10);
    res.on("close", () => clearInterval(t));
    return;
  }
  const cut = cuts.get(file);
  if (cut !== undefined) {
    cuts.delete(file);
    const part = (await readFile(path)).subarray(start, Math.max(start, cut));
    sent.set(ckpt, (sent.get(ckpt) ?? 0) + part.byteLength);
    res.write(part, () => res.destroy());
    return;
  }
  sent.set(ckpt, (sent.get(ckpt) ?? 0) + (end - start + 1));
  createReadStream(path, { start, end }).pipe(res);
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "fetch-ckpt-"));
  sources.single = await generateCheckpoint({ family: "mixtral", dir: join(root, "src-single"), ...small });
  sources.sharded = await generateCheckpoint({
    family: "mixtral",
    dir: join(root, "src-sharded"),
    shards: 3,
    ...small,
  });
  sources.ds = await generateCheckpoint({ family: "deepseek-v3", dir: join(root, "src-ds"), shards: 3, ...small });
  sources.qwen = await generateCheckpoint({ family: "qwen2-moe", dir: join(root, "src-qwen"), ...small });
  server = createServer((req, res) => {
    const url = decodeURIComponent(req.url ?? "");
    requests.push({
      path: url,
      range: req.headers.range,
      ifRange: req.headers["if-range"] as string | undefined,
      auth: req.headers.authorization,
      encoding: req.headers["accept-encoding"],
    });
    const hf = /^\/hfroot\/acme\/tiny\/resolve\/([^/]+)\/([^/]+)$/.exec(url);
    if (hf) {
      const commit = /^[0-9a-f]{40}$/.test(hf[1]) ? hf[1] : hfRefs[hf[1]];
      if (req.headers.authorization !== "Bearer hf-secret") res.writeHead(401).end('{"error":"Invalid token"}');
      else if (!commit || !hfCommits[commit]) res.writeHead(404).end('{"error":"Revision Not Found"}');
      else
        res
          .writeHead(302, {
            location: `/missing/${hfCommits[commit]}/${encodeURIComponent(hf[2])}`,
            "x-repo-commit": commit,
          })
          .end();
      return;
    }
    const evil = /^\/evil\/x\/([^/]+)$/.exec(url);
    if (evil?.[1] === "config.json") {
      createReadStream(join(sources.single.dir, "config.json")).pipe(res);
      return;
    }
    if (evil?.[1] === INDEX_FILE) {
      res.end(JSON.stringify({ weight_map: { "model.layers.0.mlp.gate.weight": evilName } }));
      return;
    }
    const m =
      /^\/(ok|norange|noifrange|badrange|badtotal|missing|stallhdr|stallbody|trickle|plain|slow)\/([^/]+)\/([^/]+)$/.exec(
        url,
      );
    if (!m) {
      res.writeHead(404).end();
      return;
    }
    serveFile(req, res, m[2], m[3], m[1]).catch((e) => res.destroy(e));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}, 120_000);

afterAll(async () => {
  server?.closeAllConnections();
  await new Promise((r) => server?.close(r));
  await rm(root, { recursive: true, force: true });
});

beforeEach(() => {
  requests.length = 0;
  sent.clear();
  missing.clear();
  cuts.clear();
  for (const k of Object.keys(aliases)) delete aliases[k];
  for (const k of Object.keys(hfRefs)) delete hfRefs[k];
  hfRefs.v1 = C1;
});

let n = 0;
const freshDir = () => join(root, `out-${n++}`);

async function sourceFiles(src: GeneratedCheckpoint): Promise<string[]> {
  return (await readdir(src.dir)).sort();
}

async function expectSameFiles(src: GeneratedCheckpoint, dir: string): Promise<void> {
  const files = await sourceFiles(src);
  const got = (await readdir(dir)).filter((f) => !f.startsWith("."));
  expect(got.sort()).toEqual(files);
  for (const f of files) expect(Buffer.compare(await readFile(join(dir, f)), await readFile(join(src.dir, f)))).toBe(0);
}

async function totalSize(src: GeneratedCheckpoint): Promise<number> {
  let s = 0;
  for (const f of await sourceFiles(src)) s += (await stat(join(src.dir, f))).size;
  return s;
}

const MARKER = ".switchyard-checkpoint.json";
const readMarker = async (dir: string) => JSON.parse(await readFile(join(dir, MARKER), "utf8"));
const temporaries = async (dir: string) => (await readdir(dir)).filter((f) => f.includes(".partial"));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** A Range request for tensor data (not a header's length or JSON). */
const dataRange = (init?: RequestInit) => {
  const r = (init?.headers as Record<string, string> | undefined)?.range;
  return r !== undefined && !r.startsWith("bytes=0-") && !r.startsWith("bytes=8-");
};

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected a rejection");
}

describe("checkpointSource", () => {
  it("takes http(s) directory URLs and maps hf:// to the Hub's resolve URLs", () => {
    expect(checkpointSource("https://example.com/models/m", {})).toEqual({
      base: "https://example.com/models/m/",
      headers: {},
    });
    expect(checkpointSource("http://minio:9000/bucket/m/", {}).base).toBe("http://minio:9000/bucket/m/");
    expect(checkpointSource("hf://Qwen/Qwen1.5-MoE-A2.7B", {})).toEqual({
      base: "https://huggingface.co/Qwen/Qwen1.5-MoE-A2.7B/resolve/main/",
      headers: {},
    });
    expect(
      checkpointSource("hf://deepseek-ai/DeepSeek-V3@refs/pr/1", { HF_ENDPOINT: "http://mirror:8080/", HF_TOKEN: "t" }),
    ).toEqual({
      base: "http://mirror:8080/deepseek-ai/DeepSeek-V3/resolve/refs%2Fpr%2F1/",
      headers: { authorization: "Bearer t" },
    }); // a trailing slash after the revision is the directory's, not the revision's
    expect(checkpointSource("hf://org/name@main/", {}).base).toBe("https://huggingface.co/org/name/resolve/main/");
  });

  it("refuses anything else, saying what is supported", () => {
    for (const uri of [
      "s3://bucket/models/m",
      "gs://bucket/m",
      "/mnt/models/m",
      "./m",
      "file:///mnt/m",
      "hf://just-a-name",
      "hf://org/name@",
      "https://bucket.s3.amazonaws.com/m/model.safetensors?X-Amz-Signature=abc",
      "https://user:pw@example.com/m",
      "",
    ]) {
      let err: Error | undefined;
      try {
        checkpointSource(uri, {});
      } catch (e) {
        err = e as Error;
      }
      expect(err?.message, uri).toMatch(/^checkpoint\.uri: /);
      expect(err?.message).toMatch(
        /https:\/\/.*http:\/\/.*hf:\/\/.*public https URL of the checkpoint's directory.*PVC/,
      );
    }
  });
});

describe("fetchCheckpoint", () => {
  for (const name of ["single", "sharded"]) {
    it(`downloads a ${name} checkpoint byte for byte; a second call sends no request`, async () => {
      const src = sources[name];
      const dir = freshDir();
      const lines: string[] = [];
      const r = await fetchCheckpoint(`${base}/ok/${name}`, dir, { log: (l) => lines.push(l) });
      await expectSameFiles(src, dir);
      expect(r.fetched.sort()).toEqual(await sourceFiles(src));
      expect(r.skipped).toEqual([]);
      expect(r.bytes).toBe(await totalSize(src));
      expect(lines.join("\n")).toMatch(/fetched config\.json/);
      // identity encoding: the bytes written are the bytes served
      expect(requests.every((q) => q.encoding === "identity")).toBe(true);
      if (name === "single") expect(requests.map((q) => q.path)).toContain(`/ok/single/${INDEX_FILE}`); // its 404 meant: one file

      const ckpt = await openCheckpoint(dir);
      const orig = await openCheckpoint(src.dir);
      try {
        const [a, b] = await Promise.all([ckpt.readExpert(1, 3), orig.readExpert(1, 3)]);
        expect(Buffer.compare(a.down.data, b.down.data)).toBe(0);
      } finally {
        await Promise.all([ckpt.close(), orig.close()]);
      }

      requests.length = 0;
      const again = await fetchCheckpoint(`${base}/ok/${name}`, dir);
      expect(requests).toEqual([]);
      expect(again.fetched).toEqual([]);
      expect(again.bytes).toBe(0);
      expect(again.skipped.sort()).toEqual(await sourceFiles(src));
    });
  }

  it("removes temporary files left by a killed pod; fetches again files present without a record of their version", async () => {
    const src = sources.single;
    const dir = freshDir();
    await mkdir(dir, { recursive: true });
    // A file from a run that recorded nothing about it (no marker, or an earlier version's): its version is unknown.
    await copyFile(join(src.dir, "config.json"), join(dir, "config.json"));
    await writeFile(join(dir, `${SINGLE_FILE}.partial`), Buffer.alloc((await totalSize(src)) * 2, 0xab));
    await writeFile(join(dir, `${SINGLE_FILE}.partial.4242.0badcafe`), Buffer.alloc(1000, 0xab));
    const lines: string[] = [];
    const r = await fetchCheckpoint(`${base}/ok/single`, dir, { log: (l) => lines.push(l) });
    expect(r.skipped).toEqual([]);
    expect(r.fetched.sort()).toEqual(["config.json", SINGLE_FILE]);
    await expectSameFiles(src, dir);
    expect(await temporaries(dir)).toEqual([]);
    expect(lines.join("\n")).toMatch(/removed 2 temporary file\(s\) left by an interrupted run/);

    // The same with a marker written before versions were recorded: nothing it lists is trusted.
    const old = freshDir();
    await mkdir(old);
    await copyFile(join(src.dir, "config.json"), join(old, "config.json"));
    await writeFile(join(old, SINGLE_FILE), "not it");
    await writeFile(
      join(old, MARKER),
      JSON.stringify({ uri: `${base}/ok/single`, kind: "whole", complete: true, files: ["config.json", SINGLE_FILE] }),
    );
    const again = await fetchCheckpoint(`${base}/ok/single`, old);
    expect(again.fetched.sort()).toEqual(["config.json", SINGLE_FILE]);
    await expectSameFiles(src, old);
  });

  it("names the URL and status of a missing shard, leaves no file under its name, and resumes", async () => {
    const src = sources.sharded;
    const dir = freshDir();
    const shard = "model-00002-of-00003.safetensors";
    missing.add(shard);
    const uri = `${base}/missing/sharded/`;
    const err = await rejection(fetchCheckpoint(uri, dir));
    expect(err.message).toContain(`${base}/missing/sharded/${shard}`);
    expect(err.message).toMatch(/HTTP 404 Not Found: \{"error":"Entry not found/);
    const left = await readdir(dir);
    expect(left).not.toContain(shard);
    expect(left.filter((f) => f.includes(".partial"))).toEqual([]);

    missing.clear();
    requests.length = 0;
    const r = await fetchCheckpoint(uri, dir);
    expect(r.skipped).toEqual(expect.arrayContaining(["config.json", INDEX_FILE]));
    expect(r.fetched).toContain(shard);
    await expectSameFiles(src, dir);
    // what the first run fetched was asked for again conditionally (304): unchanged, so kept
    expect(requests.filter((q) => q.path.endsWith("config.json")).length).toBe(1);
  });

  it("a resume after the files behind an https URL were replaced starts over instead of mixing them", async () => {
    aliases.live = "sharded";
    const uri = `${base}/missing/live`;
    const dir = freshDir();
    missing.add("model-00003-of-00003.safetensors");
    await rejection(fetchCheckpoint(uri, dir));
    expect(Object.keys((await readMarker(dir)).files)).toEqual(expect.arrayContaining(["config.json", INDEX_FILE]));

    aliases.live = "ds"; // a new checkpoint uploaded under the same URL
    missing.clear();
    const lines: string[] = [];
    const r = await fetchCheckpoint(uri, dir, { log: (l) => lines.push(l) });
    expect(lines.join("\n")).toMatch(
      /changed \(ETag "[0-9a-f]+" -> "[0-9a-f]+"\) since the interrupted run: starting over/,
    );
    expect(r.skipped).toEqual([]);
    await expectSameFiles(sources.ds, dir);
    expect((await readMarker(dir)).complete).toBe(true);
  });

  it("without ETag or Last-Modified, a resume fetches every file again", async () => {
    const uri = `${base}/plain/sharded`;
    const dir = freshDir();
    missing.add("model-00003-of-00003.safetensors");
    await rejection(fetchCheckpoint(uri, dir));
    missing.clear();
    const lines: string[] = [];
    const r = await fetchCheckpoint(uri, dir, { log: (l) => lines.push(l) });
    expect(lines.join("\n")).toMatch(/no ETag or Last-Modified .*: starting over/);
    expect(r.skipped).toEqual([]);
    expect(r.fetched.sort()).toEqual(await sourceFiles(sources.sharded));
    await expectSameFiles(sources.sharded, dir);
  });

  it("two callers on one directory at once: the second waits, then finds it complete", async () => {
    const dir = freshDir();
    const uri = `${base}/ok/sharded`;
    // slow bodies, so that the two overlap
    const slow: typeof fetch = async (u, i) => {
      await sleep(100);
      return fetch(u, i);
    };
    const lines: string[] = [];
    const [a, b] = await Promise.all([
      fetchCheckpoint(uri, dir, { fetch: slow }),
      sleep(30).then(() => fetchCheckpoint(uri, dir, { fetch: slow, log: (l) => lines.push(l) })),
    ]);
    expect(a.fetched.sort()).toEqual(await sourceFiles(sources.sharded));
    expect(b).toEqual({ fetched: [], skipped: expect.any(Array), bytes: 0 });
    expect(lines.join("\n")).toMatch(/waiting for another download into it/);
    await expectSameFiles(sources.sharded, dir);
    expect((await readdir(dir)).filter((f) => f.startsWith(".")).sort()).toEqual([MARKER]);
  });

  it("breaks a lock left by a killed caller: at once when its process is gone, else once it is not refreshed", async () => {
    const dir = freshDir();
    await mkdir(dir);
    const lock = join(dir, ".switchyard-checkpoint.lock");
    // a process of this host that has exited
    const child = execFile(process.execPath, ["-e", ""]);
    await new Promise((r) => child.on("exit", r));
    await writeFile(lock, JSON.stringify({ host: hostname(), pid: child.pid, token: "x", since: "" }));
    const lines: string[] = [];
    const t0 = performance.now();
    await fetchCheckpoint(`${base}/ok/single`, dir, { log: (l) => lines.push(l) });
    expect(performance.now() - t0).toBeLessThan(5_000);
    expect(lines.join("\n")).toMatch(
      new RegExp(`breaking a stale lock \\(process ${child.pid} of this host is gone\\)`),
    );
    await expectSameFiles(sources.single, dir);

    // another host's (a killed pod's): taken once it has not been refreshed for lockStaleMs
    const other = freshDir();
    await mkdir(other);
    await writeFile(
      join(other, ".switchyard-checkpoint.lock"),
      JSON.stringify({ host: "pod-gone", pid: 1, token: "y", since: "" }),
    );
    lines.length = 0;
    const t1 = performance.now();
    await fetchCheckpoint(`${base}/ok/single`, other, { log: (l) => lines.push(l), lockStaleMs: 600 });
    expect(performance.now() - t1).toBeGreaterThanOrEqual(500);
    expect(lines.join("\n")).toMatch(/waiting for another download into it \(pod-gone process 1/);
    expect(lines.join("\n")).toMatch(/breaking a stale lock \(not refreshed for /);
    await expectSameFiles(sources.single, other);

    // one refreshed in time is waited for
    const held = freshDir();
    await mkdir(held);
    const heldLock = join(held, ".switchyard-checkpoint.lock");
    await writeFile(heldLock, JSON.stringify({ host: "pod-alive", pid: 1, token: "z", since: "" }));
    const ctrl = new AbortController();
    const p = fetchCheckpoint(`${base}/ok/single`, held, { lockStaleMs: 600, signal: ctrl.signal });
    for (let i = 0; i < 6; i++) {
      await sleep(200);
      const now = new Date();
      await utimes(heldLock, now, now);
    }
    ctrl.abort(new Error("enough"));
    expect((await rejection(p)).message).toMatch(/waiting for the lock.*aborted \(enough\)/);
    expect(await readdir(held)).toEqual([".switchyard-checkpoint.lock"]);
  });

  it("fails a body that trickles in under minBytesPerSecond, naming the URL and the rate", async () => {
    const dir = freshDir();
    const t0 = performance.now();
    const p = fetchCheckpoint(`${base}/trickle/single`, dir, {
      timeoutMs: 300,
      minBytesPerSecond: 1000,
      throughputWindowMs: 500,
    });
    const err = await Promise.race([rejection(p), sleep(5_000).then(() => new Error("still running after 5 s"))]);
    expect(err.message).toMatch(
      new RegExp(
        `^GET ${base}/trickle/single/${SINGLE_FILE}: too slow: \\d+\\.\\d B/s over the last 0\\.\\d s, under the minimum ` +
          "1000 B/s \\(minBytesPerSecond\\)$",
      ),
    );
    expect(performance.now() - t0).toBeLessThan(3_000);
    expect(await temporaries(dir)).toEqual([]);
  });

  it("refuses an index whose weight_map names a file outside the directory", async () => {
    for (const name of ["../x.safetensors", "sub/x.safetensors", "sub\\x.safetensors", "..x.safetensors"]) {
      evilName = name;
      const dir = freshDir();
      const err = await rejection(fetchCheckpoint(`${base}/evil/x`, dir));
      expect(err.message, name).toContain(`${base}/evil/x/${INDEX_FILE}: weight_map`);
      expect(err.message, name).toContain(JSON.stringify(name));
      expect(
        requests.some((q) => q.path.includes("x.safetensors")),
        name,
      ).toBe(false);
      const tensors = await rejection(fetchCheckpointTensors(`${base}/evil/x`, freshDir(), routerTensorNames));
      expect(tensors.message, name).toContain(`${base}/evil/x/${INDEX_FILE}: weight_map`);
      expect(tensors.message, name).toContain(JSON.stringify(name));
    }
  });

  it("says when neither the index nor model.safetensors is there", async () => {
    missing.add(SINGLE_FILE);
    const err = await rejection(fetchCheckpoint(`${base}/missing/single`, freshDir()));
    expect(err.message).toContain(`GET ${base}/missing/single/${SINGLE_FILE}: HTTP 404`);
    expect(err.message).toContain(`${base}/missing/single/${INDEX_FILE} is not there either`);
  });

  it("times out a stalled body and a server that never answers; no partial file is left", async () => {
    for (const mode of ["stallbody", "stallhdr"]) {
      const dir = freshDir();
      const t0 = performance.now();
      const err = await rejection(fetchCheckpoint(`${base}/${mode}/single`, dir, { timeoutMs: 300 }));
      expect(performance.now() - t0).toBeLessThan(10_000);
      expect(err.message).toContain(`GET ${base}/${mode}/single/${SINGLE_FILE}`);
      expect(err.message).toMatch(
        mode === "stallbody"
          ? /timed out, no data after 100 bytes within 300 ms/
          : /timed out, no response within 300 ms/,
      );
      expect((await readdir(dir)).filter((f) => f === SINGLE_FILE || f.includes(".partial"))).toEqual([]);
    }
  });

  it("refuses a directory that holds another checkpoint, and s3:// URIs", async () => {
    const dir = freshDir();
    await fetchCheckpoint(`${base}/ok/single`, dir);
    const err = await rejection(fetchCheckpoint(`${base}/ok/sharded`, dir));
    expect(err.message).toBe(
      `${dir}: holds the checkpoint ${base}/ok/single, not ${base}/ok/sharded: use another directory or empty it`,
    );
    const s3 = await rejection(fetchCheckpoint("s3://bucket/model", freshDir()));
    expect(s3.message).toMatch(/^checkpoint\.uri: "s3:\/\/bucket\/model": s3:\/\/ is not fetched directly/);
  });

  it("maps hf:// through HF_ENDPOINT with the HF_TOKEN bearer token, following the Hub's redirect", async () => {
    const dir = freshDir();
    const env = { HF_ENDPOINT: `${base}/hfroot`, HF_TOKEN: "hf-secret" };
    await fetchCheckpoint("hf://acme/tiny@v1", dir, { env });
    await expectSameFiles(sources.single, dir);
    const hub = requests.filter((q) => q.path.startsWith("/hfroot/"));
    // config.json's answer names the commit; every other file comes from that commit
    expect(hub.map((q) => q.path)).toEqual([
      "/hfroot/acme/tiny/resolve/v1/config.json",
      `/hfroot/acme/tiny/resolve/${C1}/${INDEX_FILE}`,
      `/hfroot/acme/tiny/resolve/${C1}/${SINGLE_FILE}`,
    ]);
    expect(hub.every((q) => q.auth === "Bearer hf-secret")).toBe(true);
    expect((await readMarker(dir)).commit).toBe(C1);

    const denied = await rejection(fetchCheckpoint("hf://acme/tiny@v1", freshDir(), { env: { ...env, HF_TOKEN: "" } }));
    expect(denied.message).toBe(
      `GET ${base}/hfroot/acme/tiny/resolve/v1/config.json: HTTP 401 Unauthorized: {"error":"Invalid token"}`,
    );
  });

  it("hf://: a resume after the branch moved starts over from the new commit; one at the same commit resumes", async () => {
    const env = { HF_ENDPOINT: `${base}/hfroot`, HF_TOKEN: "hf-secret" };
    const dir = freshDir();
    hfRefs.main = C2;
    missing.add("model-00003-of-00003.safetensors");
    await rejection(fetchCheckpoint("hf://acme/tiny", dir, { env }));
    expect((await readMarker(dir)).commit).toBe(C2);

    missing.clear();
    hfRefs.main = C3; // a push to main while the pod restarts
    const lines: string[] = [];
    const r = await fetchCheckpoint("hf://acme/tiny", dir, { env, log: (l) => lines.push(l) });
    expect(lines.join("\n")).toMatch(
      new RegExp(`hf://acme/tiny: main is now commit ${C3}, not ${C2} as in the interrupted run: starting over`),
    );
    expect(r.skipped).toEqual([]);
    await expectSameFiles(sources.ds, dir);
    expect(await readMarker(dir)).toMatchObject({ complete: true, commit: C3 });

    const same = freshDir();
    hfRefs.main = C2;
    missing.add("model-00003-of-00003.safetensors");
    await rejection(fetchCheckpoint("hf://acme/tiny", same, { env }));
    missing.clear();
    const resumed = await fetchCheckpoint("hf://acme/tiny", same, { env });
    expect(resumed.skipped).toEqual(["config.json", INDEX_FILE]);
    expect(resumed.fetched).toContain("model-00003-of-00003.safetensors");
    await expectSameFiles(sources.sharded, same);
  });
});

describe("fetchCheckpoint: a download cut off part-way", () => {
  const resumables = async (dir: string) => (await readdir(dir)).filter((f) => f.includes(".resumable")).sort();
  const recordOf = async (dir: string, file: string) =>
    JSON.parse(await readFile(join(dir, `${file}.resumable.json`), "utf8"));
  const etagOf = async (path: string) =>
    `"${createHash("sha1")
      .update(await readFile(path))
      .digest("hex")}"`;
  /** Askings for `file` (its Range headers), in order. */
  const ranges = (file: string) => requests.filter((q) => q.path.endsWith(`/${file}`)).map((q) => q.range);

  /** A first run whose answer for `file` stops half-way; what it kept to resume from. */
  async function cutOff(uri: string, dir: string, file: string, src: GeneratedCheckpoint, o: FetchOptions = {}) {
    const size = (await stat(join(src.dir, file))).size;
    cuts.set(file, Math.floor(size / 2));
    const err = await rejection(fetchCheckpoint(uri, dir, o));
    expect(err.message).toContain(`/${file}`);
    expect(await readdir(dir)).not.toContain(file);
    const { durable } = await recordOf(dir, file);
    expect(durable).toBeGreaterThan(0);
    expect(durable).toBeLessThanOrEqual(size / 2);
    expect((await stat(join(dir, `${file}.resumable`))).size).toBe(durable);
    requests.length = 0;
    sent.clear();
    return { size, durable: durable as number };
  }

  it("resumes it by Range: only the rest crosses the wire, and the file is byte-identical", async () => {
    const src = sources.single;
    const dir = freshDir();
    const uri = `${base}/ok/single`;
    const { size, durable } = await cutOff(uri, dir, SINGLE_FILE, src);
    const etag = await etagOf(join(src.dir, SINGLE_FILE));
    expect(await recordOf(dir, SINGLE_FILE)).toEqual({ version: 1, url: `${uri}/${SINGLE_FILE}`, etag, size, durable });

    const lines: string[] = [];
    const r = await fetchCheckpoint(uri, dir, { log: (l) => lines.push(l) });
    expect(r.fetched).toEqual([SINGLE_FILE]);
    expect(r.skipped).toEqual(["config.json"]);
    expect(sent.get("single")).toBe(size - durable);
    expect(r.bytes).toBe(size - durable);
    expect(requests.filter((q) => q.path.endsWith(SINGLE_FILE))).toEqual([
      expect.objectContaining({ range: `bytes=${durable}-`, ifRange: etag }),
    ]);
    expect(lines.join("\n")).toMatch(/model\.safetensors: resuming at \d+\.\d MiB of \d+\.\d MiB/);
    await expectSameFiles(src, dir);
    expect(await resumables(dir)).toEqual([]);
    expect((await readMarker(dir)).files[SINGLE_FILE]).toMatchObject({ etag });
  });

  for (const mode of ["ok", "noifrange"]) {
    it(`${mode}: a file whose ETag changed since its partial download is fetched from byte 0, never spliced`, async () => {
      aliases.live = "single";
      const uri = `${base}/${mode}/live`;
      const dir = freshDir();
      const { durable } = await cutOff(uri, dir, SINGLE_FILE, sources.single);
      aliases.live = "qwen"; // a new checkpoint uploaded under the same URL
      const lines: string[] = [];
      const r = await fetchCheckpoint(uri, dir, { log: (l) => lines.push(l) });
      // ok: If-Range gets the whole new file (200); noifrange: the new file's tail (206) is dropped, then asked whole
      expect(lines.join("\n")).toMatch(
        new RegExp(
          `${SINGLE_FILE}: changed since its partial download \\(ETag "[0-9a-f]+" -> "[0-9a-f]+"\\)` +
            `${mode === "ok" ? "" : ", yet the server sent part of it \\(HTTP 206\\)"}: downloading it from byte 0`,
        ),
      );
      expect(ranges(SINGLE_FILE)).toEqual(mode === "ok" ? [`bytes=${durable}-`] : [`bytes=${durable}-`, undefined]);
      expect(r.bytes).toBe(await totalSize(sources.qwen));
      await expectSameFiles(sources.qwen, dir);
    });
  }

  it("a server that ignores Range sends the whole file again; the result is still byte-identical", async () => {
    const uri = `${base}/norange/single`;
    const dir = freshDir();
    const { size, durable } = await cutOff(uri, dir, SINGLE_FILE, sources.single);
    const lines: string[] = [];
    const r = await fetchCheckpoint(uri, dir, { log: (l) => lines.push(l) });
    expect(lines).toContain(
      `${SINGLE_FILE}: the server ignored the Range request (HTTP 200): downloading it from byte 0`,
    );
    expect(ranges(SINGLE_FILE)).toEqual([`bytes=${durable}-`]);
    expect(r.bytes).toBe(size);
    await expectSameFiles(sources.single, dir);
    expect(await resumables(dir)).toEqual([]);
  });

  for (const mode of ["badrange", "badtotal"]) {
    it(`${mode}: a 206 whose Content-Range is not the rest asked for is dropped, never spliced`, async () => {
      const uri = `${base}/${mode}/single`;
      const dir = freshDir();
      const { size, durable } = await cutOff(uri, dir, SINGLE_FILE, sources.single);
      const lines: string[] = [];
      const r = await fetchCheckpoint(uri, dir, { log: (l) => lines.push(l) });
      const said = mode === "badrange" ? `bytes 0-${size - 1}/${size}` : `bytes ${durable}-${size - 1}/${size + 1}`;
      expect(lines).toContain(
        `${SINGLE_FILE}: HTTP 206 with Content-Range "${said}", not "bytes ${durable}-${size - 1}/${size}": ` +
          "downloading it from byte 0",
      );
      expect(ranges(SINGLE_FILE)).toEqual([`bytes=${durable}-`, undefined]);
      expect(r.bytes).toBe(size);
      await expectSameFiles(sources.single, dir);
    });
  }

  it("a partial left by a kill is trusted only as far as its record vouches for it", async () => {
    const src = sources.single;
    const uri = `${base}/ok/single`;
    const url = `${uri}/${SINGLE_FILE}`;
    const bytes = await readFile(join(src.dir, SINGLE_FILE));
    const size = bytes.byteLength;
    const configSize = (await stat(join(src.dir, "config.json"))).size;
    const etag = await etagOf(join(src.dir, SINGLE_FILE));
    const half = Math.floor(size / 2);
    const junk = Buffer.alloc(1000, 0xab);
    const record = (r: object) => JSON.stringify({ version: 1, url, etag, size, durable: half, ...r });
    const cases: { name: string; data: Buffer; record?: string; range?: string; sent: number; says?: string }[] = [
      {
        // written past its last resume point: those bytes may never have reached the disk
        name: "bytes past the resume point",
        data: Buffer.concat([bytes.subarray(0, half), junk]),
        record: record({}),
        range: `bytes=${half}-`,
        sent: size - half,
        says: "resuming at",
      },
      {
        // killed between its last write and its rename: its last byte, asked for again, shows it is the same file
        name: "whole",
        data: bytes,
        record: record({ durable: size }),
        range: `bytes=${size - 1}-`,
        sent: 1,
      },
      {
        name: "another ETag",
        data: bytes.subarray(0, half),
        record: record({ etag: '"0000"' }),
        range: `bytes=${half}-`,
        sent: size,
        says: `changed since its partial download (ETag "0000" -> ${etag})`,
      },
      {
        name: "no record",
        data: bytes.subarray(0, half),
        sent: size,
        says: "no readable record of what its partial download was started against",
      },
      {
        name: "a weak ETag",
        data: bytes.subarray(0, half),
        record: record({ etag: `W/${etag}` }),
        sent: size,
        says: "no readable record",
      },
      {
        name: "another URL",
        data: bytes.subarray(0, half),
        record: record({ url: `${base}/ok/qwen/${SINGLE_FILE}` }),
        sent: size,
        says: `its partial download came from ${base}/ok/qwen/${SINGLE_FILE}, not ${url}`,
      },
      {
        name: "nothing synced",
        data: bytes.subarray(0, half),
        record: record({ durable: 0 }),
        sent: size,
        says: "none of its partial download was recorded as on the disk",
      },
      {
        name: "longer than the server's file",
        data: Buffer.concat([bytes, junk]),
        record: record({ size: size + junk.byteLength, durable: size + junk.byteLength }),
        range: `bytes=${size + junk.byteLength - 1}-`,
        sent: size,
        says: `HTTP 416 for bytes ${size + junk.byteLength - 1}- (Content-Range "bytes */${size}")`,
      },
    ];
    for (const c of cases) {
      const dir = freshDir();
      await mkdir(dir);
      await writeFile(join(dir, `${SINGLE_FILE}.resumable`), c.data);
      if (c.record) await writeFile(join(dir, `${SINGLE_FILE}.resumable.json`), c.record);
      requests.length = 0;
      sent.clear();
      const lines: string[] = [];
      await fetchCheckpoint(uri, dir, { log: (l) => lines.push(l) });
      expect(ranges(SINGLE_FILE)[0], c.name).toBe(c.range);
      expect(sent.get("single")! - configSize, c.name).toBe(c.sent);
      if (c.says) expect(lines.join("\n"), c.name).toContain(`${SINGLE_FILE}: ${c.says}`);
      await expectSameFiles(src, dir);
    }
  });

  it("removes the partial of a file the checkpoint no longer has", async () => {
    aliases.live = "single";
    const uri = `${base}/ok/live`;
    const dir = freshDir();
    await cutOff(uri, dir, SINGLE_FILE, sources.single);
    aliases.live = "sharded";
    const lines: string[] = [];
    await fetchCheckpoint(uri, dir, { log: (l) => lines.push(l) });
    expect(lines).toContain(`${dir}: removed 2 partial download file(s) of files this checkpoint no longer has`);
    await expectSameFiles(sources.sharded, dir);
  });

  it("a caller whose lock is taken over leaves its partial to the new holder", async () => {
    const dir = freshDir();
    const partial = join(dir, `${SINGLE_FILE}.resumable`);
    const p = fetchCheckpoint(`${base}/slow/single`, dir, { lockStaleMs: 400 });
    while (((await stat(partial).catch(() => undefined))?.size ?? 0) === 0) await sleep(10);
    await writeFile(join(dir, ".switchyard-checkpoint.lock"), JSON.stringify({ host: "x", pid: 1, token: "new" }));
    expect((await rejection(p)).message).toMatch(/aborted \(.*the lock was taken over by another caller/);
    // not recorded as a resume point by the caller that lost the lock, nor removed
    expect(await recordOf(dir, SINGLE_FILE)).toMatchObject({ durable: 0 });
    expect((await stat(partial)).size).toBeGreaterThan(0);
  });

  it("a kill without warning (SIGKILL) costs only what came after the last resume point", async () => {
    const dir = freshDir();
    const uri = `${base}/slow/single`;
    const size = (await stat(join(sources.single.dir, SINGLE_FILE))).size;
    const module = JSON.stringify(join(import.meta.dirname, "fetch-checkpoint.ts"));
    const script = `const { fetchCheckpoint } = await import(${module});
await fetchCheckpoint(${JSON.stringify(uri)}, ${JSON.stringify(dir)}, { resumePointMs: 50 });`;
    const child = spawn(
      process.execPath,
      ["--conditions=switchyard-source", "--import", "tsx", "--input-type=module", "-e", script],
      { stdio: "ignore" },
    );
    const exited = new Promise((r) => child.on("exit", r));
    const record = join(dir, `${SINGLE_FILE}.resumable.json`);
    const t0 = performance.now();
    while (!((await readFile(record, "utf8").then(JSON.parse, () => undefined))?.durable > size / 4)) {
      expect(performance.now() - t0, "the child's first resume points").toBeLessThan(20_000);
      await sleep(10);
    }
    child.kill("SIGKILL");
    await exited;
    const { durable } = await recordOf(dir, SINGLE_FILE);
    expect(durable).toBeLessThan(size);
    requests.length = 0;
    sent.clear();
    const lines: string[] = [];
    const r = await fetchCheckpoint(uri, dir, { log: (l) => lines.push(l) });
    expect(lines.join("\n")).toMatch(/breaking a stale lock \(process \d+ of this host is gone\)/);
    expect(ranges(SINGLE_FILE)).toEqual([`bytes=${durable}-`]);
    expect(r.bytes).toBe(size - durable);
    await expectSameFiles(sources.single, dir);
  });

  it("hf://: resumes at the same commit through the Hub's redirect; drops a partial of another commit", async () => {
    const env = { HF_ENDPOINT: `${base}/hfroot`, HF_TOKEN: "hf-secret" };
    hfRefs.main = C1;
    const dir = freshDir();
    const { size, durable } = await cutOff("hf://acme/tiny", dir, SINGLE_FILE, sources.single, { env });
    const url = `${base}/hfroot/acme/tiny/resolve/${C1}/${SINGLE_FILE}`;
    expect(await recordOf(dir, SINGLE_FILE)).toMatchObject({ url, commit: C1, size, durable });
    const r = await fetchCheckpoint("hf://acme/tiny", dir, { env });
    expect(r.bytes).toBe(size - durable);
    // the Range goes with the redirect, to the CDN
    expect(requests.filter((q) => q.path.endsWith(SINGLE_FILE)).map((q) => [q.path, q.range])).toEqual([
      [`/hfroot/acme/tiny/resolve/${C1}/${SINGLE_FILE}`, `bytes=${durable}-`],
      [`/missing/single/${SINGLE_FILE}`, `bytes=${durable}-`],
    ]);
    await expectSameFiles(sources.single, dir);

    const moved = freshDir();
    const shard = "model-00002-of-00003.safetensors";
    hfRefs.main = C2;
    await cutOff("hf://acme/tiny", moved, shard, sources.sharded, { env });
    hfRefs.main = C3; // a push to main while the pod restarts: the same file names, other bytes
    const lines: string[] = [];
    await fetchCheckpoint("hf://acme/tiny", moved, { env, log: (l) => lines.push(l) });
    expect(lines).toContain(
      `${shard}: its partial download is of commit ${C2}, this run fetches commit ${C3}: downloading it from byte 0`,
    );
    expect(ranges(shard)).toEqual([undefined, undefined]); // the Hub's resolve, then the CDN: no Range
    await expectSameFiles(sources.ds, moved);
  });
});

describe("fetchCheckpointTensors", () => {
  async function expectRouterShare(ckpt: Checkpoint, orig: Checkpoint): Promise<void> {
    const same = (a: { data: Uint8Array } | undefined, b: { data: Uint8Array } | undefined) => {
      expect(a === undefined).toBe(b === undefined);
      if (a && b) expect(Buffer.compare(a.data, b.data)).toBe(0);
    };
    for (const l of moeLayers(orig.spec)) {
      same(await ckpt.readGate(l), await orig.readGate(l));
      same(await ckpt.readCorrectionBias(l), await orig.readCorrectionBias(l));
      same(await ckpt.readSharedExpertGate(l), await orig.readSharedExpertGate(l));
      const [a, b] = [await ckpt.readSharedExpert(l), await orig.readSharedExpert(l)];
      expect(a).toBeDefined();
      same(a?.gate, b?.gate);
      same(a?.up, b?.up);
      same(a?.down, b?.down);
    }
  }

  for (const name of ["ds", "qwen"]) {
    it(`${name}: reads only the router's tensors by Range; openCheckpoint serves them, not the experts`, async () => {
      const src = sources[name];
      const dir = freshDir();
      const uri = `${base}/ok/${name}`;
      const r = await fetchCheckpointTensors(uri, dir, routerTensorNames);
      const want = routerTensorNames(src.spec);
      expect(want.some((t) => t.includes("e_score_correction_bias"))).toBe(name === "ds");
      expect(want.some((t) => t.includes("shared_expert_gate"))).toBe(name === "qwen");
      expect(r.tensors).toBe(want.length);
      expect((await readdir(dir)).filter((f) => !f.startsWith(".")).sort()).toEqual(["config.json", SINGLE_FILE]);
      expect(await readFile(join(dir, "config.json"), "utf8")).toBe(
        await readFile(join(src.dir, "config.json"), "utf8"),
      );
      const file = await SafetensorsFile.open(join(dir, SINGLE_FILE));
      expect([...file.header.tensors.keys()].sort()).toEqual([...want].sort());
      await file.close();

      const ckpt = await openCheckpoint(dir);
      const orig = await openCheckpoint(src.dir);
      try {
        await expectRouterShare(ckpt, orig);
        await expect(ckpt.readExpert(moeLayers(src.spec)[0], 0)).rejects.toThrow(/not found/);
      } finally {
        await Promise.all([ckpt.close(), orig.close()]);
      }
      // Tensor files were read by Range only; what crossed the wire is a small part of the checkpoint.
      const whole = await totalSize(src);
      expect(requests.filter((q) => q.path.endsWith(".safetensors")).every((q) => q.range)).toBe(true);
      expect(r.bytes).toBe(sent.get(name));
      expect(r.bytes).toBeLessThan(whole / 4);

      requests.length = 0;
      expect(await fetchCheckpointTensors(uri, dir, routerTensorNames)).toEqual({ tensors: want.length, bytes: 0 });
      expect(requests).toEqual([]);
    });
  }

  it("works through hf:// (Range requests follow the redirect), all from config.json's commit", async () => {
    const dir = freshDir();
    const env = { HF_ENDPOINT: `${base}/hfroot`, HF_TOKEN: "hf-secret" };
    const r = await fetchCheckpointTensors("hf://acme/tiny@v1", dir, routerTensorNames, { env });
    expect(r.tensors).toBe(routerTensorNames(sources.single.spec).length);
    const hub = requests.filter((q) => q.path.startsWith("/hfroot/")).map((q) => q.path);
    expect(hub[0]).toBe("/hfroot/acme/tiny/resolve/v1/config.json");
    expect(hub.slice(1).every((p) => p.startsWith(`/hfroot/acme/tiny/resolve/${C1}/`))).toBe(true);
    expect((await readMarker(dir)).commit).toBe(C1);
    const ckpt = await openCheckpoint(dir);
    const orig = await openCheckpoint(sources.single.dir);
    try {
      expect(Buffer.compare((await ckpt.readGate(1)).data, (await orig.readGate(1)).data)).toBe(0);
    } finally {
      await Promise.all([ckpt.close(), orig.close()]);
    }
  });

  it("two callers on one directory at once: each result is whole, never the other's half-written file", async () => {
    const src = sources.ds;
    const dir = freshDir();
    const uri = `${base}/ok/ds`;
    let startB!: () => void;
    const bStarted = new Promise<void>((r) => {
      startB = r;
    });
    let bTensorData!: () => void;
    const bWrote = new Promise<void>((r) => {
      bTensorData = r;
    });
    // A's first data range goes through and then B starts; A's other ranges wait until B is writing (or 1.5 s).
    const gate = Promise.race([bWrote, sleep(1500)]);
    let aRanges = 0;
    const fetchA: typeof fetch = async (u, i) => {
      if (!dataRange(i)) return fetch(u, i);
      if (++aRanges === 1) {
        const res = await fetch(u, i);
        setTimeout(startB, 100);
        return res;
      }
      await gate;
      return fetch(u, i);
    };
    // B: slower, and its link drops
    const fetchB: typeof fetch = async (u, i) => {
      if (!dataRange(i)) return fetch(u, i);
      bTensorData();
      await sleep(300);
      throw new Error("B: link dropped");
    };
    const a = fetchCheckpointTensors(uri, dir, routerTensorNames, { fetch: fetchA });
    await bStarted;
    const b = fetchCheckpointTensors(uri, dir, routerTensorNames, { fetch: fetchB }).catch((e: Error) => e);
    await a;
    expect(aRanges).toBeGreaterThan(1);
    const check = async () => {
      const ckpt = await openCheckpoint(dir);
      const orig = await openCheckpoint(src.dir);
      try {
        await expectRouterShare(ckpt, orig);
      } finally {
        await Promise.all([ckpt.close(), orig.close()]);
      }
    };
    await check(); // what the router opens when A returns
    expect(await b).toEqual({ tensors: routerTensorNames(src.spec).length, bytes: 0 }); // B waited, found it done
    await check();
    expect((await readMarker(dir)).complete).toBe(true);
    expect(await temporaries(dir)).toEqual([]);
  });

  it("names a server that ignores Range, and a tensor the checkpoint lacks", async () => {
    const err = await rejection(fetchCheckpointTensors(`${base}/norange/ds`, freshDir(), routerTensorNames));
    expect(err.message).toMatch(
      new RegExp(
        `GET ${base}/norange/ds/model-0000\\d-of-00003\\.safetensors \\(bytes 0-7\\): the server ignored the Range request \\(HTTP 200, not 206\\)`,
      ),
    );

    const nope = "model.layers.0.mlp.nope.weight";
    const sharded = await rejection(fetchCheckpointTensors(`${base}/ok/ds`, freshDir(), () => [nope]));
    expect(sharded.message).toBe(`${base}/ok/ds/${INDEX_FILE}: tensor ${nope} is not in weight_map`);
    const single = await rejection(fetchCheckpointTensors(`${base}/ok/qwen`, freshDir(), () => [nope]));
    expect(single.message).toBe(`${base}/ok/qwen/${SINGLE_FILE}: tensor ${nope} not found in its safetensors header`);
  });

  it("times out a stalled range read and leaves no model.safetensors", async () => {
    const dir = freshDir();
    const err = await rejection(
      fetchCheckpointTensors(`${base}/stallhdr/qwen`, dir, routerTensorNames, { timeoutMs: 300 }),
    );
    expect(err.message).toContain(
      `GET ${base}/stallhdr/qwen/${SINGLE_FILE} (bytes 0-7): timed out, no response within 300 ms`,
    );
    expect((await readdir(dir)).filter((f) => !f.startsWith("."))).toEqual([]);
  });
});

describe("fetch-checkpoint CLI", () => {
  const run = promisify(execFile);
  const cli = ["--conditions=switchyard-source", "--import", "tsx", join(import.meta.dirname, "fetch-main.ts")];
  it("fetches (exit 0), fails with one line (exit 1), refuses bad flags (exit 2)", async () => {
    const dir = freshDir();
    const ok = await run(process.execPath, [...cli, "--uri", `${base}/ok/qwen`, "--dir", dir, "--router-tensors"]);
    expect(ok.stdout).toMatch(/router tensors of .*: \d+ tensors/);
    expect((await readdir(dir)).filter((f) => !f.startsWith(".")).sort()).toEqual(["config.json", SINGLE_FILE]);

    const whole = await run(process.execPath, [...cli, "--uri", `${base}/ok/single`, "--dir", freshDir()]);
    expect(whole.stdout).toMatch(/fetched model\.safetensors/);

    const fail = await run(process.execPath, [...cli, "--uri", `${base}/ok/absent`, "--dir", freshDir()]).catch(
      (e) => e,
    );
    expect(fail.code).toBe(1);
    expect(fail.stderr).toBe(
      `fetch-checkpoint: GET ${base}/ok/absent/config.json: HTTP 404 Not Found: {"error":"Entry not found: config.json"}\n`,
    );

    const bad = await run(process.execPath, [...cli, "--dir", freshDir()]).catch((e) => e);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^fetch-checkpoint: --uri: required\nusage: /);
  }, 60_000);
});
