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
import { ReadGate } from "./read-gate.js";

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

  it("with a flow, stops handing out frames while held, mid-chunk, and goes on in order at drain()", () => {
    const want = frames([3, 0, 5, 8, 1, 2, 4, 6, 7, 9]);
    const bytes = stream(want);
    let held = false;
    const got: Buffer[] = [];
    const r = new FrameReader(
      1 << 20,
      true,
      (f) => {
        got.push(Buffer.from(f));
        if (got.length % 3 === 0) held = true; // a gate that closes on every third frame
      },
      { held: () => held, admit: () => true, whole: () => {} },
    );
    r.push(bytes.subarray(0, 30)); // several frames in one chunk
    r.push(bytes.subarray(30)); // arrives while held: kept
    const seen: number[] = [];
    for (let i = 0; i < 10 && got.length < want.length; i++) {
      seen.push(got.length);
      held = false;
      r.drain();
    }
    expect(seen).toEqual([3, 6, 9]);
    expect(got.map((g) => g.length)).toEqual(want.map((w) => w.length));
    for (const [i, g] of got.entries()) expect(g.equals(want[i])).toBe(true);
    expect([r.idle, r.pending]).toEqual([true, false]);
  });

  it("with a flow, asks before buffering a frame that spans chunks, and waits there until admitted", () => {
    const [small, big] = frames([10, 5000]);
    const bytes = stream([small, big, small]);
    let room = false;
    const asked: number[] = [];
    const wholes: number[] = [];
    const got: number[] = [];
    const r = new FrameReader(1 << 20, true, (f) => got.push(f.length), {
      held: () => !room && asked.length > 0,
      admit: (len) => {
        asked.push(len);
        return room;
      },
      whole: (len) => wholes.push(len),
    });
    r.push(bytes.subarray(0, 1000));
    expect([got, asked, r.partial]).toEqual([[10], [5000], { len: 5000, have: 0 }]);
    r.push(bytes.subarray(1000));
    expect(got).toEqual([10]);
    room = true;
    r.drain();
    expect([got, wholes]).toEqual([[10, 5000, 10], [5000]]);
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

  it("keeps a connection under its in-flight limit exactly, though one chunk carries many more frames", async () => {
    // The gate closed on the frame that reached the limit used to stop the next chunk only: every frame of this one
    // was handed out, 200 in flight where 3 were allowed.
    const N = 200;
    let peak = 0;
    const got: number[] = [];
    const server = await listenDataPath("127.0.0.1", 0, (s) => {
      const gate = new ReadGate(s, { maxInFlight: 3, maxQueuedBytes: 1 << 20 });
      serveFrames(s, 1024, (f) => {
        gate.started();
        peak = Math.max(peak, gate.inFlight);
        got.push(f.readUInt32LE(0));
        setTimeout(() => gate.answered(), 1);
      });
    });
    const c = connect(server.port, "127.0.0.1");
    try {
      await once(c, "connect");
      const body = (i: number) => Buffer.from(new Uint32Array([i]).buffer);
      c.write(stream(Array.from({ length: N }, (_, i) => body(i)))); // 1.6 KB: one chunk
      const end = Date.now() + 5000;
      while (got.length < N && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
      expect(peak).toBe(3);
      expect(got).toEqual(Array.from({ length: N }, (_, i) => i));
    } finally {
      c.destroy();
      await server.close();
    }
  });

  it("tells the client's end only once the frames kept while the connection was held are handed out", async () => {
    // The socket's 'end' comes as soon as the FIN is read, while frames of the last chunk may still wait for the
    // gate: a server that ended its side then (all answered so far) would lose them.
    const events: string[] = [];
    let gate!: ReadGate;
    const server = await listenDataPath(
      "127.0.0.1",
      0,
      (s) => {
        gate = new ReadGate(s, { maxInFlight: 1, maxQueuedBytes: 1 << 20 });
        s.on("end", () => events.push("socket end"));
        serveFrames(
          s,
          1024,
          (f) => {
            gate.started();
            events.push(`frame ${f[0]}`);
            setTimeout(() => gate.answered(), 20);
          },
          undefined,
          DATA_PREFACE,
          10_000,
          { onEnd: () => events.push("onEnd") },
        );
      },
      { allowHalfOpen: true },
    );
    const c = connect(server.port, "127.0.0.1");
    c.on("error", () => {});
    try {
      await once(c, "connect");
      c.end(stream([1, 2, 3, 4].map((i) => Buffer.from([i]))));
      const end = Date.now() + 5000;
      while (!events.includes("onEnd") && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
      expect(events.filter((e) => e !== "socket end")).toEqual(["frame 1", "frame 2", "frame 3", "frame 4", "onEnd"]);
    } finally {
      c.destroy();
      await server.close();
    }
  });

  it("holds partial frames of all its connections within its budget: the others wait, none is lost", async () => {
    // The review's repro in small: clients send the header and most of a large frame, then stall. Without a budget
    // the server held all of it (6 x 7 MiB here, 1.5 GB with six 256 MiB frames in a router).
    const MiB = 1 << 20;
    const LEN = 8 * MiB;
    let read = 0;
    const got: number[] = [];
    const server = await listenDataPath(
      "127.0.0.1",
      0,
      (s) => {
        s.on("data", (c: Buffer) => {
          read += c.length;
        });
        serveFrames(s, LEN, (f) => got.push(f.length));
      },
      { partialFrameBudgetBytes: 16 * MiB },
    );
    const body = Buffer.alloc(LEN, 7); // one buffer for every client: their writes cost the test nothing
    const clients: Socket[] = [];
    const settle = async () => {
      let last = -1;
      for (let i = 0; i < 100 && read !== last; i++) {
        last = read;
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    try {
      for (let i = 0; i < 6; i++) {
        const c = connect(server.port, "127.0.0.1");
        c.on("error", () => {});
        clients.push(c);
        await once(c, "connect");
        c.write(Buffer.concat([DATA_PREFACE, frameHeader(LEN)]));
        c.write(body.subarray(0, 7 * MiB));
      }
      await settle();
      // Two frames fit; the four others wait at their first chunk, their bytes in the kernel and the clients.
      expect(read).toBeGreaterThan(14 * MiB);
      expect(read).toBeLessThan(16 * MiB + 6 * MiB);
      expect(server.budget.usedBytes).toBe(16 * MiB);
      expect(server.budget.waiting).toBe(4);
      // Every client finishes its frame: each is admitted in turn and handed out whole.
      for (const c of clients) c.write(body.subarray(7 * MiB));
      const end = Date.now() + 10_000;
      while (got.length < 6 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
      expect(got).toEqual(Array(6).fill(LEN));
      expect([server.budget.usedBytes, server.budget.waiting]).toEqual([0, 0]);
    } finally {
      for (const c of clients) c.destroy();
      await server.close();
    }
  });

  it("gives a connection's budget back when it closes mid-frame or while it waits", async () => {
    const server = await listenDataPath(
      "127.0.0.1",
      0,
      (s) =>
        serveFrames(
          s,
          1 << 20,
          () => {},
          () => {},
        ),
      { partialFrameBudgetBytes: 1 << 20 },
    );
    const clients: Socket[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        const c = connect(server.port, "127.0.0.1");
        c.on("error", () => {});
        clients.push(c);
        await once(c, "connect");
        c.write(Buffer.concat([DATA_PREFACE, frameHeader(600_000), Buffer.alloc(100_000)]));
        await new Promise((r) => setTimeout(r, 50));
      }
      expect([server.budget.usedBytes, server.budget.waiting]).toEqual([600_000, 2]);
      // The admitted one goes: the next waiter gets its room.
      clients[0]?.destroy();
      await new Promise((r) => setTimeout(r, 100));
      expect([server.budget.usedBytes, server.budget.waiting]).toEqual([600_000, 1]);
      // A waiting connection is not read, so its client's FIN is seen only at its turn: it reads the end then and
      // gives the room straight back.
      clients[2]?.destroy();
      clients[1]?.destroy();
      await new Promise((r) => setTimeout(r, 100));
      expect([server.budget.usedBytes, server.budget.waiting]).toEqual([0, 0]);
    } finally {
      for (const c of clients) c.destroy();
      await server.close();
    }
  });

  it("drops a connection whose frame stalls halfway, telling why, and gives its budget back", async () => {
    const violations: string[] = [];
    const got: number[] = [];
    const server = await listenDataPath("127.0.0.1", 0, (s) =>
      serveFrames(
        s,
        1 << 20,
        (f) => got.push(f.length),
        (e) => violations.push(e.message),
        DATA_PREFACE,
        10_000,
        { stallTimeoutMs: 100 },
      ),
    );
    const stalled = connect(server.port, "127.0.0.1");
    const steady = connect(server.port, "127.0.0.1");
    steady.on("error", () => {});
    try {
      await Promise.all([once(stalled, "connect"), once(steady, "connect")]);
      const dropped = once(stalled, "close");
      stalled.write(Buffer.concat([DATA_PREFACE, frameHeader(500_000), Buffer.alloc(200_000)]));
      steady.write(DATA_PREFACE);
      // the other connection sends whole frames, slowly: not a stall
      for (let i = 0; i < 4; i++) {
        writeFrame(steady, Buffer.alloc(100));
        await new Promise((r) => setTimeout(r, 60));
      }
      await dropped;
      expect(violations).toHaveLength(1);
      expect(violations[0]).toMatch(
        /^frame of 500000 bytes stalled: 200000 bytes of it arrived, \d+ in the last 100 ms$/,
      );
      expect(server.budget.usedBytes).toBe(0);
      expect(steady.destroyed).toBe(false);
      expect(got).toEqual([100, 100, 100, 100]);
    } finally {
      stalled.destroy();
      steady.destroy();
      await server.close();
    }
  });
});
