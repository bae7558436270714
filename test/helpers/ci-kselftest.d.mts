// Types of ci-kselftest.mjs (ci/kselftest.mjs's exports the tests use).

/** A C test's or subtest's verdict. */
export type CVerdict = 'pass' | 'fail' | 'skip' | 'xfail' | 'timeout' | 'not run'
/** A port's verdict over its vitest cases. */
export type PortVerdict = 'pass' | 'fail' | 'skip' | 'absent' | 'no port'

export interface SelectedTest {
  id: string
}
export interface CTestResult {
  verdict: CVerdict
  exitCode: number | null
  seconds: number | null
  totals: { pass: number; fail: number; xfail: number; xpass: number; skip: number; error: number } | null
  /** "<number> [<context>] <description>" → verdict. */
  subtests: Record<string, CVerdict>
}
/** One vitest case of a port (portCases()). */
export interface PortCase {
  file: string
  name: string
  title: string
  status: string
}
export interface PortRow {
  test: string
  subtest: string | null
  c: CVerdict
  port: PortVerdict
  cases?: number
  disagree: boolean
}

/** Splits the guest output at the begin/end markers into per-test results. */
export declare function parseRun(output: string, selected: SelectedTest[]): Record<string, CTestResult>
/** A C verdict and a port verdict disagree (one passes where the other fails, or the port ran nothing). */
export declare function disagree(c: CVerdict, port: PortVerdict): boolean
/** test | C | port rows, with subtest rows where the C and the port name the same cases. */
export declare function compareWithPorts(cTests: Record<string, CTestResult>, cases: PortCase[], selected: SelectedTest[]): PortRow[]

/** A test for ci/ktap.mjs: its own verdict, or subtests whose verdicts make it. */
export interface KtapTest {
  name: string
  verdict?: 'ok' | 'not ok' | 'skip'
  reason?: string
  subtests?: KtapTest[]
}
/** The KTAP version 1 document of `tests`. */
export declare function ktap(tests: KtapTest[]): string
/** A run of the C tests (parseRun()) as KTAP: one test per program, its cases as subtests. */
export declare function runAsKtap(tests: Record<string, CTestResult>, selected: SelectedTest[]): string
/** What makes `text` not a KTAP document whose plans hold; [] when it is one. */
export declare function ktapProblems(text: string): string[]
