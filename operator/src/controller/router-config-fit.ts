// The router config as ConfigMap data the API server accepts (docs/CONTRACTS.md "Router config"). Every pool's plan
// is inline (a DeepSeek-V3 pool on 32 workers: ~76 KB of JSON), and a ConfigMap holds at most 1 MiB, so a cluster of
// a dozen such pools would have every router-config write refused: no pool's change would reach the routers.
// Written as plain JSON while small (kubectl shows it), gzipped past that (uniform plans shrink ~80x, heat-packed
// ones several times); when even that does not fit, the pools that fit, oldest first, and the others named with
// why. gzip runs on libuv's threads: a config near the limit can hold tens of MB of JSON.
import { promisify } from "node:util";
import { gzip } from "node:zlib";

const gzipAsync = promisify(gzip);

export const ROUTER_CONFIG_KEY = "router.json";
/** binaryData key of the gzipped document; router.json then holds only {"gzipFile": ROUTER_CONFIG_GZ_KEY}. */
export const ROUTER_CONFIG_GZ_KEY = "router.json.gz";

/** The API server refuses a ConfigMap whose data and binaryData values sum past 1 MiB (core/v1 validation). */
export const CONFIG_MAP_MAX_BYTES = 1 << 20;

export interface ConfigLimits {
  /** JSON up to this many bytes is written as is; larger documents are gzipped. */
  plainMaxBytes: number;
  /** What the ConfigMap's values may take in all. */
  maxBytes: number;
}

export const DEFAULT_CONFIG_LIMITS: ConfigLimits = {
  plainMaxBytes: 256 * 1024,
  // The pointer document beside the gzip counts too; a margin keeps a few bytes of that from tipping it over.
  maxBytes: CONFIG_MAP_MAX_BYTES - 1024,
};

/** Past this many pools left out, the rest are left out untried (each costs a few gzips of the whole config). */
const MAX_LEFT_OUT_TRIED = 16;

/**
 * A pool the last fit left out (or a new one) comes in only while the document stays this share under the limit: a
 * pool near the line would otherwise go in and out as the other pools' plans change size under heat replans (each
 * time its routers load and drop it). A pool already in keeps its place up to the limit itself.
 */
export const ENTRY_MARGIN = 0.03;

export interface ConfigCandidate<P extends { name: string }> {
  /** "namespace/pool", the key leftOut reports under. */
  key: string;
  entry: P;
}

export interface EncodedConfig {
  data: Record<string, string>;
  binaryData?: Record<string, string>;
  /** The values' size as the API server counts it. */
  bytes: number;
  compressed: boolean;
}

export interface FittedConfig<P> extends EncodedConfig {
  /** The entries written, sorted by name (as in the document). */
  pools: P[];
  /** key -> why the pool is not in the config. */
  leftOut: Map<string, string>;
}

/** A document's JSON as ConfigMap values: as is up to plainMaxBytes, else gzip behind a pointer in router.json. */
export async function encodeRouterConfigJson(
  json: string,
  limits: ConfigLimits = DEFAULT_CONFIG_LIMITS,
): Promise<EncodedConfig> {
  const plain = Buffer.byteLength(json);
  if (plain <= limits.plainMaxBytes) return { data: { [ROUTER_CONFIG_KEY]: json }, bytes: plain, compressed: false };
  // Node writes no timestamp into the gzip header, so the same document encodes to the same bytes and a converged
  // operator does not rewrite the ConfigMap.
  const gz = await gzipAsync(json);
  const pointer = JSON.stringify({ gzipFile: ROUTER_CONFIG_GZ_KEY });
  return {
    data: { [ROUTER_CONFIG_KEY]: pointer },
    binaryData: { [ROUTER_CONFIG_GZ_KEY]: gz.toString("base64") },
    bytes: gz.length + Buffer.byteLength(pointer),
    compressed: true,
  };
}

export function encodeRouterConfig(doc: unknown, limits: ConfigLimits = DEFAULT_CONFIG_LIMITS): Promise<EncodedConfig> {
  return encodeRouterConfigJson(JSON.stringify(doc), limits);
}

