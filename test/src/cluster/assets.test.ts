import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { assetDirs, defaultAssetsDir, findAssets, isCI, missingAssetsMessage, repoRoot } from "./assets.js";

const dir = mkdtempSync(join(tmpdir(), "assets-test-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("asset lookup", () => {
  it("finds the repository root and the default bin dir", () => {
    expect(defaultAssetsDir()).toBe(join(repoRoot(), ".cache", "test-assets", "bin"));
  });

  it("searches KUBEBUILDER_ASSETS first, then the default dir", () => {
    expect(assetDirs({ KUBEBUILDER_ASSETS: dir })).toEqual([dir, defaultAssetsDir()]);
    expect(assetDirs({})).toEqual([defaultAssetsDir()]);
  });

  it("takes executables from KUBEBUILDER_ASSETS and reports the rest as missing", () => {
    writeFileSync(join(dir, "etcd"), "#!/bin/sh\n");
    chmodSync(join(dir, "etcd"), 0o755);
    writeFileSync(join(dir, "kwok"), "not executable");
    const env = { KUBEBUILDER_ASSETS: dir };
    const l = findAssets(["etcd", "kwok"], env);
    expect(l.found.etcd).toBe(join(dir, "etcd"));
    // kwok: not executable here; found only if the default dir has it
    if (l.found.kwok) expect(l.found.kwok).toBe(join(defaultAssetsDir(), "kwok"));
    else expect(l.missing).toEqual(["kwok"]);
  });

  it("the missing-binaries message says what, where and how to fix", () => {
    const m = missingAssetsMessage({ found: {}, missing: ["etcd", "kwok"], searched: ["/a", "/b"] });
    expect(m).toContain("etcd, kwok");
    expect(m).toContain("/a, /b");
    expect(m).toContain("scripts/ci/build-test-assets.sh");
    expect(m).toContain("KUBEBUILDER_ASSETS");
  });

  it("reads CI like CI systems set it", () => {
    expect(isCI({ CI: "true" })).toBe(true);
    expect(isCI({ CI: "1" })).toBe(true);
    expect(isCI({ CI: "false" })).toBe(false);
    expect(isCI({ CI: "" })).toBe(false);
    expect(isCI({})).toBe(false);
  });
});
