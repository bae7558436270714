// KSM-merged and SKSM-merged pages moved by mremap(), then pushed through the rmap walkers:
// the test David Hildenbrand asked for in the MREMAP_RELOCATE_ANON thread (seed 003), which no
// upstream selftest has (selftests/mm/rmap.c only migrates KSM pages in place). Written so it maps
// one to one onto a C selftest: every step is a syscall on a fixed layout, and every check reads
// the kernel's own accounting (/proc/self/pagemap PFNs, /proc/kpageflags KPF_KSM, ksm_stat,
// /sys/kernel/mm/ksm).
//
// Layout: `r` (8 pages of random content, unique on the machine) and `twin` (the same 8 pages)
// are merged: ksmd (MADV_MERGEABLE) or madvise(MADV_MERGE) (SKSM, lab kernel only). Then r moves:
//   maymove   r.remap(16 pages): mremap(MREMAP_MAYMOVE), the kernel picks the address
//   fixed     MREMAP_MAYMOVE | MREMAP_FIXED into a Reservation
//   dontunmap MREMAP_MAYMOVE | MREMAP_DONTUNMAP (the source VMA stays, empty)
//   partial   the last 4 pages only, MREMAP_FIXED: splits r's VMA
// What the kernel does: for VM_MERGEABLE (ksmd's) ranges, move_vma() calls
// ksm_madvise(MADV_UNMERGEABLE) on the moved range first (6.12 and 6.18 alike), so present KSM
// pages are unmerged (COW-copied) before they move. The lab kernel moves the rmap_items with the
// page tables instead (kernel-patches/0041), so MADV_MERGE's pages stay merged across the move and
// rmap_walk_ksm() finds them at the new address. Pages not moved stay merged. Then: re-merge at
// the new address, a COW write, MADV_COLD, MADV_PAGEOUT (swap: lab VM only), unmerge
// (MADV_UNMERGEABLE, run=2).
//
// The move that unmerging cannot cover: a KSM page that is swapped out when the move happens.
// break_ksm() walks present PTEs only, so the swap entry moves with the VMA while the folio stays
// in the swap cache with its stable node; swap-in at the new address maps the KSM folio again
// (ksm_might_need_to_copy() keeps a folio that still has a stable node). Upstream its rmap_item
// still names the old address: reclaim, migration and run=2 miss it. The lab kernel moved the
// item with the swap entry: the last test requires every rmap walker to find it there.
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import { afterAll, afterEach, beforeAll, describe, expect, it, type TestContext } from 'vitest'
import { Region, ksm, pagemap, pageSize, sksm, type Reservation } from '../../lib/index.ts'
import { errorCode } from '../helpers/errors.ts'
import { KsmState, acquireKsmLock, fastKsmd, inVm, kpfKsmWorks, ksmFlags, ksmLockTimeoutMs, ksmSettingsDenied, probe, skipUnlessKsmSettings } from '../helpers/ksm.ts'

const P = pageSize
const PAGES = 8
type Merger = 'ksm' | 'sksm'
type Move = 'maymove' | 'fixed' | 'dontunmap' | 'partial'

// ksmd's full scan covers every process's mergeable memory: minutes on a busy host.
const timeout = inVm ? 600_000 : 300_000
const state = new KsmState()
let releaseLock: (() => void) | undefined
const owned: (Region | Reservation)[] = []
const track = <T extends Region | Reservation>(x: T): T => (owned.push(x), x)
const swapOn = (() => {
  try {
    return fs.readFileSync('/proc/swaps', 'utf8').trim().split('\n').length > 1
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return false // CONFIG_SWAP off
    throw error
  }
})()

beforeAll(async () => {
  // Every test writes ksmd's settings (run): without write access they all skip, nothing to lock.
  if (!ksmSettingsDenied()) releaseLock = await acquireKsmLock()
}, ksmLockTimeoutMs + 10_000)
afterAll(() => releaseLock?.())
afterEach(() => {
  for (const x of owned.splice(0).reverse()) x.close()
  state.restore()
})

