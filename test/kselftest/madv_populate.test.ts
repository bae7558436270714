// Port of tools/testing/selftests/mm/madv_populate.c (6.12.117; ksft plan 16, +5 with soft-dirty).
// Each ksft_test_result is an it() with the message the C prints, grouped by the C function.
// Not in the C: after MADV_POPULATE_READ every page maps the shared zeropage (no frame allocated),
// after MADV_POPULATE_WRITE every page has a frame of its own and reads zero.
// Not ported: test_prot_write (2; a Region has no write-only protection: PROT_WRITE without
// PROT_READ) and test_holes (6; a Region has no holes, and memdedup advises only memory a live
// Region owns: the range is refused before madvise, which the "Not in the C" case there checks).
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import { Region, SyscallError, features, pagemap, pageSize } from '../../lib/index.ts'
import { expectThrowsCode } from '../helpers/errors.ts'

/** For now, we're using 2 MiB of private anonymous memory for all tests. */
const SIZE = 2 * 1024 * 1024
const pages = SIZE / pageSize
const regions: Region[] = []
const track = (region: Region) => (regions.push(region), region)
afterEach(() => {
  for (const region of regions.splice(0)) region.close()
})

/** sense_support(): MADV_POPULATE_(READ|WRITE) on one page, or why the whole file skips. */
function senseSupport(): string {
  using addr = Region.anonymous(pageSize)
  for (const advice of ['populateRead', 'populateWrite'] as const) {
    try {
      addr.advise(advice)
    } catch (error) {
      // The C skips on any failing madvise(); a non-syscall error is a bug of ours, not a skip.
      if (!(error instanceof SyscallError)) throw error
      return `MADV_${advice === 'populateRead' ? 'POPULATE_READ' : 'POPULATE_WRITE'} is not available (${error.code})`
    }
  }
  return ''
}
let unsupported = ''
beforeAll(() => {
  unsupported = senseSupport()
})

/** ksft_test_result(!ret, …) / ksft_test_result(ret == -1 && errno == E…, …). */
function madvise(region: Region, advice: 'populateRead' | 'populateWrite'): string {
  try {
    region.advise(advice)
    return 'ok'
  } catch (error) {
    if (error instanceof SyscallError) return error.code
    throw error
  }
}

const isPopulated = (region: Region) => pagemap.entries(region).count(pagemap.PageFlag.present | pagemap.PageFlag.swapped)

