// The chart's operator permissions (charts/switchyard/files/operator-rules.yaml) and the operator's own
// deploy/rbac.yaml (operator area) must grant the same verbs on the same resources: a drift either breaks the
// operator under the chart (missing verb) or loosens least privilege (extra verb).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { CHART, grants, parseDocs, REPO, type Rule } from "./helm.js";

const OPERATOR_RBAC = join(REPO, "operator/deploy/rbac.yaml");

describe("operator RBAC", () => {
  it("grants() flattens rules", () => {
    expect(grants([{ apiGroups: ["", "apps"], resources: ["pods"], verbs: ["get", "list"] }])).toEqual([
      "apps/pods get",
      "apps/pods list",
      "core/pods get",
      "core/pods list",
    ]);
  });

  it("the chart's ClusterRole rules equal operator/deploy/rbac.yaml's", () => {
    const chart = parse(readFileSync(join(CHART, "files/operator-rules.yaml"), "utf8")) as Rule[];
    const docs = parseDocs(readFileSync(OPERATOR_RBAC, "utf8"));
    const role = docs.find((d) => d.kind === "ClusterRole") as unknown as { rules: Rule[] } | undefined;
    expect(role, "operator/deploy/rbac.yaml holds a ClusterRole").toBeTruthy();
    expect(grants(chart)).toEqual(grants(role!.rules));
  });
});
