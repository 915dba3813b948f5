// The router's view of one request after gating: for each token a fixed number of slots, each an expert id
// (-1 = empty) and a weight. Slots are ordered as the gate ranked them (best first); combine sums in slot order,
// which is what makes the result independent of the order in which worker replies arrive.

export interface TokenRouting {
  tokens: number;
  /** Slots per token (top-k, or max-k under top-p; unused slots hold expert -1). */
  slots: number;
  /** [tokens * slots] expert ids, -1 = empty. */
  experts: Int32Array;
  /** [tokens * slots] combine weights (fp32). */
  weights: Float32Array;
  /**
   * Optional per-token ranking of the experts the gate could pick, best first ([tokens * experts]; a row ends at
   * its first -1 when experts are left out: masked with -Infinity, or in groups a group-limited gate dropped);
   * present when the router saw scores (gate computed from weights, or logits input). The spill overflow policy
   * walks it.
   */
  ranking?: Int32Array;
}

/**
 * The routing with the shared expert's slices appended to every token: slots [slots, slots + slices) hold expert
 * ids experts + j, weighted 1 or, per token, by `scale` (Qwen2-MoE's sigmoid shared-expert gate). The workers then
 * run the shared expert like any routed expert, and the combine sums it with the rest.
 */
export function withSharedSlices(
  r: TokenRouting,
  experts: number,
  slices: number,
  scale: Float32Array | null,
): TokenRouting {
  const k = r.slots + slices;
  const ids = new Int32Array(r.tokens * k);
  const weights = new Float32Array(r.tokens * k);
  for (let t = 0; t < r.tokens; t++) {
    ids.set(r.experts.subarray(t * r.slots, (t + 1) * r.slots), t * k);
    weights.set(r.weights.subarray(t * r.slots, (t + 1) * r.slots), t * k);
    const w = scale ? scale[t] : 1;
    for (let j = 0; j < slices; j++) {
      ids[t * k + r.slots + j] = experts + j;
      weights[t * k + r.slots + j] = w;
    }
  }
  const out: TokenRouting = { tokens: r.tokens, slots: k, experts: ids, weights };
  if (r.ranking) out.ranking = r.ranking;
  return out;
}

/** One (token, slot) → expert assignment inside a flush. `item` indexes the flush's requests. */
export interface Assignment {
  item: number;
  token: number;
  slot: number;
  expert: number;
  weight: number;
  /** Global order inside the flush: earlier requests, then earlier tokens, first. Drop ties use it. */
  order: number;
}

/** Flattens the routings of a flush into assignments, in item, token, slot order. */
export function collectAssignments(routings: readonly TokenRouting[]): Assignment[] {
  const out: Assignment[] = [];
  let order = 0;
  for (let item = 0; item < routings.length; item++) {
    const r = routings[item];
    for (let t = 0; t < r.tokens; t++) {
      for (let s = 0; s < r.slots; s++) {
        const e = r.experts[t * r.slots + s];
        if (e < 0) continue;
        out.push({ item, token: t, slot: s, expert: e, weight: r.weights[t * r.slots + s], order: order++ });
      }
    }
  }
  return out;
}

/** Assignments by expert id, each list in the order given. */
export function groupByExpert(assignments: readonly Assignment[]): Map<number, Assignment[]> {
  const m = new Map<number, Assignment[]>();
  for (const a of assignments) {
    let l = m.get(a.expert);
    if (!l) {
      l = [];
      m.set(a.expert, l);
    }
    l.push(a);
  }
  return m;
}
