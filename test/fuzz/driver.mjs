// Runs one fuzz-runner child and turns its exit into a verdict: a signal, a timeout, a failed
// check or a missing summary, each reported with the seed and the last steps.
import path from 'node:path'
import { fixturesDir, runChild } from './common.mjs'

export const runnerScript = path.join(fixturesDir, 'fuzz-runner.mjs')

/**
 * → { seed, ok, summary, problem } where problem is a multi-line report ('' when ok).
 * `avoid` passes --avoid tags through (investigation only; the suite never sets it).
 */
export async function fuzzOnce({ seed, ops, timeoutMs, dedup = 'auto', avoid = '' }) {
  const args = [`--seed=${seed}`, `--ops=${ops}`, `--dedup=${dedup}`, ...(avoid ? [`--avoid=${avoid}`] : [])]
  const result = await runChild(runnerScript, args, { timeoutMs, nodeArgs: ['--expose-gc'] })
  let summary = null
  for (const line of result.lines) {
    if (line.startsWith('{')) {
      try {
        summary = JSON.parse(line)
      } catch (error) {
        if (!(error instanceof SyntaxError)) throw error // else: not the summary
      }
    }
  }
  const replay = `replay: MEMDEDUP_FUZZ_SEED=${seed} MEMDEDUP_FUZZ_OPS=${ops} node --expose-gc test/fixtures/fuzz-runner.mjs`
  const lastSteps = (summary?.failure?.lastSteps ?? result.trace).slice(-15).map((s) => `    ${s}`).join('\n')
  const stderr = result.stderr.split('\n').filter((l) => l && !/MEMDEDUP_UNCLOSED_REGION|--trace-warnings/.test(l)).slice(-12).join('\n')
  let problem = ''
  if (result.timedOut) problem = `seed ${seed}: hung (killed after ${timeoutMs} ms)`
  else if (result.signal) problem = `seed ${seed}: crashed with ${result.signal}`
  else if (summary?.failure) problem = `seed ${seed}: ${summary.failure.kind} at step ${summary.failure.step}: ${summary.failure.message}`
  else if (result.code !== 0 || !summary) problem = `seed ${seed}: exited with ${result.code} without a summary`
  if (problem) problem += `\n  last steps:\n${lastSteps}\n  ${replay}${stderr ? `\n  stderr:\n${stderr}` : ''}`
  return { seed, ok: problem === '', summary, problem, crashed: Boolean(result.signal) || result.timedOut, kind: result.signal ? 'crash' : result.timedOut ? 'hang' : summary?.failure?.kind ?? (problem ? 'exit' : null) }
}
