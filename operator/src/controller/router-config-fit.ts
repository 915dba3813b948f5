// The router config as ConfigMap data the API server accepts (docs/CONTRACTS.md "Router config"). Every pool's plan
// is inline (a DeepSeek-V3 pool on 32 workers: ~76 KB of JSON), and a ConfigMap holds at most 1 MiB, so a cluster of
// a dozen such pools would have every router-config write refused: no pool's change would reach the routers.
// Written as plain JSON while small (kubectl shows it), gzipped past that (uniform plans shrink ~80x, heat-packed
// ones several times); when even that does not fit, the pools that fit, oldest first, and the others named with
// why. Pure (node:zlib).
import { gzipSync } from "node:zlib";

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

export interface ConfigCandidate<P> {
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
  /** The entries written, in the candidates' order. */
  pools: P[];
  /** key -> why the pool is not in the config. */
  leftOut: Map<string, string>;
}

/** The document as ConfigMap values: plain JSON up to plainMaxBytes, else gzip behind a pointer in router.json. */
export function encodeRouterConfig(doc: unknown, limits: ConfigLimits = DEFAULT_CONFIG_LIMITS): EncodedConfig {
  const json = JSON.stringify(doc);
  const plain = Buffer.byteLength(json);
  if (plain <= limits.plainMaxBytes) return { data: { [ROUTER_CONFIG_KEY]: json }, bytes: plain, compressed: false };
  // Node writes no timestamp into the gzip header, so the same document encodes to the same bytes and a converged
  // operator does not rewrite the ConfigMap.
  const gz = gzipSync(json, { level: 9 });
  const pointer = JSON.stringify({ gzipFile: ROUTER_CONFIG_GZ_KEY });
  return {
    data: { [ROUTER_CONFIG_KEY]: pointer },
    binaryData: { [ROUTER_CONFIG_GZ_KEY]: gz.toString("base64") },
    bytes: gz.length + Buffer.byteLength(pointer),
    compressed: true,
  };
}

const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`;

/**
 * The candidates (in precedence order: the oldest pool first) that fit in one ConfigMap, encoded. All of them
 * when they fit. Otherwise each is kept if it still fits after those before it, judged by its own gzipped size
 * (gzip shares little across pools: its window is 32 KB), and the result checked as a whole; so a new pool never
 * pushes out an older one, and a small one may still fit after a big one did not. `where` names the ConfigMap.
 */
export function fitRouterConfig<P>(
  candidates: readonly ConfigCandidate<P>[],
  wrap: (pools: P[]) => unknown,
  where: string,
  limits: ConfigLimits = DEFAULT_CONFIG_LIMITS,
): FittedConfig<P> {
  const all = encodeRouterConfig(wrap(candidates.map((c) => c.entry)), limits);
  if (all.bytes <= limits.maxBytes) return { ...all, pools: candidates.map((c) => c.entry), leftOut: new Map() };

  const leftOut = new Map<string, string>();
  const kept: ConfigCandidate<P>[] = [];
  const sizeOf = (c: ConfigCandidate<P>) => gzipSync(JSON.stringify(c.entry), { level: 9 }).length;
  const why = (own: number, before: number) =>
    `left out of the router config: ConfigMap ${where} holds at most ${kib(limits.maxBytes)}, and this pool's plan and policy take ${kib(own)} gzipped after the ${before} older pool(s) in it; the router serves pools oldest first (delete a pool, or give this one fewer layers, workers or redundant experts)`;
  let used = encodeRouterConfig(wrap([]), { ...limits, plainMaxBytes: -1 }).bytes;
  for (const c of candidates) {
    const own = sizeOf(c);
    if (used + own <= limits.maxBytes) {
      kept.push(c);
      used += own;
    } else leftOut.set(c.key, why(own, kept.length));
  }
  for (;;) {
    const enc = encodeRouterConfig(wrap(kept.map((c) => c.entry)), limits);
    if (enc.bytes <= limits.maxBytes || kept.length === 0) {
      return { ...enc, pools: kept.map((c) => c.entry), leftOut };
    }
    const last = kept.pop() as ConfigCandidate<P>;
    leftOut.set(last.key, why(sizeOf(last), kept.length));
  }
}
