// Port of tools/testing/selftests/mm/ksm_tests.c (Debian linux-source-6.12), the functional modes
// as run_vmtests.sh runs them: -M -p 10, -U, -Z -p 10 -z 0, -Z -p 10 -z 1, -N -m 1, -N -m 0.
// The exact expectations on the global counters pages_shared / pages_sharing are the C's
// (assert_ksm_pages_count); this port adds the per-process and per-page truth behind them:
// /proc/self/ksm_stat and the PFNs of the region, and compares the memory byte for byte.
// The performance modes (-P, -H, -D, -C) are benchmarks: bench/ksm.bench.mjs.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import fs from 'node:fs'
import { Region, ksm, pagemap, pageSize } from '../../lib/index.ts'
import {
  KsmState,
  acquireKsmLock,
  fastKsmd,
  ksmLockTimeoutMs,
  firstMismatch,
  foreignKsmUsers,
  ksmdTimeoutMs,
  ksmSysfs,
  memoryNodes,
  probe,
  waitForExclusiveKsm,
} from '../helpers/ksm.ts'

const KSM_PAGE_COUNT_DEFAULT = 10
/** '*' — the C fills duplicate pages with it. */
const FILL = 0x2a

const state = new KsmState()
let releaseLock: (() => void) | undefined
const regions: Region[] = []

beforeAll(async () => {
  releaseLock = await acquireKsmLock()
}, ksmLockTimeoutMs + 10_000)

afterAll(() => {
  releaseLock?.()
})

beforeEach(async (ctx) => {
  // access(KSM_SYSFS_PATH) → ksft_exit_skip("Config KSM not enabled").
  if (!probe().ksm) ctx.skip(`Config KSM not enabled (no ${ksmSysfs} on ${probe().kernelRelease})`)
  // The C assumes it is ksmd's only user; with a second one its exact global counts cannot hold.
  await waitForExclusiveKsm()
  // main(): save the tunables (ksm_save_def; KsmState keeps what each knob was), then
  // run=2, sleep_millisecs=0, merge_across_nodes=1 where NUMA exists, pages_to_scan=page_count.
  // pages_to_scan is raised to fastKsmd's batch: it only shortens a full scan, and keeps ksmd fast
  // if some other process on the machine has mergeable memory too.
  state.set({ run: 2 })
  state.set({
    ...fastKsmd,
    sleepMillisecs: 0,
    ...(fs.existsSync(`${ksmSysfs}/merge_across_nodes`) ? { mergeAcrossNodes: 1 } : {}),
  })
})

afterEach(() => {
  for (const region of regions.splice(0)) region.close()
  state.restore() // ksm_restore()
})

/** allocate_memory(): map, fill with `data`, then apply `prot` (the C maps PROT_WRITE first). */
function allocateMemory(data: number, size: number): Region {
  const map = Region.anonymous(size)
  regions.push(map)
  map.bytes.fill(data)
  map.protect('rw')
  return map
}

/** ksm_merge_pages() with KSM_MERGE_MADVISE: MADV_MERGEABLE, run=1, at least 2 full scans. */
async function ksmMergePages(map: Region): Promise<void> {
  ksm.enable(map)
  await state.merge()
}

interface Counts {
  pagesShared: number
  pagesSharing: number
  maxPageSharing: number
}

/** assert_ksm_pages_count() of ksm_tests.c, verbatim: what the global counters must say. */
function ksmPagesCountHolds(duplPageCount: number, { pagesShared, pagesSharing, maxPageSharing }: Counts): boolean {
  // With max_page_sharing sharers per KSM page, a remainder of 1 leaves one page unmerged: then
  // pages_shared and pages_sharing are those of dupl_page_count - 1 pages.
  if (duplPageCount % maxPageSharing === 1 || duplPageCount % maxPageSharing === 0) {
    return pagesShared === Math.floor(duplPageCount / maxPageSharing) && pagesSharing === pagesShared * (maxPageSharing - 1)
  }
  return pagesShared === Math.floor(duplPageCount / maxPageSharing) + 1 && pagesSharing === duplPageCount - pagesShared
}

function expectKsmPagesCount(duplPageCount: number): void {
  const s = ksm.stats()
  const counts = { pagesShared: s.pagesShared, pagesSharing: s.pagesSharing, maxPageSharing: s.maxPageSharing ?? 256 }
  // The C's debug output (ksm_print_sysfs, ksm_print_procfs), shown when the check fails.
  const holds = ksmPagesCountHolds(duplPageCount, counts)
  if (holds) return
  const debug = JSON.stringify({ sysfs: s, procfs: ksm.processStats() })
  const others = foreignKsmUsers()
  const note = others.length ? `\nother KSM users appeared during the test: ${JSON.stringify(others)}` : ''
  expect(holds, `assert_ksm_pages_count(${duplPageCount}) with ${JSON.stringify(counts)}\n${debug}${note}`).toBe(true)
}

