export * from "./policy.js";
export * from "./validate.js";
