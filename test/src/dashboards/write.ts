// Writes the dashboards of model.ts into the chart: `npm run gen:dashboards`.
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { renderDashboards } from "./model.js";

export const DASHBOARD_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "../../../charts/switchyard/dashboards");

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  mkdirSync(DASHBOARD_DIR, { recursive: true });
  for (const [file, text] of renderDashboards()) {
    writeFileSync(join(DASHBOARD_DIR, file), text);
    console.log(`wrote ${join(DASHBOARD_DIR, file)}`);
  }
}
