import { defineConfig } from 'vitest/config'

export default defineConfig({
  // In the VM the checkout is read-only: ci/test-vm.mjs points the cache at a tmpfs.
  cacheDir: process.env.VITEST_CACHE_DIR ?? 'node_modules/.vite',
  test: {
    include: ['test/**/*.test.ts'],
    // Tests change process-wide state (prctl, KSM sysfs): each file gets its own process.
    pool: 'forks',
    fileParallelism: false,
    testTimeout: process.env.MEMDEDUP_VM ? 600_000 : 60_000,
    hookTimeout: process.env.MEMDEDUP_VM ? 600_000 : 60_000,
    // The default output, then every skipped test grouped by reason (in the VM, a skip for a
    // feature the lab kernel has fails the run). A --reporter on the command line replaces both:
    // ci/test-vm.mjs names this one again.
    reporters: ['default', './test/helpers/skip-summary-reporter.mjs'],
  },
})
