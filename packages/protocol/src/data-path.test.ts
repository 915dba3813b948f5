import { once } from "node:events";
import { connect, createServer, type Socket } from "node:net";
import { describe, expect, it } from "vitest";
import {
  DATA_PREFACE,
  DataPathError,
  FrameReader,
  frameHeader,
  listenDataPath,
  ROUTER_DATA_PREFACE,
  serveFrames,
  writeFrame,
} from "./data-path.js";

/** A stream of frames as bytes, with the preface in front. */
function stream(frames: Buffer[]): Buffer {
  return Buffer.concat([DATA_PREFACE, ...frames.flatMap((f) => [frameHeader(f.length), f])]);
}

function frames(sizes: number[], seed = 1): Buffer[] {
  let s = seed;
  return sizes.map((n) => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) {
      s = (s * 1103515245 + 12345) >>> 0;
      b[i] = s >>> 24;
    }
    return b;
  });
}

describe("FrameReader", () => {
  const sizes = [0, 1, 3, 4, 5, 8200, 70_000, 2, 131_072];

  it("returns every frame intact whatever the chunk boundaries", () => {
    const want = frames(sizes);
    const bytes = stream(want);
    for (const cut of [1, 2, 3, 5, 7, 4096, 8203, 65_536, bytes.length]) {
      const got: Buffer[] = [];
      const r = new FrameReader(1 << 20, true, (f) => got.push(Buffer.from(f)));
      for (let p = 0; p < bytes.length; p += cut) r.push(bytes.subarray(p, p + cut));
      expect(got.length, `chunks of ${cut}`).toBe(want.length);
      for (const [i, g] of got.entries()) expect(g.equals(want[i]), `frame ${i}, chunks of ${cut}`).toBe(true);
      expect(r.idle).toBe(true);
    }
  });

  it("hands out a frame that lies inside one chunk as a view of that chunk (no copy)", () => {
    const [f] = frames([100]);
    const bytes = stream([f]);
    let got: Buffer | null = null;
    new FrameReader(1 << 20, true, (x) => {
      got = x;
    }).push(bytes);
    expect(got!.buffer).toBe(bytes.buffer);
    expect(got!.equals(f)).toBe(true);
  });

  it("is not idle with half a frame buffered", () => {
    const bytes = stream(frames([50]));
    const r = new FrameReader(1 << 20, true, () => {});
    r.push(bytes.subarray(0, 20));
    expect(r.idle).toBe(false);
    r.push(bytes.subarray(20));
    expect(r.idle).toBe(true);
  });

  it("rejects a frame over the limit, naming both sizes", () => {
    const r = new FrameReader(1000, true, () => {});
    expect(() => r.push(Buffer.concat([DATA_PREFACE, frameHeader(1001)]))).toThrow(
      /frame of 1001 bytes is over the limit of 1000 bytes/,
    );
  });

  it("holds what has arrived of a frame, not what its header claims", () => {
    // A header is 4 bytes; a client that claims 256 MiB and sends nothing more must not cost 256 MiB (per connection).
    const before = process.memoryUsage().arrayBuffers;
    const readers = Array.from({ length: 4 }, () => new FrameReader(512 << 20, true, () => {}));
    for (const r of readers) r.push(Buffer.concat([DATA_PREFACE, frameHeader(256 << 20), Buffer.alloc(100)]));
    const grew = process.memoryUsage().arrayBuffers - before;
    expect(readers.every((r) => !r.idle)).toBe(true);
    expect(grew).toBeLessThan(16 << 20);
  });

  it("rejects a client that is not speaking the data path, and another version", () => {
    expect(() => new FrameReader(1000, true, () => {}).push(Buffer.from("PRI * HTTP/2.0\r\n"))).toThrow(DataPathError);
    const v2 = Buffer.from(DATA_PREFACE);
    v2[4] = 2;
    expect(() => new FrameReader(1000, true, () => {}).push(v2)).toThrow(/unsupported data-path version/);
  });

  it("tells the router's data path from the worker's by the preface", () => {
    const got: Buffer[] = [];
    new FrameReader(1000, ROUTER_DATA_PREFACE, (f) => got.push(f)).push(
      Buffer.concat([ROUTER_DATA_PREFACE, frameHeader(2), Buffer.from([1, 2])]),
    );
    expect(got).toEqual([Buffer.from([1, 2])]);
    expect(() => new FrameReader(1000, ROUTER_DATA_PREFACE, () => {}).push(DATA_PREFACE)).toThrow(
      /not a Switchyard data-path client of this service \(expected "SYRF"\)/,
    );
    expect(() => new FrameReader(1000, true, () => {}).push(ROUTER_DATA_PREFACE)).toThrow(/expected "SYDP"/);
  });

  it("reads frames without a preface on the worker -> router direction", () => {
    const [a, b] = frames([10, 20]);
    const got: Buffer[] = [];
    new FrameReader(100, false, (f) => got.push(f)).push(Buffer.concat([frameHeader(10), a, frameHeader(20), b]));
    expect(got.map((g) => g.length)).toEqual([10, 20]);
  });
});