function skipUnless(ctx: TestContext, merger: Merger): void {
  const p = probe()
  if (!p.ksm) ctx.skip(`CONFIG_KSM is off on ${p.kernelRelease}`)
  skipUnlessKsmSettings(ctx)
  if (!p.pfnsVisible) ctx.skip('/proc/self/pagemap hides PFNs (needs CAP_SYS_ADMIN): no PFN check could fail')
  if (merger === 'sksm' && !sksm.available()) ctx.skip(`kernel ${os.release()} has no SKSM (madvise(MADV_MERGE) is EINVAL); the lab VM runs this`)
}

interface PageState {
  pfn: bigint
  present: boolean
  swapped: boolean
  /** KPF_KSM, or null where /proc/kpageflags cannot tell (see kpfKsmWorks). */
  ksm: boolean | null
}
function pages(region: Region): PageState[] {
  const e = pagemap.entries(region)
  const flags = kpfKsmWorks() ? ksmFlags(e.pfns) : null
  return Array.from({ length: e.length }, (_, i) => ({ pfn: e.pfns[i], present: e.present(i), swapped: e.swapped(i), ksm: flags ? flags[i] : null }))
}

/** Content byte for byte: `region` page i holds content page (first + i). */
function expectContent(region: Region, content: Buffer, first = 0, what = ''): void {
  const data = region.read()
  for (let i = 0; i < region.pages; i++) {
    const want = content.subarray((first + i) * P, (first + i + 1) * P)
    expect(data.subarray(i * P, (i + 1) * P).equals(want), `${what} page ${i} content`).toBe(true)
  }
}

/** The r pages `which` share their PFN with twin page (first + i) and are KSM pages. */
function expectMergedWithTwin(region: Region, twin: Region, which: number[], first = 0, what = ''): void {
  const mine = pages(region)
  const theirs = pages(twin)
  for (const i of which) {
    if (mine[i].ksm !== null) expect(mine[i].ksm, `${what} page ${i} is a KSM page`).toBe(true)
    expect(mine[i].pfn, `${what} page ${i} shares the twin's PFN`).toBe(theirs[first + i].pfn)
  }
}

/** ksm_stat and sysfs agree with what the page tables map: never fewer counted than mapped. */
function expectCountersCover(regions: Region[], what: string): void {
  // KSM pages mapped: by KPF_KSM, or (where it cannot tell) pages whose PFN is mapped twice.
  const all = regions.flatMap(pages).filter((p) => p.present)
  const seen = new Map<bigint, number>()
  for (const p of all) seen.set(p.pfn, (seen.get(p.pfn) ?? 0) + 1)
  const mapped = all.filter((p) => (p.ksm === null ? seen.get(p.pfn)! > 1 : p.ksm)).length
  const mine = ksm.processStats().ksmMergingPages
  const s = ksm.stats()
  expect(mine, `${what}: ksm_merging_pages ${mine} >= ${mapped} KSM pages mapped`).toBeGreaterThanOrEqual(mapped)
  expect(s.pagesShared + s.pagesSharing, `${what}: pages_shared + pages_sharing >= ksm_merging_pages`).toBeGreaterThanOrEqual(mine)
}

/** Merge r's pages `which` with the twin's: ksmd, or MADV_MERGE now. */
async function merge(merger: Merger, region: Region, twin: Region, which: number[], first = 0): Promise<void> {
  if (merger === 'sksm') {
    sksm.merge(twin)
    sksm.merge(region)
  } else {
    const done = () => {
      const mine = pages(region)
      const theirs = pages(twin)
      return which.every((i) => mine[i].ksm !== false && mine[i].pfn === theirs[first + i].pfn)
    }
    // Up to 3 rounds: on a shared host another process's run=2 (or run=0) can drop this mm from
    // ksmd's list; MADV_MERGEABLE on VMAs already VM_MERGEABLE would not register it again, so a
    // round that merged nothing re-registers (MADV_UNMERGEABLE + MADV_MERGEABLE) first.
    let merged = false
    for (let round = 0; round < 3 && !merged; round++) {
      if (round > 0 && ksm.processStats().ksmRmapItems === 0) {
        ksm.disable(twin)
        ksm.disable(region)
      }
      ksm.enable(twin)
      ksm.enable(region)
      state.set({ ...fastKsmd, run: 1 })
      merged = await state.until(done, 4)
    }
    if (!merged) {
      const fmt = (ps: PageState[]) => ps.map((p) => `${p.pfn}${p.ksm ? 'k' : ''}`).join(' ')
      expect.fail(`ksmd did not merge r pages ${which} (first ${first}) with the twin's in 3 x 4 full scans: r ${fmt(pages(region))}; twin ${fmt(pages(twin))}; ksm_stat ${JSON.stringify(ksm.processStats())}`)
    }
    state.set({ run: 0 }) // keep what follows deterministic: nothing merges behind our back
  }
  expectMergedWithTwin(region, twin, which, first, `${merger} merge`)
}

