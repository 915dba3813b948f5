import { defineConfig } from "vitest/config";

export default defineConfig({
  resolve: { conditions: ["switchyard-source"] },
  test: {
    include: ["**/src/**/*.test.ts", "test/**/*.test.ts"],
    exclude: ["**/node_modules/**", "**/dist/**"],
    testTimeout: 60_000,
    hookTimeout: 180_000,
    reporters: ["default"],
  },
});
