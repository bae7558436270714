// Issue 20, items 3 and 4: what the library's own code does at the kernel's limits.
// - KSM fallback and vm.max_map_count: MADV_MERGEABLE splits a VMA at each end of a marked run, so
//   a Deduplicator keeps its marked runs within `vmaBudget` (coarser runs when it must: marking an
//   untouched or unique page is harmless for ksmd), and close()/untrack() give the VMAs back.
// - hugetlb holes: a hole punched in a hugetlb memfd whose huge page someone else took SIGBUSes
//   whoever touches it; hashPages() copies such memory through the kernel (EFAULT), never touches it.
// The crash reproducers run in a child process (test/helpers/child.ts): a regression kills the child,
// not vitest's worker.
import fs from 'node:fs'
import { describe, expect, it } from 'vitest'
import { Region, Deduplicator, features, pageSize as P } from '../lib/index.ts'
import { requires } from './helpers/env.mjs'
import { runChild } from './helpers/child.ts'
import { reserveHugePages, restoreHugePages } from './helpers/hugetlb.ts'
import { vmasIn } from './helpers/vma.ts'

const f = features()
const why = requires(f, ['uffdWpAsync', 'pagemapScan', 'ksm'])
const maxMapCount = Number(fs.readFileSync('/proc/sys/vm/max_map_count', 'utf8'))

/** Page ranges of the Region whose VMAs are MADV_MERGEABLE ("mg" in smaps), adjacent ones joined. */
function mergeableRanges(region: Region): [number, number][] {
  const entries = fs.readFileSync('/proc/self/smaps', 'utf8').split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)
  const start = region.address
  const end = start + BigInt(region.length)
  const out: [number, number][] = []
  for (const entry of entries) {
    if (!/ mg/.test(entry.split('VmFlags:')[1] ?? '')) continue
    const [s, e] = entry.split(' ')[0].split('-').map((x) => BigInt('0x' + x))
    if (s < start || e > end) continue
    const range: [number, number] = [Number((s - start) / BigInt(P)), Number((e - start) / BigInt(P))]
    if (out.length > 0 && out[out.length - 1][1] === range[0]) out[out.length - 1][1] = range[1]
    else out.push(range)
  }
  return out.sort((x, y) => x[0] - y[0])
}

/** Even pages: one content shared by all of them (twins); odd pages: untouched (not present). */
function everyOtherPageTwin(region: Region): void {
  // Small pages: a THP (the lab's THP mode) would fault the odd pages in with the even ones.
  if (fs.existsSync('/sys/kernel/mm/transparent_hugepage')) region.advise('nohugepage')
  for (let i = 0; i < region.pages; i += 2) region.bytes[i * P] = 7
}

