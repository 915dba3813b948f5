import { randomBytes } from "node:crypto";
import { gunzipSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import {
  CONFIG_MAP_MAX_BYTES,
  type ConfigCandidate,
  DEFAULT_CONFIG_LIMITS,
  ENTRY_MARGIN,
  type EncodedConfig,
  encodeRouterConfig,
  encodeRouterConfigJson,
  ROUTER_CONFIG_GZ_KEY,
  ROUTER_CONFIG_KEY,
  RouterConfigFitter,
} from "./router-config-fit.js";

type Entry = { name: string; blob: string };
/** A pool entry whose JSON does not compress: `kb` KiB of random hex. */
const noisy = (name: string, kb: number): ConfigCandidate<Entry> => ({
  key: `ns/${name}`,
  entry: { name, blob: randomBytes(kb * 512).toString("hex") },
});
const decode = (e: EncodedConfig) =>
  e.compressed
    ? JSON.parse(gunzipSync(Buffer.from(e.binaryData?.[ROUTER_CONFIG_GZ_KEY] ?? "", "base64")).toString("utf8"))
    : JSON.parse(e.data[ROUTER_CONFIG_KEY]);

describe("encodeRouterConfig", () => {
  it("writes a small config as plain JSON, a larger one gzipped behind a pointer, both decoding to the document", async () => {
    const small = { pools: [{ name: "a", x: "y".repeat(1000) }] };
    const plain = await encodeRouterConfig(small);
    expect(plain).toMatchObject({ compressed: false, bytes: JSON.stringify(small).length });
    expect(plain.binaryData).toBeUndefined();
    expect(decode(plain)).toEqual(small);

    // A plan-like document: repetitive, past the 256 KiB plain limit.
    const big = {
      pools: [{ name: "ds", replicas: Array.from({ length: 58 * 256 }, (_, i) => [i % 32, (i + 1) % 32]) }],
    };
    big.pools.push({ ...big.pools[0], name: "ds2" }, { ...big.pools[0], name: "ds3" });
    expect(JSON.stringify(big).length).toBeGreaterThan(DEFAULT_CONFIG_LIMITS.plainMaxBytes);
    const gz = await encodeRouterConfig(big);
    expect(gz.compressed).toBe(true);
    expect(JSON.parse(gz.data[ROUTER_CONFIG_KEY])).toEqual({ gzipFile: ROUTER_CONFIG_GZ_KEY });
    expect(decode(gz)).toEqual(big);
    expect(gz.bytes).toBe(
      Buffer.from(gz.binaryData?.[ROUTER_CONFIG_GZ_KEY] ?? "", "base64").length + gz.data[ROUTER_CONFIG_KEY].length,
    );
    expect(gz.bytes).toBeLessThan(JSON.stringify(big).length / 20);
    // The same document, the same bytes: a converged operator compares equal and writes nothing.
    expect(await encodeRouterConfig(big)).toEqual(gz);
  });
});

describe("RouterConfigFitter", () => {
  const limits = { plainMaxBytes: 8 * 1024, maxBytes: 100 * 1024 };
  const names = (pools: Entry[]) => pools.map((p) => p.name);

  it("keeps every pool when they fit, sorted by name, and answers an unchanged pass from its last fit", async () => {
    const fitter = new RouterConfigFitter<Entry>(limits);
    const c = [noisy("b", 20), noisy("a", 20)];
    const fit = await fitter.fit(c, "ns/router");
    expect(names(fit.pools)).toEqual(["a", "b"]);
    expect(fit.leftOut.size).toBe(0);
    expect(fit.bytes).toBeLessThanOrEqual(limits.maxBytes);
    expect(decode(fit)).toEqual({ pools: [c[1].entry, c[0].entry] });
    expect(await fitter.fit([...c], "ns/router")).toBe(fit);
  });

  it("past the limit keeps the oldest that fit, leaves the rest out with why, and a later small one still fits", async () => {
    // Random hex gzips to a little over half: ~22, ~22, ~66, ~6, ~66 KiB against 100 KiB.
    const c = [noisy("old", 40), noisy("mid", 40), noisy("big", 120), noisy("late-small", 10), noisy("later", 120)];
    const fit = await new RouterConfigFitter<Entry>(limits).fit(c, "ns/router");
    expect(fit.compressed).toBe(true);
    expect(fit.bytes).toBeLessThanOrEqual(limits.maxBytes);
    expect(names(fit.pools)).toEqual(["late-small", "mid", "old"]);
    expect([...fit.leftOut.keys()]).toEqual(["ns/big", "ns/later"]);
    expect(fit.leftOut.get("ns/big")).toMatch(
      /^left out of the router config: ConfigMap ns\/router holds at most 100\.0 KiB, and this pool's plan and policy take 6\d\.\d KiB gzipped on their own beside the 2 older pool\(s\) in it; the router serves pools oldest first/,
    );
    expect(names(decode(fit).pools)).toEqual(["late-small", "mid", "old"]);
    // A new pool added later never takes an older one's place.
    const more = await new RouterConfigFitter<Entry>(limits).fit([...c, noisy("newest", 120)], "ns/router");
    expect(names(more.pools)).toEqual(["late-small", "mid", "old"]);
    expect(more.leftOut.has("ns/newest")).toBe(true);
  });

  it("judges by the whole document: pools that share most of their bytes all stay when a new one does not fit", async () => {
    // "a" and "b" carry the same 20 KiB of hex: ~11 KiB gzipped each on its own, ~11 KiB together (gzip's window
    // finds the second copy). Judged by their own sizes (22 KiB) against 15, "b" would be dropped for "c".
    const blob = randomBytes(10 * 1024).toString("hex");
    const a = { key: "ns/a", entry: { name: "a", blob } };
    const b = { key: "ns/b", entry: { name: "b", blob } };
    const tight = { plainMaxBytes: 0, maxBytes: 15 * 1024 };
    const two = await new RouterConfigFitter<Entry>(tight).fit([a, b], "ns/router");
    expect(names(two.pools)).toEqual(["a", "b"]);
    const three = await new RouterConfigFitter<Entry>(tight).fit([a, b, noisy("c", 10)], "ns/router");
    expect(names(three.pools)).toEqual(["a", "b"]);
    expect([...three.leftOut.keys()]).toEqual(["ns/c"]);
  });

  it("a pool left out comes back only with room to spare: it does not go in and out as an older pool's size moves", async () => {
    const edge = noisy("edge", 20);
    const old = (kb: number) => noisy("old", kb); // the same pool, its plan of another size at each pass
    // big alone fits under the limit (50 < 40 + 20 KiB of hex), big with edge does not (70)
    const [small, big, tiny] = [old(40), old(50), old(10)];
    const doc = (c: ConfigCandidate<Entry>[]) =>
      `{"pools":[${[...c]
        .sort((a, b) => a.entry.name.localeCompare(b.entry.name))
        .map((x) => JSON.stringify(x.entry))
        .join(",")}]}`;
    const bytes = async (c: ConfigCandidate<Entry>[]) =>
      (await encodeRouterConfigJson(doc(c), { plainMaxBytes: 0, maxBytes: 0 })).bytes;
    // the limit exactly at the small pass's document: both fit, but with less than ENTRY_MARGIN to spare
    const limit = { plainMaxBytes: 0, maxBytes: await bytes([small, edge]) };
    expect(await bytes([tiny, edge])).toBeLessThan(limit.maxBytes * (1 - ENTRY_MARGIN));
    expect(await bytes([big])).toBeLessThan(limit.maxBytes);
    expect(await bytes([big, edge])).toBeGreaterThan(limit.maxBytes);
    const fitter = new RouterConfigFitter<Entry>(limit);
    const kept = async (c: ConfigCandidate<Entry>[]) => names((await fitter.fit(c, "ns/router")).pools);
    expect(await kept([small, edge])).toEqual(["edge", "old"]);
    expect(await kept([big, edge])).toEqual(["old"]); // the older pool grew: edge out
    expect(await kept([small, edge])).toEqual(["old"]); // back to the size it fitted at: edge stays out
    expect(await kept([tiny, edge])).toEqual(["edge", "old"]); // room to spare: it comes back
    expect(await kept([small, edge])).toEqual(["edge", "old"]); // and, in, keeps its place up to the limit
  });

  it("one pool too big for the ConfigMap alone is left out, and the config is written without it", async () => {
    const fit = await new RouterConfigFitter<Entry>(limits).fit([noisy("huge", 300)], "ns/router");
    expect(fit.pools).toEqual([]);
    expect(fit.leftOut.get("ns/huge")).toMatch(/beside the 0 older pool\(s\)/);
    expect(decode(fit)).toEqual({ pools: [] });
  });

  it("the default limit sits under what the API server accepts", () => {
    expect(DEFAULT_CONFIG_LIMITS.maxBytes).toBeLessThan(CONFIG_MAP_MAX_BYTES);
    expect(CONFIG_MAP_MAX_BYTES).toBe(1024 * 1024);
  });
});
