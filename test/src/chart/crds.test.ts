// The chart ships the CRDs generated into crds/ (owned by the operator area) as copies in charts/switchyard/crds/,
// because packaged charts do not keep symlinks. This fails when they drift: run `npm run sync:chart-crds`.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { CHART, parseDocs, REPO } from "./helm.js";

// biome-ignore lint/suspicious/noExplicitAny: a generated CRD document, walked by its known shape.
type Untyped = any;

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

  it("default a minimal ExpertPool's worker image to the chart's CUDA worker image, as it defaults to a GPU", () => {
    // A pool without spec.worker.image and gpusPerWorker gets both from the CRD's defaults: one GPU, so the image
    // must be the one that uses it (the CPU image would run on the CPU of a node whose GPU it holds).
    const xp = parseDocs(readFileSync(join(CHART, "crds/switchyard.dev_expertpools.yaml"), "utf8"))[0] as Untyped;
    const worker = xp.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.worker.properties;
    expect(worker.gpusPerWorker.default).toBeGreaterThanOrEqual(1);
    const values = parse(readFileSync(join(CHART, "values.yaml"), "utf8"));
    const chart = parse(readFileSync(join(CHART, "Chart.yaml"), "utf8"));
    const cuda = `${values.imageRegistry}/${values.workers.image.repository}:${values.workers.image.cudaTag || `${chart.appVersion}-cuda`}`;
    expect(worker.image.default).toBe(cuda);
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
