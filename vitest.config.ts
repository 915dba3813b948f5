import { defineConfig } from "vitest/config";

export default defineConfig({
  // Workspace packages resolve to their TypeScript sources, so tests never run against a stale dist/.
  // Vitest runs test files as SSR modules: the condition must be given for SSR resolution too.
  resolve: { conditions: ["switchyard-source"] },
  ssr: { resolve: { conditions: ["switchyard-source"] } },
  test: {
    include: ["**/src/**/*.test.ts", "test/**/*.test.ts"],
    exclude: ["**/node_modules/**", "**/dist/**"],
    testTimeout: 60_000,
    hookTimeout: 180_000,
    reporters: ["default"],
  },
});
