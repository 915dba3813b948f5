// The chart ships the CRDs generated into crds/ (owned by the operator area) as copies in charts/switchyard/crds/,
// because packaged charts do not keep symlinks. This fails when they drift: run `npm run sync:chart-crds`.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { CHART, parseDocs, REPO } from "./helm.js";

const yamlFiles = (dir: string) =>
  readdirSync(dir)
    .filter((f) => f.endsWith(".yaml"))
    .sort();

describe("chart CRDs", () => {
  it("are byte-identical copies of crds/", () => {
    const src = yamlFiles(join(REPO, "crds"));
    expect(src.length, "crds/ holds the generated CRDs").toBeGreaterThanOrEqual(2);
    expect(yamlFiles(join(CHART, "crds")), "run npm run sync:chart-crds").toEqual(src);
    for (const f of src) {
      expect(
        readFileSync(join(CHART, "crds", f), "utf8"),
        `charts/switchyard/crds/${f}: run npm run sync:chart-crds`,
      ).toBe(readFileSync(join(REPO, "crds", f), "utf8"));
    }
  });

  it("define ExpertPool and RoutingPolicy in switchyard.dev", () => {
    const crds = yamlFiles(join(CHART, "crds")).flatMap((f) => parseDocs(readFileSync(join(CHART, "crds", f), "utf8")));
    expect(crds.every((c) => c.kind === "CustomResourceDefinition")).toBe(true);
    expect(crds.map((c) => c.metadata.name).sort()).toEqual([
      "expertpools.switchyard.dev",
      "routingpolicies.switchyard.dev",
    ]);
  });
});
