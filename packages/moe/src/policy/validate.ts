// Validation and defaulting of RoutingPolicy JSON. Every error names the offending field by its JSON path,
// so a bad ConfigMap or CR reads as "policy.gating.topP: must be <= 1, got 1.5".

import {
  type BatchingPolicy,
  defaultRoutingPolicy,
  type GatingPolicy,
  type LoadSignalsPolicy,
  type OverflowPolicy,
  type PlacementWeights,
  type RoutingPolicy,
} from "./policy.js";

export class PolicyError extends Error {
  constructor(
    readonly field: string,
    detail: string,
  ) {
    super(`${field}: ${detail}`);
    this.name = "PolicyError";
  }
}

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function section(input: Obj, key: string, path: string, allowed: readonly string[]): Obj {
  const v = input[key];
  if (v === undefined || v === null) return {};
  if (!isObj(v)) throw new PolicyError(`${path}.${key}`, `must be an object, got ${JSON.stringify(v)}`);
  rejectUnknown(v, `${path}.${key}`, allowed);
  return v;
}

function rejectUnknown(v: Obj, path: string, allowed: readonly string[]): void {
  for (const k of Object.keys(v)) {
    if (!allowed.includes(k)) throw new PolicyError(`${path}.${k}`, `unknown field (allowed: ${allowed.join(", ")})`);
  }
}

interface NumRule {
  min?: number;
  /** exclusive lower bound */
  gt?: number;
  max?: number;
  integer?: boolean;
}

function num(v: unknown, field: string, dflt: number, rule: NumRule): number {
  if (v === undefined) return dflt;
  return checkNum(v, field, rule);
}

function nullableNum(v: unknown, field: string, dflt: number | null, rule: NumRule): number | null {
  if (v === undefined) return dflt;
  if (v === null) return null;
  return checkNum(v, field, rule);
}

function checkNum(v: unknown, field: string, rule: NumRule): number {
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new PolicyError(field, `must be a finite number, got ${JSON.stringify(v)}`);
  }
  if (rule.integer && !Number.isInteger(v)) throw new PolicyError(field, `must be an integer, got ${v}`);
  if (rule.gt !== undefined && !(v > rule.gt)) {
    throw new PolicyError(
      field,
      `must be > ${rule.gt}${rule.max !== undefined ? ` and <= ${rule.max}` : ""}, got ${v}`,
    );
  }
  if (rule.min !== undefined && v < rule.min) throw new PolicyError(field, `must be >= ${rule.min}, got ${v}`);
  if (rule.max !== undefined && v > rule.max) throw new PolicyError(field, `must be <= ${rule.max}, got ${v}`);
  return v;
}

/**
 * Longest delay a timer can take: Node's setTimeout stores it as a signed 32-bit count of ms and fires after 1 ms
 * above it (the router would then query Prometheus in a tight loop), and AbortSignal.timeout throws above 2^32-1.
 */
const MAX_TIMER_MS = 2_147_483_647;

/**
 * A duration that may be written as a number of milliseconds (`msKey`) or a duration string (`strKey`, "5ms",
 * "2s"), as the CRD allows. Setting both is refused: one of them would win silently.
 */
function durationMs(sec: Obj, path: string, msKey: string, strKey: string, dflt: number, rule: NumRule): number {
  if (sec[strKey] === undefined) return num(sec[msKey], `${path}.${msKey}`, dflt, rule);
  const field = `${path}.${strKey}`;
  if (sec[msKey] !== undefined) throw new PolicyError(field, `set ${strKey} or ${msKey}, not both`);
  return checkNum(parseDurationMs(sec[strKey], field), field, rule);
}

