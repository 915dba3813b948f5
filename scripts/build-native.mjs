// Builds a package's N-API addon with CMake: <package>/native -> <package>/build/*.node.
// node-gyp is avoided on purpose: it downloads Node headers from nodejs.org; an N-API addon only needs the
// node-api-headers and node-addon-api include dirs, both npm packages.
//   node scripts/build-native.mjs <package dir>      (or import { buildNative } from it)
// Env: SWITCHYARD_NATIVE_ARCH=0 builds for x86-64-v3 instead of -march=native.
import { execFileSync, spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { basename, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);

/** Returns false (after saying why) when there is no cmake: callers fall back to their TypeScript code. */
export function buildNative(packageRoot) {
  const name = basename(packageRoot);
  const cmake = spawnSync("cmake", ["--version"], { stdio: "ignore" });
  if (cmake.error || cmake.status !== 0) {
    console.warn(`${name}: cmake not found; native addon NOT built (the TypeScript fallback runs instead)`);
    return false;
  }
  const napiHeaders = require("node-api-headers").include_dir;
  const addonApi = dirname(require.resolve("node-addon-api/package.json"));
  const build = resolve(packageRoot, "build");
  const extra = process.env.SWITCHYARD_NATIVE_ARCH === "0" ? ["-DSWITCHYARD_NATIVE_ARCH=OFF"] : [];
  const run = (args) => execFileSync("cmake", args, { stdio: "inherit", cwd: packageRoot });
  run([
    "-S",
    resolve(packageRoot, "native"),
    "-B",
    build,
    "-DCMAKE_BUILD_TYPE=Release",
    `-DNODE_API_HEADERS_DIR=${napiHeaders}`,
    `-DNODE_ADDON_API_DIR=${addonApi}`,
    ...extra,
  ]);
  run(["--build", build, "-j", "2"]);
  return true;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  buildNative(resolve(process.argv[2] ?? process.cwd()));
}
