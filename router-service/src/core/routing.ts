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
   * Optional per-token ranking of all experts, best first ([tokens * experts]); present when the router saw
   * scores (gate computed from weights, or logits input). The spill overflow policy walks it.
   */
  ranking?: Int32Array;
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
