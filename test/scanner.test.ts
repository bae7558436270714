// lib/scanner.ts: the user-space deduplicator (uffd WP_ASYNC + PAGEMAP_SCAN + MADV_MERGE).
// Write tracking, the stable-pass rule and the twin rule run everywhere (dry run without SKSM);
// the merges themselves are proven with PFNs where the kernel has MADV_MERGE (the lab VM).
import { describe, expect, it } from 'vitest'
import { Region, Deduplicator, hashPages, features, pagemap, pageSize as P, InvalidStateError } from '../lib/index.ts'
import { requires } from './helpers/env.mjs'

const f = features()
const why = requires(f, ['uffdWpAsync', 'pagemapScan'])
const tracking = why === ''

/** Page i of both regions: 32 distinct contents shared by A and B, then content unique to each. */
function fillTwins(a: Region, b: Region): void {
  for (let i = 0; i < a.pages; i++) {
    a.bytes.fill(i < 32 ? i + 1 : 40 + i, i * P, (i + 1) * P) // 72..103: unique
    b.bytes.fill(i < 32 ? i + 1 : 140 + i, i * P, (i + 1) * P) // 172..203: unique
  }
}

describe('hashPages', () => {
  it('equal content gives equal hashes, different content different ones', () => {
    using r = Region.anonymous(4 * P)
    r.bytes.fill(1, 0, 2 * P)
    r.bytes.fill(2, 2 * P, 3 * P)
    const h = hashPages(r)
    expect(h.length).toBe(4)
    expect(h[0]).toBe(h[1])
    expect(h[2]).not.toBe(h[0])
    expect(h[3]).not.toBe(h[2]) // zero page
    r.bytes[P + 100] = 9
    expect(hashPages(r, { offset: P, length: P })[0]).not.toBe(h[0])
  })

  it('refuses unreadable pages and closed Regions instead of faulting', () => {
    const r = Region.anonymous(2 * P)
    r.protect('none', { offset: P, length: P })
    expect(() => hashPages(r)).toThrow(expect.objectContaining({ code: 'ERR_REGION_PROTECTION' }))
    expect(hashPages(r, { offset: 0, length: P }).length).toBe(1)
    r.close()
    expect(() => hashPages(r)).toThrow(expect.objectContaining({ code: 'ERR_REGION_CLOSED' }))
    expect(() => hashPages({} as never)).toThrow(TypeError)
  })
})

describe.skipIf(!tracking)(`Deduplicator${why}`, () => {
  it('dry run: only pages unwritten for stablePasses and with a twin are chosen', () => {
    using dedup = new Deduplicator({ merge: 'none', stablePasses: 2 })
    using a = Region.anonymous(64 * P)
    using b = Region.anonymous(64 * P)
    fillTwins(a, b)
    dedup.add(a)
    dedup.add(b)
    const first = dedup.pass()
    expect(first.trackedPages).toBe(128)
    expect(first.writtenPages).toBe(0) // armed at add(): nothing written since
    expect(first.candidatePages).toBe(0) // clean for 1 pass only
    a.bytes[0] = 77 // A[0] is written: it and its twin B[0] drop out
    const second = dedup.pass()
    expect(second.writtenPages).toBe(1)
    expect(second.candidatePages).toBe(127)
    expect(second.duplicatePages).toBe(62)
    expect(second.mergedPages).toBe(0)
    const third = dedup.pass()
    expect(third.writtenPages).toBe(0)
    expect(third.candidatePages).toBe(127)
  })

  it('rejects bad use clearly', () => {
    using dedup = new Deduplicator({ merge: 'none' })
    using r = Region.anonymous(P)
    dedup.add(r)
    expect(() => dedup.add(r)).toThrow(expect.objectContaining({ code: 'ERR_DEDUP_ALREADY_TRACKED' }))
    using file = Region.memfd(P)
    expect(() => dedup.add(file)).toThrow(TypeError)
    expect(() => new Deduplicator({ stablePasses: 0 })).toThrow(RangeError)
    expect(() => new Deduplicator({ merge: 'ksm' as never })).toThrow(TypeError)
    dedup.close()
    dedup.close()
    expect(() => dedup.pass()).toThrow(InvalidStateError)
  })

  it('a Region closed while tracked simply drops out', () => {
    using dedup = new Deduplicator({ merge: 'none' })
    const r = Region.anonymous(4 * P)
    dedup.add(r)
    r.close()
    expect(dedup.regions).toEqual([])
    expect(dedup.pass().trackedPages).toBe(0)
  })

  describe.skipIf(!f.sksm)(`with MADV_MERGE${requires(f, ['sksm'])}`, () => {
    it('merges twins (same PFN), saves their frames, keeps content, and backs off after a COW', () => {
      using dedup = new Deduplicator({ stablePasses: 1, backoffPasses: 4 })
      using a = Region.anonymous(64 * P)
      using b = Region.anonymous(64 * P)
      fillTwins(a, b)
      const expectedA = Buffer.from(a.bytes)
      const expectedB = Buffer.from(b.bytes)
      dedup.add(a)
      dedup.add(b)
      const report = dedup.pass()
      expect(report.duplicatePages).toBe(64)
      expect(report.mergedPages).toBe(64)
      const pa = pagemap.entries(a).pfns
      const pb = pagemap.entries(b).pfns
      for (let i = 0; i < 32; i++) expect(pa[i], `page ${i}`).toBe(pb[i])
      for (let i = 32; i < 64; i++) expect(pa[i]).not.toBe(pb[i])
      // Savings in physical pages: 128 mapped pages now use 96 frames (the kernel's own truth;
      // nr_anon_pages moves with every other process and is too noisy under TCG).
      expect(new Set([...pa, ...pb]).size).toBe(96)
      expect(Buffer.from(a.bytes).equals(expectedA)).toBe(true)
      expect(Buffer.from(b.bytes).equals(expectedB)).toBe(true)
      // Nothing written: the merged pages stay merged and are not counted as writes.
      expect(dedup.pass().writtenPages).toBe(0)
      // A write COWs A[3] back to a private page, which backs off.
      a.bytes[3 * P] = 0xee
      expect(pagemap.entries(a).pfns[3]).not.toBe(pagemap.entries(b).pfns[3])
      const after = dedup.pass()
      expect(after.cowAfterMerge).toBe(1)
      expect(after.mergedTotal).toBe(63)
      expect(b.bytes[3 * P]).toBe(4)
      expect(a.bytes[3 * P + 1]).toBe(4)
    })
  })
})
