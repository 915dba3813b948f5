export * from "./plan.js";
export * from "./planner.js";
export * from "./shared-slices.js";
