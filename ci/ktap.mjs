// KTAP version 1 (the kernel's Documentation/dev-tools/ktap.rst): what kselftest and KUnit print
// and what KernelCI, kci-dev and virtme-ng parse. The one writer for the lab's results: the vitest
// suite on the host and in the VM (test/helpers/ktap-reporter.mjs) and the C kselftests
// (ci/kselftest.mjs). Plain JavaScript: the guest loads it from the read-only checkout.

/**
 * A test: its own verdict, or subtests whose verdicts make it ('not ok' if one is, 'skip' if all
 * are, else 'ok'). `reason` goes after `# SKIP` (or in a diagnostic line for 'not ok').
 * @typedef {{ name: string, verdict?: 'ok' | 'not ok' | 'skip', reason?: string, subtests?: KtapTest[] }} KtapTest
 */

/** Test names end at `#` (a directive follows) and at the line's end: both are replaced. */
const clean = (/** @type {string} */ text) => text.replace(/[\r\n]+/g, ' ').replace(/#/g, '%23').trim()

/** @param {KtapTest} test @returns {'ok' | 'not ok' | 'skip'} */
export function verdictOf(test) {
  if (test.verdict) return test.verdict
  const verdicts = (test.subtests ?? []).map(verdictOf)
  if (verdicts.includes('not ok')) return 'not ok'
  if (verdicts.length > 0 && verdicts.every((v) => v === 'skip')) return 'skip'
  return 'ok'
}

/**
 * KTAP lines for `tests` (subtests nested, indented four spaces per level, before their parent's
 * result line, as the format requires).
 * @param {KtapTest[]} tests
 * @param {string} [indent]
 * @returns {string[]}
 */
export function ktapLines(tests, indent = '') {
  const lines = [`${indent}KTAP version 1`, `${indent}1..${tests.length}`]
  tests.forEach((test, i) => {
    if (test.subtests && test.subtests.length > 0) lines.push(...ktapLines(test.subtests, `${indent}    `))
    const verdict = verdictOf(test)
    const name = clean(test.name) || `test ${i + 1}`
    if (verdict === 'not ok' && test.reason) lines.push(`${indent}# ${clean(test.reason)}`)
    const skip = verdict === 'skip' ? ` # SKIP${test.reason ? ` ${clean(test.reason)}` : ''}` : ''
    lines.push(`${indent}${verdict === 'not ok' ? 'not ok' : 'ok'} ${i + 1} ${name}${skip}`)
  })
  return lines
}

/** The KTAP document (a trailing newline included). @param {KtapTest[]} tests */
export function ktap(tests) {
  return `${ktapLines(tests).join('\n')}\n`
}

/**
 * What makes `text` not a KTAP document whose plans hold (each level's `1..N` and its N result
 * lines, numbered 1..N): [] when it is one. Checks what the lab writes before a run counts it.
 * @param {string} text
 * @returns {string[]}
 */
export function ktapProblems(text) {
  const lines = text.split('\n').filter((l) => l.trim() !== '')
  if (lines[0] !== 'KTAP version 1') return ['no "KTAP version 1" header']
  const problems = []
  // One frame per nesting level: its plan and the results seen so far.
  /** @type {{ depth: number, plan: number, results: number }[]} */
  const open = []
  const close = (/** @type {string} */ name) => {
    const frame = open.pop()
    if (frame && frame.plan !== frame.results) problems.push(`${name}: plan 1..${frame.plan}, ${frame.results} results`)
  }
  for (const line of lines) {
    const depth = (line.length - line.trimStart().length) / 4
    const body = line.trimStart()
    let m
    if (body === 'KTAP version 1') open.push({ depth, plan: -1, results: 0 })
    else if ((m = /^1\.\.(\d+)$/.exec(body))) {
      if (open.at(-1)?.depth === depth) open[open.length - 1].plan = Number(m[1])
    } else if ((m = /^(?:not ok|ok) (\d+) ?([^#]*)/.exec(body))) {
      // A result at a shallower depth than the open frame ends that frame's subtests.
      while (open.length > 0 && open.at(-1).depth > depth) close(`subtests of "${m[2].trim()}"`)
      const frame = open.at(-1)
      if (!frame) continue
      frame.results++
      if (Number(m[1]) !== frame.results) problems.push(`result "${body}" is number ${m[1]}, expected ${frame.results}`)
    }
  }
  while (open.length > 0) close(open.length === 1 ? 'the document' : 'a subtest list')
  return problems
}