describe('madv_populate', () => {
  describe('test_prot_read', () => {
    it('MADV_POPULATE_READ with PROT_READ; MADV_POPULATE_WRITE with PROT_READ', (ctx) => {
      if (unsupported) ctx.skip(unsupported)
      const addr = track(Region.anonymous(SIZE, { prot: 'r' }))
      expect(madvise(addr, 'populateRead'), 'MADV_POPULATE_READ with PROT_READ').toBe('ok')
      expect(madvise(addr, 'populateWrite'), 'MADV_POPULATE_WRITE with PROT_READ').toBe('EINVAL')
    })
  })

  describe('test_prot_write', () => {
    const why = ' — skipped: a Region has no write-only protection (PROT_WRITE without PROT_READ)'
    it.skip(`MADV_POPULATE_READ with PROT_WRITE${why}`, () => {})
    it.skip(`MADV_POPULATE_WRITE with PROT_WRITE${why}`, () => {})
  })

  describe('test_holes', () => {
    const why = ' — skipped: a Region has no holes (memdedup advises only memory a live Region owns)'
    for (const where of ['in the middle', 'at the end', 'at the beginning']) {
      for (const advice of ['MADV_POPULATE_READ', 'MADV_POPULATE_WRITE']) it.skip(`${advice} with holes ${where}${why}`, () => {})
    }
    it('Not in the C: a range past the Region is refused before madvise (ERR_OUT_OF_RANGE), nothing populated', () => {
      const addr = track(Region.anonymous(pageSize))
      for (const advice of ['populateRead', 'populateWrite'] as const) {
        expectThrowsCode(() => addr.advise(advice, { offset: 0, length: 2 * pageSize }), RangeError, 'ERR_OUT_OF_RANGE')
      }
      expect(isPopulated(addr)).toBe(0)
    })
  })

  describe('test_populate_read', () => {
    it('range initially not populated; MADV_POPULATE_READ; range is populated', (ctx) => {
      if (unsupported) ctx.skip(unsupported)
      const addr = track(Region.anonymous(SIZE))
      expect(isPopulated(addr), 'range initially not populated').toBe(0)
      expect(madvise(addr, 'populateRead'), 'MADV_POPULATE_READ').toBe('ok')
      expect(isPopulated(addr), 'range is populated').toBe(pages)
      expect(addr.bytes.every((b) => b === 0)).toBe(true)
      // Not in the C: a read fault maps the shared zeropage (or the huge zeropage), no frame of its own.
      const zero = pagemap.zeroPfn()
      if (zero === null) ctx.skip('this kernel maps no shared zero page on read faults: each page got a private zeroed frame')
      if (features().pagemapScan) {
        expect(pagemap.scan(addr, { require: ['pfnZero'] }).pages, 'every page maps a zeropage').toBe(pages)
      } else if (zero !== 0n) {
        expect(pagemap.entries(addr).pfns.every((pfn) => pfn === zero), 'every page maps the shared zeropage').toBe(true)
      }
    })
  })

  describe('test_populate_write', () => {
    it('range initially not populated; MADV_POPULATE_WRITE; range is populated', (ctx) => {
      if (unsupported) ctx.skip(unsupported)
      const addr = track(Region.anonymous(SIZE))
      expect(isPopulated(addr), 'range initially not populated').toBe(0)
      expect(madvise(addr, 'populateWrite'), 'MADV_POPULATE_WRITE').toBe('ok')
      expect(isPopulated(addr), 'range is populated').toBe(pages)
      // Not in the C: a write fault gives each page a frame of its own (a THP's subpages are
      // consecutive frames, still distinct), none is the zeropage, and the memory reads zero.
      const entries = pagemap.entries(addr)
      const zero = pagemap.zeroPfn()
      // PFNs read as 0 without CAP_SYS_ADMIN.
      if (entries.pfns[0] !== 0n) {
        expect(entries.distinctPfns(), 'one frame per page').toBe(pages)
        if (zero !== null) expect(entries.pfns.includes(zero), 'no page maps the zeropage').toBe(false)
      }
      expect(entries.count(pagemap.PageFlag.exclusive), 'every page exclusively mapped').toBe(pages)
      expect(addr.bytes.every((b) => b === 0)).toBe(true)
    })
  })

  describe('test_softdirty', () => {
    const why = pagemap.softDirtySupported() ? '' : ' — skipped: softdirty_supported() is false (no CONFIG_MEM_SOFT_DIRTY)'
    it.skipIf(Boolean(why))(`range is not softdirty; MADV_POPULATE_READ; range is not softdirty; MADV_POPULATE_WRITE; range is softdirty${why}`, (ctx) => {
      if (unsupported) ctx.skip(unsupported)
      const addr = track(Region.anonymous(SIZE))
      const softDirty = () => pagemap.entries(addr).count(pagemap.PageFlag.softDirty)
      // Clear any softdirty bits.
      pagemap.clearSoftDirty()
      expect(softDirty(), 'range is not softdirty').toBe(0)
      // Populating READ should set softdirty.
      expect(madvise(addr, 'populateRead'), 'MADV_POPULATE_READ').toBe('ok')
      expect(softDirty(), 'range is not softdirty').toBe(0)
      // Populating WRITE should set softdirty.
      expect(madvise(addr, 'populateWrite'), 'MADV_POPULATE_WRITE').toBe('ok')
      expect(softDirty(), 'range is softdirty').toBe(pages)
    })
  })
})
