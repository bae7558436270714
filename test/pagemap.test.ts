// pagemap: /proc/self/pagemap entries() and the PAGEMAP_SCAN ioctl (scan, scanAll, scanRaw),
// including the bad inputs (error class, code, no fd leaked).
import { describe, expect, it } from 'vitest'
import { InvalidStateError, Region, SyscallError, Userfaultfd, features, pagemap, pageSize } from '../lib/index.ts'
import { thrown } from './helpers/errors.ts'
import { fdCount } from './helpers/process.ts'

const P = pageSize
const f = features()
const noScan = !f.pagemapScan
const whyScan = noScan ? '(PAGEMAP_SCAN is not available on this kernel)' : ''
const noAsync = noScan || !f.uffdWpAsync
const whyAsync = noAsync ? '(UFFD_FEATURE_WP_ASYNC or PAGEMAP_SCAN is not available)' : ''

function noFdLeak(body: () => void): void {
  const before = fdCount()
  body()
  expect(fdCount()).toBe(before)
}

/** Page indexes (relative to the Region) covered by a scan result. */
function pagesOf(r: Region, res: pagemap.ScanResult): number[] {
  const out: number[] = []
  for (let i = 0; i < res.starts.length; i++) {
    for (let a = res.starts[i]; a < res.ends[i]; a += BigInt(P)) out.push(Number(a - r.address) / P)
  }
  return out
}

describe('entries', () => {
  it('untouched anonymous pages are not present; written ones are, with a PFN', () => {
    using r = Region.anonymous(4 * P)
    r.bytes[P] = 1
    const e = pagemap.entries(r)
    expect(e.length).toBe(4)
    expect(e.present(0)).toBe(false)
    expect(e.present(1)).toBe(true)
    expect(e.exclusive(1)).toBe(true)
    expect(e.file(1)).toBe(false)
    expect(e.count(pagemap.PageFlag.present)).toBe(1)
    expect(e.address).toBe(r.address)
  })

  it('a read of untouched memory maps the shared zero page', () => {
    using r = Region.anonymous(2 * P)
    r.read()
    const e = pagemap.entries(r)
    expect(e.present(0) && e.present(1)).toBe(true)
    if (e.pfns[0] !== 0n) {
      // PFNs are visible (CAP_SYS_ADMIN): both pages are the one zero page.
      expect(e.pfns[0]).toBe(pagemap.zeroPfn())
      expect(e.distinctPfns()).toBe(1)
    }
  })

  it('a range gives just those pages; file pages say file', () => {
    using r = Region.anonymous(8 * P)
    r.bytes.fill(1, 4 * P)
    const e = pagemap.entries(r, { offset: 4 * P, length: 2 * P })
    expect(e.length).toBe(2)
    expect(e.address).toBe(r.address + BigInt(4 * P))
    expect(e.count(pagemap.PageFlag.present)).toBe(2)
    using lib = Region.file(process.execPath, { length: P })
    lib.read()
    expect(pagemap.entries(lib).file(0)).toBe(true)
  })

  it('bad inputs: closed region, range outside, not a Region', () => {
    noFdLeak(() => {
      const r = Region.anonymous(2 * P)
      expect(() => pagemap.entries(r, { offset: 2 * P, length: P })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }))
      expect(() => pagemap.entries({} as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }))
      r.close()
      expect(() => pagemap.entries(r)).toThrow(InvalidStateError)
      expect(() => pagemap.entries(r)).toThrow(expect.objectContaining({ code: 'ERR_REGION_CLOSED' }))
    })
  })
})

describe('probePagemapScan', () => {
  it('agrees with features() and is cached', () => {
    expect(pagemap.probePagemapScan()).toBe(f.pagemapScan)
    expect(pagemap.probePagemapScan()).toBe(f.pagemapScan)
  })
})

