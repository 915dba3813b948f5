// Public surface of the pure MoE library.
export * from "./policy/index.js";
export * from "./placement/index.js";
