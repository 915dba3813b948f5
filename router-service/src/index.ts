// Public surface of the router service (tests, the benchmark and embedding applications use these).
export { type RouterApp, type RouterAppOptions, startRouterApp } from "./app.js";
export { CallerScope } from "./caller-scope.js";
export { CheckpointModel, rankExperts } from "./checkpoint-model.js";
export { type PlacementPlan, type PoolConfig, parsePlan, parseRouterConfig, type RouterConfig } from "./config.js";
export { combineInto, resultRows } from "./core/combine.js";
export { CLIENT_CHANNEL_OPTIONS, WorkerConn } from "./dispatch/worker-conn.js";
export { RouterMetrics } from "./metrics.js";
export type { PoolModel } from "./model.js";
export { DEFAULT_DEADLINE_MS, type PoolSetup, Router, type RouterOptions } from "./router.js";
export {
  ROUTER_SERVICE,
  raiseServerWindow,
  routerHandlers,
  SERVER_OPTIONS,
  type StartedRouter,
  serveRouter,
} from "./server.js";
export { PrometheusSignals, parseInstantQuery } from "./signals/prometheus.js";
export { FakeWorker } from "./testing/fake-worker.js";
export { startTestRouter, type TestRouter } from "./testing/test-router.js";
export { batchPool, replyPool } from "./wire/buffer-pool.js";
export { decodeExpertBatch, decodeExpertResult, decodeForwardRequest, decodeForwardResponse } from "./wire/decode.js";
export { BACKING, ENCODED, encodeExpertBatch, encodeExpertResult, encodeForwardResponse } from "./wire/encode.js";
