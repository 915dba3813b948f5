// Wire protocol of Switchyard (package switchyard.v1): generated messages and services, plus the tensor codec.

export * from "./data-path.js";
export * from "./errors.js";
export * from "./frame-budget.js";
export {
  Assignment,
  ForwardRequest,
  ForwardResponse,
  ForwardStats,
  RouterClient,
  type RouterServer,
  RouterService,
} from "./gen/switchyard/v1/router.js";
export {
  DType,
  dTypeFromJSON,
  dTypeToJSON,
  ExpertKey,
  RpcError,
  Tensor,
} from "./gen/switchyard/v1/tensor.js";
export {
  EvictRequest,
  EvictResponse,
  ExpertBatch,
  ExpertResult,
  ExpertSlice,
  ExpertStats,
  ExpertWorkerClient,
  type ExpertWorkerServer,
  ExpertWorkerService,
  PrefetchRequest,
  PrefetchResponse,
  StatusRequest,
  WorkerStatus,
} from "./gen/switchyard/v1/worker.js";
export * from "./read-gate.js";
export * from "./router-data-client.js";
export * from "./tensor.js";
export * from "./wire-writer.js";
