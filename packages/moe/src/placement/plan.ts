// The placement plan: which workers hold each (layer, expert). Written by the operator into ConfigMap
// `<pool>-placement` (key plan.json) and by local mode into a file; read by the router and the workers.

export interface PlacementPlan {
  /** Bumps on every change of workers or assignment; equal plans keep their version. */
  version: number;
  pool: string;
  /** Worker ids (StatefulSet pod names in Kubernetes, w0..wN locally). */
  workers: string[];
  /** Worker id -> host:port. */
  endpoints?: Record<string, string>;
  /** replicas[layer][expert] = indices into `workers` of the workers holding that expert (distinct, ascending). */
  replicas: number[][][];
}

export class PlacementError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
    this.name = "PlacementError";
  }
}

/**
 * Checks a plan read from a file or ConfigMap against the model's shape. Throws PlacementError naming the
 * first bad field, so a router given a broken plan says exactly what is wrong.
 */
export function validatePlan(
  value: unknown,
  shape?: { layers: number; experts: number; sharedSlices?: number; isMoeLayer?: (layer: number) => boolean },
): PlacementPlan {
  if (!value || typeof value !== "object") throw new PlacementError("plan", "must be a JSON object");
  const p = value as Record<string, unknown>;
  if (!Number.isInteger(p.version) || (p.version as number) < 0)
    throw new PlacementError("plan.version", "must be a non-negative integer");
  if (typeof p.pool !== "string" || p.pool === "") throw new PlacementError("plan.pool", "must be a non-empty string");
  if (!Array.isArray(p.workers) || !p.workers.every((w) => typeof w === "string" && w !== ""))
    throw new PlacementError("plan.workers", "must be an array of non-empty strings");
  const workers = p.workers as string[];
  // The router keys a worker's connection by id: a repeated id would get two connections and close only one.
  const first = new Map<string, number>();
  workers.forEach((w, i) => {
    const j = first.get(w);
    if (j !== undefined)
      throw new PlacementError(`plan.workers[${i}]`, `${JSON.stringify(w)} repeats plan.workers[${j}]`);
    first.set(w, i);
  });
  if (p.endpoints !== undefined) {
    if (!p.endpoints || typeof p.endpoints !== "object" || Array.isArray(p.endpoints))
      throw new PlacementError("plan.endpoints", "must be an object of worker id -> host:port");
    for (const [w, a] of Object.entries(p.endpoints as Record<string, unknown>)) {
      if (!workers.includes(w)) throw new PlacementError(`plan.endpoints.${w}`, "is not a worker in plan.workers");
      if (typeof a !== "string" || !/^.+:\d+$/.test(a))
        throw new PlacementError(`plan.endpoints.${w}`, "must be a host:port string");
    }
  }
  if (!Array.isArray(p.replicas)) throw new PlacementError("plan.replicas", "must be an array [layer][expert][]");
  const replicas = p.replicas as unknown[];
  if (shape && replicas.length !== shape.layers)
    throw new PlacementError("plan.replicas", `has ${replicas.length} layers, the model has ${shape.layers}`);
  replicas.forEach((layer, l) => {
    if (!Array.isArray(layer)) throw new PlacementError(`plan.replicas[${l}]`, "must be an array");
    // A dense layer (no routed experts: DeepSeek first_k_dense_replace, Qwen mlp_only_layers) has an empty row.
    // Refused only where the shape says the layer has experts (the worker and the router's config loader pass
    // isMoeLayer from their checkpoints); a caller that cannot tell lets it through.
    if (layer.length === 0 && !(shape?.isMoeLayer?.(l) ?? false)) return;
    // a layer may also list the shared expert's slices after the routed experts (shared-slices.ts)
    const slices = shape?.sharedSlices ?? 0;
    if (shape && layer.length !== shape.experts && (slices === 0 || layer.length !== shape.experts + slices))
      throw new PlacementError(
        `plan.replicas[${l}]`,
        `has ${layer.length} experts, the model has ${shape.experts}${slices > 0 ? ` (${shape.experts + slices} with its ${slices} shared slices)` : ""}`,
      );
    layer.forEach((holders, e) => {
      const f = `plan.replicas[${l}][${e}]`;
      if (!Array.isArray(holders)) throw new PlacementError(f, "must be an array of worker indices");
      if (workers.length > 0 && holders.length === 0) throw new PlacementError(f, "has no worker");
      const seen = new Set<number>();
      for (const h of holders) {
        if (!Number.isInteger(h) || h < 0 || h >= workers.length)
          throw new PlacementError(f, `worker index ${String(h)} is outside plan.workers (${workers.length})`);
        if (seen.has(h)) throw new PlacementError(f, `worker index ${h} appears twice`);
        seen.add(h);
      }
    });
  });
  return value as PlacementPlan;
}

/** True when two plans assign the same experts to the same worker ids (version and endpoints aside). */
export function sameAssignment(a: PlacementPlan, b: PlacementPlan): boolean {
  if (a.pool !== b.pool || a.workers.length !== b.workers.length) return false;
  if (a.workers.some((w, i) => w !== b.workers[i])) return false;
  if (a.replicas.length !== b.replicas.length) return false;
  for (let l = 0; l < a.replicas.length; l++) {
    const la = a.replicas[l];
    const lb = b.replicas[l];
    if (la.length !== lb.length) return false;
    for (let e = 0; e < la.length; e++) {
      if (la[e].length !== lb[e].length || la[e].some((h, i) => h !== lb[e][i])) return false;
    }
  }
  return true;
}

/** Expert copies (layer, expert, worker id) present in `next` but not in `prev`: the weights that must move. */
export function movedCopies(prev: PlacementPlan | undefined, next: PlacementPlan): number {
  let moved = 0;
  for (let l = 0; l < next.replicas.length; l++) {
    for (let e = 0; e < next.replicas[l].length; e++) {
      const before = new Set((prev?.replicas[l]?.[e] ?? []).map((i) => prev?.workers[i]));
      for (const h of next.replicas[l][e]) if (!before.has(next.workers[h])) moved++;
    }
  }
  return moved;
}
