// The docs' links lead somewhere in a fresh clone: a relative link names a tracked file, and its #anchor one of that
// file's headings (GitHub's slugs); no doc sends the reader to shared/, the working notes outside the repository.
// And figures the docs quote from the code are the code's.
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const REPO = join(dirname(fileURLToPath(import.meta.url)), "../../..");
const docs = execFileSync("git", ["ls-files", "*.md"], { cwd: REPO, encoding: "utf8" }).split("\n").filter(Boolean);

/** GitHub's anchor for a heading: lower case, punctuation dropped, each space a hyphen. */
export function slug(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, "")
    .replace(/\s/g, "-");
}

function anchors(file: string): Set<string> {
  const text = readFileSync(join(REPO, file), "utf8").replace(/^```[\s\S]*?^```/gm, "");
  return new Set([...text.matchAll(/^#{1,6} (.+)$/gm)].map((m) => slug(m[1])));
}

describe("docs links", () => {
  it("slugs a heading as GitHub does", () => {
    expect(slug("Router config (ConfigMap `<fullname>-router`, key `router.json`; `--config FILE`; owner: x)")).toBe(
      "router-config-configmap-fullname-router-key-routerjson---config-file-owner-x",
    );
  });

  it.each(docs)("%s: relative links name a file, and a heading of it", (doc) => {
    const text = readFileSync(join(REPO, doc), "utf8");
    expect(text, "cites shared/, which a clone does not have").not.toMatch(/[`(]shared\//);
    for (const [, link] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      if (/^[a-z][a-z0-9+.-]*:/i.test(link)) continue; // https:, mailto:
      const [path, anchor] = link.split("#");
      const target = path ? normalize(join(dirname(doc), path)) : doc;
      expect(existsSync(join(REPO, target)), `${link}: no ${target}`).toBe(true);
      if (anchor && target.endsWith(".md")) expect([...anchors(target)], `${link}: no such heading`).toContain(anchor);
    }
  });
});

describe("figures the docs quote from the code", () => {
  it("the router's heat-series bound (router-service/src/metrics.ts MAX_HEAT_SERIES), not the worker's", () => {
    const code = readFileSync(join(REPO, "router-service/src/metrics.ts"), "utf8");
    const max = /export const MAX_HEAT_SERIES = (\d+);/.exec(code)?.[1];
    expect(max).toBeDefined();
    const readme = readFileSync(join(REPO, "router-service/README.md"), "utf8");
    expect(readme).toContain(`\`_expert_tokens_total{layer,expert}\` (heat; at most ${max} series per pool`);
  });
});
