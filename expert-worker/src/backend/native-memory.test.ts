// The native CPU addon against callers that change its inputs while it uses them (a memory-safety review's crash
// scripts): a buffer detached (transferred) or a resizable one shrunk while a run is in flight or from a getter on
// the options, an accumulator that overlaps the indices it is summed by, a zero-row run with a huge cols. Each case
// runs in a node process of its own (a crash is a signal there, not a lost vitest worker) and must exit 0 with the
// expected result or error. Before the fixes each one crashed (SIGSEGV) or read memory it no longer owned.

import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { loadNativeAddon, NATIVE_ADDON_PATH, NativeCpuBackend, nativeLoadError } from "./native-cpu.js";
import { refuseResizable } from "./types.js";

const addon = loadNativeAddon();
if (!addon && process.env.CI === "true") throw new Error(`native addon not loadable in CI: ${nativeLoadError()}`);
if (!addon) console.warn(`native memory-safety tests SKIPPED: addon not loadable: ${nativeLoadError()}`);

/** Runs `body` (CommonJS, `a` = the addon, `W(r, c, v)` = an fp32 weight of value v, `gc` exposed) in a node of its own. */
function child(body: string): { status: number | null; signal: NodeJS.Signals | null; out: string; err: string } {
  const code = `const a = require(${JSON.stringify(NATIVE_ADDON_PATH)});
    const W = (r, c, v) => ({ dtype: 1, rows: r, cols: c, data: new Uint8Array(new Float32Array(r * c).fill(v).buffer) });
    const say = (s) => process.stdout.write(s + "\\n");
    const fail = (e) => say((e && e.name) + ": " + (e && e.message));
    const attempt = (f) => Promise.resolve().then(f).catch(fail); // a throw at the call or a rejection: its message
    (async () => { ${body} })().catch((e) => { say("UNEXPECTED " + (e && e.stack)); process.exitCode = 3; });`;
  const r = spawnSync(process.execPath, ["--expose-gc", "-e", code], {
    encoding: "utf8",
    timeout: 60_000,
    env: { ...process.env, SWITCHYARD_CPU_THREADS: "2" },
  });
  return { status: r.status, signal: r.signal, out: r.stdout.trim(), err: r.stderr.trim() };
}

function expectClean(r: ReturnType<typeof child>): string {
  // the output too where it failed (an unexpected rejection prints its stack)
  const out = r.status === 0 ? "" : r.out;
  expect({ status: r.status, signal: r.signal, err: r.err, out }).toEqual({
    status: 0,
    signal: null,
    err: "",
    out: "",
  });
  return r.out;
}

