// What a fetch must not take for a checkpoint: a file replaced between its range reads (whatever validators the
// server sends), router tensors config.json does not describe, a config.json of megabytes, a directory whose marker
// says complete but whose files were removed or overwritten since, a revision of dots. Each against a small HTTP
// server whose behaviour each test sets (`behave`).

import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import {
  appendFile,
  copyFile,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  truncate,
  writeFile,
} from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { SINGLE_FILE } from "../checkpoint.js";
import { checkpointSource, fetchCheckpoint, fetchCheckpointTensors, routerTensorNames } from "../fetch-checkpoint.js";
import { generateCheckpoint } from "../generate.js";
import { specFromHfConfig } from "../spec.js";

interface Behave {
  /** after this many range requests for a .safetensors file, its bytes are `swapTo`'s file of the same name */
  swapAfter?: number;
  swapTo?: string;
  /** ETag on every answer, on a file's first answer only, or never */
  etag: "all" | "first" | "none";
  lastModified: boolean;
  /** answer a Range whose If-Range is not the file's ETag now with the whole file (200), as RFC 9110 says */
  ifRange: boolean;
  /** config.json is this many bytes of spaces, with or without a Content-Length */
  hugeConfig?: { bytes: number; length: boolean };
}

let root: string;
let server: Server;
let base: string;
const sources: Record<string, string> = {};
let behave: Behave;
const hits = new Map<string, number>();
const requests: { path: string; range?: string; ifRange?: string }[] = [];

const small = { hiddenSize: 64, intermediateSize: 64, seed: 7 };

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "fetch-integrity-"));
  sources.qwen = (await generateCheckpoint({ family: "qwen2-moe", dir: join(root, "src-qwen"), ...small })).dir;
  // the same shapes, other values: a new version of the file behind the same URL
  sources.qwen2 = (
    await generateCheckpoint({ family: "qwen2-moe", dir: join(root, "src-qwen2"), ...small, seed: 8 })
  ).dir;
  sources.sharded = (
    await generateCheckpoint({ family: "mixtral", dir: join(root, "src-sharded"), shards: 3, ...small })
  ).dir;
  // the same file with 8 bytes more (a safetensors file may end in bytes no tensor uses)
  sources.qwenpad = join(root, "src-qwenpad");
  await mkdir(sources.qwenpad);
  for (const f of await readdir(sources.qwen)) await copyFile(join(sources.qwen, f), join(sources.qwenpad, f));
  await appendFile(join(sources.qwenpad, SINGLE_FILE), Buffer.alloc(8));
  // config.json that does not describe the tensors: 16 experts (the gate has 8), a wider shared expert
  for (const [name, edit] of [
    ["qwen-experts", { num_experts: 16 }],
    ["qwen-shared", { shared_expert_intermediate_size: 128 }],
  ] as const) {
    sources[name] = join(root, `src-${name}`);
    await mkdir(sources[name]);
    for (const f of await readdir(sources.qwen)) await copyFile(join(sources.qwen, f), join(sources[name], f));
    const config = JSON.parse(await readFile(join(sources.qwen, "config.json"), "utf8"));
    await writeFile(join(sources[name], "config.json"), JSON.stringify({ ...config, ...edit }));
  }

  server = createServer(async (req, res) => {
    const url = decodeURIComponent(req.url ?? "");
    requests.push({ path: url, range: req.headers.range, ifRange: req.headers["if-range"] as string | undefined });
    const m = /^\/([^/]+)\/([^/]+)$/.exec(url);
    if (!m || !sources[m[1]]) return void res.writeHead(404).end();
    const [, ckpt, file] = m;
    if (file === "config.json" && behave.hugeConfig) {
      const { bytes, length } = behave.hugeConfig;
      res.writeHead(200, length ? { "content-length": bytes } : {});
      const chunk = Buffer.alloc(2 ** 20, 0x20);
      let sent = 0;
      const pump = () => {
        while (sent < bytes) {
          sent += chunk.byteLength;
          if (!res.write(chunk)) return void res.once("drain", pump);
        }
        res.end();
      };
      res.on("error", () => {});
      return pump();
    }
    const key = `${ckpt}/${file}`;
    const n = (hits.get(key) ?? 0) + 1;
    hits.set(key, n);
    const swapped = behave.swapAfter !== undefined && n > behave.swapAfter && file.endsWith(".safetensors");
    let bytes: Buffer;
    try {
      bytes = await readFile(join(sources[swapped ? (behave.swapTo ?? ckpt) : ckpt], file));
    } catch {
      return void res.writeHead(404).end();
    }
    const etag = `"${createHash("sha1").update(bytes).digest("hex")}"`;
    const headers: Record<string, string | number> = { "accept-ranges": "bytes" };
    if (behave.etag === "all" || (behave.etag === "first" && n === 1)) headers.etag = etag;
    if (behave.lastModified) headers["last-modified"] = new Date(swapped ? 2e12 : 1e12).toUTCString();
    const r = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
    const ifRange = req.headers["if-range"];
    let [start, end, status] = [0, bytes.byteLength - 1, 200];
    if (r && !(behave.ifRange && ifRange !== undefined && ifRange !== etag)) {
      start = Number(r[1]);
      end = r[2] === "" ? end : Math.min(Number(r[2]), end);
      status = 206;
      headers["content-range"] = `bytes ${start}-${end}/${bytes.byteLength}`;
    }
    headers["content-length"] = end - start + 1;
    res.writeHead(status, headers).end(bytes.subarray(start, end + 1));
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
  behave = { etag: "all", lastModified: true, ifRange: true };
  hits.clear();
  requests.length = 0;
});

