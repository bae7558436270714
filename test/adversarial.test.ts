// The adversarial input table (test/fixtures/adversarial-cases.mjs): each bad input runs in a
// child process and must end in the expected error class and code — never a signal, a hang, a
// leaked mapping or a leaked descriptor. Cases are grouped by the class of issue 9 they probe.
import { beforeAll, describe, expect, it } from 'vitest'
import { ensureDist } from './helpers/ksm.ts'
import { inVm } from './fuzz/common.mjs'
import { runAdversarial } from './fuzz/adversarial.mjs'
import { cases } from './fixtures/adversarial-cases.mjs'

const classes = [...new Set(cases.map((c) => c.cls))]
const caseTimeoutMs = inVm ? 120_000 : 10_000
let results: Map<number, { ok: boolean; detail: string }>

beforeAll(async () => {
  ensureDist()
  results = await runAdversarial(cases.map((_, i) => i), { caseTimeoutMs })
}, inVm ? 3_000_000 : 600_000)

describe(`adversarial inputs: ${cases.length} cases, each in a child process`, () => {
  it('covers every class of issue 9 with more than one input', () => {
    for (let cls = 1; cls <= 12; cls++) expect(cases.filter((c) => c.cls === String(cls)).length, `class ${cls}`).toBeGreaterThan(1)
    expect(new Set(cases.map((c) => c.id)).size).toBe(cases.length)
    expect(cases.length).toBeGreaterThanOrEqual(150)
  })
  for (const cls of classes) {
    describe(`class ${cls}`, () => {
      cases.forEach((c, i) => {
        if (c.cls !== cls) return
        it(c.title, () => {
          const r = results.get(i)
          if (!r?.ok) expect.fail(r?.detail ?? 'no result')
        })
      })
    })
  }
})
