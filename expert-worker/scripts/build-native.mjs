// Builds the native addon (expert-worker/native) with CMake into expert-worker/build/switchyard_native.node.
// node-gyp is avoided on purpose: it downloads Node headers from nodejs.org; an N-API addon only needs the
// node-api-headers and node-addon-api include dirs, both npm packages.
import { execFileSync, spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..");
const require = createRequire(import.meta.url);
const napiHeaders = require("node-api-headers").include_dir;
const addonApi = dirname(require.resolve("node-addon-api/package.json"));
const build = resolve(root, "build");
const extra = process.env.SWITCHYARD_NATIVE_ARCH === "0" ? ["-DSWITCHYARD_NATIVE_ARCH=OFF"] : [];
const cmake = spawnSync("cmake", ["--version"], { stdio: "ignore" });
if (cmake.error || cmake.status !== 0) {
  // Without a toolchain the worker still runs on the TypeScript reference backend (it logs so at start).
  console.warn("expert-worker: cmake not found; native addon NOT built (backend falls back to cpu-reference)");
  process.exit(0);
}
const run = (args) => execFileSync("cmake", args, { stdio: "inherit", cwd: root });
run([
  "-S",
  resolve(root, "native"),
  "-B",
  build,
  "-DCMAKE_BUILD_TYPE=Release",
  `-DNODE_API_HEADERS_DIR=${napiHeaders}`,
  `-DNODE_ADDON_API_DIR=${addonApi}`,
  ...extra,
]);
run(["--build", build, "-j", "2"]);
