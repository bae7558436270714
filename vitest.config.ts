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
    // feature the lab kernel has fails the run), and the run as KTAP for kernel CI tooling. A
    // --reporter on the command line replaces them all: ci/test-vm.mjs names them again.
    reporters: ['default', './test/helpers/skip-summary-reporter.mjs', './test/helpers/ktap-reporter.mjs'],
  },
})
