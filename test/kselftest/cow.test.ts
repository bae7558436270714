// Port of tools/testing/selftests/mm/cow.c (6.12.117): the anonymous-memory cases, the anonymous
// THP collapse cases and the non-anonymous cases (shared zeropage, huge zeropage, memfd, tmpfile).
//
// Anonymous cases need fork(2), which Node cannot do: test/fixtures/mm-fork.c prepares the memory
// the way do_run_with_base_page()/do_run_with_thp() do, forks, and reports the child's verdict
// plus PFNs; the assertions are here. Not in the C: the parent's first page got a new frame on
// its write while the child still maps the frame from before fork (same PFN), and the parent
// reads back what it wrote. Non-anonymous cases run in this process on memdedup Regions and add
// the PFN checks (the private mapping leaves the shared frame on its write, the other mapping
// keeps it). Not in the C either: "Basic COW ... with KSM page", a page merged by ksmd is the
// same kind of shared frame as the zeropage and must be copied on write the same way.
//
// THP: the PMD size only, with MADV_HUGEPAGE (as the C runs the PMD size). Skipped, with the
// reason in the title: the C's runs at each mTHP size (they rewrite the global
// transparent_hugepage/hugepages-*kB/enabled knobs, and would multiply the lab's TCG time by the
// number of sizes), hugetlb (the C maps private hugetlb memory, MAP_PRIVATE | MAP_HUGETLB anonymous
// or a MAP_PRIVATE hugetlb memfd; memdedup's hugetlb Regions are shared memfds only), the R/O GUP pin cases (/sys/kernel/debug/gup_test, a test driver memdedup does not bind)
// and the io_uring fixed-buffer cases (memdedup does not bind io_uring). Swap-out runs skip like
// the C ("MADV_PAGEOUT did not work, is swap enabled?") where there is no swap.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { Region, features, ksm, pagemap, pageSize, type Range } from '../../lib/index.ts'
import { KsmState, acquireKsmLock, fastKsmd, foreignKsmUsers, ksmLockTimeoutMs, ksmSettingsDenied, probe } from '../helpers/ksm.ts'
import { errorCode } from '../helpers/errors.ts'
import { mmFork, mmForkLines, pmdSize, thpUnavailable, type MmForkResult } from '../helpers/mm-fork.ts'

const pmdsize = pmdSize()
/** Why the THP cases skip ('' when they run): thp_is_enabled() and read_pmd_pagesize() of the C. */
const noThp = thpUnavailable()
const isRoot = process.getuid?.() === 0

// anon_test_cases[]: description, mm-fork test, whether the child (not the parent) writes.
const anonTestCases: Array<[string, string]> = [
  ['Basic COW after fork()', 'cow-in-parent'],
  ['Basic COW after fork() with mprotect() optimization', 'cow-in-parent-mprotect'],
  ['vmsplice() + unmap in child', 'vmsplice-in-child'],
  ['vmsplice() + unmap in child with mprotect() optimization', 'vmsplice-in-child-mprotect'],
  ['vmsplice() before fork(), unmap in parent after fork()', 'vmsplice-before-fork'],
  ['vmsplice() + unmap in parent after fork()', 'vmsplice-after-fork'],
]
const gupAnonTestCases = [
  'R/O GUP pin on R/O-mapped shared page',
  'R/O GUP-fast pin on R/O-mapped shared page',
  'R/O GUP pin on R/O-mapped previously-shared page',
  'R/O GUP-fast pin on R/O-mapped previously-shared page',
  'R/O GUP pin on R/O-mapped exclusive page',
  'R/O GUP-fast pin on R/O-mapped exclusive page',
]
const iouringAnonTestCases = ['R/O-mapping a page registered as iouring fixed buffer', 'fork() with an iouring fixed buffer']

// run_anon_test_case(): the memory each case runs on ("[RUN] %s ... with <run>"), and whether
// it is a THP run (generated everywhere; skipped with the reason where THP is unavailable).
const kb = pmdsize ? `${pmdsize / 1024} kB` : 'PMD size'
const anonRuns: Array<[string, string, boolean]> = [
  ['base page', 'base', false],
  ['swapped out base page', 'base-swap', false],
  [`THP (${kb})`, 'thp', true],
  [`swapped-out THP (${kb})`, 'thp-swap', true],
  [`PTE-mapped THP (${kb})`, 'pte-thp', true],
  [`swapped-out, PTE-mapped THP (${kb})`, 'pte-thp-swap', true],
  [`single PTE of THP (${kb})`, 'single-pte', true],
  [`single PTE of swapped-out THP (${kb})`, 'single-pte-swap', true],
  [`partially mremap()'ed THP (${kb})`, 'partial-mremap', true],
  [`partially shared THP (${kb})`, 'partial-shared', true],
]
/** The runs the helper executes here: the THP runs only where THP is available. */
const runnable = anonRuns.filter(([, , thp]) => !thp || !noThp).map(([, run]) => run)

