import { execFileSync } from "node:child_process";
import { constants } from "node:fs";
import { mkdir, mkdtemp, open, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildSafetensorsHeader,
  parseSafetensorsHeader,
  readExactly,
  SafetensorsFile,
  writeSafetensors,
} from "./safetensors.js";

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "st-"));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe("safetensors", () => {
  it("writes the documented layout: u64 LE header length, JSON padded to 8 bytes, data in order", async () => {
    const path = join(root, "a.safetensors");
    const a = new Float32Array([1, -2, 3.5]);
    const b = new Uint16Array([0x3f80, 0xc000]);
    await writeSafetensors(
      path,
      [
        { name: "a", dtype: "F32", shape: [3], data: new Uint8Array(a.buffer) },
        { name: "b", dtype: "BF16", shape: [1, 2], data: () => new Uint8Array(b.buffer) },
      ],
      { format: "pt" },
    );
    const bytes = await readFile(path);
    const len = Number(bytes.readBigUInt64LE(0));
    expect((8 + len) % 8).toBe(0);
    const header = JSON.parse(bytes.subarray(8, 8 + len).toString());
    expect(header).toEqual({
      __metadata__: { format: "pt" },
      a: { dtype: "F32", shape: [3], data_offsets: [0, 12] },
      b: { dtype: "BF16", shape: [1, 2], data_offsets: [12, 16] },
    });
    expect(bytes.byteLength).toBe(8 + len + 16);
    const f = await SafetensorsFile.open(path);
    expect(f.header.metadata).toEqual({ format: "pt" });
    const ra = await f.read("a");
    expect(Array.from(new Float32Array(ra.data.buffer))).toEqual([1, -2, 3.5]);
    expect(ra.info.begin).toBe(8 + len);
    const rb = await f.read("b");
    expect(Array.from(new Uint16Array(rb.data.buffer))).toEqual([0x3f80, 0xc000]);
    await expect(f.read("c")).rejects.toThrow(`${path}: tensor c not found`);
    await f.close();
  });
  it("refuses to write data that does not match the shape", async () => {
    await expect(
      writeSafetensors(join(root, "b.safetensors"), [{ name: "x", dtype: "F16", shape: [3], data: new Uint8Array(4) }]),
    ).rejects.toThrow(/tensor x: 4 bytes, expected 6/);
  });
  it("parses headers strictly", () => {
    const enc = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));
    const { header } = buildSafetensorsHeader([{ name: "w", dtype: "F32", shape: [2, 2] }]);
    const json = header.subarray(8);
    expect(parseSafetensorsHeader(json, "f", 8 + json.byteLength + 16).tensors.get("w")?.shape).toEqual([2, 2]);
    expect(() => parseSafetensorsHeader(json, "f", 8 + json.byteLength + 15)).toThrow(
      "f: truncated: tensor w ends at data byte 16 but the file has only 15 data bytes",
    );
    expect(() => parseSafetensorsHeader(enc([1]), "f", 100)).toThrow("f: bad safetensors header: not a JSON object");
    expect(() =>
      parseSafetensorsHeader(enc({ w: { dtype: "Q4", shape: [1], data_offsets: [0, 1] } }), "f", 100),
    ).toThrow('f: bad safetensors header: tensor w: unknown dtype "Q4"');
    // names every object has (Object.prototype's) are no dtypes either
    for (const dtype of ["toString", "__proto__", "constructor"])
      expect(() => parseSafetensorsHeader(enc({ w: { dtype, shape: [1], data_offsets: [0, 1] } }), "f", 100)).toThrow(
        `f: bad safetensors header: tensor w: unknown dtype "${dtype}"`,
      );
    expect(() =>
      parseSafetensorsHeader(enc({ w: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }), "f", 100),
    ).toThrow("tensor w: shape must be an array of non-negative integers");
    expect(() =>
      parseSafetensorsHeader(enc({ w: { dtype: "F32", shape: [1], data_offsets: [4, 0] } }), "f", 100),
    ).toThrow("tensor w: data_offsets must be [begin, end] with 0 <= begin <= end");
    expect(() => parseSafetensorsHeader(enc({ __metadata__: 3 }), "f", 100)).toThrow("__metadata__ must be an object");
    expect(() => parseSafetensorsHeader(new Uint8Array([0xff, 0xfe]), "f", 100)).toThrow(/not valid JSON/);
  });
  it("refuses tensors whose byte ranges overlap (they would read each other's bytes)", () => {
    const enc = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));
    const json = enc({
      a: { dtype: "F32", shape: [4], data_offsets: [0, 16] },
      b: { dtype: "F32", shape: [2], data_offsets: [8, 16] },
    });
    expect(() => parseSafetensorsHeader(json, "f", 8 + json.byteLength + 16)).toThrow(
      "f: bad safetensors header: tensor b: data_offsets [8, 16] overlap tensor a's [0, 16]",
    );
    // empty tensors take no bytes and overlap nothing; touching ranges are fine
    const ok = enc({
      a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
      e: { dtype: "F32", shape: [0], data_offsets: [8, 8] },
      b: { dtype: "F32", shape: [2], data_offsets: [8, 16] },
    });
    expect(parseSafetensorsHeader(ok, "f", 8 + ok.byteLength + 16).tensors.size).toBe(3);
  });

  it("refuses what is not a regular file, naming it: a FIFO would block open(2) forever, a directory fail bare", async () => {
    const fifo = join(root, "fifo.safetensors");
    execFileSync("mkfifo", [fifo]);
    const opened = SafetensorsFile.open(fifo).then(
      async (f) => {
        await f.close();
        return "opened";
      },
      (e: unknown) => e,
    );
    let got: unknown;
    try {
      got = await Promise.race([opened, new Promise((r) => setTimeout(() => r("still blocked after 2 s"), 2000))]);
    } finally {
      // A writer ends an open(2) still blocked on the FIFO, so that a failure here cannot hang the test run.
      const w = await open(fifo, constants.O_WRONLY | constants.O_NONBLOCK).catch(() => undefined);
      await w?.close();
    }
    expect(got).toMatchObject({ code: "FAILED_PRECONDITION", message: `${fifo}: not a regular file` });

    const dir = join(root, "dir.safetensors");
    await mkdir(dir);
    await expect(SafetensorsFile.open(dir)).rejects.toMatchObject({
      code: "FAILED_PRECONDITION",
      message: `${dir}: not a regular file`,
    });
    await expect(SafetensorsFile.open(join(root, "absent.safetensors"))).rejects.toMatchObject({
      code: "NOT_FOUND",
      message: `${join(root, "absent.safetensors")}: no such file`,
    });
    // A read's errno error (here EISDIR) names the file and what was read.
    const fh = await open(dir, "r");
    try {
      await expect(readExactly(fh, 0, 8, dir, "header length")).rejects.toMatchObject({
        code: "FAILED_PRECONDITION",
        message: expect.stringMatching(
          new RegExp(`^${dir}: cannot read header length \\(bytes \\[0, 8\\)\\) \\(.*EISDIR`),
        ),
      });
    } finally {
      await fh.close();
    }
  });
});
