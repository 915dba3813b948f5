// operator/README.md lists every condition reason the operator sets; this keeps the lists complete as reasons are
// added (the reasons are read from the `reason:` fields of the code that builds the conditions).
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const here = dirname(fileURLToPath(import.meta.url));
const readme = readFileSync(join(here, "..", "README.md"), "utf8");

/** The CamelCase string literals given as a `reason:` in a source file (ternaries included). */
function reasonsIn(file: string): string[] {
  const src = readFileSync(join(here, file), "utf8");
  const out = new Set<string>();
  for (const m of src.matchAll(/\breason:\s*([^,\n}]+)/g))
    for (const lit of m[1].matchAll(/"([A-Z][A-Za-z]+)"/g)) out.add(lit[1]);
  return [...out].sort();
}

/** The README's text from `start` up to `end`, where each section documents its kind's reasons. */
function section(start: string, end: string): string {
  const a = readme.indexOf(start);
  const b = readme.indexOf(end, a);
  expect(a, `README has "${start}"`).toBeGreaterThanOrEqual(0);
  expect(b, `README has "${end}" after it`).toBeGreaterThan(a);
  return readme.slice(a, b);
}

describe("operator/README.md lists every condition reason", () => {
  it("RoutingPolicy: every reason resolvePolicy, policyOutcome and buildPolicyStatus set", () => {
    const reasons = reasonsIn("controller/routing.ts");
    expect(reasons).toContain("MaxKExceedsExperts");
    const text = section("For each **RoutingPolicy**", "The **router config**");
    for (const r of reasons.filter((r) => r !== "AsExpected")) expect(text, r).toContain(`\`${r}\``);
  });

  it("docs/CONTRACTS.md's RoutingPolicy section names every reason too", () => {
    const contracts = readFileSync(join(here, "..", "..", "docs", "CONTRACTS.md"), "utf8");
    const a = contracts.indexOf("## RoutingPolicy");
    expect(a, "CONTRACTS has a RoutingPolicy section").toBeGreaterThanOrEqual(0);
    const text = contracts.slice(a, contracts.indexOf("\n## ", a + 1));
    for (const r of reasonsIn("controller/routing.ts")) expect(text, r).toContain(`\`${r}\``);
  });

  it("ExpertPool: every reason of its Ready, Progressing and Degraded conditions", () => {
    const reasons = reasonsIn("controller/pool-status.ts");
    expect(reasons.length).toBeGreaterThan(8);
    const text = section("| condition", "Events:");
    for (const r of reasons) expect(text, r).toContain(`\`${r}\``);
  });
});
