// Real test cluster for operator and Helm tests. See README.md beside this file.
export { ASSET_NAMES, type AssetName, findAssets, isCI, missingAssetsMessage, repoRoot } from "./assets.js";
export { type ClusterOptions, clusterAssets, startCluster, type TestCluster } from "./cluster.js";
export { GPU_RESOURCE, type GpuNodeOptions, gpuNodeManifest, KWOK_NODE_ANNOTATION } from "./config.js";
export { type CommandResult, type RunOptions, waitUntil } from "./util.js";
