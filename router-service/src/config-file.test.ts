import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readConfigFile } from "./config-file.js";

describe("readConfigFile", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sy-cfg-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const put = async (name: string, body: string | Buffer) => {
    await writeFile(join(dir, name), body);
    return join(dir, name);
  };

  it("reads a plain config as it is", async () => {
    const path = await put("plain.json", JSON.stringify({ pools: [] }));
    expect(await readConfigFile(path)).toEqual({ doc: { pools: [] }, files: [path] });
  });

  it("follows a gzipFile pointer to the file beside it, and reports both files to watch", async () => {
    await put("big.json.gz", gzipSync(JSON.stringify({ pools: [{ name: "a" }] })));
    const path = await put("big.json", JSON.stringify({ gzipFile: "big.json.gz" }));
    expect(await readConfigFile(path)).toEqual({
      doc: { pools: [{ name: "a" }] },
      files: [path, join(dir, "big.json.gz")],
    });
  });

  it("refuses, naming the file or field: a pointer elsewhere, extra fields, a missing file, not gzip, not JSON", async () => {
    const cases: [string, unknown, RegExp][] = [
      ["up.json", { gzipFile: "../etc/passwd" }, /gzipFile must be a file name beside it, got "\.\.\/etc\/passwd"/],
      ["abs.json", { gzipFile: "/etc/passwd" }, /gzipFile must be a file name beside it/],
      ["num.json", { gzipFile: 3 }, /gzipFile must be a file name beside it, got 3/],
      [
        "extra.json",
        { gzipFile: "x.gz", pools: [] },
        /a gzipFile pointer holds no other field \(found gzipFile, pools\)/,
      ],
      ["missing.json", { gzipFile: "none.gz" }, /^config\.gzipFile .*none\.gz: cannot read/],
      ["notgz.json", { gzipFile: "notgz.gz" }, /^config\.gzipFile .*notgz\.gz: not a gzip stream of the config/],
      ["badjson.json", { gzipFile: "badjson.gz" }, /^config\.gzipFile .*badjson\.gz: not valid JSON/],
    ];
    await put("notgz.gz", "plain text");
    await put("badjson.gz", gzipSync("{pools:"));
    for (const [name, doc, want] of cases) {
      const path = await put(name, JSON.stringify(doc));
      await expect(readConfigFile(path), name).rejects.toThrow(want);
    }
    await expect(readConfigFile(join(dir, "absent.json"))).rejects.toThrow(/^config .*absent\.json: cannot read/);
    await expect(readConfigFile(await put("torn.json", "{"))).rejects.toThrow(/^config .*torn\.json: not valid JSON/);
  });
});
