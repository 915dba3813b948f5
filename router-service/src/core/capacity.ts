// Capacity factor and overflow policies (GShard / Switch style), applied to the assignments of one flush.
// capacity = ceil(capacityFactor * assignments / experts). Dropless (capacityFactor null) returns one round
// holding everything.

import type { OverflowPolicy } from "@switchyard/moe";
import { type Assignment, groupByExpert, type TokenRouting } from "./routing.js";

export interface CapacityResult {
  /** Dispatch rounds, run one after another. Only `queue` produces more than one. */
  rounds: Assignment[][];
  /** Assignments dropped (their expert contributes nothing; the other experts of the token keep their weight). */
  dropped: Assignment[];
  capacity: number | null;
}

/**
 * Relative slack under the ceiling: cf * assignments / experts often lands a few ulps above an integer it equals in
 * decimal (1.1 * 100 / 10 = 11.000000000000002), and ceil would then give each expert one more slot than the
 * policy says. 1e-9 is far above that rounding error (~1e-16 relative) and far below any real fractional part
 * (assignments and experts are at most millions).
 */
const CAPACITY_EPSILON = 1e-9;

export function expertCapacity(assignments: number, experts: number, capacityFactor: number | null): number | null {
  if (capacityFactor === null || capacityFactor <= 0) return null;
  const exact = (capacityFactor * assignments) / experts;
  return Math.max(1, Math.ceil(exact - exact * CAPACITY_EPSILON));
}

/** Priority inside an over-full expert: higher gate weight first, then earlier in the flush. */
function byPriority(a: Assignment, b: Assignment): number {
  return b.weight - a.weight || a.order - b.order;
}

export function applyCapacity(
  assignments: Assignment[],
  experts: number,
  capacityFactor: number | null,
  overflow: OverflowPolicy,
  routings: readonly TokenRouting[],
): CapacityResult {
  const capacity = expertCapacity(assignments.length, experts, capacityFactor);
  if (capacity === null) return { rounds: [assignments], dropped: [], capacity };

  if (overflow === "queue") {
    // Round r holds each expert's assignments ranked [r*capacity, (r+1)*capacity) by priority.
    const byExpert = groupByExpert(assignments);
    const rounds: Assignment[][] = [];
    for (const list of byExpert.values()) {
      list.sort(byPriority);
      for (let i = 0; i < list.length; i++) {
        const r = Math.floor(i / capacity);
        if (!rounds[r]) rounds[r] = [];
        rounds[r].push(list[i]);
      }
    }
    for (const r of rounds) r.sort((a, b) => a.order - b.order);
    return { rounds, dropped: [], capacity };
  }

  // drop and spill: visit assignments by priority; full experts reject.
  const load = new Int32Array(experts);
  const kept: Assignment[] = [];
  const dropped: Assignment[] = [];
  const sorted = assignments.slice().sort(byPriority);
  const overflowed: Assignment[] = [];
  for (const a of sorted) {
    if (load[a.expert] < capacity) {
      load[a.expert]++;
      kept.push(a);
    } else overflowed.push(a);
  }
  if (overflow === "drop") {
    dropped.push(...overflowed);
  } else {
    // spill: the next expert in the token's ranking that it does not already use and that has room.
    const used = new Map<string, Set<number>>();
    const tokenKey = (a: Assignment) => `${a.item}:${a.token}`;
    for (const a of kept) {
      const k = tokenKey(a);
      let s = used.get(k);
      if (!s) {
        s = new Set();
        used.set(k, s);
      }
      s.add(a.expert);
    }
    for (const a of overflowed) {
      const s = used.get(tokenKey(a)) ?? new Set<number>();
      const ranking = routings[a.item].ranking;
      let target = -1;
      if (ranking) {
        const base = a.token * experts;
        for (let j = 0; j < experts; j++) {
          const e = ranking[base + j];
          if (e < 0) break; // the ranking's end: the rest of the experts are not the token's to take
          if (e !== a.expert && !s.has(e) && load[e] < capacity) {
            target = e;
            break;
          }
        }
      }
      if (target < 0) {
        dropped.push(a);
        continue;
      }
      load[target]++;
      s.add(target);
      used.set(tokenKey(a), s);
      // The spilled assignment keeps its gate weight: the token's mixture stays normalised as the gate made it.
      kept.push({ ...a, expert: target });
    }
  }
  kept.sort((a, b) => a.order - b.order);
  return { rounds: [kept], dropped, capacity };
}
