// The router addon against callers that change its inputs while it uses them (a memory-safety review's crash
// scripts): a combine whose dst overlaps its locations, routerLogitsAsync's buffers resized or detached while the gate
// threads read them. Each case runs in a node process of its own (a crash is a signal there, not a lost vitest
// worker) and must exit 0 with the expected result or error; before the fixes each one crashed (SIGSEGV).

import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { nativeCombineStatus, ROUTER_ADDON_PATH, refuseResizable, routerAddon, staleAddon } from "./native-combine.js";

const addon = routerAddon();
if (!addon && process.env.CI === "true") throw new Error(`router addon not loadable in CI: ${nativeCombineStatus()}`);
if (!addon) console.warn(`native router memory-safety tests SKIPPED: ${nativeCombineStatus()}`);

/** Runs `body` (CommonJS, `a` = the addon, `gc` exposed) in a node of its own; its stdout lines. */
function child(body: string): string[] {
  const code = `const a = require(${JSON.stringify(ROUTER_ADDON_PATH)});
    const say = (s) => process.stdout.write(s + "\\n");
    const fail = (e) => say((e && e.name) + ": " + (e && e.message));
    const attempt = (f) => Promise.resolve().then(f).catch(fail); // a throw at the call or a rejection: its message
    (async () => { ${body} })().catch((e) => { say("UNEXPECTED " + (e && e.stack)); process.exitCode = 3; });`;
  const r = spawnSync(process.execPath, ["--expose-gc", "-e", code], { encoding: "utf8", timeout: 60_000 });
  const out = r.status === 0 ? "" : r.stdout; // the output too where it failed
  expect({ status: r.status, signal: r.signal, err: r.stderr, out }).toEqual({
    status: 0,
    signal: null,
    err: "",
    out: "",
  });
  return r.stdout.trim().split("\n");
}

describe.skipIf(!addon)("router addon: inputs changed under a call", () => {
  it("combine: a dst overlapping locations cannot move a later token's (result, row) after its check", () => {
    // Token 0's output (1e30, 1e30) lands on token 1's location; token 1 was summed from result index 1e30's bits.
    // With the locations copied while checked, token 1 reads (0, 0) as checked and writes (1e30, 1e30) too.
    const out = child(`
      const buf = new ArrayBuffer(32);
      const locations = new Int32Array(buf, 8, 4);
      const dst = new Uint8Array(buf, 16, 16);
      a.combine(dst, 1, 2, 2, 1, new Float32Array([1, 1]), locations, [new Float32Array([1e30, 1e30])], null);
      say(Array.from(new Float32Array(buf, 16, 4)).join(","));`);
    const big = Math.fround(1e30);
    expect(out).toEqual([`${big},${big},${big},${big}`]);
  });

  it("routerLogitsAsync: resizable or detached hidden / gateT are refused; the output is the addon's own", () => {
    // The old call took a caller's `out` and held hidden, gateT and out by reference only: a resizable one shrunk
    // right after the call had the gate threads read and write past its end.
    const out = child(`
      const tokens = 64, d = 512, E = 64;
      const R = (n) => new Float32Array(new ArrayBuffer(n * 4, { maxByteLength: n * 4 }));
      const hidden = new Float32Array(tokens * d).fill(0.5), gateT = new Float32Array(d * E).fill(0.01);
      await attempt(() => a.routerLogitsAsync(R(tokens * d).fill(0.5), gateT, tokens, d, E, 2));
      await attempt(() => a.routerLogitsAsync(hidden, R(d * E), tokens, d, E, 2));
      const gone = new Float32Array(tokens * d);
      structuredClone(gone.buffer, { transfer: [gone.buffer] });
      await attempt(() => a.routerLogitsAsync(gone, gateT, 0, d, E, 2));
      const want = new Float32Array(tokens * E);
      a.routerLogits(hidden, gateT, tokens, d, E, want);
      const got = await a.routerLogitsAsync(hidden, gateT, tokens, d, E, 2);
      say(got.constructor.name + " " + got.length + " " + Buffer.from(got.buffer).equals(Buffer.from(want.buffer)));
      const none = await a.routerLogitsAsync(new Float32Array(0), gateT, 0, d, E, 2);
      say("empty " + none.length);`);
    expect(out).toEqual([
      expect.stringMatching(/^TypeError: hidden: a resizable ArrayBuffer/),
      expect.stringMatching(/^TypeError: gateT: a resizable ArrayBuffer/),
      "TypeError: hidden: its ArrayBuffer is detached (transferred)",
      `Float32Array ${64 * 64} true`,
      "empty 0",
    ]);
  });

  it("refuseResizable names the input; an addon whose routerLogitsAsync takes an out is stale", () => {
    const Resizable = ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer;
    expect(() => refuseResizable({ hidden: new Float32Array(new Resizable(16, { maxByteLength: 16 })) })).toThrow(
      /hidden: backed by a resizable ArrayBuffer/,
    );
    expect(() => refuseResizable({ hidden: new Float32Array(4), gateT: new Float32Array(4) })).not.toThrow();
    expect(staleAddon({ gateLayout: () => "panel32", routerLogitsAsync: (() => Promise.resolve()) as never })).toMatch(
      /takes an out argument/,
    );
  });
});