let n = 0;
const freshDir = () => join(root, `out-${n++}`);
const marker = async (dir: string) => JSON.parse(await readFile(join(dir, ".switchyard-checkpoint.json"), "utf8"));
const visible = async (dir: string) => (await readdir(dir)).filter((f) => !f.startsWith(".")).sort();

async function rejection(p: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected a rejection");
}

describe("router tensors: a file replaced between its range reads is refused, whatever the server sends", () => {
  const url = () => `${base}/qwen/${SINGLE_FILE}`;

  async function replaced(b: Partial<Behave>): Promise<Error & { code?: string }> {
    Object.assign(behave, b);
    const dir = freshDir();
    const err = await rejection(fetchCheckpointTensors(`${base}/qwen`, dir, routerTensorNames, { timeoutMs: 5000 }));
    expect(await visible(dir)).toEqual([]); // neither config.json nor a model.safetensors of two versions
    expect((await marker(dir)).complete).toBe(false);
    return err;
  }

  it("an unchanged file is read with If-Range its ETag, and completes", async () => {
    const dir = freshDir();
    await fetchCheckpointTensors(`${base}/qwen`, dir, routerTensorNames);
    const reads = requests.filter((q) => q.path.endsWith(SINGLE_FILE));
    const etag = `"${createHash("sha1")
      .update(await readFile(join(sources.qwen, SINGLE_FILE)))
      .digest("hex")}"`;
    expect(reads[0].ifRange).toBeUndefined(); // the first read pins the version
    expect(reads.length).toBeGreaterThan(2);
    expect(reads.slice(1).every((q) => q.ifRange === etag)).toBe(true);
  });

  it("ETag on every answer: If-Range gets the whole new file (200), named as a change", async () => {
    const err = await replaced({ swapAfter: 2, swapTo: "qwen2" });
    expect(err.code).toBe("FAILED_PRECONDITION");
    expect(err.message).toMatch(
      new RegExp(
        `^GET ${url()} \\(bytes \\d+-\\d+\\): the file changed while being read \\(If-Range "[0-9a-f]+" answered with the whole file, ETag "[0-9a-f]+"\\)$`,
      ),
    );
  });

  it("a server that ignores If-Range: the 206's other ETag", async () => {
    const err = await replaced({ swapAfter: 2, swapTo: "qwen2", ifRange: false });
    expect(err.message).toMatch(
      new RegExp(
        `^GET ${url()} \\(bytes \\d+-\\d+\\): the file changed while being read \\(ETag "\\w+", now "\\w+"\\)$`,
      ),
    );
  });

  it("ETag on the first answer only: a later 206 without it is refused", async () => {
    const err = await replaced({ etag: "first" });
    expect(err.code).toBe("FAILED_PRECONDITION");
    expect(err.message).toMatch(
      new RegExp(
        `^GET ${url()} \\(bytes 8-\\d+\\): the file sent no ETag where its first read had "\\w+": whether it changed while being read cannot be told$`,
      ),
    );
  });

  it("no ETag at all: pinned by Last-Modified", async () => {
    const err = await replaced({ etag: "none", swapAfter: 2, swapTo: "qwen2" });
    const [was, now] = [new Date(1e12).toUTCString(), new Date(2e12).toUTCString()];
    expect(err.message).toMatch(new RegExp(`^GET ${url()} \\(bytes \\d+-\\d+\\): the file changed while being read `));
    expect(err.message.endsWith(`(Last-Modified ${was}, now ${now})`)).toBe(true);
  });

  it("no validator at all: pinned by the size Content-Range gives", async () => {
    const size = (await stat(join(sources.qwen, SINGLE_FILE))).size;
    const err = await replaced({ etag: "none", lastModified: false, swapAfter: 2, swapTo: "qwenpad" });
    expect(err.message).toMatch(
      new RegExp(
        `^GET ${url()} \\(bytes \\d+-\\d+\\): the file changed while being read \\(its size was ${size}, now ${size + 8} by Content-Range\\)$`,
      ),
    );
  });
});

