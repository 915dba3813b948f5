// Public surface of the operator package (used by the integration tests and the benchmark).

export { applyDefaults } from "./api/schema.js";
export * from "./api/v1alpha1.js";
export { desiredPlan } from "./controller/desired.js";
export { HEAT_METRIC, heatQuery, parseHeat } from "./controller/heat.js";
export * from "./controller/names.js";
export { expectedImbalance, rebalancedPlan, rebalanceSettings } from "./controller/rebalance.js";
export {
  CONFIG_MAP_MAX_BYTES,
  DEFAULT_CONFIG_LIMITS,
  type EncodedConfig,
  encodeRouterConfig,
  ROUTER_CONFIG_GZ_KEY,
  ROUTER_CONFIG_KEY,
} from "./controller/router-config-fit.js";
export { crdFiles, expertPoolCrd, routingPolicyCrd } from "./crd/crds.js";
export { Manager, type ManagerOptions } from "./manager.js";
export { parseOptions } from "./options.js";
export { Kube, KubeError, paths } from "./runtime/kube.js";
export { promInstantQuery } from "./runtime/prometheus.js";
