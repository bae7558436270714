// A vitest reporter that ends the run with one screen of what was skipped, grouped by reason,
// largest group first, one line each with an example test:
//
//   Skipped: 301 of 1170 tests, 31 reasons
//       48  the C's mTHP runs rewrite the global transparent_hugepage/… — kselftest/cow.test.ts: Basic COW after fork … (+47)
//       10  this kernel (6.18.44) lacks sksm — deduplicator.test.ts: merges twins (same PFN), … (+9)
//
// A test's reason is its ctx.skip('reason') note, else what its title or a suite's title says
// after `— skipped:` (test/helpers/env.mjs). In the lab VM (MEMDEDUP_VM) a skip whose reason names
// a feature the lab kernel has (env.mjs labFeatures), or that gives no reason, fails the run.
// Registered in vitest.config.ts and in ci/test-vm.mjs's --reporter list. Plain JavaScript: the
// guest loads it from the read-only checkout.
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { inVm, noReason, refusedInVm, titleSkipReason } from './env.mjs'

const maxGroups = 25
const width = 200

/** @param {string} text @param {number} max */
const cut = (text, max) => (text.length <= max ? text : `${text.slice(0, Math.max(0, max - 1))}…`)

/**
 * Why `test` was skipped: its ctx.skip() note, the reason its or a suite's title gives, a failed
 * hook of a suite (which skips the rest of it), a -t filter, todo, or noReason.
 * @param {import('vitest/node').TestCase} test
 * @param {RegExp | undefined} [namePattern] vitest's -t
 */
export function skipReason(test, namePattern) {
  const result = test.result()
  const note = result.state === 'skipped' ? result.note?.trim() : undefined
  if (note) return note
  if (test.options.mode === 'todo') return 'todo'
  for (let entity = /** @type {any} */ (test); entity && entity.type !== 'module'; entity = entity.parent) {
    const reason = titleSkipReason(entity.name)
    if (reason) return reason
  }
  for (let suite = /** @type {any} */ (test.parent); suite; suite = suite.type === 'module' ? undefined : suite.parent) {
    if (suite.errors().length > 0) return `not run: a hook of ${suite.type === 'module' ? 'the file' : `"${cut(suite.name, 60)}"`} failed (its error is above)`
  }
  if (namePattern && !namePattern.test(test.fullName)) return `not selected by -t ${namePattern}`
  return noReason
}

/**
 * The skipped tests of a run, by reason: reason → ["file: title", …], and how many tests ran in all.
 * @param {ReadonlyArray<import('vitest/node').TestModule>} testModules
 * @param {RegExp | undefined} [namePattern]
 */
export function collectSkips(testModules, namePattern) {
  /** @type {Map<string, string[]>} */
  const groups = new Map()
  let total = 0
  for (const module of testModules) {
    for (const test of module.children.allTests()) {
      total++
      if (test.result().state !== 'skipped') continue
      const reason = skipReason(test, namePattern)
      // The file and the test's own title, without the reason it may carry.
      const name = `${module.relativeModuleId.replace(/^test\//, '')}: ${test.name.replace(/\s*(?:[—–-]\s*|[[(])skipped\b.*$/, '')}`
      groups.set(reason, [...(groups.get(reason) ?? []), name])
    }
  }
  return { groups, total }
}

/**
 * The summary's lines, and whether the run must fail: in the lab VM (`vm`), any skip refusedInVm().
 * @param {Map<string, string[]>} groups
 * @param {number} total
 * @param {{ vm: boolean }} options
 */
export function summarize(groups, total, { vm }) {
  const lines = ['']
  const skipped = [...groups.values()].reduce((n, names) => n + names.length, 0)
  if (skipped === 0) return { lines: [...lines, `Skipped: none of ${total} tests${vm ? ' (lab VM)' : ''}`], failed: false }
  const sorted = [...groups].sort((a, b) => b[1].length - a[1].length || a[0].localeCompare(b[0]))
  lines.push(`Skipped: ${skipped} of ${total} tests, ${groups.size} reason${groups.size === 1 ? '' : 's'}${vm ? ' (lab VM)' : ''}`)
  for (const [reason, names] of sorted.slice(0, maxGroups)) {
    const head = `  ${String(names.length).padStart(5)}  ${cut(reason, 130)}`
    const more = names.length > 1 ? ` (+${names.length - 1})` : ''
    lines.push(`${head} — ${cut(names[0], Math.max(30, width - head.length - 3 - more.length))}${more}`)
  }
  if (sorted.length > maxGroups) {
    const rest = sorted.slice(maxGroups)
    lines.push(`  … and ${rest.length} more reasons (${rest.reduce((n, [, names]) => n + names.length, 0)} tests)`)
  }
  if (!vm) return { lines, failed: false }
  // The lab guarantees these features: a skip for want of one is a broken lab or a broken probe.
  const refused = sorted.map(([reason, names]) => ({ reason, names, feature: refusedInVm(reason) })).filter((g) => g.feature)
  if (refused.length === 0) return { lines, failed: false }
  lines.push('', `FAIL: ${refused.reduce((n, g) => n + g.names.length, 0)} skips the lab VM does not allow (the lab kernel has the feature, or no reason is given):`)
  for (const { reason, names, feature } of refused) {
    lines.push(`  [${feature}] ${names.length}  ${cut(reason, width)}`)
    for (const name of names.slice(0, 3)) lines.push(`         ${cut(name, width)}`)
    if (names.length > 3) lines.push(`         (+${names.length - 3} more)`)
  }
  lines.push('  (what the lab guarantees: labFeatures in test/helpers/env.mjs; reasons true on every kernel: skipsByDesign there)')
  return { lines, failed: true }
}

/** Where the host run's summary is kept (inside node_modules: never committed, gone with it). */
export const hostSummaryFile = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../node_modules/.cache/memdedup/skip-summary-host.txt')

export default class SkipSummaryReporter {
  /** @type {import('vitest/node').Vitest | undefined} */
  #vitest

  /** @param {import('vitest/node').Vitest} vitest */
  onInit(vitest) {
    this.#vitest = vitest
  }

  /** @param {ReadonlyArray<import('vitest/node').TestModule>} testModules */
  onTestRunEnd(testModules) {
    const { groups, total } = collectSkips(testModules, this.#vitest?.config.testNamePattern)
    const { lines, failed } = summarize(groups, total, { vm: inVm })
    process.stdout.write(`${lines.join('\n')}\n`)
    // Kept for ci/test-vm.mjs, which ends `npm test` with the host's and the VM's summaries together.
    const file = process.env.MEMDEDUP_SKIP_SUMMARY ?? (inVm ? undefined : hostSummaryFile)
    if (file) {
      fs.mkdirSync(path.dirname(file), { recursive: true })
      fs.writeFileSync(file, `${lines.join('\n')}\n`)
    }
    // vitest has set exitCode 1 already if a test failed; this adds the VM's refusals.
    if (failed) process.exitCode = 1
  }
}