/** The mTHP sizes below the PMD size this kernel offers (transparent_hugepage/hugepages-*kB). */
function mthpSizesKb(): number[] {
  try {
    return fs
      .readdirSync('/sys/kernel/mm/transparent_hugepage')
      .map((name) => /^hugepages-(\d+)kB$/.exec(name)?.[1])
      .filter((size): size is string => size !== undefined)
      .map(Number)
      .filter((size) => size * 1024 !== pmdsize)
      .sort((a, b) => a - b)
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return [] // no THP in this kernel
    throw error
  }
}

function hugetlbSizesKb(): number[] {
  try {
    return fs.readdirSync('/sys/kernel/mm/hugepages').map((name) => Number(/^hugepages-(\d+)kB$/.exec(name)?.[1])).filter(Boolean)
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return [] // no hugetlbfs in this kernel
    throw error
  }
}

const mthpSkip = ` — skipped: the C's mTHP runs rewrite the global transparent_hugepage/hugepages-*kB/enabled knobs; ported at the PMD size only`
const hugetlbSkip = ' — skipped: needs a private hugetlb mapping (MAP_PRIVATE | MAP_HUGETLB); memdedup maps hugetlb only as a shared memfd (Region.memfd({ hugetlb: true }))'
const gupSkip = ' — skipped: needs /sys/kernel/debug/gup_test (PIN_LONGTERM_TEST_*), a test driver memdedup does not bind'
const iouringSkip = ' — skipped: needs io_uring fixed buffers, which memdedup does not bind'
const rootSkip = isRoot ? '' : ' — skipped: PFNs in /proc/self/pagemap need root'

/** Asserts a run of do_test_cow_in_parent(): "No leak from parent into child", plus the PFNs. */
function expectNoLeakFromParent(result: Record<string, number | string>, swappedOut: boolean, childMaps: boolean): void {
  expect(result.signal, 'child killed by a signal').toBe(0)
  expect(result.child, 'No leak from parent into child (the child read back what it saw before the parent wrote)').toBe(0)
  // Not in the C: the parent sees its own write, byte for byte.
  expect(result.parentWritten, 'the parent reads 0xff everywhere after its memset').toBe(1)
  if (swappedOut) return // pagemap reports swap entries, not PFNs, before the fault
  // Not in the C: the write copied the page in the parent; the child (if it still maps the
  // memory) kept the frame both shared after fork.
  expect(result.pfnParent, "the parent's write moved it to a new frame").not.toBe(result.pfnBefore)
  if (childMaps) expect(result.pfnChild, 'the child still maps the frame from before fork').toBe(result.pfnBefore)
}

describe('cow: Anonymous memory tests in private mappings', () => {
  for (const [desc, test] of anonTestCases) {
    describe(desc, () => {
      // All runs of the case in one exec of the helper (each run forks inside it): under TCG an
      // exec costs seconds, a fork milliseconds.
      const results = new Map<string, MmForkResult>()
      beforeAll(() => {
        if (!isRoot) return
        const lines = mmForkLines(['cow-all', test, pmdsize, runnable.join(',')])
        expect(lines.length, `one result line per run (${runnable.join(', ')})`).toBe(runnable.length)
        runnable.forEach((run, index) => results.set(run, lines[index]))
      })
      for (const [runName, run, thp] of anonRuns) {
        it.skipIf(!isRoot)(`${desc} ... with ${runName}${rootSkip}`, (ctx) => {
          if (thp && noThp) ctx.skip(noThp)
          const result = results.get(run)
          if (result === undefined) expect.fail(`no result for run ${run}`)
          expect(result.error, String(result.error)).toBeUndefined()
          if (result.skip) ctx.skip(String(result.skip))
          if (test.startsWith('vmsplice-') && test.includes('fork')) {
            expect(result.signal, 'child killed by a signal').toBe(0)
            expect(result.transferred, 'vmsplice() took the pages').toBeGreaterThan(0)
            expect(result.leak, 'No leak from child into parent (the pipe still reads the old bytes)').toBe(0)
          } else {
            expectNoLeakFromParent(result, run.endsWith('-swap'), !test.startsWith('vmsplice-'))
          }
        })
      }
      for (const size of mthpSizesKb()) it.skip(`${desc} ... with THP, PTE-mapped THP, single PTE, partial mremap/shared (${size} kB)${mthpSkip}`, () => {})
      for (const size of hugetlbSizesKb()) it.skip(`${desc} ... with hugetlb (${size} kB)${hugetlbSkip}`, () => {})
    })
  }
  for (const desc of gupAnonTestCases) it.skip(`${desc} ... with every run${gupSkip}`, () => {})
  for (const desc of iouringAnonTestCases) it.skip(`${desc} ... with every run${iouringSkip}`, () => {})
})

