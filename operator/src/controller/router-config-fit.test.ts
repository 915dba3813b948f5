import { randomBytes } from "node:crypto";
import { gunzipSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import {
  CONFIG_MAP_MAX_BYTES,
  type ConfigCandidate,
  DEFAULT_CONFIG_LIMITS,
  encodeRouterConfig,
  fitRouterConfig,
  ROUTER_CONFIG_GZ_KEY,
  ROUTER_CONFIG_KEY,
} from "./router-config-fit.js";

type Entry = { name: string; blob: string };
const wrap = (pools: Entry[]) => ({ pools: [...pools].sort((a, b) => a.name.localeCompare(b.name)) });
/** A pool entry whose JSON does not compress: `kb` KiB of random hex. */
const noisy = (name: string, kb: number): ConfigCandidate<Entry> => ({
  key: `ns/${name}`,
  entry: { name, blob: randomBytes(kb * 512).toString("hex") },
});
const decode = (e: ReturnType<typeof encodeRouterConfig>) =>
  e.compressed
    ? JSON.parse(gunzipSync(Buffer.from(e.binaryData?.[ROUTER_CONFIG_GZ_KEY] ?? "", "base64")).toString("utf8"))
    : JSON.parse(e.data[ROUTER_CONFIG_KEY]);

describe("encodeRouterConfig", () => {
  it("writes a small config as plain JSON, a larger one gzipped behind a pointer, both decoding to the document", () => {
    const small = { pools: [{ name: "a", x: "y".repeat(1000) }] };
    const plain = encodeRouterConfig(small);
    expect(plain).toMatchObject({ compressed: false, bytes: JSON.stringify(small).length });
    expect(plain.binaryData).toBeUndefined();
    expect(decode(plain)).toEqual(small);

    // A plan-like document: repetitive, past the 256 KiB plain limit.
    const big = {
      pools: [{ name: "ds", replicas: Array.from({ length: 58 * 256 }, (_, i) => [i % 32, (i + 1) % 32]) }],
    };
    big.pools.push({ ...big.pools[0], name: "ds2" }, { ...big.pools[0], name: "ds3" });
    expect(JSON.stringify(big).length).toBeGreaterThan(DEFAULT_CONFIG_LIMITS.plainMaxBytes);
    const gz = encodeRouterConfig(big);
    expect(gz.compressed).toBe(true);
    expect(JSON.parse(gz.data[ROUTER_CONFIG_KEY])).toEqual({ gzipFile: ROUTER_CONFIG_GZ_KEY });
    expect(decode(gz)).toEqual(big);
    expect(gz.bytes).toBe(
      Buffer.from(gz.binaryData?.[ROUTER_CONFIG_GZ_KEY] ?? "", "base64").length + gz.data[ROUTER_CONFIG_KEY].length,
    );
    expect(gz.bytes).toBeLessThan(JSON.stringify(big).length / 20);
    // The same document, the same bytes: a converged operator compares equal and writes nothing.
    expect(encodeRouterConfig(big)).toEqual(gz);
  });
});

describe("fitRouterConfig", () => {
  const limits = { plainMaxBytes: 8 * 1024, maxBytes: 100 * 1024 };

  it("keeps every pool when they fit", () => {
    const c = [noisy("a", 20), noisy("b", 20)];
    const fit = fitRouterConfig(c, wrap, "ns/router", limits);
    expect(fit.pools.map((p) => p.name)).toEqual(["a", "b"]);
    expect(fit.leftOut.size).toBe(0);
    expect(fit.bytes).toBeLessThanOrEqual(limits.maxBytes);
  });

  it("past the limit keeps the oldest that fit, leaves the rest out with why, and a later small one still fits", () => {
    // Random hex gzips to a little over half: ~22, ~22, ~66, ~6, ~66 KiB against 100 KiB.
    const c = [noisy("old", 40), noisy("mid", 40), noisy("big", 120), noisy("late-small", 10), noisy("later", 120)];
    const fit = fitRouterConfig(c, wrap, "ns/router", limits);
    expect(fit.compressed).toBe(true);
    expect(fit.bytes).toBeLessThanOrEqual(limits.maxBytes);
    expect(fit.pools.map((p) => p.name)).toEqual(["old", "mid", "late-small"]);
    expect([...fit.leftOut.keys()]).toEqual(["ns/big", "ns/later"]);
    expect(fit.leftOut.get("ns/big")).toMatch(
      /^left out of the router config: ConfigMap ns\/router holds at most 100\.0 KiB, and this pool's plan and policy take 6\d\.\d KiB gzipped after the 2 older pool\(s\) in it; the router serves pools oldest first/,
    );
    expect(decode(fit).pools.map((p: Entry) => p.name)).toEqual(["late-small", "mid", "old"]);
    // A new pool added later never takes an older one's place.
    const more = fitRouterConfig([...c, noisy("newest", 120)], wrap, "ns/router", limits);
    expect(more.pools.map((p) => p.name)).toEqual(["old", "mid", "late-small"]);
    expect(more.leftOut.has("ns/newest")).toBe(true);
  });

  it("one pool too big for the ConfigMap alone is left out, and the config is written without it", () => {
    const fit = fitRouterConfig([noisy("huge", 300)], wrap, "ns/router", limits);
    expect(fit.pools).toEqual([]);
    expect(fit.leftOut.get("ns/huge")).toMatch(/after the 0 older pool\(s\)/);
    expect(decode(fit)).toEqual({ pools: [] });
  });

  it("the default limit sits under what the API server accepts", () => {
    expect(DEFAULT_CONFIG_LIMITS.maxBytes).toBeLessThan(CONFIG_MAP_MAX_BYTES);
    expect(CONFIG_MAP_MAX_BYTES).toBe(1024 * 1024);
  });
});
