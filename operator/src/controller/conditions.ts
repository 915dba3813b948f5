// metav1.Condition bookkeeping: lastTransitionTime moves only when status flips, so rebuilding conditions from
// observation on every pass does not produce a new status (and a write) when nothing changed.
import type { Condition } from "../api/v1alpha1.js";

export type ConditionStatus = "True" | "False" | "Unknown";

export interface ConditionInput {
  type: string;
  status: ConditionStatus;
  reason: string;
  message: string;
}

export interface Transition {
  type: string;
  from: ConditionStatus | undefined;
  to: ConditionStatus;
  reason: string;
  message: string;
}

export function mergeConditions(
  previous: Condition[] | undefined,
  next: ConditionInput[],
  generation: number,
  now: string,
): { conditions: Condition[]; transitions: Transition[] } {
  const old = new Map((previous ?? []).map((c) => [c.type, c]));
  const transitions: Transition[] = [];
  const conditions = next.map((c): Condition => {
    const before = old.get(c.type);
    const same = before?.status === c.status;
    if (!same || before?.reason !== c.reason) {
      transitions.push({ type: c.type, from: before?.status, to: c.status, reason: c.reason, message: c.message });
    }
    return {
      type: c.type,
      status: c.status,
      observedGeneration: generation,
      lastTransitionTime: same && before ? before.lastTransitionTime : now,
      reason: c.reason,
      message: c.message.slice(0, 32768),
    };
  });
  return { conditions, transitions };
}

export function findCondition(conditions: Condition[] | undefined, type: string): Condition | undefined {
  return conditions?.find((c) => c.type === type);
}
