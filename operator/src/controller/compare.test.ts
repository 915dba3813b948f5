import { describe, expect, it } from "vitest";
import { contains, needsApply, parseQuantity } from "./compare.js";
import { desiredStatefulSet } from "./desired.js";
import { testPool } from "./fixtures.js";

describe("parseQuantity", () => {
  it.each([
    ["500m", 0.5],
    ["0.5", 0.5],
    ["1Gi", 2 ** 30],
    ["2k", 2000],
    ["1e3", 1000],
    [3, 3],
  ] as const)("%s", (q, v) => expect(parseQuantity(q)).toBeCloseTo(v));
  it("rejects garbage", () => expect(parseQuantity("lots")).toBeUndefined());
});

describe("contains", () => {
  it("ignores fields the server added and compares what we set", () => {
    const desired = { spec: { ports: [{ port: 1, protocol: "TCP" }], clusterIP: "None" } };
    const live = {
      spec: { ports: [{ port: 1, protocol: "TCP", targetPort: 1 }], clusterIP: "None", type: "ClusterIP" },
    };
    expect(contains(desired, live)).toBe(true);
    expect(contains({ spec: { clusterIP: "10.0.0.1" } }, live)).toBe(false);
  });
  it("treats list length changes as differences", () => {
    expect(contains({ a: [1, 2] }, { a: [1, 2, 3] })).toBe(false);
    expect(contains({ a: [{ x: 1 }] }, { a: [{ x: 1, y: 2 }] })).toBe(true);
  });
  it("compares resource quantities numerically", () => {
    expect(contains({ resources: { requests: { cpu: "0.5" } } }, { resources: { requests: { cpu: "500m" } } })).toBe(
      true,
    );
    expect(contains({ resources: { limits: { cpu: "1" } } }, { resources: { limits: { cpu: "2" } } })).toBe(false);
    // Only under resources: elsewhere strings compare exactly.
    expect(contains({ x: { requests: { cpu: "0.5" } } }, { x: { requests: { cpu: "500m" } } })).toBe(false);
  });
  it("compares an emptyDir's sizeLimit as a quantity (checkpoint.downloadSize, which the server canonicalises)", () => {
    const vol = (sizeLimit: string | number) => ({
      spec: { volumes: [{ name: "checkpoint", emptyDir: { sizeLimit } }] },
    });
    expect(contains(vol("1.5Gi"), vol("1536Mi"))).toBe(true);
    expect(contains(vol("0.5Ti"), vol("512Gi"))).toBe(true);
    expect(contains(vol("1e11"), vol("100G"))).toBe(true);
    expect(contains(vol(1073741824), vol("1Gi"))).toBe(true);
    expect(contains(vol("1Gi"), vol("2Gi"))).toBe(false);
    expect(contains(vol("1Gi"), vol("1G"))).toBe(false);
    // only there: another field named sizeLimit compares as it is
    expect(contains({ x: { sizeLimit: "1.5Gi" } }, { x: { sizeLimit: "1536Mi" } })).toBe(false);
  });

  it("a StatefulSet with a downloadSize the server rewrote needs no apply", () => {
    const pool = testPool({ model: { checkpoint: { uri: "hf://org/model", downloadSize: "1.5Gi" } } });
    delete pool.spec.model.checkpoint.hostPath;
    const want = desiredStatefulSet(pool);
    const live = structuredClone(want);
    const pod = live.spec!.template.spec!;
    pod.volumes![0].emptyDir!.sizeLimit = "1536Mi";
    pod.initContainers![0].resources!.requests!["ephemeral-storage"] = "1536Mi";
    expect(needsApply(want as never, live as never)).toBe(false);
    pod.volumes![0].emptyDir!.sizeLimit = "2Gi";
    expect(needsApply(want as never, live as never)).toBe(true);
  });
});

describe("needsApply", () => {
  const desired = {
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: { name: "a", labels: { l: "1" }, ownerReferences: [{ uid: "u" }] },
    data: { k: "v" },
  };
  it("is true when the object is missing or differs, false when it already matches", () => {
    expect(needsApply(desired, undefined)).toBe(true);
    const live = {
      metadata: {
        name: "a",
        labels: { l: "1", extra: "x" },
        ownerReferences: [{ uid: "u", kind: "P" }],
        resourceVersion: "5",
      },
      data: { k: "v" },
    };
    expect(needsApply(desired, live)).toBe(false);
    expect(needsApply(desired, { ...live, data: { k: "w" } })).toBe(true);
    expect(needsApply(desired, { ...live, metadata: { ...live.metadata, labels: {} } })).toBe(true);
  });
});