describe('cow: Anonymous THP tests', () => {
  const cases: Array<[string, string]> = [
    ['Basic COW after fork() when collapsing before fork()', 'collapse-unshared'],
    ['Basic COW after fork() when collapsing after fork() (fully shared)', 'collapse-fully-shared'],
    ['Basic COW after fork() when collapsing after fork() (lower shared)', 'collapse-lower-shared'],
    ['Basic COW after fork() when collapsing after fork() (upper shared)', 'collapse-upper-shared'],
  ]
  for (const [desc, test] of cases) {
    it.skipIf(!isRoot)(`${desc}${rootSkip}`, (ctx) => {
      if (noThp) ctx.skip(noThp)
      const result = mmFork(['cow', 'thp', test, pmdsize])
      if (result.skip) ctx.skip(String(result.skip))
      expectNoLeakFromParent(result, false, true)
    })
  }
})

// ---- Non-anonymous memory tests in private mappings ----------------------------------------------

interface Pair {
  /** The private, writable mapping. */
  mem: Region
  memRange: Range
  /** The other mapping of the same frame(s), only read. */
  smem: Region
  smemRange: Range
  /** false: mem and smem map frames of their own (a kernel without the shared zeropage). */
  sharedFrames?: boolean
}

const regions: Region[] = []
afterEach(() => {
  for (const region of regions.splice(0)) region.close()
})
const track = (region: Region) => (regions.push(region), region)
const whole = (length: number): Range => ({ offset: 0, length })

/** test_cow(): write 0xff through mem, smem must read what it read before. Plus the PFNs. */
function testCow({ mem, memRange, smem, smemRange, sharedFrames = true }: Pair): void {
  const old = smem.read(smemRange)
  const smemPfns = pagemap.entries(smem, smemRange).pfns.slice()
  const memPfns = pagemap.entries(mem, memRange).pfns.slice()
  // Not in the C: before the write both mappings map the very same frames.
  if (isRoot && sharedFrames) expect(memPfns, 'mem and smem map the same frames before the write').toEqual(smemPfns)
  mem.bytes.fill(0xff, memRange.offset, memRange.offset + memRange.length)
  expect(smem.read(smemRange).equals(old), 'Other mapping not modified').toBe(true)
  // Not in the C: the write copied every page of mem; smem kept its frames; mem reads 0xff.
  expect(mem.read(memRange).equals(Buffer.alloc(memRange.length, 0xff)), 'mem reads back its write').toBe(true)
  if (isRoot) {
    expect(pagemap.entries(smem, smemRange).pfns, 'smem still maps its frames').toEqual(smemPfns)
    const after = pagemap.entries(mem, memRange).pfns
    expect(after.some((pfn, i) => pfn === smemPfns[i]), 'no page of mem still maps a frame of smem').toBe(false)
  }
}

function withZeropage(): Pair {
  const mem = track(Region.anonymous(pageSize))
  const smem = track(Region.anonymous(pageSize, { prot: 'r' }))
  // Read from the page to populate the shared zeropage.
  mem.read()
  smem.read()
  const sharedFrames = features().zeroPage
  if (isRoot && sharedFrames) expect(pagemap.entries(mem).pfns[0], 'the read mapped the shared zeropage').toBe(pagemap.zeroPfn())
  return { mem, memRange: whole(pageSize), smem, smemRange: whole(pageSize), sharedFrames }
}

function withMemfd(): Pair {
  // memfd_create + fallocate(pagesize): Region.memfd is the MAP_SHARED mapping (smem), the
  // private mapping goes through /proc/self/fd like any other file.
  const smem = track(Region.memfd(pageSize, { name: 'test' }))
  const mem = track(Region.file(`/proc/self/fd/${smem.fd}`, { prot: 'rw' }))
  mem.read()
  smem.read()
  return { mem, memRange: whole(pageSize), smem, smemRange: whole(pageSize) }
}

function withTmpfile(): Pair {
  // tmpfile(): a one-page file of zeros. Deviation: smem is a *private* read-only mapping (Region.file
  // maps MAP_PRIVATE); unwritten, it maps the same page-cache frame a shared one would.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'memdedup-cow-'))
  const file = path.join(dir, 'tmpfile')
  fs.writeFileSync(file, Buffer.alloc(pageSize))
  try {
    const mem = track(Region.file(file, { prot: 'rw' }))
    const smem = track(Region.file(file, { prot: 'r' }))
    mem.read()
    smem.read()
    return { mem, memRange: whole(pageSize), smem, smemRange: whole(pageSize) }
  } finally {
    fs.rmSync(dir, { recursive: true })
  }
}

