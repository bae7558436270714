// A vitest reporter that writes the run as KTAP (ci/ktap.mjs): one test per file, its tests as
// subtests, a skip with its reason (`# SKIP …`, the reason the skip summary groups by). On the host
// it goes to node_modules/.cache/memdedup/host.ktap; MEMDEDUP_KTAP names another file (the VM run
// sets it; ci/test-vm.mjs keeps the guest's as vm.ktap beside it). Registered in vitest.config.ts
// and in ci/test-vm.mjs's --reporter list. Plain JavaScript: the guest loads it from the checkout.
import fs from 'node:fs'
import path from 'node:path'
import { ktap } from '../../ci/ktap.mjs'
import { inVm } from './env.mjs'
import { hostSummaryFile, skipReason } from './skip-summary-reporter.mjs'

/** Where the host run's KTAP is kept (beside the skip summary, inside node_modules). */
export const hostKtapFile = path.join(path.dirname(hostSummaryFile), 'host.ktap')

/**
 * The run as KTAP tests.
 * @param {ReadonlyArray<import('vitest/node').TestModule>} testModules
 * @param {RegExp | undefined} [namePattern]
 * @returns {import('../../ci/ktap.mjs').KtapTest[]}
 */
export function ktapTests(testModules, namePattern) {
  return testModules.map((module) => {
    const name = module.relativeModuleId.replace(/^test\//, '')
    const loadError = module.errors()[0]?.message
    if (loadError) return { name, verdict: 'not ok', reason: loadError }
    const subtests = [...module.children.allTests()].map((test) => {
      const result = test.result()
      if (result.state === 'skipped') return { name: test.fullName, verdict: /** @type {const} */ ('skip'), reason: skipReason(test, namePattern) }
      if (result.state === 'passed') return { name: test.fullName, verdict: /** @type {const} */ ('ok') }
      return { name: test.fullName, verdict: /** @type {const} */ ('not ok'), reason: result.state === 'failed' ? result.errors?.[0]?.message : 'not run' }
    })
    return { name, subtests }
  })
}

export default class KtapReporter {
  /** @type {import('vitest/node').Vitest | undefined} */
  #vitest

  /** @param {import('vitest/node').Vitest} vitest */
  onInit(vitest) {
    this.#vitest = vitest
  }

  /** @param {ReadonlyArray<import('vitest/node').TestModule>} testModules */
  onTestRunEnd(testModules) {
    const file = process.env.MEMDEDUP_KTAP ?? (inVm ? undefined : hostKtapFile)
    if (!file) return
    fs.mkdirSync(path.dirname(file), { recursive: true })
    fs.writeFileSync(file, ktap(ktapTests(testModules, this.#vitest?.config.testNamePattern)))
    process.stdout.write(`KTAP: ${file}\n`)
  }
}