describe.skipIf(!addon)("native CPU addon: inputs changed under a run", () => {
  it("runExperts: tokens transferred (and rewritten by their new owner) while the run waits its turn", () => {
    // A holds the kernel; B is queued with 4 MiB of tokens (1.0), which are then transferred, overwritten with 2.0
    // by the new owner and collected. B must compute from the tokens as they were at the call (the addon's copy):
    // it read the new owner's 2.0s, or freed (unmapped) memory, before.
    const out = expectClean(
      child(`
      const d = 1024, f = 1024, rows = 1024;
      const e = await a.prepareExpert(W(f, d, 0.001), W(f, d, 0.001), W(d, f, 0.001));
      const mk = () => ({ dtype: 1, rows, cols: d, tokens: new Uint8Array(new Float32Array(rows * d).fill(1).buffer),
        slices: new Uint32Array([0, 0, rows]), experts: [e], rowWeights: new Float32Array(rows).fill(1) });
      const A = a.runExperts(mk());
      const optsB = mk();
      const B = a.runExperts(optsB);
      (() => {
        const moved = structuredClone(optsB.tokens.buffer, { transfer: [optsB.tokens.buffer] });
        new Float32Array(moved).fill(2);
        const w = structuredClone(optsB.rowWeights.buffer, { transfer: [optsB.rowWeights.buffer] });
        new Float32Array(w).fill(5);
      })();
      for (let i = 0; i < 3; i++) { gc(); await new Promise((r) => setTimeout(r, 5)); }
      const want = Buffer.from((await A).output);
      const got = Buffer.from((await B).output);
      say("detached " + optsB.tokens.byteLength + " same " + got.equals(want));`),
    );
    expect(out).toBe("detached 0 same true");
  });

  it("runExperts: a resizable tokens buffer shrunk (or rewritten) while the run is in flight", () => {
    const out = expectClean(
      child(`
      const d = 1024, f = 256, rows = 2048, bytes = rows * d * 4;
      const e = await a.prepareExpert(W(f, d, 0.01), W(f, d, 0.01), W(d, f, 0.01));
      const ref = await a.runExperts({ dtype: 1, rows, cols: d, tokens: new Uint8Array(new Float32Array(rows * d).fill(1).buffer),
        slices: new Uint32Array([0, 0, rows]), experts: [e] });
      const busy = a.runExperts({ dtype: 1, rows, cols: d, tokens: new Uint8Array(bytes), slices: new Uint32Array([0, 0, rows]), experts: [e] });
      const rab = new ArrayBuffer(bytes, { maxByteLength: bytes });
      new Float32Array(rab).fill(1);
      const p = a.runExperts({ dtype: 1, rows, cols: d, tokens: new Uint8Array(rab), slices: new Uint32Array([0, 0, rows]), experts: [e] });
      rab.resize(0);
      await busy;
      const got = await p;
      say("shrunk " + rab.byteLength + " same " + Buffer.from(got.output).equals(Buffer.from(ref.output)));`),
    );
    expect(out).toBe("shrunk 0 same true");
  });

  it("runExperts: a getter on the options cannot detach or shrink tokens after they were checked", () => {
    const out = expectClean(
      child(`
      const d = 1024, f = 64, rows = 4096;
      const e = await a.prepareExpert(W(f, d, 0.01), W(f, d, 0.01), W(d, f, 0.01));
      const tokens = new Uint8Array(new Float32Array(rows * d).fill(1).buffer); // 16 MiB
      await attempt(() => a.runExperts({ dtype: 1, rows, cols: d, tokens, slices: new Uint32Array([0, 0, rows]),
        get experts() { structuredClone(tokens.buffer, { transfer: [tokens.buffer] }); gc(); gc(); return [e]; } }));
      const rab = new ArrayBuffer(rows * d * 4, { maxByteLength: rows * d * 4 });
      await attempt(() => a.runExperts({ dtype: 1, rows, cols: d, tokens: new Uint8Array(rab), slices: new Uint32Array([0, 0, rows]),
        get experts() { rab.resize(0); return [e]; } }));
      // a getter that detaches the weights of an earlier matrix of the same prepare
      const g = W(f, d, 0.01);
      await attempt(() => a.prepareExpert(g, { ...W(f, d, 0.01), get rows() { structuredClone(g.data.buffer, { transfer: [g.data.buffer] }); gc(); return f; } },
        W(d, f, 0.01)));`),
    );
    expect(out.split("\n")).toEqual([
      "TypeError: tokens: its ArrayBuffer is detached (transferred)",
      "RangeError: tokens: byte length does not match rows*cols*dtype",
      "TypeError: gate.data: its ArrayBuffer is detached (transferred)",
    ]);
  });

  it("prepareExpert refuses resizable weights, runExperts a cancel flag that is not a SharedArrayBuffer", () => {
    const out = expectClean(
      child(`
      const rab = new ArrayBuffer(16 * 8 * 4, { maxByteLength: 16 * 8 * 4 });
      await attempt(() => a.prepareExpert({ dtype: 1, rows: 16, cols: 8, data: new Uint8Array(rab) }, W(16, 8, 1), W(8, 16, 1)));
      const e = await a.prepareExpert(W(16, 8, 1), W(16, 8, 1), W(8, 16, 1));
      const base = { dtype: 1, rows: 2, cols: 8, tokens: new Uint8Array(64), experts: [e], slices: new Uint32Array([0, 0, 2]) };
      await attempt(() => a.runExperts({ ...base, cancel: new Int32Array(1) }));
      const r = await a.runExperts({ ...base, cancel: new Int32Array(new SharedArrayBuffer(4)) });
      say("shared cancel ok " + r.output.length);`),
    );
    expect(out.split("\n")).toEqual([
      expect.stringMatching(/^TypeError: gate\.data: a resizable ArrayBuffer/),
      expect.stringMatching(/^TypeError: cancel: expected an Int32Array on a SharedArrayBuffer/),
      "shared cancel ok 64",
    ]);
  });

  it("sumRowsByToken: an accumulator overlapping tokenRows cannot move a row past it; shared buffers are read", () => {
    // acc's first row is tokenRows' memory: row 0's sum rewrites tokenRows[1] with the bits of 1e30 (1900671690), and
    // row 1 was added 15 GB past acc. With the indices copied while checked, row 1 goes to token 0 as checked.
    const out = expectClean(
      child(`
      const buf = new ArrayBuffer(32);
      const tokenRows = new Uint32Array(buf, 0, 2);
      const acc = new Float32Array(buf, 0, 8);
      a.sumRowsByToken(new Uint8Array(new Float32Array([1, 1e30, 1, 1]).buffer), 1, tokenRows, acc);
      say(Array.from(new Float32Array(buf, 0, 2)).join(","));
      const sab = new Float32Array(new SharedArrayBuffer(16));
      a.sumRowsByToken(new Uint8Array(new Float32Array([1, 2]).buffer), 1, new Uint32Array(new SharedArrayBuffer(4)), sab);
      say(Array.from(sab).join(","));`),
    );
    expect(out.split("\n")).toEqual([`2,${Math.fround(1e30)}`, "1,2,0,0"]);
  });

  it("a zero-row run with a huge cols reserves nothing; a cols unlike the experts' d is refused by name", () => {
    const out = expectClean(
      child(`
      const vm = () => Number(require("fs").readFileSync("/proc/self/status", "utf8").match(/VmSize:\\s+(\\d+)/)[1]) / 1024;
      const before = vm();
      const r = await a.runExperts({ dtype: 1, rows: 0, cols: 2 ** 30, tokens: new Uint8Array(0), experts: [], slices: new Uint32Array([]) });
      say("output " + r.output.length + " grew MiB<256 " + (vm() - before < 256));
      const e = await a.prepareExpert(W(16, 8, 1), W(16, 8, 1), W(8, 16, 1));
      await attempt(() => a.runExperts({ dtype: 1, rows: 1, cols: 16, tokens: new Uint8Array(64), experts: [e], slices: new Uint32Array([]) }));`),
    );
    expect(out.split("\n")).toEqual([
      "output 0 grew MiB<256 true",
      "RangeError: cols: 16 does not match experts[0]'s hidden size d=8",
    ]);
  });

  it("NativeCpuBackend.prepare names a resizable weight", async () => {
    const backend = new NativeCpuBackend(addon!);
    const m = (rows: number, cols: number, data = new Uint8Array(rows * cols * 4)) => ({
      dtype: "float32" as const,
      rows,
      cols,
      data,
    });
    // (lib ES2023 does not declare ArrayBuffer's options yet)
    const Resizable = ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer;
    const rab = new Resizable(8 * 16 * 4, { maxByteLength: 8 * 16 * 4 });
    await expect(
      backend.prepare({ gate: m(16, 8), up: m(16, 8), down: m(8, 16, new Uint8Array(rab)) }),
    ).rejects.toThrow(/down\.data: backed by a resizable ArrayBuffer/);
    expect(() => refuseResizable({ x: new Uint8Array(4) })).not.toThrow();
  });
});
