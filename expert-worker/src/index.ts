// @switchyard/expert-worker: the expert worker (gRPC server, residency cache, compute backends).

export { loadNativeAddon, type NativeAddon, NativeCpuBackend } from "./backend/native-cpu.js";
export { ReferenceBackend } from "./backend/reference.js";
export { type BackendChoice, cpuBackend, registerCudaProbe, selectBackend } from "./backend/select.js";
export type { BackendName, ExpertBackend, PreparedExpert, PreparedSlice, RunRequest } from "./backend/types.js";
export { type EvictionPolicy, LfuPolicy, LruPolicy, ResidencyCache } from "./cache.js";
export { parseExpertSpec, parseWorkerArgs, servedFromPlan } from "./config.js";
export { type ExpertSource, WorkerCore } from "./core.js";
export { WorkerMetrics } from "./metrics.js";
export { WorkQueue } from "./queue.js";
export { checkpointSource, startWorker, type WorkerHandle, type WorkerOptions } from "./worker.js";
