// Writes crds/*.yaml from the TypeScript schema definitions. Usage: npm run gen:crds

import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { crdFiles, renderCrd } from "./crds.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const written: string[] = [];
for (const [path, crd] of Object.entries(crdFiles())) {
  writeFileSync(join(root, path), renderCrd(crd));
  written.push(path);
}
// The repo's formatter owns YAML layout; the freshness test compares parsed documents, not text.
execFileSync("npx", ["biome", "format", "--write", ...written], { cwd: root, stdio: "inherit" });
for (const p of written) console.log(`wrote ${p}`);
