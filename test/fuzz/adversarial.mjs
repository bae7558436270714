// Runs adversarial cases in children: batches for speed; when a batch child dies (signal, hang,
// exit without results), every case of that batch runs again alone, so the one that kills the
// process is named and the others are judged in a clean process.
import path from 'node:path'
import { fixturesDir, runChild } from './common.mjs'

const runner = path.join(fixturesDir, 'adversarial-runner.mjs')

async function runBatch(indexes, caseTimeoutMs) {
  const results = new Map()
  let current = null
  const child = await runChild(runner, [indexes.join(',')], {
    timeoutMs: caseTimeoutMs * 3, // start-up; restarted at every case
    nodeArgs: ['--expose-gc'],
    onLine(line) {
      if (line.startsWith('START ')) {
        current = Number(line.slice(6))
        return 'restart-timer'
      }
      if (line.startsWith('RESULT ')) {
        const result = JSON.parse(line.slice(7))
        results.set(result.index, result)
        current = null
      }
      return undefined
    },
  })
  const complete = indexes.every((i) => results.has(i))
  if (complete && child.code === 0) return { results, death: null }
  const how = child.timedOut ? `hung (no result within ${caseTimeoutMs} ms, killed)` : child.signal ? `killed by ${child.signal}` : `exited with code ${child.code}`
  const stderr = child.stderr.split('\n').filter((l) => l && !/MEMDEDUP_UNCLOSED_REGION|--trace-warnings/.test(l)).slice(-8).join('\n    ')
  return { results, death: { index: current, how: `${how}${stderr ? `\n    stderr: ${stderr}` : ''}` } }
}

/** → Map index → { ok, detail } for every index. */
export async function runAdversarial(indexes, { batchSize = 40, caseTimeoutMs = 10_000 } = {}) {
  const all = new Map()
  for (let start = 0; start < indexes.length; start += batchSize) {
    const batch = indexes.slice(start, start + batchSize)
    const { results, death } = await runBatch(batch, caseTimeoutMs)
    if (!death) {
      for (const [i, r] of results) all.set(i, r)
      continue
    }
    for (const i of batch) {
      const alone = await runBatch([i], caseTimeoutMs)
      const r = alone.results.get(i)
      if (r && !alone.death) all.set(i, r)
      else all.set(i, { index: i, ok: false, detail: `the process ${alone.death?.how ?? 'died'}${r?.detail ? ` (after: ${r.detail})` : ''}` })
    }
  }
  return all
}
