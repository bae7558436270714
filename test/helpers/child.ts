// Crash reproducers run in a child process: a regression then fails the test (signal, exit
// status) instead of killing vitest's worker.
import { spawnSync } from 'node:child_process'
import { expect } from 'vitest'
import { distEntry, ensureDist } from './dist.mjs'
import { inVm } from './env.mjs'

export interface ChildRun {
  status: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  /** The JSON object the script printed last (console.log(JSON.stringify(…))), if any. */
  result: any
}

// The lab VM runs Node ~18x slower (TCG): 10^4-cycle children need minutes there.
const defaultTimeoutMs = inVm ? 400_000 : 30_000
const nativeEntry = distEntry.replace(/index\.js$/, 'native.js')

export type RawChildRun = Omit<ChildRun, 'result'>

/**
 * Runs `body` as an ES module in `node --expose-gc`, with `lib` bound to the compiled library
 * (`const { Region } = lib`), `native` to the raw binding (accesses as a C test makes them) and
 * `gcAll()` collecting garbage and running finalizers. Asserts nothing: for children expected to
 * die (see runChild for the others).
 */
export function runRawChild(body: string, { timeoutMs = defaultTimeoutMs }: { timeoutMs?: number } = {}): RawChildRun {
  ensureDist()
  const script = `
    import * as lib from ${JSON.stringify(distEntry)}
    import { native } from ${JSON.stringify(nativeEntry)}
    const gcAll = async () => { for (let i = 0; i < 6; i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 10)) } }
    ${body}
  `
  const child = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: timeoutMs })
  return { status: child.status, signal: child.signal, stdout: child.stdout, stderr: child.stderr }
}

/**
 * runRawChild(), then asserts that the child was not killed by a signal and exited `expectExit`
 * (0), and returns what it printed, with the last JSON line parsed as `result`.
 */
export function runChild(body: string, { timeoutMs = defaultTimeoutMs, expectExit = 0 }: { timeoutMs?: number; expectExit?: number } = {}): ChildRun {
  const child = runRawChild(body, { timeoutMs })
  const lines = child.stdout.trim().split('\n').filter(Boolean)
  let result: unknown
  try {
    result = lines.length ? JSON.parse(lines[lines.length - 1]) : undefined
  } catch (error) {
    if (!(error instanceof SyntaxError)) throw error
    result = undefined // the last line is not JSON: the script printed no result
  }
  const run = { status: child.status, signal: child.signal, stdout: child.stdout, stderr: child.stderr, result }
  expect(run.signal, `child killed by ${run.signal}; stderr:\n${run.stderr}`).toBeNull()
  expect(run.status, `child exited ${run.status}; stderr:\n${run.stderr}`).toBe(expectExit)
  return run
}