const all = Array.from({ length: PAGES }, (_, i) => i)
const range = (from: number, to: number) => all.slice(from, to)

describe.each(['ksm', 'sksm'] as const)('%s-merged pages', (merger) => {
  it.for(['maymove', 'fixed', 'dontunmap', 'partial'] as Move[])('mremap %s, re-merge, COW, MADV_COLD, MADV_PAGEOUT, unmerge', { timeout }, async (move, ctx) => {
    skipUnless(ctx, merger)
    state.saveProcessMerge()
    state.set({ run: merger === 'ksm' ? 0 : 1 }) // SKSM needs no ksmd; KSM starts it in merge()
    const content = crypto.randomBytes(PAGES * P)
    const twin = track(Region.anonymous(PAGES * P))
    twin.bytes.set(content)
    let r = track(Region.anonymous(PAGES * P))
    r.bytes.set(content)
    const reservation = track(Region.reserve(4 * PAGES * P))
    await merge(merger, r, twin, all)
    // Region.read() copies through /proc/self/mem: it must not unmerge what it reads (it did
    // through process_vm_readv, whose FOLL_PIN unshares KSM pages; native/mm.cc ReadOwnMemory).
    expectContent(r, content, 0, 'read() of merged pages')
    expectMergedWithTwin(r, twin, all, 0, 'after read()')
    const merged = ksm.processStats().ksmMergingPages
    expect(merged, 'ksm_merging_pages counts r and twin').toBeGreaterThanOrEqual(2 * PAGES)
    expectCountersCover([r, twin], 'after merging')

    // 1. The move. `moved` = the Region now holding content pages [first, first + moved.pages).
    let moved: Region
    let first = 0
    let stayed: Region | undefined
    if (move === 'maymove') {
      const before = r.address
      moved = track(r.remap(2 * PAGES * P))
      if (moved.address === before) ctx.annotate('grew in place: nothing moved')
    } else if (move === 'fixed') {
      moved = track(r.remap(PAGES * P, { fixed: { into: reservation, offset: PAGES * P } }))
    } else if (move === 'dontunmap') {
      moved = track(r.remap(PAGES * P, { dontUnmap: true }))
      stayed = r
    } else {
      const [head, tail] = r.split(4 * P)
      track(head)
      stayed = head
      first = 4
      moved = track(tail.remap(4 * P, { fixed: { into: reservation, offset: 2 * PAGES * P } }))
    }
    const movedPages = range(0, move === 'partial' ? 4 : PAGES)
    const view = move === 'maymove' ? Region.prototype.read.call(moved, { offset: 0, length: PAGES * P }) : moved.read()
    for (const i of movedPages) expect(view.subarray(i * P, (i + 1) * P).equals(content.subarray((first + i) * P, (first + i + 1) * P)), `moved page ${i}`).toBe(true)
    // ksmd's pages: unmerged before the move (move_vma -> ksm_madvise(MADV_UNMERGEABLE)).
    // MADV_MERGE's: still merged, their rmap_items moved with them (lab 0041; v2 copied every page).
    if (!(move === 'maymove' && moved.address === r.address)) {
      if (merger === 'ksm') {
        const after = pages(moved)
        const theirs = pages(twin)
        for (const i of movedPages) {
          if (after[i].ksm !== null) expect(after[i].ksm, `${move}: moved page ${i} was unmerged before the move`).toBe(false)
          expect(after[i].pfn === theirs[first + i].pfn, `${move}: moved page ${i} has its own PFN`).toBe(false)
        }
      } else expectMergedWithTwin(moved, twin, movedPages, first, `${move}: MADV_MERGE's pages stay merged across mremap`)
    }
    if (move === 'partial') {
      expectContent(stayed!, content, 0, 'unmoved head')
      expectMergedWithTwin(stayed!, twin, range(0, 4), 0, 'unmoved head') // not moved: still merged
    }
    if (move === 'dontunmap') expect(stayed!.read().every((b) => b === 0), 'DONTUNMAP source is empty').toBe(true)
    expectCountersCover([moved, twin, ...(stayed ? [stayed] : [])], `after mremap ${move}`)

    // 2. Merge again at the new address: rmap_items now name the new addresses.
    const region = move === 'maymove' && moved.pages > PAGES ? track(moved.split(PAGES * P)[0]) : moved
    await merge(merger, region, twin, movedPages, first)
    expectCountersCover([region, twin], 're-merged')

    const pfnsBeforeCow = pages(region).map((p) => p.pfn)
    // 3. COW: the twin writes its copy of page 0 (r's page 0 stays a KSM page, mapped once); r writes page 1.
    const twinView = twin.bytes
    twinView[(first + 0) * P] ^= 0xff
    const rv = region.bytes
    rv[1 * P] ^= 0xff
    rv[1 * P] ^= 0xff // same content again, now a private page
    expectContent(region, content, first, 'after COW')
    const afterCow = pages(region)
    const beforeCow = pfnsBeforeCow
    expect(afterCow[0].pfn, 'page 0 keeps the KSM page (the twin took the copy)').toBe(beforeCow[0])
    expect(afterCow[1].pfn === beforeCow[1], 'page 1: a private copy after its write').toBe(false)
    if (afterCow[0].ksm !== null) expect(afterCow[0].ksm, 'page 0: KSM page mapped once after the twin COWed').toBe(true)
    if (afterCow[1].ksm !== null) expect(afterCow[1].ksm, 'page 1: private after its write').toBe(false)
    expectCountersCover([region, twin], 'after COW')

    // 4. MADV_COLD: deactivates, changes no mapping.
    region.advise('cold')
    expect(pages(region).map((p) => p.pfn)).toEqual(afterCow.map((p) => p.pfn))
    expectContent(region, content, first, 'after MADV_COLD')

    // 5. MADV_PAGEOUT: reclaim unmaps through rmap (rmap_walk_ksm for KSM pages). Shared folios
    // are skipped (folio_likely_mapped_shared); pages mapped once go to swap.
    if (swapOn) {
      region.advise('pageout')
      const out = pages(region)
      expect(out[0].swapped, 'page 0 (KSM, mapped once) went to swap: rmap_walk_ksm found its mapping').toBe(true)
      expect(out[1].swapped, 'page 1 (private) went to swap').toBe(true)
      for (const i of movedPages.slice(2)) expect(out[i].present && out[i].pfn === afterCow[i].pfn, `page ${i} (KSM, shared with the twin) stays`).toBe(true)
      expectContent(region, content, first, 'after swap-in') // read() faults them back in
      expectCountersCover([region, twin], 'after MADV_PAGEOUT + swap-in')
    } else ctx.annotate('MADV_PAGEOUT step skipped: no swap on this machine (/proc/swaps)')

    // 6. Unmerge: MADV_UNMERGEABLE (KSM) / the same on an SKSM range, then run=2 for everything.
    if (merger === 'ksm') ksm.disable(region)
    else ksm.disable(region) // ksm_madvise(MADV_UNMERGEABLE) also undoes MADV_MERGE
    const twinNow = pages(twin)
    for (const [i, p] of pages(region).entries()) {
      if (p.ksm !== null) expect(p.ksm, `page ${i}: no KSM page left in r after MADV_UNMERGEABLE`).toBe(false)
      expect(p.pfn === twinNow[first + i].pfn, `page ${i}: own PFN after MADV_UNMERGEABLE`).toBe(false)
    }
    expectContent(region, content, first, 'after unmerge')
    state.set({ run: 2 })
    if (kpfKsmWorks()) expect(pages(twin).every((p) => !p.ksm), 'run=2 unmerged the twin').toBe(true)
    expect(ksm.processStats().ksmMergingPages, 'ksm_merging_pages after run=2').toBe(0)
    expectContent(twin, Buffer.concat([content.subarray(0, first * P), Buffer.from(twinView.subarray(first * P, (first + 1) * P)), content.subarray((first + 1) * P)]), 0, 'twin')
    void view
  })

  it('a KSM page swapped out while mremap moves it: swap-in, MADV_PAGEOUT, unmerge at the new address', { timeout }, async (ctx) => {
    skipUnless(ctx, merger)
    if (!swapOn) ctx.skip('needs swap (/proc/swaps is empty): the lab VM has a swap disk')
    state.saveProcessMerge()
    state.set({ run: merger === 'ksm' ? 0 : 1 })
    const content = crypto.randomBytes(PAGES * P)
    const twin = track(Region.anonymous(PAGES * P))
    twin.bytes.set(content)
    const r = track(Region.anonymous(PAGES * P))
    r.bytes.set(content)
    const reservation = track(Region.reserve(2 * PAGES * P))
    await merge(merger, r, twin, all)
    // Make every page of r a KSM page mapped once: the twin COWs all its pages.
    for (let i = 0; i < PAGES; i++) twin.bytes[i * P] ^= 0xff
    const merged = pages(r)
    if (kpfKsmWorks()) expect(merged.every((p) => p.ksm), 'r: KSM pages mapped once').toBe(true)
    r.advise('pageout')
    expect(pages(r).every((p) => p.swapped), 'every page of r went to swap (rmap_walk_ksm unmapped it)').toBe(true)
    // Move while swapped out: break_ksm() sees no present page, the swap entries move.
    const moved = track(r.remap(PAGES * P, { fixed: { into: reservation, offset: PAGES * P } }))
    expect(pages(moved).every((p) => p.swapped), 'the swap entries moved').toBe(true)
    expectContent(moved, content, 0, 'swapped in at the new address')
    const back = pages(moved)
    // Same PFN as before the pageout: the folio came back from the swap cache, still the KSM page
    // whose rmap_item names the old address (ksm_might_need_to_copy() keeps a folio with a stable node).
    const sameFolio = back.map((p, i) => p.pfn === merged[i].pfn)
    const kept = sameFolio.filter(Boolean).length
    if (kpfKsmWorks()) for (const [i, p] of back.entries()) if (sameFolio[i]) expect(p.ksm, `page ${i}: the swap-cache folio is still a KSM page`).toBe(true)
    expectCountersCover([moved], 'after swap-in at the new address')
    // Reclaim again: for those pages rmap_walk_ksm looks at rmap_item->address, the old one.
    moved.advise('pageout')
    const again = pages(moved)
    const stuck = again.filter((p, i) => sameFolio[i] && p.present).length
    const swappedAgain = again.filter((p, i) => sameFolio[i] && p.swapped).length
    expectContent(moved, content, 0, 'after the second pageout')
    const beforeRun2 = pages(moved)
    // run=2: ksmd's pages are unmerged by walking VM_MERGEABLE VMAs, SKSM's through their rmap_items.
    state.set({ run: 2 })
    const afterRun2 = pages(moved)
    const unmergedByRun2 = afterRun2.filter((p, i) => sameFolio[i] && p.pfn !== beforeRun2[i].pfn).length
    ksm.disable(moved)
    const afterDisable = pages(moved)
    if (kpfKsmWorks()) expect(afterDisable.every((p) => !p.ksm), 'MADV_UNMERGEABLE at the new address unmerges every page').toBe(true)
    expectContent(moved, content, 0, 'after unmerge')
    // The lab kernel moves rmap_items with swap entries (0041; SKSM in the kernel says it is the
    // lab's): every rmap walker finds the folio at the new address. Upstream only records it.
    if (sksm.available()) {
      expect(stuck, `${merger}: pages the second MADV_PAGEOUT could not unmap (their rmap_item names the old address)`).toBe(0)
      // run=2 reaches every KSM page still mapped there (a same PFN alone proves nothing: a freed
      // frame is often the next one allocated, so only KPF_KSM tells; lab 0045 makes it exact).
      if (kpfKsmWorks()) expect(afterRun2.filter((p) => p.ksm).length, `${merger}: KSM pages left at the new address after run=2`).toBe(0)
    }
    const summary = `${merger}: ${kept}/${PAGES} pages swapped in as the same KSM folio at the new address; ` +
      `second MADV_PAGEOUT: ${swappedAgain} swapped, ${stuck} stayed mapped; run=2 unmerged ${unmergedByRun2} of them` +
      (kpfKsmWorks() ? `; KSM pages left after run=2: ${afterRun2.filter((p) => p.ksm).length}` : ' (KPF_KSM unreliable here)')
    ctx.annotate(summary)
    console.log(`[ksm_mremap_rmap] ${summary}`)
  })
})