describe.skipIf(why !== '')(`Deduplicator KSM fallback within vm.max_map_count${why}`, () => {
  it('140k pages, every other page untouched: one pass stays within the VMA budget, close() gives the VMAs back (child)', () => {
    // Before the budget: a VMA per twin (70k runs, 140k VMAs) hit vm.max_map_count (65530), and
    // V8, unable to map its heap, aborted (std::bad_alloc) or crashed (SIGSEGV).
    const run = runChild(`
      import fs from 'node:fs'
      const { Region, Deduplicator, pageSize: P } = lib
      const processVmas = () => fs.readFileSync('/proc/self/maps', 'latin1').split('\\n').filter(Boolean).length
      const regionVmas = (r) => {
        const start = r.address, end = r.address + BigInt(r.length)
        return fs.readFileSync('/proc/self/maps', 'latin1').split('\\n').filter(Boolean).filter((line) => {
          const [s, e] = line.split(' ')[0].split('-').map((x) => BigInt('0x' + x))
          return e > start && s < end
        }).length
      }
      const pages = 140_000
      const r = Region.anonymous(pages * P)
      // Small pages: a THP (the lab's THP mode) would fault the odd pages in with the even ones.
      if (fs.existsSync('/sys/kernel/mm/transparent_hugepage')) r.advise('nohugepage')
      for (let i = 0; i < pages; i += 2) r.bytes[i * P] = 7
      const before = { process: processVmas(), region: regionVmas(r) }
      const d = new Deduplicator({ merge: 'ksm', stablePasses: 1 })
      d.track(r)
      // Before the budget, madvise ran out of VMAs (EAGAIN/ENOMEM): the pass threw, or V8 crashed
      // making the error. The process then goes on, as a program would, and V8 needs to map memory.
      let report = null
      let passError = null
      try {
        report = d.pass()
      } catch (error) {
        if (error.code !== 'EAGAIN' && error.code !== 'ENOMEM') throw error
        passError = error.message
      }
      const afterPass = { process: processVmas(), region: regionVmas(r) }
      d.close()
      const afterClose = { process: processVmas(), region: regionVmas(r) }
      const keep = []
      for (let i = 0; i < 256; i++) keep.push(new Array(100_000).fill(i))
      console.log(JSON.stringify({ before, afterPass, afterClose, report, passError, kept: keep.length, vmaBudget: d.vmaBudget }))
    `)
    const { before, afterPass, afterClose, report, passError, vmaBudget } = run.result
    expect(passError).toBeNull()
    expect(vmaBudget).toBe(Math.min(1024, Math.floor(maxMapCount / 8)))
    expect(before.region).toBe(1)
    expect(report.duplicatePages).toBe(70_000)
    expect(report).toMatchObject({ markedPages: 70_000, mergedPages: 0 }) // every twin marked, in coarser runs; ksmd merges
    expect(report.coarsenedPages).toBeGreaterThan(0)
    expect(report.markedRuns).toBeLessThanOrEqual(vmaBudget / 2)
    expect(afterPass.region).toBeLessThanOrEqual(1 + vmaBudget)
    expect(afterPass.process - before.process).toBeLessThanOrEqual(vmaBudget + 16) // + the index, V8
    expect(afterClose.region).toBe(1)
    // V8 may have mapped a few heap pages meanwhile; the marking's VMAs are all gone.
    expect(afterClose.process - before.process).toBeLessThanOrEqual(8)
  })

  it('vmaBudget: min(1024, vm.max_map_count / 8) by default; an integer from 2 to vm.max_map_count / 2', () => {
    using dedup = new Deduplicator({ merge: 'ksm' })
    expect(dedup.vmaBudget).toBe(Math.min(1024, Math.floor(maxMapCount / 8)))
    using small = new Deduplicator({ merge: 'ksm', vmaBudget: 2 })
    expect(small.vmaBudget).toBe(2)
    expect(() => new Deduplicator({ merge: 'ksm', vmaBudget: 1 })).toThrow(RangeError)
    expect(() => new Deduplicator({ merge: 'ksm', vmaBudget: 2.5 })).toThrow(RangeError)
    expect(() => new Deduplicator({ merge: 'ksm', vmaBudget: Math.floor(maxMapCount / 2) + 1 })).toThrow(RangeError)
    expect(() => new Deduplicator({ merge: 'ksm', vmaBudget: '8' as never })).toThrow(TypeError)
  })

  it('a small vmaBudget coarsens the runs: every twin marked, at most vmaBudget / 2 runs, the extra pages reported', () => {
    using dedup = new Deduplicator({ merge: 'ksm', stablePasses: 1, vmaBudget: 8 })
    using a = Region.anonymous(64 * P)
    everyOtherPageTwin(a)
    dedup.track(a)
    const report = dedup.pass()
    expect(report).toMatchObject({ duplicatePages: 32, markedPages: 32, markedTotal: 32, mergedPages: 0, mergedTotal: 0 })
    const ranges = mergeableRanges(a)
    expect(ranges.length).toBeLessThanOrEqual(4)
    expect(report.markedRuns).toBe(ranges.length)
    expect(vmasIn(a.address, a.length).length).toBeLessThanOrEqual(1 + 8)
    for (let i = 0; i < 64; i += 2) expect(ranges.some(([s, e]) => s <= i && i < e), `twin page ${i} marked`).toBe(true)
    const marked = ranges.reduce((sum, [s, e]) => sum + e - s, 0)
    expect(report.coarsenedPages).toBe(marked - 32) // untouched pages between twins, marked to save VMAs
    // A hot page inside a run: unmarking it would split one more VMA than the budget allows, so it
    // stays in ksmd's sight (reported as coarsened); it still backs off and leaves markedTotal.
    const inner = ranges.find(([s, e]) => e - s >= 5)!
    const hotPage = inner[0] % 2 === 0 ? inner[0] + 2 : inner[0] + 3
    a.bytes[hotPage * P] = 9
    const hot = dedup.pass()
    expect(hot).toMatchObject({ writtenPages: 1, cowAfterMerge: 1, unmarkedPages: 0, markedTotal: 31 })
    expect(hot.coarsenedPages).toBeGreaterThanOrEqual(1)
    expect(mergeableRanges(a)).toEqual(ranges)
    // A hot page at a run's end: unmarking it splits nothing more, so it is unmarked.
    const edge = ranges[0][0]
    a.bytes[edge * P] = 9
    const cut = dedup.pass()
    expect(cut).toMatchObject({ writtenPages: 1, cowAfterMerge: 1, unmarkedPages: 1, markedTotal: 30 })
    expect(dedup.stats()).toMatchObject({ markedPages: 30, mergedPages: 0 })
    expect(mergeableRanges(a)[0]).toEqual([edge + 1, ranges[0][1]])
  })

  it('several Regions share one budget: each gets its share, together they stay within it', () => {
    using dedup = new Deduplicator({ merge: 'ksm', stablePasses: 1, vmaBudget: 12 })
    using a = Region.anonymous(64 * P)
    using b = Region.anonymous(64 * P)
    using c = Region.anonymous(64 * P)
    for (const r of [a, b, c]) everyOtherPageTwin(r)
    dedup.track(a)
    dedup.track(b)
    dedup.track(c)
    const report = dedup.pass()
    expect(report).toMatchObject({ duplicatePages: 96, markedPages: 96, mergedPages: 0 })
    expect(report.markedRuns).toBeLessThanOrEqual(6)
    for (const r of [a, b, c]) expect(mergeableRanges(r).length).toBeLessThanOrEqual(2)
    // One Region leaves: the others may use its share on their next twins.
    dedup.untrack(c)
    expect(mergeableRanges(c)).toEqual([])
    expect(dedup.pass().markedRuns).toBeLessThanOrEqual(6)
  })

  it('untrack() and close() give the VMAs back (MADV_UNMERGEABLE over what was marked)', () => {
    using dedup = new Deduplicator({ merge: 'ksm', stablePasses: 1 })
    using a = Region.anonymous(64 * P)
    using b = Region.anonymous(64 * P)
    for (const r of [a, b]) everyOtherPageTwin(r)
    const vmas = (r: Region) => vmasIn(r.address, r.length).length
    expect([vmas(a), vmas(b)]).toEqual([1, 1])
    dedup.track(a)
    dedup.track(b)
    for (const r of [a, b]) for (let i = 1; i < 64; i += 2) r.bytes[i * P] = i // hot: each twin its own run
    const report = dedup.pass()
    expect(report).toMatchObject({ duplicatePages: 64, markedPages: 64, mergedPages: 0, coarsenedPages: 0, markedRuns: 64 })
    expect([vmas(a), vmas(b)]).toEqual([64, 64])
    dedup.untrack(a)
    expect(mergeableRanges(a)).toEqual([])
    expect(vmas(a)).toBe(1)
    dedup.close()
    expect(mergeableRanges(b)).toEqual([])
    expect(vmas(b)).toBe(1)
  })
})

