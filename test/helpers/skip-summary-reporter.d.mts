// Types of skip-summary-reporter.mjs (plain JavaScript: the lab guest loads it as is). Keep in
// step with its exports: tsconfig.test.json checks test/skip-summary.test.ts against this file.
import type { Reporter, TestCase, TestModule } from 'vitest/node'

/** Why `test` was skipped: its ctx.skip() note, its or a suite's title, a failed hook, -t, todo, or noReason. */
export declare function skipReason(test: TestCase, namePattern?: RegExp): string
/** The skipped tests of a run by reason (reason → ["file: title", …]), and how many tests there were. */
export declare function collectSkips(testModules: ReadonlyArray<TestModule>, namePattern?: RegExp): { groups: Map<string, string[]>; total: number }
/** The summary's lines; `failed` in the VM when a skip is refused there (env.mjs refusedInVm). */
export declare function summarize(groups: Map<string, string[]>, total: number, options: { vm: boolean }): { lines: string[]; failed: boolean }
declare const SkipSummaryReporter: new () => Reporter
export default SkipSummaryReporter
