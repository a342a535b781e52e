import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Native inference on a 2-core CI box: one file at a time keeps the neuron processes
    // from starving each other and keeps timings honest.
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    globalSetup: ["test/fixtures/global-setup.ts"]
  }
})