function bool(v: unknown, field: string, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== "boolean") throw new PolicyError(field, `must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

function nullableString(v: unknown, field: string, dflt: string | null): string | null {
  if (v === undefined) return dflt;
  if (v === null || v === "") return null;
  if (typeof v !== "string") throw new PolicyError(field, `must be a string, got ${JSON.stringify(v)}`);
  return v;
}

const OVERFLOW: readonly OverflowPolicy[] = ["drop", "spill", "queue"];

/**
 * Validates a (possibly partial) RoutingPolicy and fills defaults. `path` prefixes field names in errors.
 * Accepts `maxWait`, `refresh` and `staleness` as duration strings ("5ms", "1s") in place of `maxWaitMs`,
 * `refreshMs` and `stalenessMs`, like the CRD does (one spelling per field, not both).
 */
export function resolveRoutingPolicy(input: unknown, path = "policy"): RoutingPolicy {
  const d = defaultRoutingPolicy();
  if (input === undefined || input === null) return d;
  if (!isObj(input)) throw new PolicyError(path, `must be an object, got ${JSON.stringify(input)}`);
  rejectUnknown(input, path, ["gating", "batching", "placement", "loadSignals"]);

  const g = section(input, "gating", path, ["topK", "topP", "maxK", "capacityFactor", "overflow"]);
  const gp = `${path}.gating`;
  const gating: GatingPolicy = {
    topK: nullableNum(g.topK, `${gp}.topK`, d.gating.topK, { min: 1, integer: true }),
    topP: nullableNum(g.topP, `${gp}.topP`, d.gating.topP, { gt: 0, max: 1 }),
    maxK: nullableNum(g.maxK, `${gp}.maxK`, d.gating.maxK, { min: 1, integer: true }),
    capacityFactor: nullableNum(g.capacityFactor, `${gp}.capacityFactor`, d.gating.capacityFactor, { min: 0 }),
    overflow: d.gating.overflow,
  };
  if (gating.capacityFactor === 0) gating.capacityFactor = null; // 0 means dropless, as in DeepSpeed/Tutel
  if (g.overflow !== undefined) {
    if (typeof g.overflow !== "string" || !OVERFLOW.includes(g.overflow as OverflowPolicy)) {
      throw new PolicyError(
        `${gp}.overflow`,
        `must be one of ${OVERFLOW.join(" | ")}, got ${JSON.stringify(g.overflow)}`,
      );
    }
    gating.overflow = g.overflow as OverflowPolicy;
  }
  if (gating.maxK !== null && gating.topP === null) {
    throw new PolicyError(`${gp}.maxK`, "only applies with topP (dynamic routing); set topP or drop maxK");
  }
  if (gating.maxK !== null && gating.topK !== null && gating.maxK < gating.topK) {
    throw new PolicyError(`${gp}.maxK`, `must be >= topK (${gating.topK}), got ${gating.maxK}`);
  }

  const b = section(input, "batching", path, [
    "enabled",
    "maxBatchTokens",
    "maxWaitMs",
    "maxWait",
    "maxQueueTokens",
    "flushesInFlight",
  ]);
  const bp = `${path}.batching`;
  const batching: BatchingPolicy = {
    enabled: bool(b.enabled, `${bp}.enabled`, d.batching.enabled),
    maxBatchTokens: num(b.maxBatchTokens, `${bp}.maxBatchTokens`, d.batching.maxBatchTokens, {
      min: 1,
      max: 1 << 20,
      integer: true,
    }),
    maxWaitMs: durationMs(b, bp, "maxWaitMs", "maxWait", d.batching.maxWaitMs, { min: 0, max: 10_000 }),
    maxQueueTokens: num(b.maxQueueTokens, `${bp}.maxQueueTokens`, d.batching.maxQueueTokens, {
      min: 1,
      integer: true,
    }),
    flushesInFlight: num(b.flushesInFlight, `${bp}.flushesInFlight`, d.batching.flushesInFlight, {
      min: 1,
      max: 16,
      integer: true,
    }),
  };
  if (batching.maxQueueTokens < batching.maxBatchTokens) {
    throw new PolicyError(
      `${bp}.maxQueueTokens`,
      `must be >= maxBatchTokens (${batching.maxBatchTokens}), got ${batching.maxQueueTokens}`,
    );
  }

  const p = section(input, "placement", path, ["cacheAffinity", "load", "latency"]);
  const pp = `${path}.placement`;
  const placement: PlacementWeights = {
    cacheAffinity: num(p.cacheAffinity, `${pp}.cacheAffinity`, d.placement.cacheAffinity, { min: 0 }),
    load: num(p.load, `${pp}.load`, d.placement.load, { min: 0 }),
    latency: num(p.latency, `${pp}.latency`, d.placement.latency, { min: 0 }),
  };

  const l = section(input, "loadSignals", path, [
    "prometheusUrl",
    "queries",
    "refreshMs",
    "refresh",
    "stalenessMs",
    "staleness",
    "timeoutMs",
  ]);
  const lp = `${path}.loadSignals`;
  const q = section(l, "queries", lp, ["queueDepth", "latencySeconds"]);
  const loadSignals: LoadSignalsPolicy = {
    prometheusUrl: nullableString(l.prometheusUrl, `${lp}.prometheusUrl`, d.loadSignals.prometheusUrl),
    queries: {
      queueDepth: nullableString(q.queueDepth, `${lp}.queries.queueDepth`, d.loadSignals.queries.queueDepth),
      latencySeconds: nullableString(
        q.latencySeconds,
        `${lp}.queries.latencySeconds`,
        d.loadSignals.queries.latencySeconds,
      ),
    },
    refreshMs: durationMs(l, lp, "refreshMs", "refresh", d.loadSignals.refreshMs, { min: 10, max: MAX_TIMER_MS }),
    stalenessMs: durationMs(l, lp, "stalenessMs", "staleness", d.loadSignals.stalenessMs, {
      min: 10,
      max: MAX_TIMER_MS,
    }),
    timeoutMs: 0, // below: its default depends on refreshMs
  };
  // Unset: 2000 ms, but never longer than a round (the RoutingPolicy CRD leaves it unset rather than default it, so
  // that refreshMs < 2000 alone is accepted there too).
  loadSignals.timeoutMs = num(
    l.timeoutMs,
    `${lp}.timeoutMs`,
    Math.min(d.loadSignals.timeoutMs, loadSignals.refreshMs),
    { min: 1, max: MAX_TIMER_MS },
  );
  if (loadSignals.prometheusUrl !== null) {
    let u: URL;
    try {
      u = new URL(loadSignals.prometheusUrl);
    } catch {
      throw new PolicyError(`${lp}.prometheusUrl`, `must be an http(s) URL, got ${JSON.stringify(l.prometheusUrl)}`);
    }
    if (u.protocol !== "http:" && u.protocol !== "https:") {
      throw new PolicyError(`${lp}.prometheusUrl`, `must be an http(s) URL, got ${JSON.stringify(l.prometheusUrl)}`);
    }
  }
  if (loadSignals.stalenessMs < loadSignals.refreshMs) {
    throw new PolicyError(
      `${lp}.stalenessMs`,
      `must be >= refreshMs (${loadSignals.refreshMs}), or every signal is stale before the next refresh`,
    );
  }
  return { gating, batching, placement, loadSignals };
}

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m)$/;

/** "250ms" | "2s" | "1m" | number of milliseconds. */
export function parseDurationMs(v: unknown, field: string): number {
  if (typeof v === "number") return v;
  if (typeof v !== "string")
    throw new PolicyError(field, `must be a duration like "5ms" or "2s", got ${JSON.stringify(v)}`);
  const m = DURATION.exec(v.trim());
  if (!m) throw new PolicyError(field, `must be a duration like "5ms" or "2s", got ${JSON.stringify(v)}`);
  const n = Number(m[1]);
  return m[2] === "ms" ? n : m[2] === "s" ? n * 1000 : n * 60_000;
}
