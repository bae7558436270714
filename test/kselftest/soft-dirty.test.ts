// Port of tools/testing/selftests/mm/soft-dirty.c (6.12.117; ksft plan 15): every
// ksft_test_result is an it() with the message the C prints. clear_softdirty() is
// pagemap.clearSoftDirty(), pagemap_is_softdirty() is pagemap.entries().softDirty().
// Deviations: test_simple and test_hugepage run TEST_ITERATIONS = 10000 rounds of three
// clear_refs writes in the C, each a walk of the whole process; Node's address space is much
// larger than the C binary's, so the port runs 1000 rounds (100 in the TCG lab). test_mprotect's
// "file" mapping is a shared memfd (Region.memfd) instead of a file created in the working
// directory (the lab's checkout is read-only). Not in the C: the page stays mapped and keeps its
// content across each clear, and the written values read back byte for byte.
import { afterEach, describe, expect, it, type TestContext } from 'vitest'
import { Region, features, pagemap, pageSize } from '../../lib/index.ts'
import { inVm } from '../helpers/env.mjs'
import { pmdSize, thpUnavailable } from '../helpers/mm-fork.ts'

const TEST_ITERATIONS = inVm ? 100 : 1000
const unsupported = pagemap.softDirtySupported() ? '' : ' — skipped: soft-dirty is not support (softdirty_supported(): no "sd" VmFlag, CONFIG_MEM_SOFT_DIRTY off)'
const regions: Region[] = []
const track = (region: Region) => (regions.push(region), region)
afterEach(() => {
  for (const region of regions.splice(0)) region.close()
})

const isSoftDirty = (map: Region, offset = 0) => pagemap.entries(map, { offset, length: pageSize }).softDirty(0)

/** The loop of test_simple() and test_hugepage(): the iteration it failed at, or TEST_ITERATIONS. */
function dirtyBitLoop(map: Region, offset = 0): { i: number; why?: string } {
  pagemap.clearSoftDirty()
  let i = 0
  for (; i < TEST_ITERATIONS; i++) {
    if (isSoftDirty(map, offset)) return { i, why: `dirty bit was 1, but should be 0 (i=${i})` }
    pagemap.clearSoftDirty()
    // Write something to the page to get the dirty bit enabled on the page
    map.bytes[offset]++
    if (!isSoftDirty(map, offset)) return { i, why: `dirty bit was 0, but should be 1 (i=${i})` }
    pagemap.clearSoftDirty()
  }
  return { i }
}

describe.skipIf(Boolean(unsupported))(`soft-dirty${unsupported}`, () => {
  it('Test test_simple', () => {
    const map = track(Region.anonymous(pageSize))
    const { i, why } = dirtyBitLoop(map)
    expect(i, why).toBe(TEST_ITERATIONS)
    // Not in the C: every write landed.
    expect(map.bytes[0]).toBe(TEST_ITERATIONS % 256)
  })

  describe('test_vma_reuse', () => {
    let first: bigint
    it('Test test_vma_reuse dirty bit of allocated page', () => {
      const map = Region.anonymous(pageSize)
      first = map.address
      // The kernel always marks new regions as soft dirty
      expect(isSoftDirty(map)).toBe(true)
      pagemap.clearSoftDirty()
      map.close()
    })
    it('Test test_vma_reuse dirty bit of reused address page', (ctx) => {
      const map2 = track(Region.anonymous(pageSize))
      if (map2.address !== first) ctx.skip(`the new mapping is at 0x${map2.address.toString(16)}, not at the reused 0x${first.toString(16)}`)
      // Dirty bit is set for new regions even if they are reused
      expect(isSoftDirty(map2)).toBe(true)
    })
  })

  describe('test_hugepage', () => {
    const hpageLen = pmdSize()
    // thp_is_enabled() → ksft_test_result_skip("Transparent Hugepages not available").
    const noThp = thpUnavailable()
    let map: Region | undefined
    let offset = 0
    it('Test test_hugepage huge page allocation', (ctx) => {
      if (noThp) ctx.skip(noThp)
      // check_huge_anon(map, 1, hpage_len) below: the C reads AnonHugePages of smaps; PAGEMAP_SCAN's
      // 'huge' category says the same per page. Without it both hugepage cases skip, as the C's do
      // when the check fails.
      if (!features().pagemapScan) ctx.skip('check_huge_anon() needs PAGEMAP_SCAN here')
      // memalign(hpage_len, hpage_len): an aligned hpage_len inside twice that. Closed after the
      // next test, which uses it (the C's free(map)).
      map = Region.anonymous(2 * hpageLen)
      const misalign = Number(map.address % BigInt(hpageLen))
      offset = misalign === 0 ? 0 : hpageLen - misalign
      map.advise('hugepage', { offset, length: hpageLen })
      for (let i = 0; i < hpageLen; i++) map.bytes[offset + i] = i & 0xff
      const huge = pagemap.scan(map, { range: { offset, length: hpageLen }, require: ['huge'] }).pages
      if (huge !== hpageLen / pageSize) {
        map.close()
        map = undefined
        ctx.skip('Test test_hugepage huge page allocation (hugepage allocation failed)')
      }
    })
    it('Test test_hugepage huge page dirty bit', (ctx: TestContext) => {
      if (noThp) ctx.skip(noThp)
      if (map === undefined) ctx.skip('Test test_hugepage huge page dirty bit (no huge page)')
      const { i, why } = dirtyBitLoop(map, offset)
      expect(i, why).toBe(TEST_ITERATIONS)
      // Not in the C: the rest of the huge page kept its pattern.
      const bytes = map.bytes
      for (let j = 1; j < hpageLen; j++) if (bytes[offset + j] !== (j & 0xff)) expect.fail(`byte ${j} changed`)
      map.close()
    })
  })

  for (const type of ['anon', 'file'] as const) {
    it(`test_mprotect-${type}: dirty bit of new written page, soft-dirty clear after clear_refs / marking RO / marking RW, soft-dirty after rewritten`, () => {
      const map = track(type === 'anon' ? Region.anonymous(pageSize) : Region.memfd(pageSize, { name: 'soft-dirty-test-file' }))
      map.bytes[0] = 1
      expect.soft(isSoftDirty(map), `Test test_mprotect-${type} dirty bit of new written page`).toBe(true)
      pagemap.clearSoftDirty()
      expect.soft(isSoftDirty(map), `Test test_mprotect-${type} soft-dirty clear after clear_refs`).toBe(false)
      map.protect('r')
      expect.soft(isSoftDirty(map), `Test test_mprotect-${type} soft-dirty clear after marking RO`).toBe(false)
      map.protect('rw')
      expect.soft(isSoftDirty(map), `Test test_mprotect-${type} soft-dirty clear after marking RW`).toBe(false)
      // Not in the C: the page kept its content and stayed mapped through all of it.
      expect(map.bytes[0]).toBe(1)
      map.bytes[0] = 2
      expect.soft(isSoftDirty(map), `Test test_mprotect-${type} soft-dirty after rewritten`).toBe(true)
      expect(map.bytes[0]).toBe(2)
    })
  }
})
