// Test fixtures: objects shaped the way the API server returns them (schema defaults applied).
import { applyDefaults } from "../api/schema.js";
import {
  API_VERSION,
  type ExpertPool,
  expertPoolSpecSchema,
  type RoutingPolicy,
  routingPolicySpecSchema,
} from "../api/v1alpha1.js";

type DeepPartial<T> = { [K in keyof T]?: NonNullable<T[K]> extends object ? DeepPartial<NonNullable<T[K]>> : T[K] };

function merge(a: unknown, b: unknown): unknown {
  if (b === undefined) return a;
  if (a && b && typeof a === "object" && typeof b === "object" && !Array.isArray(a) && !Array.isArray(b)) {
    const out: Record<string, unknown> = { ...(a as Record<string, unknown>) };
    for (const [k, v] of Object.entries(b)) out[k] = merge(out[k], v);
    return out;
  }
  return b;
}

export function testPool(spec: DeepPartial<ExpertPool["spec"]> = {}, name = "mix", generation = 1): ExpertPool {
  const base = {
    model: {
      architecture: "mixtral",
      layers: 4,
      experts: 8,
      topK: 2,
      hiddenSize: 64,
      intermediateSize: 128,
      checkpoint: { hostPath: { path: "/models/mix" } },
    },
  };
  return {
    apiVersion: API_VERSION,
    kind: "ExpertPool",
    metadata: { name, namespace: "ns", uid: `uid-${name}`, generation, creationTimestamp: "2026-01-01T00:00:00Z" },
    spec: applyDefaults(expertPoolSpecSchema.json, merge(base, spec)) as ExpertPool["spec"],
  };
}

export function testPolicy(spec: DeepPartial<RoutingPolicy["spec"]> = {}, name = "rp", pool = "mix"): RoutingPolicy {
  return {
    apiVersion: API_VERSION,
    kind: "RoutingPolicy",
    metadata: { name, namespace: "ns", uid: `uid-${name}`, generation: 1, creationTimestamp: "2026-01-01T00:00:00Z" },
    spec: applyDefaults(
      routingPolicySpecSchema.json,
      merge({ poolRef: { name: pool } }, spec),
    ) as RoutingPolicy["spec"],
  };
}
