// Public surface of the pure MoE library.

export * from "./checkpoint.js";
export * from "./cpu-budget.js";
export * from "./event-loop-busy.js";
export * from "./fetch-checkpoint.js";
export * from "./gating.js";
export * from "./generate.js";
export * from "./node-flags.js";
export * from "./placement/index.js";
export * from "./policy/index.js";
export * from "./random.js";
export * from "./reference.js";
export * from "./safetensors.js";
export * from "./spec.js";
