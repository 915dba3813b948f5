// The local mode's last line: whether the run passed, and what its answers' check covered. Pure, so that what it
// claims can be tested case by case: "every answer matched" is said only where every answer was compared.

export interface RunTally {
  /** forwards answered or failed */
  forwards: number;
  /** answers compared with the reference */
  verified: number;
  wrong: number;
  errors: number;
  /** answers that lost assignments to a capacity limit, not compared (they differ from the reference by design) */
  unverifiable: number;
  /** answers not sampled (every reference thread busy) */
  unchecked: number;
  smokeOk: boolean;
}

export function verdict(t: RunTally): { ok: boolean; line: string } {
  const answers = t.verified + t.unverifiable + t.unchecked;
  const left = [
    t.unverifiable ? `${t.unverifiable} with capacity drops not compared` : "",
    t.unchecked ? `${t.unchecked} not sampled (every reference thread busy)` : "",
  ].filter(Boolean);
  if (t.wrong > 0 || t.errors > 0 || !t.smokeOk) {
    const parts = [
      `${t.wrong} wrong of ${t.verified} answers verified`,
      `${t.errors} errors`,
      ...(t.smokeOk ? [] : ["the smoke check failed"]),
    ];
    return { ok: false, line: `FAILED: ${parts.join(", ")}` };
  }
  if (t.verified === 0) {
    // nothing failed, and nothing was shown right either: a run too short, or one whose every answer had drops
    const why =
      t.forwards === 0
        ? "no forward completed during the load (is --duration long enough?)"
        : `${t.forwards} forwards, ${left.join(", ") || "none of them checked"}`;
    return { ok: false, line: `FAILED: no answer was verified against the reference: ${why}` };
  }
  if (left.length === 0) return { ok: true, line: `OK: every answer matched the reference (${t.verified} verified)` };
  return {
    ok: true,
    line: `OK: every compared answer matched the reference (${t.verified} of ${answers} answers compared; ${left.join(", ")})`,
  };
}