describe("router tensors config.json does not describe fail before any data is fetched", () => {
  for (const [name, tensor, got, keys, want] of [
    ["qwen-experts", "model.layers.0.mlp.gate.weight", "[8, 64]", "num_experts, hidden_size", "[16, 64]"],
    [
      "qwen-shared",
      "model.layers.0.mlp.shared_expert.gate_proj.weight",
      "[64, 64]",
      "shared_expert_intermediate_size, hidden_size",
      "[128, 64]",
    ],
  ])
    it(`${name}: names the URL, the tensor and the config.json keys`, async () => {
      const dir = freshDir();
      const err = await rejection(fetchCheckpointTensors(`${base}/${name}`, dir, routerTensorNames));
      expect(err.code).toBe("FAILED_PRECONDITION");
      expect(err.message).toBe(
        `${base}/${name}/${SINGLE_FILE}: tensor ${tensor}: shape ${got}, but ${base}/${name}/config.json (${keys}) says ${want}`,
      );
      expect(await visible(dir)).toEqual([]);
      expect((await marker(dir)).complete).toBe(false);
      const data = requests.filter(
        (q) => q.range && !q.range.startsWith("bytes=0-") && !q.range.startsWith("bytes=8-"),
      );
      expect(data).toEqual([]);
    });
});

describe("a config.json of megabytes is refused at its cap, not read whole", () => {
  for (const length of [true, false])
    it(`${length ? "with" : "without"} a Content-Length: whole checkpoint and router tensors`, async () => {
      behave.hugeConfig = { bytes: 40 * 2 ** 20, length };
      const msg = `GET ${base}/qwen/config.json: more than 16777216 bytes, not a checkpoint's config.json`;
      const dir = freshDir();
      const whole = await rejection(fetchCheckpoint(`${base}/qwen`, dir));
      expect(whole.message).toBe(msg);
      expect(whole.code).toBe("FAILED_PRECONDITION");
      expect(await visible(dir)).toEqual([]);
      const tensors = await rejection(fetchCheckpointTensors(`${base}/qwen`, freshDir(), routerTensorNames));
      expect(tensors.message).toBe(msg);
    });
});