describe("writeFrame over a real socket", () => {
  it("delivers frames in order and calls back once the body is written", async () => {
    const want = frames([8200, 0, 300_000, 17]);
    const got: Buffer[] = [];
    let done!: () => void;
    const all = new Promise<void>((r) => {
      done = r;
    });
    const server = createServer((s) => {
      const r = new FrameReader(1 << 20, true, (f) => {
        got.push(Buffer.from(f));
        if (got.length === want.length) done();
      });
      s.on("data", (c) => r.push(c));
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const port = (server.address() as { port: number }).port;
    const c: Socket = connect(port, "127.0.0.1");
    c.write(DATA_PREFACE);
    const written: number[] = [];
    for (const [i, f] of want.entries()) writeFrame(c, f, () => written.push(i));
    await all;
    c.destroy();
    server.close();
    expect(got.map((g) => g.length)).toEqual(want.map((w) => w.length));
    for (const [i, g] of got.entries()) expect(g.equals(want[i])).toBe(true);
    expect(written).toEqual([0, 1, 2, 3]);
  });
});

describe("serving connections (serveFrames, listenDataPath)", () => {
  it("drops a connection whose preface is overdue, telling why, and keeps one that sent it", async () => {
    const violations: string[] = [];
    const server = await listenDataPath("127.0.0.1", 0, (s) =>
      serveFrames(
        s,
        1 << 20,
        () => {},
        (e) => violations.push(e.message),
        DATA_PREFACE,
        50,
      ),
    );
    try {
      const silent = connect(server.port, "127.0.0.1");
      const polite = connect(server.port, "127.0.0.1");
      await Promise.all([once(silent, "connect"), once(polite, "connect")]);
      polite.write(DATA_PREFACE);
      await once(silent, "close");
      expect(violations).toEqual(["no preface within 50 ms"]);
      await new Promise((r) => setTimeout(r, 100));
      expect(polite.destroyed).toBe(false);
      polite.destroy();
    } finally {
      await server.close();
    }
  });

  it("refuses connections past maxConnections, so that they cannot take every file handle", async () => {
    const server = await listenDataPath("127.0.0.1", 0, () => {}, { maxConnections: 2 });
    try {
      const open = [connect(server.port, "127.0.0.1"), connect(server.port, "127.0.0.1")];
      await Promise.all(open.map((s) => once(s, "connect")));
      await new Promise((r) => setTimeout(r, 50));
      const third = connect(server.port, "127.0.0.1");
      third.on("error", () => {});
      await once(third, "close"); // Node closes it on accept
      expect(open.every((s) => !s.destroyed)).toBe(true);
      for (const s of open) s.destroy();
    } finally {
      await server.close();
    }
  });
});
