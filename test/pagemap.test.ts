// pagemap: /proc/self/pagemap entries() and the PAGEMAP_SCAN ioctl (scan, scanAll, scanRaw),
// including the bad inputs (error class, code, no fd leaked).
import fs from 'node:fs'
import { describe, expect, it } from 'vitest'
import { InvalidStateError, Region, SyscallError, Userfaultfd, features, pagemap, pageSize } from '../lib/index.ts'
import { thrown } from './helpers/errors.ts'
import { noFdLeak } from './helpers/process.ts'
import { requires } from './helpers/env.mjs'
import { runChild } from './helpers/child.ts'
import { native } from '../lib/native.ts'

const P = pageSize
const f = features()
const noScan = !f.pagemapScan
const whyScan = requires(f, ['pagemapScan'])
const noAsync = noScan || !f.uffdWpAsync
const whyAsync = requires(f, ['uffdWpAsync', 'pagemapScan'])


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

  it('a read of untouched memory maps the shared zero page', (ctx) => {
    using r = Region.anonymous(2 * P)
    r.read()
    const e = pagemap.entries(r)
    expect(e.present(0) && e.present(1)).toBe(true)
    if (!f.zeroPage) ctx.skip('this kernel maps no shared zero page on read faults (features().zeroPage is false)')
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

describe('clearSoftDirty / softDirtySupported', () => {
  const why = pagemap.softDirtySupported() ? '' : ' — skipped: this kernel has no CONFIG_MEM_SOFT_DIRTY'
  it('softDirtySupported() is a cached boolean', () => {
    expect(typeof pagemap.softDirtySupported()).toBe('boolean')
    expect(pagemap.softDirtySupported()).toBe(pagemap.softDirtySupported())
  })
  it.skipIf(Boolean(why))(`a written page is soft-dirty until clearSoftDirty(), and again after the next write${why}`, () => {
    using r = Region.anonymous(2 * P)
    r.bytes[0] = 1
    expect(pagemap.entries(r).softDirty(0)).toBe(true)
    pagemap.clearSoftDirty()
    const clean = pagemap.entries(r)
    expect(clean.softDirty(0)).toBe(false)
    expect(clean.present(0), 'clearing keeps the page mapped').toBe(true)
    expect(r.bytes[0], 'and its content').toBe(1)
    r.bytes[P] = 2
    const after = pagemap.entries(r)
    expect([after.softDirty(0), after.softDirty(1)]).toEqual([false, true])
  })
  it('takes no arguments and returns nothing (one process-wide operation)', () => {
    expect(pagemap.clearSoftDirty()).toBeUndefined()
    expect(pagemap.clearSoftDirty.length).toBe(0)
  })
})

describe('probePagemapScan', () => {
  it('agrees with features() and is cached', () => {
    expect(pagemap.probePagemapScan()).toBe(f.pagemapScan)
    expect(pagemap.probePagemapScan()).toBe(f.pagemapScan)
  })
})

// The zero-page probe, checked against what the kernel says without going through it.
describe('zeroPfn / probeZeroPage', () => {
  const noZeroPage = 'this kernel maps no shared zero page on read faults (features().zeroPage is false)'

  /** KPF_ZERO_PAGE (bit 24) of a frame, read here from /proc/kpageflags; undefined where it is root-only or absent. */
  function kpfZeroPage(pfn: bigint): boolean | undefined {
    let fd: number
    try {
      fd = fs.openSync('/proc/kpageflags', 'r')
    } catch (error) {
      if (['EACCES', 'EPERM', 'ENOENT'].includes((error as NodeJS.ErrnoException).code ?? '')) return undefined
      throw error
    }
    try {
      const word = Buffer.alloc(8)
      expect(fs.readSync(fd, word, 0, 8, pfn * 8n), `/proc/kpageflags has PFN 0x${pfn.toString(16)}`).toBe(8)
      return ((word.readBigUInt64LE(0) >> 24n) & 1n) === 1n
    } finally {
      fs.closeSync(fd)
    }
  }

  /** Two fresh pages without THP, read-faulted by CPU loads (as the probe does). */
  function readFaulted(): Region {
    const r = Region.anonymous(2 * P)
    if (f.thp) r.advise('nohugepage')
    expect(r.bytes[0] + r.bytes[P]).toBe(0)
    return r
  }

  /** Two fresh pages written with zeros: private zeroed frames, what a read fault maps where the kernel forbids the zero page. */
  function privateZeroed(): Region {
    const r = Region.anonymous(2 * P)
    if (f.thp) r.advise('nohugepage')
    r.bytes[0] = 0
    r.bytes[P] = 0
    return r
  }

  it('is a cached bigint or null, and features().zeroPage says which', () => {
    const pfn = pagemap.zeroPfn()
    expect(pfn === null || typeof pfn === 'bigint').toBe(true)
    expect(pagemap.zeroPfn()).toBe(pfn)
    expect(f.zeroPage).toBe(pfn !== null)
    expect(pagemap.probeZeroPage()).toBe(f.zeroPage)
  })

  it('agrees with KPF_ZERO_PAGE of /proc/kpageflags', (ctx) => {
    using r = readFaulted()
    const pfn = pagemap.entries(r).pfns[0]
    if (pfn === 0n) ctx.skip('PFNs are hidden here (no CAP_SYS_ADMIN)')
    const kpf = kpfZeroPage(pfn)
    if (kpf === undefined) ctx.skip('/proc/kpageflags cannot be read here')
    expect(kpf, 'KPF_ZERO_PAGE of a read-faulted page').toBe(f.zeroPage)
    const zero = pagemap.zeroPfn()
    if (zero !== null) expect(kpfZeroPage(zero), 'KPF_ZERO_PAGE of zeroPfn()').toBe(true)
  })

  it('a read-faulted fresh page maps zeroPfn()', (ctx) => {
    if (!f.zeroPage) ctx.skip(noZeroPage)
    using r = readFaulted()
    const e = pagemap.entries(r)
    expect([e.pfns[0], e.pfns[1]]).toEqual([pagemap.zeroPfn(), pagemap.zeroPfn()])
    // The zero page is no normal page: never PM_MMAP_EXCLUSIVE.
    expect([e.exclusive(0), e.exclusive(1)]).toEqual([false, false])
    if (f.pagemapScan) expect(pagemap.scan(r, { require: ['pfnZero'] }).pages, 'PAGE_IS_PFNZERO').toBe(2)
  })

  it('where zeroPfn() is null, read-faulted pages get distinct private frames', (ctx) => {
    if (f.zeroPage) ctx.skip('this kernel maps a shared zero page on read faults (the classifier is checked on private pages below)')
    using r = readFaulted()
    const e = pagemap.entries(r)
    expect([e.exclusive(0), e.exclusive(1)], 'each page is private').toEqual([true, true])
    if (e.pfns[0] !== 0n) expect(e.distinctPfns()).toBe(2)
    if (f.pagemapScan) expect(pagemap.scan(r, { require: ['pfnZero'] }).pages, 'no PAGE_IS_PFNZERO').toBe(0)
  })

  it('classifyZeroPage: private zeroed pages are no zero page (the null answer), read-faulted ones are zeroPfn()', () => {
    using priv = privateZeroed()
    expect(pagemap.classifyZeroPage(priv)).toBeNull()
    using read = readFaulted()
    expect(pagemap.classifyZeroPage(read)).toBe(pagemap.zeroPfn())
  })

  it('classifyZeroPage: one zero page and one private page is a disagreement, thrown', (ctx) => {
    if (!f.zeroPage) ctx.skip(noZeroPage)
    using r = Region.anonymous(2 * P)
    if (f.thp) r.advise('nohugepage')
    expect(r.bytes[0]).toBe(0)
    r.bytes[P] = 0
    expect(() => pagemap.classifyZeroPage(r)).toThrow(/signals disagree/)
  })
})

describe.skipIf(noScan)(`scan ${whyScan}`, () => {
  it('reports present / pfnZero / not-present regions with their categories', (ctx) => {
    using r = Region.anonymous(8 * P)
    r.bytes[0] = 1 // page 0: present, written
    r.read({ offset: 4 * P, length: P }) // page 4: the zero page
    const res = pagemap.scan(r, { report: ['present', 'pfnZero'] })
    expect(res.starts.length).toBe(4)
    expect(res.walkEnd).toBe(r.address + BigInt(8 * P))
    expect(res.pages).toBe(8)
    if (!f.zeroPage) ctx.skip('this kernel maps no shared zero page on read faults: page 4 is a private page, not pfnZero')
    expect([...res.categories]).toEqual([
      pagemap.PageCategory.present,
      0,
      pagemap.PageCategory.present | pagemap.PageCategory.pfnZero,
      0,
    ])
    expect(pagemap.categoryNamesOf(res.categories[2])).toEqual(['present', 'pfnZero'])
  })

  it('require / anyOf / exclude select pages', (ctx) => {
    using r = Region.anonymous(8 * P)
    r.bytes[2 * P] = 1
    r.bytes[3 * P] = 1
    expect(pagesOf(r, pagemap.scan(r, { require: ['present'] }))).toEqual([2, 3])
    expect(pagesOf(r, pagemap.scan(r, { anyOf: ['present', 'swapped'] }))).toEqual([2, 3])
    // exclude = must not have: inverted and required.
    expect(pagesOf(r, pagemap.scan(r, { exclude: ['present'] }))).toEqual([0, 1, 4, 5, 6, 7])
    // Raw inverted masks (the kernel's own semantics) through scanRaw: inverted, not required.
    const vec = pagemap.scanOutput(8)
    expect(pagemap.scanRaw(r, undefined, { vec, vecLen: 8, categoryInverted: pagemap.PageCategory.present, categoryAnyofMask: pagemap.PageCategory.present | pagemap.PageCategory.written, returnMask: pagemap.PageCategory.present }).regions).toBeGreaterThan(0)
    // Raw numbers are accepted (open flag set) and mixed with names.
    expect(pagesOf(r, pagemap.scan(r, { require: pagemap.PageCategory.present, exclude: ['pfnZero'] }))).toEqual([2, 3])
    expect(pagesOf(r, pagemap.scan(r, { require: [8, 'present'], exclude: [32] }))).toEqual([2, 3])
    if (!f.zeroPage) ctx.skip('this kernel maps no shared zero page on read faults: no pfnZero page to exclude')
    r.read({ offset: 6 * P, length: P }) // the zero page: present, pfnZero
    expect(pagesOf(r, pagemap.scan(r, { require: ['present'], exclude: ['pfnZero'] }))).toEqual([2, 3])
    expect(pagesOf(r, pagemap.scan(r, { anyOf: ['present', 'swapped'], exclude: ['pfnZero'] }))).toEqual([2, 3])
    expect(pagesOf(r, pagemap.scan(r, { require: [8, 'present'], exclude: [32] })), 'raw numbers exclude it too').toEqual([2, 3])
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
    // Present pages: what the kernel reports for untouched ones depends on whether their page
    // table exists (a hole has the VMA's categories only, 0 here) — address layout, not this test.
    r.bytes.fill(1)
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

// ---------------------------------------------------------------------------------------------
// Issue 9: native code writes only into arrays it re-checked itself, options are read once.
// Reproducers that overflowed the heap run in a child (a regression is a failed test).
describe('safety: output arrays and options', () => {
  it('class 1: an output whose getter, subarray or subclass narrows the array is refused natively, never overflowed', () => {
    const { result } = runChild(`
      const { Region, pagemap, pageSize: P } = lib
      const r = Region.anonymous(256 * P)
      r.bytes.fill(1)
      const outcomes = []
      const attempt = (name, fn) => { try { fn(); outcomes.push([name, 'no error']) } catch (e) { outcomes.push([name, e.name, e.code]) } }
      // A getter: a long array for the JS check, a 1-element one the second time.
      let reads = 0
      const sneaky = { get pfns() { return ++reads === 1 ? new BigUint64Array(256) : new BigUint64Array(1) }, flags: new Uint8Array(256) }
      attempt('getter', () => pagemap.entries(r, undefined, { output: sneaky }))
      // A subclass whose subarray() returns a narrower array.
      class Narrow extends BigUint64Array { subarray() { return new BigUint64Array(1) } }
      attempt('subclass', () => pagemap.entries(r, undefined, { output: { pfns: new Narrow(256), flags: new Uint8Array(256) } }))
      // Species: subarray() builds through Symbol.species.
      class Species extends Uint8Array { static get [Symbol.species]() { return function () { return new Uint8Array(1) } } }
      attempt('species', () => pagemap.entries(r, undefined, { output: { pfns: new BigUint64Array(256), flags: new Species(256) } }))
      // Species of another element type, as long: 8 bytes per page into 1 byte per element
      // (SIGSEGV or a malloc abort before: the old check counted elements, not their type).
      class OtherType extends BigUint64Array { static get [Symbol.species]() { return function (b, o, n) { return new Uint8Array(n) } } }
      for (let i = 0; i < 20; i++) attempt('other type', () => pagemap.entries(r, undefined, { output: { pfns: new OtherType(256), flags: new Uint8Array(256) } }))
      // Scan output: a getter narrowing starts.
      let sreads = 0
      const out = { get starts() { return ++sreads === 1 ? new BigUint64Array(256) : new BigUint64Array(1) }, ends: new BigUint64Array(256), categories: new Uint32Array(256) }
      if (${JSON.stringify(features().pagemapScan)}) attempt('scan getter', () => pagemap.scan(r, { anyOf: 0xff, output: out, vectorLength: 256 }))
      // A detached output (its buffer transferred away).
      const detached = pagemap.entriesOutput(256)
      structuredClone(detached.pfns.buffer, { transfer: [detached.pfns.buffer] })
      attempt('detached', () => pagemap.entries(r, undefined, { output: detached }))
      console.log(JSON.stringify({ outcomes, reads, sreads }))
    `)
    const expected = [
      ['getter', 'no error'], // read once: the array checked is the array written
      ['subclass', 'RangeError', 'ERR_OUT_OF_RANGE'], // native re-check of the exact object
      ['species', 'RangeError', 'ERR_OUT_OF_RANGE'],
      ...Array(20).fill(['other type', 'TypeError', 'ERR_INVALID_ARG_TYPE']),
      ...(features().pagemapScan ? [['scan getter', 'no error']] : []),
      ['detached', 'RangeError', 'ERR_OUT_OF_RANGE'],
    ]
    expect(result.outcomes).toEqual(expected)
    expect(result.reads).toBe(1) // options are read once
  })

  it('class 1: native functions check their arguments themselves, with a code (lib bypassed)', () => {
    const short = new BigUint64Array(1)
    const flags = new Uint8Array(1)
    expect(thrown(() => native.pagemapEntries(0, 0, 4096, short, flags))).toMatchObject({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' })
    expect(thrown(() => native.pagemapEntries(0, 0, 1, new Float64Array(1) as never, flags))).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' })
    expect(thrown(() => native.pagemapEntries('x' as never, 0, 1, short, flags))).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' })
    expect(thrown(() => native.mmap(0, -4096, 0, 0, -1, 0))).toMatchObject({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' })
    expect(thrown(() => native.hashPages(4096, new Uint32Array(1), 2, new BigUint64Array(2), 0))).toMatchObject({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' })
    expect(thrown(() => native.readMemory(4096, 4096, new Uint8Array(16)))).toMatchObject({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' })
    const arg = new BigUint64Array(native.pagemapScanArg.length)
    arg[native.pagemapScanArg.vecLen] = 1000n // vec_len larger than the arrays given
    expect(thrown(() => native.pagemapScan(0, arg, new BigUint64Array(1), new BigUint64Array(1), new Uint32Array(1)))).toMatchObject({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' })
    expect(thrown(() => native.pagemapScan(0, new BigUint64Array(3), null, null, null))).toMatchObject({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' })
  })

  it.skipIf(noScan)(`class 10: a 1-page scan with a huge vectorLength allocates by the range, and keeps nothing ${whyScan}`, () => {
    const { result } = runChild(`
      const { Region, pagemap, pageSize: P } = lib
      const fs = await import('node:fs')
      const rss = () => Number(/VmRSS:\\s+(\\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]) * 1024
      const r = Region.anonymous(P)
      r.bytes[0] = 1
      const output = pagemap.scanOutput(2 ** 26)
      const before = rss()
      for (let i = 0; i < 3; i++) pagemap.scan(r, { anyOf: 0xff, output, vectorLength: 2 ** 26 })
      console.log(JSON.stringify({ growth: rss() - before }))
    `)
    expect(result.growth).toBeLessThan(32 * 1024 * 1024) // was 1.5 GiB of scratch, kept per thread
  })

  it.skipIf(noScan)(`a native allocation that fails is ERR_MEMORY_ALLOCATION_FAILED, not an abort (every export is behind NoAbort) ${whyScan}`, () => {
    // The scan's scratch vector (24 bytes a region) is allocated after the 20-byte-a-region output
    // exists: with the address space capped just above what the process maps, only it fails.
    const { result } = runChild(`
      const { pagemap } = lib
      const fs = await import('node:fs')
      const { execFileSync } = await import('node:child_process')
      const regions = 2 ** 24
      const vec = pagemap.scanOutput(regions)
      const mapped = Number(/VmSize:\\s+(\\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]) * 1024
      execFileSync('prlimit', ['--pid', String(process.pid), '--as=' + (mapped + 128 * 2 ** 20)])
      let outcome
      try {
        pagemap.scanAddressesReadOnly(4096n, 2 ** 40, { vec, vecLen: regions })
        outcome = { ok: true }
      } catch (error) {
        outcome = { name: error.name, code: error.code, message: error.message }
      }
      console.log(JSON.stringify(outcome))
    `)
    expect(result).toMatchObject({ name: 'Error', code: 'ERR_MEMORY_ALLOCATION_FAILED', message: expect.stringMatching(/^pagemapScan: out of memory/) })
  })

  it(`class 11: options are read once, so the write-protect check sees what the kernel gets`, () => {
    using r = Region.anonymous(4 * P)
    let reads = 0
    const args = { get flags() { return reads++ === 0 ? 0 : pagemap.ScanFlag.wpMatching } }
    if (!noScan) pagemap.scanAddressesReadOnly(r.address, 4 * P, args as never)
    else thrown(() => pagemap.scanAddressesReadOnly(r.address, 4 * P, args as never))
    expect(reads).toBe(1)
    let wpReads = 0
    const options = { require: ['written'], get writeProtect() { wpReads++; return false } }
    thrown(() => pagemap.scan(r, options as never))
    expect(wpReads).toBe(1)
  })

  it('class 12: unknown option keys are refused, not ignored', () => {
    using r = Region.anonymous(P)
    expect(thrown(() => pagemap.scan(r, { writeprotect: true } as never))).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' })
    expect(thrown(() => pagemap.entries(r, undefined, { ouptut: {} } as never))).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' })
    expect(thrown(() => pagemap.scanRaw(r, undefined, { vecln: 1 } as never))).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' })
  })
})