const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`;

/**
 * Fits router configs into one ConfigMap. It keeps the last answer: a pass whose entries did not change (most
 * passes: a pool's status changed) costs one comparison of their JSON.
 */
export class RouterConfigFitter<P extends { name: string }> {
  private last: { all: string; where: string; fit: FittedConfig<P>; kept: Set<string> } | undefined;

  constructor(private readonly limits: ConfigLimits = DEFAULT_CONFIG_LIMITS) {}

  /**
   * The candidates (in precedence order: the oldest pool first) that fit, as the document {"pools": [...]} sorted by
   * name. All of them when they fit. Otherwise, in precedence order, each pool that still fits beside those kept
   * before it is kept (each judged by encoding the whole document, runs of them by bisection): a new pool never
   * pushes out an older one, and a small one may still fit after a big one did not. `where` names the ConfigMap.
   */
  async fit(candidates: readonly ConfigCandidate<P>[], where: string): Promise<FittedConfig<P>> {
    const json = candidates.map((c) => JSON.stringify(c.entry));
    const all = json.join("\n");
    if (this.last && this.last.all === all && this.last.where === where) return this.last.fit;
    // the pools in the last config written there (none known after a restart: every pool gets the whole limit)
    const wasIn = this.last && this.last.where === where ? this.last.kept : null;
    const fit = await this.compute(candidates, json, where, wasIn);
    const kept = new Set(candidates.filter((c) => !fit.leftOut.has(c.key)).map((c) => c.key));
    this.last = { all, where, fit, kept };
    return fit;
  }

  private async compute(
    candidates: readonly ConfigCandidate<P>[],
    json: readonly string[],
    where: string,
    wasIn: ReadonlySet<string> | null,
  ): Promise<FittedConfig<P>> {
    const byName = candidates
      .map((_, i) => i)
      .sort((a, b) => candidates[a].entry.name.localeCompare(candidates[b].entry.name));
    const rank = new Map(byName.map((i, r) => [i, r]));
    const encode = (chosen: readonly number[]) => {
      const sorted = [...chosen].sort((a, b) => (rank.get(a) ?? 0) - (rank.get(b) ?? 0));
      return encodeRouterConfigJson(`{"pools":[${sorted.map((i) => json[i]).join(",")}]}`, this.limits);
    };
    const done = async (kept: number[], leftOut: Map<string, string>): Promise<FittedConfig<P>> => {
      const enc = await encode(kept);
      const pools = [...kept].sort((a, b) => (rank.get(a) ?? 0) - (rank.get(b) ?? 0)).map((i) => candidates[i].entry);
      return { ...enc, pools, leftOut };
    };
    const n = candidates.length;
    const everyone = Array.from({ length: n }, (_, i) => i);
    // The limit a set of pools is held to: the whole one while each was in the last config, less ENTRY_MARGIN once
    // one comes in anew (monotone in the set, as the bisection below needs).
    const limitFor = (chosen: readonly number[]) =>
      wasIn === null || chosen.every((i) => wasIn.has(candidates[i].key))
        ? this.limits.maxBytes
        : Math.floor(this.limits.maxBytes * (1 - ENTRY_MARGIN));
    const whole = await encode(everyone);
    if (whole.bytes <= limitFor(everyone)) return done(everyone, new Map());

    const fits = async (chosen: number[]) => (await encode(chosen)).bytes <= limitFor(chosen);
    const kept: number[] = [];
    const leftOut = new Map<string, string>();
    let i = 0;
    while (i < n) {
      if (leftOut.size >= MAX_LEFT_OUT_TRIED) {
        for (; i < n; i++)
          leftOut.set(
            candidates[i].key,
            `left out of the router config: ConfigMap ${where} holds at most ${kib(this.limits.maxBytes)} and is full; ${leftOut.size} newer pools were left out before this one was tried; the router serves pools oldest first (delete a pool, or give one fewer layers, workers or redundant experts)`,
          );
        break;
      }
      // The longest run i..j-1 that still fits beside `kept` (fits(kept) holds: lo = i).
      let lo = i;
      let hi = n;
      while (lo < hi) {
        const mid = Math.ceil((lo + hi) / 2);
        if (await fits([...kept, ...everyone.slice(i, mid)])) lo = mid;
        else hi = mid - 1;
      }
      kept.push(...everyone.slice(i, lo));
      if (lo >= n) break;
      const own = (await encodeRouterConfigJson(json[lo], { ...this.limits, plainMaxBytes: -1 })).bytes;
      leftOut.set(
        candidates[lo].key,
        `left out of the router config: ConfigMap ${where} holds at most ${kib(this.limits.maxBytes)}, and this pool's plan and policy take ${kib(own)} gzipped on their own beside the ${kept.length} older pool(s) in it; the router serves pools oldest first (delete a pool, or give this one fewer layers, workers or redundant experts)`,
      );
      i = lo + 1;
    }
    return done(kept, leftOut);
  }
}