describe("a directory marked complete is checked on the disk: what is missing or damaged is fetched again", () => {
  it("whole checkpoint: a removed shard, one overwritten with garbage, one of its size with a broken header", async () => {
    const dir = freshDir();
    const uri = `${base}/sharded`;
    await fetchCheckpoint(uri, dir);
    const shards = (await visible(dir)).filter((f) => f.endsWith(".safetensors"));
    expect(shards).toHaveLength(3);

    await rm(join(dir, shards[0]));
    await writeFile(join(dir, shards[1]), "garbage");
    const fh = await readFile(join(dir, shards[2]));
    fh.fill(0, 0, 8); // header length 0: the same size, but no safetensors file
    await writeFile(join(dir, shards[2]), fh);
    const lines: string[] = [];
    const r = await fetchCheckpoint(uri, dir, { log: (l) => lines.push(l) });
    expect(r.fetched.sort()).toEqual(shards);
    expect(lines.join("\n")).toContain(`${dir}: marked complete, but ${join(dir, shards[0])} is missing`);
    expect(lines.join("\n")).toContain(`${join(dir, shards[1])} is 7 bytes`);
    for (const f of await visible(dir))
      expect(Buffer.compare(await readFile(join(dir, f)), await readFile(join(sources.sharded, f))), f).toBe(0);
    // and now it is whole: no request; the marker records each file's size, to check it by
    requests.length = 0;
    expect((await fetchCheckpoint(uri, dir)).fetched).toEqual([]);
    expect(requests).toEqual([]);
    const m = await marker(dir);
    for (const f of await visible(dir)) expect(m.files[f].size).toBe((await stat(join(dir, f))).size);
  });

  it("router tensors: a cut model.safetensors, a removed config.json", async () => {
    const dir = freshDir();
    const uri = `${base}/qwen`;
    const config = JSON.parse(await readFile(join(sources.qwen, "config.json"), "utf8"));
    const want = routerTensorNames(specFromHfConfig(config)).length;
    await fetchCheckpointTensors(uri, dir, routerTensorNames);
    const path = join(dir, SINGLE_FILE);
    const whole = await readFile(path);
    await truncate(path, whole.byteLength - 100);
    const lines: string[] = [];
    const again = await fetchCheckpointTensors(uri, dir, routerTensorNames, { log: (l) => lines.push(l) });
    expect(again.bytes).toBeGreaterThan(0);
    expect(lines[0]).toBe(
      `${dir}: marked complete, but ${path} is ${whole.byteLength - 100} bytes, ${whole.byteLength} when it was fetched: ` +
        `fetching the router tensors of ${uri} again`,
    );
    expect(Buffer.compare(await readFile(path), whole)).toBe(0);

    await rm(join(dir, "config.json"));
    expect((await fetchCheckpointTensors(uri, dir, routerTensorNames)).bytes).toBeGreaterThan(0);
    expect(await fetchCheckpointTensors(uri, dir, routerTensorNames)).toEqual({ tensors: want, bytes: 0 });
  });
});

describe("checkpoint.uri", () => {
  it("refuses a revision of dots, which would lead out of resolve/", () => {
    for (const uri of ["hf://org/name@..", "hf://org/name@.", "hf://org/name@../", "hf://org/name@refs/../x"]) {
      expect(() => checkpointSource(uri, {}), uri).toThrow(
        /^checkpoint\.uri: "hf:\/\/org\/name@[^"]*": revision "[^"]*": "\." and "\.\." are not revisions \(supported: /,
      );
    }
    expect(checkpointSource("hf://org/name@v1..2", {}).base).toBe("https://huggingface.co/org/name/resolve/v1..2/");
  });
});

describe("fetch-checkpoint CLI", () => {
  it("an unsupported or invalid --uri is a bad flag: exit 2, the message and the usage", async () => {
    const cli = ["--conditions=switchyard-source", "--import", "tsx", join(import.meta.dirname, "..", "fetch-main.ts")];
    for (const uri of ["ftp://x", "hf://org/name@.."]) {
      const bad = await promisify(execFile)(process.execPath, [...cli, "--uri", uri, "--dir", freshDir()]).catch(
        (e) => e,
      );
      expect(bad.code, uri).toBe(2);
      expect(bad.stderr).toMatch(/^fetch-checkpoint: checkpoint\.uri: .*\nusage: fetch-checkpoint --uri URI/);
    }
  }, 60_000);
});
