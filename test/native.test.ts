// lib/native.ts: the contract between native/ and lib/. Every slot, report field, failure stage and
// bit lib/ reads comes from the addon by name, and load() checks it: a slot inserted, removed or
// moved on one side must fail the load, not shift every read.
import { describe, expect, it } from 'vitest'
import { checkContract, checkHandle, contractProblems, native } from '../lib/native.ts'
import { SyscallError } from '../lib/errors.ts'

/** A deep copy of the addon's exports (functions kept), to doctor one table of. */
function exportsCopy(): Record<string, any> {
  const copy: Record<string, any> = {}
  for (const [key, value] of Object.entries(native)) copy[key] = typeof value === 'object' && value !== null ? { ...value } : value
  return copy
}

describe('the native contract', () => {
  it('the built addon keeps it', () => {
    expect(contractProblems(native)).toEqual([])
    expect(() => checkContract(native)).not.toThrow()
  })

  it('layouts come from the native structs: pm_scan_arg slot = field offset / 8, covered after them', () => {
    const arg = native.pagemapScanArg
    expect([arg.size, arg.flags, arg.start, arg.end, arg.walkEnd, arg.vec, arg.vecLen, arg.maxPages]).toEqual([0, 1, 2, 3, 4, 5, 6, 7])
    expect([arg.categoryInverted, arg.categoryMask, arg.categoryAnyofMask, arg.returnMask, arg.covered, arg.length]).toEqual([8, 9, 10, 11, 12, 13])
  })

  it('a field inserted natively (every later slot shifted) fails the load check, naming it', () => {
    const doctored = exportsCopy()
    const report: Record<string, number> = {}
    for (const [name, slot] of Object.entries(native.dedupReport)) report[name] = name === 'length' ? slot + 1 : slot >= 4 ? slot + 1 : slot
    report.insertedField = 4
    doctored.dedupReport = report
    expect(contractProblems(doctored)).toEqual(['dedupReport.insertedField (unknown to lib/)', `dedupReport.length (${native.dedupReport.length + 1}, lib/ knows ${native.dedupReport.length} slots)`, ...Object.entries(native.dedupReport)
      .filter(([name, slot]) => name !== 'length' && slot + 1 >= native.dedupReport.length)
      .map(([name, slot]) => `dedupReport.${name} (slot ${slot + 1}, not in 0 … ${native.dedupReport.length - 1})`)])
    expect(() => checkContract(doctored)).toThrow(/does not match lib\/.*dedupReport\.insertedField \(unknown to lib\/\)/)
  })

  it('a slot moved onto another one, a missing slot or stage, a renamed constant each fail it', () => {
    const moved = exportsCopy()
    moved.dedupConfig = { ...native.dedupConfig, budgetNs: native.dedupConfig.mode }
    expect(contractProblems(moved)).toEqual([`dedupConfig.budgetNs (slot ${native.dedupConfig.mode}, also dedupConfig.mode)`])

    const missing = exportsCopy()
    const { walkEnd: _walkEnd, ...scanArg } = native.pagemapScanArg
    missing.pagemapScanArg = scanArg
    expect(contractProblems(missing)).toEqual(['pagemapScanArg.walkEnd (missing)'])

    const stage = exportsCopy()
    const { pagemapRead: _pagemapRead, ...stages } = native.dedupFailedStage
    stage.dedupFailedStage = { ...stages, madviseMerge: native.dedupFailedStage.pagemapScan }
    expect(contractProblems(stage)).toEqual(['dedupFailedStage.pagemapRead (missing)', `dedupFailedStage.madviseMerge (${native.dedupFailedStage.pagemapScan}, also dedupFailedStage.pagemapScan)`])

    const bit = exportsCopy()
    bit.dedupStateBit = { marked: '2048' }
    expect(contractProblems(bit)).toEqual(['dedupStateBit.marked (2048, not an integer)'])

    const stale = exportsCopy()
    delete stale.dedupReport
    const { MADV_MERGE: _merge, ...constants } = native.constants
    stale.constants = constants
    expect(contractProblems(stale)).toEqual(['constants.MADV_MERGE (missing)', 'dedupReport (not exported)'])
    expect(() => checkContract(stale)).toThrow(expect.objectContaining({ message: expect.stringMatching(/rebuild it/) }))
  })

  it('one decoder for handle-or-errno results: a handle passes through, -errno is that SyscallError', () => {
    const handle = { handle: true }
    expect(checkHandle(handle, 'mmap')).toBe(handle)
    expect(() => checkHandle(-12, 'memfd_create', 'a test')).toThrow(expect.objectContaining({ constructor: SyscallError, code: 'ENOMEM', syscall: 'memfd_create' }))
  })
})
