// Builds the worker's native addon (expert-worker/native, CUDA too where CMake finds nvcc) into
// expert-worker/build/switchyard_native.node. Without cmake the worker runs on the TypeScript reference backend
// (it logs so at start). The CMake driving is shared with the router's addon: scripts/build-native.mjs.
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { buildNative } from "../../scripts/build-native.mjs";

buildNative(resolve(dirname(fileURLToPath(import.meta.url)), ".."));
