import { configDefaults, defineConfig } from 'vitest/config'

// What no kernel decides runs on the host only: the package, the docs, the layout, the shipped
// types, the error registry, the lab's own console check, argument checking. In the lab VM each
// file costs ~20 s just to start (user space ~18x slower), and CI's time is bounded.
const hostOnlyFiles = ['test/package.test.ts', 'test/docs.test.ts', 'test/layout.test.ts', 'test/types.test.ts',
  'test/errors.test.ts', 'test/lab.test.ts', 'test/skip-summary.test.ts', 'test/adversarial.test.ts']

export default defineConfig({
  // In the VM the checkout is read-only: ci/test-vm.mjs points the cache at a tmpfs.
  cacheDir: process.env.VITEST_CACHE_DIR ?? 'node_modules/.vite',
  test: {
    include: ['test/**/*.test.ts'],
    exclude: [...configDefaults.exclude, ...(process.env.MEMDEDUP_VM ? hostOnlyFiles : [])],
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