/** The page-table truth behind a merge of `pages` identical pages: one PFN per KSM page. */
function expectMergedPfns(map: Region, pages: number): void {
  const entries = pagemap.entries(map)
  const maxPageSharing = ksm.stats().maxPageSharing ?? 256
  expect(entries.count(1 /* present */), 'every page is mapped').toBe(pages)
  expect(entries.distinctPfns(), `${pages} identical pages share ceil(${pages}/${maxPageSharing}) PFNs`).toBe(Math.ceil(pages / maxPageSharing))
}

describe('ksm_tests', () => {
  it('check_ksm_merge (-M -p 10): KSM merging', async () => {
    const pageCount = KSM_PAGE_COUNT_DEFAULT
    // fill pages with the same data and merge them
    const map = allocateMemory(FILL, pageSize * pageCount)
    await ksmMergePages(map)

    // verify that the right number of pages are merged
    expectKsmPagesCount(pageCount)
    expect(ksm.processStats().ksmMergingPages, 'ksm_merging_pages of this process').toBe(pageCount)
    expectMergedPfns(map, pageCount)
    expect(firstMismatch(map, () => FILL), 'content after merging').toBe(-1)
  })

  it('check_ksm_unmerge (-U): KSM unmerging', async () => {
    const pageCount = 2
    // fill pages with the same data and merge them
    const map = allocateMemory(FILL, pageSize * pageCount)
    await ksmMergePages(map)
    // Not in the C: without a merge first, "0 pages merged" below would prove nothing.
    expectKsmPagesCount(pageCount)
    expectMergedPfns(map, pageCount)

    // change 1 byte in each of the 2 pages -- KSM must automatically unmerge them
    map.bytes[0] = '-'.charCodeAt(0)
    map.bytes[pageSize] = '+'.charCodeAt(0)

    // get at least 1 scan, so KSM can detect that the pages were modified
    await state.scans(1)

    // check that unmerging was successful and 0 pages are currently merged
    expectKsmPagesCount(0)
    expect(pagemap.entries(map).distinctPfns(), 'each page has its own PFN again').toBe(pageCount)
    expect(ksm.processStats().ksmMergingPages, 'ksm_merging_pages of this process').toBe(0)
    const expected = (offset: number) => (offset === 0 ? 0x2d : offset === pageSize ? 0x2b : FILL)
    expect(firstMismatch(map, expected), 'content after unmerging').toBe(-1)
  })

  for (const useZeroPages of [false, true]) {
    it(`check_ksm_zero_page_merge (-Z -p 10 -z ${Number(useZeroPages)}): KSM zero page merging`, async () => {
      const pageCount = KSM_PAGE_COUNT_DEFAULT
      state.set({ useZeroPages })

      // fill pages with zero and try to merge them
      const map = allocateMemory(0, pageSize * pageCount)
      // Not in the C: the pages really are written, not the shared zero page already.
      const zero = pagemap.zeroPfn()
      expect(pagemap.entries(map).pfns.some((pfn) => pfn === zero), 'memset(0) populated private pages').toBe(false)
      await ksmMergePages(map)

      // verify that the right number of pages are merged:
      // 1) if use_zero_pages is set to 1, empty pages are merged
      //    with the kernel zero page instead of with each other;
      // 2) if use_zero_pages is set to 0, empty pages are not treated specially
      //    and merged as usual.
      if (useZeroPages) {
        expectKsmPagesCount(0)
        const entries = pagemap.entries(map)
        expect(entries.pfns.every((pfn) => pfn === zero), 'every page maps the kernel zero page').toBe(true)
        const stat = ksm.processStats()
        if (stat.ksmZeroPages !== undefined) expect(stat.ksmZeroPages, '/proc/self/ksm_stat ksm_zero_pages').toBe(pageCount)
      } else {
        expectKsmPagesCount(pageCount)
        expectMergedPfns(map, pageCount)
        expect(pagemap.entries(map).pfns[0], 'merged with each other, not with the zero page').not.toBe(zero)
      }
      expect(firstMismatch(map, () => 0), 'content after merging').toBe(-1)
    })
  }

  for (const mergeAcrossNodes of [1, 0]) {
    it(`check_ksm_numa_merge (-N -m ${mergeAcrossNodes}): KSM NUMA merging`, (ctx) => {
      const nodes = memoryNodes()
      if (nodes.length < 2) ctx.skip(`At least 2 NUMA nodes with memory must be available (this machine has ${nodes.length}: node ${nodes.join(', ')})`)
      ctx.skip('memdedup has no mbind()/numa_alloc_onnode() binding to place one page on each node')
    })
  }
})