// ---- hugetlb holes ---------------------------------------------------------------------------

const hugetlbKb = /^Hugepagesize:\s+(\d+) kB$/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1]
const noHugetlb = hugetlbKb === undefined ? ' — skipped: no hugetlb on this kernel (no Hugepagesize in /proc/meminfo)' : ''

describe.skipIf(noHugetlb !== '')(`hugetlb holes${noHugetlb}`, () => {
  it('hashPages() of a hugetlb memfd whose punched-out huge page someone else took: EFAULT, not SIGBUS (child)', (ctx) => {
    // As everywhere in the suite: huge pages are reserved in the lab VM only, never on the host.
    const skip = reserveHugePages(1)
    if (skip !== undefined) ctx.skip(skip)
    if (Number(fs.readFileSync('/proc/sys/vm/nr_overcommit_hugepages', 'utf8')) !== 0) {
      ctx.skip('vm.nr_overcommit_hugepages is not 0: a fault in a hole would get a surplus huge page, so no hole stays unbacked')
    }
    try {
      const run = runChild(`
        import fs from 'node:fs'
        const { Region, hashPages } = lib
        const free = () => Number(/^HugePages_Free:\\s+(\\d+)/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))[1])
        const huge = Number(/^Hugepagesize:\\s+(\\d+) kB$/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))[1]) * 1024
        const r = Region.memfd(huge, { hugetlb: true })
        r.bytes.fill(1)
        const before = Array.from(hashPages(r).slice(0, 2), String)
        r.advise('remove') // punches the hole: the huge page and its reservation go back to the pool
        // Someone else takes every free huge page (here another memfd of this process).
        const taken = free()
        const taker = taken > 0 ? Region.memfd(taken * r.hugePageSize, { hugetlb: true }) : null
        taker?.bytes.fill(2)
        const freeAfter = free()
        let code = null
        try {
          hashPages(r)
        } catch (error) {
          if (error.code !== 'EFAULT') throw error
          code = error.code
        }
        console.log(JSON.stringify({ before, taken, freeAfter, code }))
      `)
      const { before, taken, freeAfter, code } = run.result
      expect(before[0]).toBe(before[1]) // equal pages, equal hashes: it hashed real content
      expect(taken).toBeGreaterThanOrEqual(1)
      expect(freeAfter).toBe(0) // the hole has no huge page to fault in
      expect(code).toBe('EFAULT')
    } finally {
      restoreHugePages()
    }
  })
})
