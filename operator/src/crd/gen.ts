// Writes crds/*.yaml from the TypeScript schema definitions. Usage: npm run gen:crds
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { renderCrdFiles } from "./crds.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
for (const [path, content] of Object.entries(renderCrdFiles())) {
  writeFileSync(join(root, path), content);
  console.log(`wrote ${path}`);
}