describe.skipIf(noScan)(`scan ${whyScan}`, () => {
  it('reports present / pfnZero / not-present regions with their categories', () => {
    using r = Region.anonymous(8 * P)
    r.bytes[0] = 1 // page 0: present, written
    r.read({ offset: 4 * P, length: P }) // page 4: the zero page
    const res = pagemap.scan(r, { report: ['present', 'pfnZero'] })
    expect(res.starts.length).toBe(4)
    expect([...res.categories]).toEqual([
      pagemap.PageCategory.present,
      0,
      pagemap.PageCategory.present | pagemap.PageCategory.pfnZero,
      0,
    ])
    expect(res.walkEnd).toBe(r.address + BigInt(8 * P))
    expect(res.pages).toBe(8)
    expect(pagemap.categoryNamesOf(res.categories[2])).toEqual(['present', 'pfnZero'])
  })

  it('require / anyOf / exclude select pages', () => {
    using r = Region.anonymous(8 * P)
    r.bytes[2 * P] = 1
    r.bytes[3 * P] = 1
    expect(pagesOf(r, pagemap.scan(r, { require: ['present'] }))).toEqual([2, 3])
    expect(pagesOf(r, pagemap.scan(r, { anyOf: ['present', 'swapped'] }))).toEqual([2, 3])
    // exclude = must not have: inverted and required.
    expect(pagesOf(r, pagemap.scan(r, { exclude: ['present'] }))).toEqual([0, 1, 4, 5, 6, 7])
    r.read({ offset: 6 * P, length: P }) // the zero page: present, pfnZero
    expect(pagesOf(r, pagemap.scan(r, { require: ['present'], exclude: ['pfnZero'] }))).toEqual([2, 3])
    expect(pagesOf(r, pagemap.scan(r, { anyOf: ['present', 'swapped'], exclude: ['pfnZero'] }))).toEqual([2, 3])
    // Raw inverted masks (the kernel's own semantics) through scanRaw: inverted, not required.
    const vec = pagemap.scanOutput(8)
    expect(pagemap.scanRaw(r, undefined, { vec, vecLen: 8, categoryInverted: pagemap.PageCategory.present, categoryAnyofMask: pagemap.PageCategory.present | pagemap.PageCategory.written, returnMask: pagemap.PageCategory.present }).regions).toBeGreaterThan(0)
    // Raw numbers are accepted (open flag set) and mixed with names.
    expect(pagesOf(r, pagemap.scan(r, { require: pagemap.PageCategory.present, exclude: ['pfnZero'] }))).toEqual([2, 3])
    expect(pagesOf(r, pagemap.scan(r, { require: [8, 'present'], exclude: [32] }))).toEqual([2, 3])
  })

  it('a range scans just that part', () => {
    using r = Region.anonymous(8 * P)
    r.bytes.fill(1)
    const res = pagemap.scan(r, { range: { offset: 2 * P, length: 3 * P }, require: ['present'] })
    expect(pagesOf(r, res)).toEqual([2, 3, 4])
    expect(res.walkEnd).toBe(r.address + BigInt(5 * P))
  })

  it('maxPages stops the walk; walkEnd says where', () => {
    using r = Region.anonymous(16 * P)
    r.bytes.fill(1)
    const res = pagemap.scan(r, { require: ['present'], maxPages: 5 })
    expect(res.pages).toBe(5)
    expect(res.walkEnd).toBe(r.address + BigInt(5 * P))
  })

  it('a full vector stops the walk and scanAll resumes from walkEnd', () => {
    using r = Region.anonymous(64 * P)
    for (let page = 0; page < 64; page += 2) r.bytes[page * P] = 1 // 32 separate regions
    const first = pagemap.scan(r, { require: ['present'], vectorLength: 5 })
    expect(first.starts.length).toBe(5)
    expect(first.walkEnd).toBeLessThan(r.address + BigInt(64 * P))
    const batches = [...pagemap.scanAll(r, { require: ['present'], vectorLength: 5 })]
    expect(batches.length).toBe(7)
    expect(batches.flatMap((b) => pagesOf(r, b))).toEqual(Array.from({ length: 32 }, (_, i) => 2 * i))
    // maxPages counts across batches.
    expect([...pagemap.scanAll(r, { require: ['present'], vectorLength: 5, maxPages: 12 })].reduce((n, b) => n + b.pages, 0)).toBe(12)
  })

  it('output: results are views of caller-owned arrays, nothing allocated per call', () => {
    using r = Region.anonymous(16 * P)
    r.bytes[P] = 1
    r.bytes[9 * P] = 1
    const output = pagemap.scanOutput(4)
    const res = pagemap.scan(r, { require: ['present'], output })
    expect(res.starts.buffer).toBe(output.starts.buffer)
    expect(pagesOf(r, res)).toEqual([1, 9])
    expect(() => pagemap.scan(r, { output, vectorLength: 5 })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }))
    expect(() => pagemap.scan(r, { output: { starts: new BigUint64Array(1) } as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }))
  })

  it('scanAll stops with ERR_REGION_CLOSED when the Region closes mid-iteration', () => {
    const r = Region.anonymous(16 * P)
    for (let page = 0; page < 16; page += 2) r.bytes[page * P] = 1
    const it = pagemap.scanAll(r, { require: ['present'], vectorLength: 2 })
    it.next()
    r.close()
    expect(() => it.next()).toThrow(expect.objectContaining({ code: 'ERR_REGION_CLOSED' }))
  })

  it('file-backed pages are in the file category', () => {
    using lib = Region.file(process.execPath, { length: 4 * P })
    lib.read()
    const res = pagemap.scan(lib, { require: ['file'] })
    expect(res.pages).toBe(4)
  })

  it.skipIf(noAsync)(`write tracking: writeProtect re-arms, written reports the writes since ${whyAsync}`, () => {
    using r = Region.anonymous(32 * P)
    using uffd = Userfaultfd.open({ features: ['wpAsync'] })
    uffd.register(r, { writeProtect: true })
    pagemap.scan(r, { require: ['written'], writeProtect: true }) // arm
    expect(pagemap.scan(r, { require: ['written'] }).pages).toBe(0)
    r.bytes[5 * P] = 1
    r.bytes.fill(2, 10 * P, 13 * P)
    const written = pagemap.scan(r, { require: ['written'], writeProtect: true })
    expect(pagesOf(r, written)).toEqual([5, 10, 11, 12])
    expect([...written.categories].every((c) => c === pagemap.PageCategory.written)).toBe(true)
    // Re-armed: nothing written since.
    expect(pagemap.scan(r, { require: ['written'] }).pages).toBe(0)
    // wpAllowed is set on pages of a wpAsync registration.
    expect(pagemap.scan(r, { require: ['wpAllowed'] }).pages).toBe(32)
  })

  it('writeProtect on a Region without a wpAsync registration → SyscallError EPERM (checkWpAsync)', () => {
    noFdLeak(() => {
      using r = Region.anonymous(4 * P)
      const error = thrown(() => pagemap.scan(r, { require: ['written'], writeProtect: true }))
      expect(error).toBeInstanceOf(SyscallError)
      expect(error).toMatchObject({ code: 'EPERM', syscall: 'ioctl(PAGEMAP_SCAN)' })
      // Opting out of the check: the kernel silently skips the VMA.
      expect(pagemap.scan(r, { require: ['written'], writeProtect: true, checkWpAsync: false }).pages).toBe(0)
    })
  })

  it('unknown kernel bits pass through to the kernel (6.12 rejects guard, 6.14+ knows it)', () => {
    using r = Region.anonymous(4 * P)
    let supported = true
    try {
      pagemap.scan(r, { require: ['guard'] })
    } catch (e) {
      expect(e).toMatchObject({ name: 'SyscallError', code: 'EINVAL' })
      supported = false
    }
    if (supported) expect(pagemap.scan(r, { report: ['guard', 'present'] }).categories.every((c) => (c & 0x100) === 0)).toBe(true)
    // A bit no kernel defines: EINVAL from the kernel, not a TypeError from us.
    expect(() => pagemap.scan(r, { require: 1 << 20 })).toThrow(expect.objectContaining({ name: 'SyscallError', code: 'EINVAL' }))
  })

  it('bad inputs: unknown category name, maxPages 0, ranges outside, closed region', () => {
    noFdLeak(() => {
      const r = Region.anonymous(4 * P)
      expect(() => pagemap.scan(r, { require: ['writen' as never] })).toThrow(TypeError)
      expect(() => pagemap.scan(r, { require: ['writen' as never] })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }))
      expect(() => pagemap.scan(r, { anyOf: 'present' as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }))
      expect(() => pagemap.scan(r, { exclude: [-1] })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }))
      // maxPages: 0 would mean "no limit" to the kernel; here it is an error (omit it instead).
      expect(() => pagemap.scan(r, { maxPages: 0 })).toThrow(RangeError)
      expect(() => pagemap.scan(r, { maxPages: 0 })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }))
      expect(() => pagemap.scan(r, { maxPages: 1.5 })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }))
      expect(() => pagemap.scan(r, { vectorLength: 0 })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }))
      expect(() => pagemap.scan(r, { writeProtect: 1 as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }))
      expect(() => pagemap.scan(r, { range: { offset: 2 * P, length: 4 * P } })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }))
      expect(() => pagemap.scan(r, { range: { offset: 0, length: 0 } })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }))
      expect(() => pagemap.scan(r, { range: { offset: 1, length: P } })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }))
      expect(() => pagemap.scan({ address: 4096n, length: P } as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }))
      r.close()
      expect(() => pagemap.scan(r)).toThrow(expect.objectContaining({ name: 'InvalidStateError', code: 'ERR_REGION_CLOSED' }))
      expect(() => pagemap.scanAll(r)).toThrow(expect.objectContaining({ code: 'ERR_REGION_CLOSED' }))
      expect(() => pagemap.scanRaw(r, undefined, {})).toThrow(expect.objectContaining({ code: 'ERR_REGION_CLOSED' }))
    })
  })

  it('scanRaw: vector capacity is checked before the kernel is called', () => {
    using r = Region.anonymous(4 * P)
    const vec = { starts: new BigUint64Array(2), ends: new BigUint64Array(2), categories: new Uint32Array(1) }
    expect(() => pagemap.scanRaw(r, undefined, { vec, vecLen: 2, categoryMask: 8, returnMask: 8 })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }))
    expect(pagemap.scanRaw(r, undefined, { vec, vecLen: 1, categoryAnyofMask: 0xff, returnMask: 0xff }).regions).toBe(1)
    // vec = NULL with a length: the kernel's EINVAL, nothing written anywhere.
    expect(() => pagemap.scanRaw(r, undefined, { vec: null, vecLen: 10, returnMask: 8 })).toThrow(expect.objectContaining({ code: 'EINVAL' }))
    expect(() => pagemap.scanAddressesReadOnly(r.address, P, { flags: 1 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }))
  })
})

describe('entries output reuse', () => {
  it('fills caller-owned arrays and refuses ones that are too small', () => {
    using r = Region.anonymous(8 * pageSize)
    r.bytes.fill(1)
    const output = pagemap.entriesOutput(16)
    const e = pagemap.entries(r, undefined, { output })
    expect(e.length).toBe(8)
    expect(e.pfns.buffer).toBe(output.pfns.buffer)
    expect([...e.pfns]).toEqual([...pagemap.entries(r).pfns])
    expect(() => pagemap.entries(r, undefined, { output: pagemap.entriesOutput(4) })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }))
    expect(() => pagemap.entries(r, undefined, { output: { pfns: [], flags: [] } as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }))
    expect(() => pagemap.entriesOutput(0)).toThrow(RangeError)
  })
})
