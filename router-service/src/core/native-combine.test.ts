// The native combine (native/src/combine.cc) against the TypeScript combine it must match bit for bit: fresh random
// inputs each run, bf16 rows drawn from all bit patterns (subnormals, Inf, values that round up to Inf), fp32 rows,
// 1..9 slots, empty and dropped slots, a shared-expert base, odd widths, rows at odd addresses, tokens with exactly one
// contribution (the native one-pass path: top-1, or top-k with the other slots empty); and bad calls that must throw
// instead of reading out of bounds.

import { spawnSync } from "node:child_process";
import { DType } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import { type CombineInput, combineIntoTs } from "./combine.js";
import { GATE_LAYOUT, nativeCombineStatus, ROUTER_ADDON_PATH, routerAddon, staleAddon } from "./native-combine.js";

const addon = routerAddon();
// CI builds the addon (npm test builds first): not loading there is a failure, not a skip.
if (!addon && process.env.CI === "true") throw new Error(`router addon not loadable in CI: ${nativeCombineStatus()}`);
if (!addon) console.warn(`native combine tests SKIPPED: ${nativeCombineStatus()}`);

const seed = (Date.now() ^ (process.pid << 8)) >>> 0;
function rng(s: number): () => number {
  return () => {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Same bits, except that any NaN matches any NaN (payloads are not part of the contract). */
function sameBits(a: Uint16Array | Float32Array, b: Uint16Array | Float32Array, dtype: DType): string | null {
  const ua = new Uint32Array(a.length);
  const ub = new Uint32Array(b.length);
  ua.set(a instanceof Float32Array ? new Uint32Array(a.buffer, a.byteOffset, a.length) : a);
  ub.set(b instanceof Float32Array ? new Uint32Array(b.buffer, b.byteOffset, b.length) : b);
  const nanBits = (u: number) => (dtype === DType.FLOAT32 ? (u & 0x7fffffff) > 0x7f800000 : (u & 0x7fff) > 0x7f80);
  for (let i = 0; i < ua.length; i++) {
    if (ua[i] === ub[i] || (nanBits(ua[i]) && nanBits(ub[i]))) continue;
    return `element ${i}: native ${ua[i].toString(16)} vs TypeScript ${ub[i].toString(16)}`;
  }
  return null;
}

describe.skipIf(!addon)(`native combine (${nativeCombineStatus()}, seed ${seed})`, () => {
  it("matches the TypeScript combine bit for bit on random batches", () => {
    const r = rng(seed);
    for (let iter = 0; iter < 60; iter++) {
      const dtype = r() < 0.6 ? DType.BFLOAT16 : DType.FLOAT32;
      const el = dtype === DType.FLOAT32 ? 4 : 2;
      const tokens = 1 + Math.floor(r() * 9);
      const d = [1, 7, 64, 129, 4096][Math.floor(r() * 5)];
      const slots = 1 + Math.floor(r() * 9);
      const nres = 1 + Math.floor(r() * 3);
      const rowsPer = tokens * slots;
      const wild = r() < 0.3; // all bit patterns (NaN, Inf, subnormals) vs tame values
      const results = Array.from({ length: nres }, () => {
        const bytes = new Uint8Array(rowsPer * d * el + 1);
        if (wild) for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(r() * 256);
        else {
          const f = new Float32Array(rowsPer * d);
          for (let i = 0; i < f.length; i++) f[i] = (r() - 0.5) * 2 ** Math.floor(r() * 20 - 10);
          if (dtype === DType.FLOAT32) bytes.set(new Uint8Array(f.buffer));
          else {
            const u = new Uint32Array(f.buffer);
            for (let i = 0; i < u.length; i++) {
              bytes[2 * i] = (u[i] >>> 16) & 0xff;
              bytes[2 * i + 1] = u[i] >>> 24;
            }
          }
        }
        // Half the time at an odd address, as grpc-js hands rows over (the TypeScript combine takes those as bytes).
        if (r() < 0.5) return bytes.subarray(1, 1 + rowsPer * d * el);
        const aligned = bytes.slice(0, rowsPer * d * el);
        return dtype === DType.FLOAT32
          ? new Float32Array(aligned.buffer, 0, rowsPer * d)
          : new Uint16Array(aligned.buffer, 0, rowsPer * d);
      });
      if (dtype === DType.FLOAT32) {
        // The TypeScript fp32 combine takes element views (the router aligns fp32 rows first).
        for (let i = 0; i < results.length; i++)
          if (results[i] instanceof Uint8Array) results[i] = new Float32Array(results[i].slice().buffer);
      }
      // Every third batch: one contributing slot per token and no base (what top-1 routing produces).
      const single = iter % 3 === 0;
      const keep = Array.from({ length: tokens }, () => Math.floor(r() * slots));
      const locations = new Int32Array(tokens * slots * 2);
      const weights = new Float32Array(tokens * slots);
      for (let i = 0; i < tokens * slots; i++) {
        const empty = single ? i % slots !== keep[Math.floor(i / slots)] : r() < 0.15;
        locations[2 * i] = empty ? -1 : Math.floor(r() * nres);
        locations[2 * i + 1] = Math.floor(r() * rowsPer);
        weights[i] = wild && r() < 0.05 ? -0 : (r() - 0.3) * 3;
      }
      const base = !single && r() < 0.3 ? Float32Array.from({ length: tokens * d }, () => (r() - 0.5) * 4) : null;
      const input: CombineInput = { tokens, d, dtype, slots, weights, locations, results, base };
      const mk = () => (dtype === DType.FLOAT32 ? new Float32Array(tokens * d) : new Uint16Array(tokens * d));
      const got = mk().fill(0x5555);
      const want = mk().fill(0x3333);
      addon!.combine(got, dtype === DType.FLOAT32 ? 1 : 2, tokens, d, slots, weights, locations, results, base);
      combineIntoTs(input, want);
      const diff = sameBits(got, want, dtype);
      expect(
        diff,
        `iteration ${iter}: ${DType[dtype]} tokens ${tokens} d ${d} slots ${slots} wild ${wild} single ${single}`,
      ).toBeNull();
    }
  });

  it("throws on bad calls instead of reading out of bounds", () => {
    const w = new Float32Array(2);
    const rows = new Uint16Array(8);
    const dst = new Uint16Array(8);
    const call =
      (loc: number[], o: { dst?: Uint16Array; res?: Uint16Array[]; type?: number } = {}) =>
      () =>
        addon!.combine(o.dst ?? dst, (o.type ?? 2) as 1 | 2, 2, 4, 1, w, Int32Array.from(loc), o.res ?? [rows], null);
    expect(call([0, 0, 0, 1])).not.toThrow();
    expect(call([0, 0, 0, 2])).toThrow(/out of range/); // row 2 of a 2-row result
    expect(call([0, 0, 1, 0])).toThrow(/out of range/); // result 1 of 1
    expect(call([0, 0, 0, -1])).toThrow(/out of range/);
    expect(call([0, 0, 0, 1], { dst: new Uint16Array(7) })).toThrow(/dst/);
    expect(call([0, 0, 0, 1], { type: 3 })).toThrow(/type/);
    expect(call([0, 0, 0, 1], { type: 1 })).toThrow(/dst|out of range/); // fp32 rows need twice the bytes
  });

  it("refuses weights, locations and base of another element type (their bytes were read as float / int32)", () => {
    const rows = new Float32Array(8).fill(1);
    const dst = new Float32Array(8);
    const loc = Int32Array.from([0, 0, 0, 1]);
    const c = addon!.combine as (...a: unknown[]) => void;
    // Same byte lengths as the right types: a Float64Array of weights was summed as 2 floats per double.
    expect(() => c(dst, 1, 2, 4, 1, new Float64Array(1).fill(0.5), loc, [rows], null)).toThrow(
      /weights: expected a Float32Array/,
    );
    expect(() => c(dst, 1, 2, 4, 1, new Float32Array(2), new Uint32Array(4), [rows], null)).toThrow(
      /locations: expected an Int32Array/,
    );
    expect(() => c(dst, 1, 2, 4, 1, new Float32Array(2), loc, [rows], new Float64Array(4))).toThrow(
      /base: expected a Float32Array/,
    );
  });

  it("a results getter that detaches dst cannot make the sum write freed memory", () => {
    // The getter runs inside combine (napi_get_element): it detaches dst (structuredClone with transfer) and
    // collects the clone, freeing dst's 64 MiB. The sum then wrote through the pointer taken before: SIGSEGV.
    const code = `const a = require(${JSON.stringify(ROUTER_ADDON_PATH)});
      const tokens = 1 << 22, d = 4;
      const dst = new Float32Array(tokens * d);
      const row = new Float32Array(d).fill(3);
      const results = [row];
      Object.defineProperty(results, 0, {
        get() { structuredClone(dst.buffer, { transfer: [dst.buffer] }); gc(); gc(); return row; },
      });
      try {
        a.combine(dst, 1, tokens, d, 1, new Float32Array(tokens).fill(1), new Int32Array(tokens * 2), results, null);
        console.log("no error");
      } catch (e) { console.log(e.name + ": " + e.message); }`;
    const r = spawnSync(process.execPath, ["--expose-gc", "-e", code], { encoding: "utf8", timeout: 20_000 });
    expect({ status: r.status, signal: r.signal }).toEqual({ status: 0, signal: null });
    expect(r.stdout.trim()).toMatch(/^RangeError: dst: shorter/);
  });
});

describe("an addon built before the gate's panel layout", () => {
  it("is refused (its logits would read the gate in the old layout), naming the layouts", () => {
    expect(staleAddon({})).toBe(`gate layout "none", this source "${GATE_LAYOUT}"`);
    expect(staleAddon({ gateLayout: () => "panel16" })).toMatch(/gate layout "panel16"/);
    expect(staleAddon({ gateLayout: () => GATE_LAYOUT })).toBe("no routerLogitsAsync");
    if (addon) expect(staleAddon(addon)).toBeNull(); // the one this checkout built
  });
});
