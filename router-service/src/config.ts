// Router config file (docs/CONTRACTS.md "Router config"): pools, each with a checkpoint, a placement plan (inline or
// a watched file), worker endpoints and a RoutingPolicy. Parsing is pure; loading and watching are in main.ts.

import { type PlacementPlan, type RoutingPolicy, resolveRoutingPolicy } from "@switchyard/moe";
import { invalidArgument } from "@switchyard/protocol";
import { UNKNOWN_POOL } from "./metrics.js";

export type { PlacementPlan, RoutingPolicy };

export interface PoolConfig {
  name: string;
  checkpoint: string;
  /** hf:// checkpoints: the Hub endpoint (a mirror) the router downloads its tensors from; null: HF_ENDPOINT or the Hub. */
  hfEndpoint: string | null;
  /**
   * hf:// checkpoints: a file holding the Hub token to download with (the operator's
   * /etc/switchyard/hf-tokens/<namespace>_<pool>, from the router's optional Secret); null, or no such file: HF_TOKEN.
   */
  hfTokenFile: string | null;
  planFile: string | null;
  plan: PlacementPlan | null;
  endpoints: Record<string, string>;
  policy: RoutingPolicy;
}

export interface RouterConfig {
  pools: PoolConfig[];
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === "object" && v !== null && !Array.isArray(v);

/** Validates the router config JSON; errors name the field (`pools[0].policy.gating.topP`). */
export function parseRouterConfig(json: unknown): RouterConfig {
  if (!isObj(json)) throw invalidArgument("config", "must be a JSON object with a pools array");
  for (const k of Object.keys(json))
    if (k !== "pools") throw invalidArgument(`config.${k}`, "unknown field (allowed: pools)");
  if (!Array.isArray(json.pools)) throw invalidArgument("pools", "must be an array");
  const names = new Set<string>();
  const pools = json.pools.map((p: unknown, i: number): PoolConfig => {
    const f = `pools[${i}]`;
    if (!isObj(p)) throw invalidArgument(f, "must be an object");
    for (const k of Object.keys(p)) {
      if (!["name", "checkpoint", "hfEndpoint", "hfTokenFile", "planFile", "plan", "endpoints", "policy"].includes(k)) {
        throw invalidArgument(
          `${f}.${k}`,
          "unknown field (allowed: name, checkpoint, hfEndpoint, hfTokenFile, planFile, plan, endpoints, policy)",
        );
      }
    }
    if (typeof p.name !== "string" || p.name === "") throw invalidArgument(`${f}.name`, "required string");
    if (p.name === UNKNOWN_POOL)
      throw invalidArgument(`${f}.name`, `"${UNKNOWN_POOL}" is the metrics' label for requests to pools not served`);
    if (names.has(p.name)) throw invalidArgument(`${f}.name`, `duplicate pool ${JSON.stringify(p.name)}`);
    names.add(p.name);
    if (typeof p.checkpoint !== "string" || p.checkpoint === "")
      throw invalidArgument(`${f}.checkpoint`, "required string (checkpoint directory)");
    const hfEndpoint = p.hfEndpoint === undefined || p.hfEndpoint === null ? null : p.hfEndpoint;
    if (hfEndpoint !== null) {
      if (typeof hfEndpoint !== "string" || !/^https?:\/\/[^/\s]+\S*$/.test(hfEndpoint))
        throw invalidArgument(`${f}.hfEndpoint`, `must be an http(s) URL, got ${JSON.stringify(hfEndpoint)}`);
      if (!p.checkpoint.startsWith("hf://"))
        throw invalidArgument(`${f}.hfEndpoint`, "goes with an hf:// checkpoint (it is the Hub's address)");
    }
    const hfTokenFile = p.hfTokenFile === undefined || p.hfTokenFile === null ? null : p.hfTokenFile;
    if (hfTokenFile !== null) {
      if (typeof hfTokenFile !== "string" || !hfTokenFile.startsWith("/"))
        throw invalidArgument(`${f}.hfTokenFile`, `must be an absolute path, got ${JSON.stringify(hfTokenFile)}`);
      if (!p.checkpoint.startsWith("hf://"))
        throw invalidArgument(`${f}.hfTokenFile`, "goes with an hf:// checkpoint (a Hub token)");
    }
    const planFile = p.planFile === undefined || p.planFile === null ? null : p.planFile;
    if (planFile !== null && typeof planFile !== "string") throw invalidArgument(`${f}.planFile`, "must be a path");
    const plan = p.plan === undefined || p.plan === null ? null : parsePlan(p.plan, `${f}.plan`);
    if ((planFile === null) === (plan === null))
      throw invalidArgument(`${f}.plan`, "set exactly one of plan and planFile");
    const endpoints: Record<string, string> = {};
    if (p.endpoints !== undefined) {
      if (!isObj(p.endpoints)) throw invalidArgument(`${f}.endpoints`, "must map worker id to host:port");
      for (const [id, a] of Object.entries(p.endpoints)) {
        if (typeof a !== "string" || !/^[^\s:]+:\d+$/.test(a))
          throw invalidArgument(`${f}.endpoints.${id}`, `must be host:port, got ${JSON.stringify(a)}`);
        endpoints[id] = a;
      }
    }
    let policy: RoutingPolicy;
    try {
      policy = resolveRoutingPolicy(p.policy, `${f}.policy`);
    } catch (e) {
      const pe = e as { field?: string; message: string };
      throw invalidArgument(pe.field ?? `${f}.policy`, pe.message.replace(/^[^:]*: /, ""));
    }
    return { name: p.name, checkpoint: p.checkpoint, hfEndpoint, hfTokenFile, planFile, plan, endpoints, policy };
  });
  return { pools };
}

/** Validates the shape of a PlacementPlan (sizes against the model are checked when the pool is set up). */
export function parsePlan(json: unknown, f = "plan"): PlacementPlan {
  if (!isObj(json)) throw invalidArgument(f, "must be a PlacementPlan object");
  if (!Number.isInteger(json.version) || (json.version as number) < 0)
    throw invalidArgument(`${f}.version`, "must be a non-negative integer");
  if (typeof json.pool !== "string") throw invalidArgument(`${f}.pool`, "required string");
  if (!Array.isArray(json.workers) || json.workers.some((w) => typeof w !== "string")) {
    throw invalidArgument(`${f}.workers`, "must be an array of worker ids");
  }
  if (!Array.isArray(json.replicas))
    throw invalidArgument(`${f}.replicas`, "must be replicas[layer][expert] = worker indices");
  if (json.endpoints !== undefined && !isObj(json.endpoints))
    throw invalidArgument(`${f}.endpoints`, "must map worker id to host:port");
  return json as unknown as PlacementPlan;
}