function hugeZeropageEnabled(): boolean {
  try {
    return fs.readFileSync('/sys/kernel/mm/transparent_hugepage/use_zero_page', 'utf8').trim() === '1'
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return false // detect_huge_zeropage(): no such knob, no huge zeropage
    throw error
  }
}

/** A PMD-aligned range inside a Region twice the PMD size (the C's mmap + align). */
function pmdAligned(region: Region): Range {
  const misalign = Number(region.address % BigInt(pmdsize))
  return { offset: misalign === 0 ? 0 : pmdsize - misalign, length: pmdsize }
}

function withHugeZeropage(ctx: { skip(note?: string): never }): Pair {
  if (noThp) ctx.skip(noThp)
  if (!hugeZeropageEnabled()) ctx.skip('Huge zeropage not enabled')
  const mem = track(Region.anonymous(2 * pmdsize))
  const smem = track(Region.anonymous(2 * pmdsize, { prot: 'r' }))
  const memRange = pmdAligned(mem)
  const smemRange = pmdAligned(smem)
  mem.advise('hugepage', memRange)
  smem.advise('hugepage', smemRange)
  // Read from the first sub-page and test if we get another sub-page populated automatically.
  mem.read({ offset: memRange.offset, length: pageSize })
  smem.read({ offset: smemRange.offset, length: pageSize })
  const second = (range: Range): Range => ({ offset: range.offset + pageSize, length: pageSize })
  if (!pagemap.entries(mem, second(memRange)).present(0) || !pagemap.entries(smem, second(smemRange)).present(0)) {
    ctx.skip('Did not get THPs populated')
  }
  // mm_forbids_zeropage() forbids the huge zero page with the small one (do_huge_pmd_anonymous_page):
  // where read faults map private pages, each mapping read-faulted a THP of its own.
  return { mem, memRange, smem, smemRange, sharedFrames: features().zeroPage }
}

describe('cow: Non-anonymous memory tests in private mappings', () => {
  it('Basic COW ... with shared zeropage', (ctx) => {
    testCow(withZeropage())
    // The C's check ran (and passes vacuously): each mapping read-faulted a page of its own.
    if (!features().zeroPage) ctx.skip('this kernel maps no shared zero page on read faults: no shared frame to copy on write')
  })
  it('Basic COW ... with memfd', () => testCow(withMemfd()))
  it('Basic COW ... with tmpfile', () => testCow(withTmpfile()))
  it('Basic COW ... with huge zeropage', (ctx) => {
    testCow(withHugeZeropage(ctx))
    if (!features().zeroPage) ctx.skip('this kernel maps no shared zero page on read faults, huge or not: no shared frame to copy on write')
  })
  for (const size of hugetlbSizesKb()) it.skip(`Basic COW ... with memfd hugetlb (${size} kB)${hugetlbSkip}`, () => {})
  for (const desc of ['R/O longterm GUP pin', 'R/O longterm GUP-fast pin']) {
    it.skip(`${desc} ... with shared zeropage, memfd, tmpfile, huge zeropage, memfd hugetlb${gupSkip}`, () => {})
  }
})

// ---- Not in the C: a KSM page is a shared frame like the zeropage --------------------------------
describe('cow: Not in the C: KSM', () => {
  const state = new KsmState()
  let releaseLock: (() => void) | undefined
  const why = !probe().ksm ? ` — skipped: no KSM on ${os.release()}` : rootSkip || (ksmSettingsDenied() && ` — skipped: ${ksmSettingsDenied()}`)
  beforeAll(async () => {
    if (!why) releaseLock = await acquireKsmLock()
  }, ksmLockTimeoutMs + 10_000)
  afterAll(() => {
    state.restore()
    releaseLock?.()
  })

  it.skipIf(Boolean(why))(`Basic COW ... with KSM page${why}`, async (ctx) => {
    const mem = track(Region.anonymous(pageSize))
    const smem = track(Region.anonymous(pageSize))
    mem.bytes.fill(0x5a)
    smem.bytes.fill(0x5a)
    ksm.enable(mem)
    ksm.enable(smem)
    state.set(fastKsmd)
    state.set({ run: 1 })
    const same = () => pagemap.entries(mem).pfns[0] === pagemap.entries(smem).pfns[0]
    if (!(await state.until(same, 4))) {
      // ksmd's full scans are shared with every other KSM user of the machine (a lab VM on the host).
      const others = foreignKsmUsers()
      if (others.length > 0) ctx.skip(`ksmd did not merge within 4 full scans while ${others.map((u) => `pid ${u.pid} (${u.rmapItems} rmap items)`).join(', ')} also use it`)
      expect.fail('ksmd merged the two pages into one frame')
    }
    testCow({ mem, memRange: whole(pageSize), smem, smemRange: whole(pageSize) })
    ksm.disable(mem)
    ksm.disable(smem)
  })
})
