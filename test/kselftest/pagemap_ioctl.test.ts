// Port of tools/testing/selftests/mm/pagemap_ioctl.c (Debian linux-source-6.12 with the lab's
// kernel-patches/0038, which adds the upstream unpopulated-pte and PMD-hole cases; ksft plan 117).
//
// Every one of the 117 ksft results has an it() below with the string the C prints (the %s prefix
// filled in; %d/%u values of the transact test are left as in the format and annotated). ASSERT
// (ksft_exit_fail_msg) is a throwing expect / check; EXPECT (one ksft_test_result with several
// conditions) is expect.soft per condition. Memory is always a memdedup Region (or a page-aligned
// range of one); the C's pagemap_ioctl()/pagemap_ioc() go through pagemap.scanRaw(), which passes
// raw masks and flags (also invalid ones) to the kernel but only for a live Region's addresses.
//
// Ported: 117 of 117 run where the kernel has the features; they skip with the reason otherwise:
//   - everything: no PAGEMAP_SCAN, or init_uffd() failing (no WP_ASYNC / WP_UNPOPULATED /
//     WP_HUGETLBFS_SHMEM) — the C reports "pass" then; this port skips and says why.
//   - "Huge page testing:" (6) and hpage_unit_tests (9): THP must accept MADV_HUGEPAGE.
//   - the three hugetlb blocks (18: "Hugetlb shmem testing:" twice, "Hugetlb mem testing:"):
//     need free hugetlb pages. On the host none are reserved and this port does not change the
//     host's vm.nr_hugepages; in the VM (MEMDEDUP_VM) it reserves what it needs and restores the
//     old value (test/helpers/hugetlb.ts). "Hugetlb mem testing:" maps an MFD_HUGETLB memfd
//     MAP_PRIVATE (Region.file on /proc/self/fd/N), private hugetlb like the C's MAP_PRIVATE |
//     MAP_HUGETLB; both "Hugetlb shmem testing:" blocks map one MAP_SHARED (Region.memfd with
//     { hugetlb: true }), the C's SysV SHM_HUGETLB segment included (why that is the same kernel
//     path is said at sharedHugetlb()).
// Deviations, each noted where it happens: mprotect_tests' MAP_FIXED replacement of the second
// page is unregister + MADV_DONTNEED + register (a Region cannot map over itself); "Memory mapped
// file" maps this test file instead of the test binary; transact_test's per-thread getrusage()
// fault accounting is not available to worker_threads (only the process-wide count is reported).
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import { afterAll, beforeAll, beforeEach, describe, expect, it, type TestContext } from 'vitest'
import { FeatureUnavailableError, Region, SyscallError, Userfaultfd, features, pagemap, pageSize, type Range } from '../../lib/index.ts'
import { native } from '../../lib/native.ts'
import { inVm } from '../helpers/env.mjs'
import { reserveHugePages, restoreHugePages, vmaPageSize } from '../helpers/hugetlb.ts'
import { errorCode } from '../helpers/errors.ts'
import { pmdSize } from '../helpers/mm-fork.ts'

const here = fileURLToPath(import.meta.url)
const repoRoot = path.resolve(path.dirname(here), '..', '..')

// ---- the C's globals and #defines ------------------------------------------------------------
const PAGE_IS_WPALLOWED = 1 << 0
const PAGE_IS_WRITTEN = 1 << 1
const PAGE_IS_FILE = 1 << 2
const PAGE_IS_PRESENT = 1 << 3
const PAGE_IS_SWAPPED = 1 << 4
const PAGE_IS_PFNZERO = 1 << 5
const PAGE_IS_HUGE = 1 << 6
const PM_SCAN_WP_MATCHING = 1 << 0
const PM_SCAN_CHECK_WPASYNC = 1 << 1
const WP = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC
const PAGEMAP_BITS_ALL = PAGE_IS_WPALLOWED | PAGE_IS_WRITTEN | PAGE_IS_FILE | PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO | PAGE_IS_HUGE
const PAGEMAP_NON_WRITTEN_BITS = PAGE_IS_WPALLOWED | PAGE_IS_FILE | PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO | PAGE_IS_HUGE
const TEST_ITERATIONS = 100
const page_size = pageSize
// read_pmd_pagesize(); without THP (0) the port still sizes its hugetlb cases by 2 MiB, and
// gethugepage()'s MADV_HUGEPAGE fails (EINVAL), so the THP cases skip.
const hpage_size = pmdSize() || 2 * 1024 * 1024

// ---- init_uffd(): probe, and skip (not pass) everything when it fails --------------------------
const f = features()
let uffd: Userfaultfd | undefined
let skipAll: string | undefined = !f.pagemapScan ? `PAGEMAP_SCAN is not available on ${f.kernelRelease}` : undefined
if (skipAll === undefined) {
  try {
    uffd = Userfaultfd.open({ features: ['wpUnpopulated', 'wpAsync', 'wpHugetlbfsShmem'] })
  } catch (error) {
    // No userfaultfd, or a feature missing: the C's init_uffd() fails and it skips. Anything else is a bug.
    if (!(error instanceof FeatureUnavailableError || error instanceof SyscallError)) throw error
    skipAll = `init_uffd() failed: ${error.message}`
  }
}
afterAll(() => uffd?.close())
beforeEach((ctx) => {
  if (skipAll !== undefined) ctx.skip(skipAll)
})

// ---- memory: a Region or a page-aligned part of one --------------------------------------------
/** `char *mem` of the C: a page-aligned span of a live Region. */
class Mem {
  constructor(
    readonly region: Region,
    readonly offset = 0,
    readonly size = region.length - offset,
  ) {}
  /** Zero-copy bytes of the span (re-read after protect(): views detach on PROT changes). */
  get bytes(): Uint8Array {
    return this.region.bytes.subarray(this.offset, this.offset + this.size)
  }
  get start(): bigint {
    return this.region.address + BigInt(this.offset)
  }
  range(off = 0, len = this.size - off): Range {
    return { offset: this.offset + off, length: len }
  }
  at(off: number): bigint {
    return this.start + BigInt(off)
  }
  close(): void {
    this.region.close()
  }
}

function anon(size: number, prot: 'rw' | 'none' = 'rw'): Mem {
  return new Mem(Region.anonymous(size, { prot }))
}

/** gethugepage(): memalign(hpage_size) + MADV_HUGEPAGE + memset(0); null when madvise fails. */
function gethugepage(map_size: number): Mem | null {
  const region = Region.anonymous(map_size + hpage_size)
  const misalign = Number(region.address % BigInt(hpage_size))
  const mem = new Mem(region, misalign === 0 ? 0 : hpage_size - misalign, map_size)
  try {
    region.advise('hugepage', mem.range())
  } catch (error) {
    region.close()
    if (error instanceof SyscallError) return null // the C's `if (ret) return NULL`
    throw error
  }
  mem.bytes.fill(0)
  return mem
}

// ---- struct page_region vec[] and the ioctl wrappers -------------------------------------------
class Vec {
  readonly starts: BigUint64Array
  readonly ends: BigUint64Array
  readonly categories: Uint32Array
  constructor(readonly size: number) {
    this.starts = new BigUint64Array(size)
    this.ends = new BigUint64Array(size)
    this.categories = new Uint32Array(size)
  }
  /** LEN(vec[i]) */
  LEN(i: number): number {
    return Number(this.ends[i] - this.starts[i]) / page_size
  }
}

let walk_end = 0n
/** pagemap_ioctl()/pagemap_ioc(): the regions written, or -errno like the C's `ret < 0`. */
function pagemap_ioctl(mem: Mem, off: number, len: number, vec: Vec | null, vec_len: number, flag: number, max_pages: number, required_mask: number, anyof_mask: number, excluded_mask: number, return_mask: number): number {
  try {
    const range = len === 0 ? { offset: mem.offset + off, length: 0 } : mem.range(off, len)
    const r = pagemap.scanRaw(mem.region, range, { flags: flag, maxPages: max_pages, categoryMask: required_mask, categoryAnyofMask: anyof_mask, categoryInverted: excluded_mask, returnMask: return_mask, vec, vecLen: vec_len })
    walk_end = r.walkEnd
    return r.regions
  } catch (error) {
    if (error instanceof SyscallError) return error.errno
    throw error
  }
}

/** ksft_exit_fail_msg("error %ld %d %s") after a failed ioctl: an ASSERT. */
function ok(ret: number): number {
  if (ret < 0) throw new Error(`error ${ret} (PAGEMAP_SCAN failed)`)
  return ret
}

function wp_init(mem: Mem, off = 0, len = mem.size - off): void {
  const ioctls = uffd!.register(mem.region, { writeProtect: true }, mem.range(off, len))
  if ((ioctls & (1n << 6n)) === 0n) throw new Error('ioctl set is incorrect')
  uffd!.writeProtect(mem.region, mem.range(off, len), true)
}

function wp_free(mem: Mem, off = 0, len = mem.size - off): void {
  uffd!.unregister(mem.region, mem.range(off, len))
}

function wp_addr_range(mem: Mem, off = 0, len = mem.size - off): void {
  ok(pagemap_ioctl(mem, off, len, null, 0, WP, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
}

function get_reads(vec: Vec, n: number): number {
  let sum = 0
  for (let i = 0; i < n; i++) sum += vec.LEN(i)
  return sum
}

/** C's rand() % 2, deterministic so a failure reproduces. */
let seed = 1
function rand(): number {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff
  return seed >>> 16
}

// ---- 1. sanity_tests_sd ---------------------------------------------------------------------
describe('sanity_tests_sd', () => {
  const num_pages = 1000
  let vec_size = num_pages / 2
  let mem_size = num_pages * page_size
  let vec: Vec, vec2: Vec, mem: Mem
  let ret = 0, ret2 = 0, ret3 = 0
  const fn = 'sanity_tests_sd'

  beforeAll(() => {
    if (skipAll) return
    vec = new Vec(vec_size)
    vec2 = new Vec(vec_size)
    mem = anon(mem_size)
    wp_init(mem)
    wp_addr_range(mem)
  })
  afterAll(() => mem?.close())

  // 1. wrong operation
  it(`${fn} Zero range size is valid`, () => {
    expect(pagemap_ioctl(mem, 0, 0, vec, vec_size, 0, 0, PAGEMAP_BITS_ALL, 0, 0, PAGEMAP_BITS_ALL)).toBe(0)
  })
  it(`${fn} output buffer must be specified with size`, () => {
    expect(pagemap_ioctl(mem, 0, mem_size, null, vec_size, 0, 0, PAGEMAP_BITS_ALL, 0, 0, PAGEMAP_BITS_ALL)).toBeLessThan(0)
  })
  it(`${fn} output buffer can be 0`, () => {
    expect(pagemap_ioctl(mem, 0, mem_size, vec, 0, 0, 0, PAGEMAP_BITS_ALL, 0, 0, PAGEMAP_BITS_ALL)).toBe(0)
  })
  it(`${fn} output buffer can be 0`, () => {
    expect(pagemap_ioctl(mem, 0, mem_size, null, 0, 0, 0, PAGEMAP_BITS_ALL, 0, 0, PAGEMAP_BITS_ALL)).toBe(0)
  })
  it(`${fn} wrong flag specified`, () => {
    expect(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, -1, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN)).toBeLessThan(0)
  })
  it(`${fn} flag has extra bits specified`, () => {
    expect(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, WP | 0xff, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN)).toBeLessThan(0)
  })
  it(`${fn} no selection mask is specified`, () => {
    expect(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, 0, 0, 0, 0, 0, PAGE_IS_WRITTEN)).toBeGreaterThanOrEqual(0)
  })
  it(`${fn} no return mask is specified`, () => {
    expect(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, 0, 0, PAGE_IS_WRITTEN, PAGE_IS_WRITTEN, 0, 0)).toBe(0)
  })
  it(`${fn} wrong return mask specified`, () => {
    expect(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, 0, 0, PAGE_IS_WRITTEN, 0, 0, 0x1000)).toBeLessThan(0)
  })
  it(`${fn} mixture of correct and wrong flag`, () => {
    expect(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, WP, 0, 0xfff, PAGE_IS_WRITTEN, 0, PAGE_IS_WRITTEN)).toBeLessThan(0)
  })
  it(`${fn} PAGEMAP_BITS_ALL can be specified with PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC`, () => {
    expect(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, WP, 0, 0, 0, PAGEMAP_BITS_ALL, PAGE_IS_WRITTEN)).toBeGreaterThanOrEqual(0)
  })

  // 2. Clear area with larger vec size
  it(`${fn} Clear area with larger vec size`, () => {
    ret = pagemap_ioctl(mem, 0, mem_size, vec, vec_size, WP, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN)
    expect(ret).toBeGreaterThanOrEqual(0)
  })

  // 3. Repeated pattern of written and non-written pages
  it(`${fn} Repeated pattern of written and non-written pages`, () => {
    const b = mem.bytes
    for (let i = 0; i < mem_size; i += 2 * page_size) b[i]++
    ret = ok(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, 0, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
    expect(ret).toBe(mem_size / (page_size * 2))
  })

  // 4. Repeated pattern of written and non-written pages in parts
  it(`${fn} Repeated pattern of written and non-written pages in parts`, () => {
    ret = ok(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, WP, num_pages / 2 - 2, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
    ret2 = ok(pagemap_ioctl(mem, 0, mem_size, vec, 2, 0, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
    ret3 = ok(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, WP, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
    expect.soft(ret + ret3, `${ret} ${ret3} ${ret2}`).toBe(num_pages / 2)
    expect.soft(ret2).toBe(2)
  })

  // 5. Repeated pattern of written and non-written pages max_pages
  it(`${fn} Repeated pattern of written and non-written pages max_pages`, () => {
    const b = mem.bytes
    for (let i = 0; i < mem_size; i += 2 * page_size) b[i]++
    b[(mem_size / page_size - 1) * page_size]++
    ret = ok(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, WP, num_pages / 2, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
    ret2 = ok(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, WP, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
    expect.soft(ret).toBe(num_pages / 2)
    expect.soft(ret2).toBe(1)
  })

  // 6. only get 2 dirty pages and clear them as well
  it(`${fn} only get 2 written pages and clear them as well`, () => {
    vec_size = mem_size / page_size
    vec2 = new Vec(vec_size) // the C's vec2 holds vec_size/2 entries but only 2 are used
    mem.bytes.fill(0xff)
    // get and clear second and third pages
    ret = ok(pagemap_ioctl(mem, page_size, 2 * page_size, vec, 1, WP, 2, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
    ret2 = ok(pagemap_ioctl(mem, 0, mem_size, vec2, vec_size, 0, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
    expect.soft(ret).toBe(1)
    expect.soft(vec.LEN(0)).toBe(2)
    expect.soft(vec.starts[0]).toBe(mem.at(page_size))
    expect.soft(ret2).toBe(2)
    expect.soft(vec2.LEN(0)).toBe(1)
    expect.soft(vec2.starts[0]).toBe(mem.start)
    expect.soft(vec2.LEN(1)).toBe(vec_size - 3)
    expect.soft(vec2.starts[1]).toBe(mem.at(3 * page_size))
    wp_free(mem)
    mem.close()
  })

  // 7. Two regions
  it(`${fn} Two regions`, () => {
    const m = [anon(mem_size), anon(mem_size)]
    try {
      wp_init(m[0])
      wp_init(m[1])
      wp_addr_range(m[0])
      wp_addr_range(m[1])
      m[0].bytes.fill('a'.charCodeAt(0))
      m[1].bytes.fill('b'.charCodeAt(0))
      wp_addr_range(m[0])
      ret = ok(pagemap_ioctl(m[1], 0, mem_size, vec, 1, 0, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
      expect.soft(ret).toBe(1)
      expect.soft(vec.LEN(0)).toBe(mem_size / page_size)
      wp_free(m[0])
      wp_free(m[1])
    } finally {
      m[0].close()
      m[1].close()
    }
  })

  // 8. Smaller vec
  it(`${fn} Smaller max_pages`, () => {
    mem_size = 1050 * page_size
    vec_size = mem_size / (page_size * 2)
    const v = new Vec(vec_size)
    const m = anon(mem_size)
    try {
      wp_init(m)
      wp_addr_range(m)
      ok(pagemap_ioctl(m, 0, mem_size, v, vec_size, WP, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
      const b = m.bytes
      for (let i = 0; i < mem_size / page_size; i += 2) b[i * page_size]++
      let total_pages = 0
      for (let k = 0; k < 3; k++) {
        total_pages += ok(pagemap_ioctl(m, 0, mem_size, v, vec_size, WP, mem_size / (page_size * 5), PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
      }
      expect(total_pages).toBe(mem_size / (page_size * 2))
      wp_free(m)
    } finally {
      m.close()
    }
  })

  // 9. Smaller vec
  it('Smaller vec', () => {
    mem_size = 10000 * page_size
    vec_size = 50
    const v = new Vec(vec_size)
    const m = anon(mem_size)
    try {
      wp_init(m)
      wp_addr_range(m)
      const b = m.bytes
      let count: number
      for (count = 0; count < TEST_ITERATIONS; count++) {
        let total_writes = 0, total_reads = 0
        walk_end = m.start
        for (let i = 0; i < mem_size; i += page_size) {
          if (rand() % 2) {
            b[i]++
            total_writes++
          }
        }
        while (total_reads < total_writes) {
          const off = Number(walk_end - m.start)
          const r = ok(pagemap_ioctl(m, off, mem_size - off, v, vec_size, WP, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
          if (r > vec_size) break
          total_reads += get_reads(v, r)
        }
        if (total_reads !== total_writes) break
      }
      expect(count).toBe(TEST_ITERATIONS)
      wp_free(m)
    } finally {
      m.close()
    }
  })

  // 10. Walk_end tester
  describe('Walk_end tester', () => {
    const vec_size = 1000
    const mem_size = vec_size * page_size
    let v: Vec, m: Mem
    const at = (pages: number) => m.at(pages * page_size)
    beforeAll(() => {
      if (skipAll) return
      v = new Vec(vec_size)
      m = anon(mem_size)
      wp_init(m)
      wp_addr_range(m)
      m.bytes.fill(0)
    })
    afterAll(() => {
      if (m && !m.region.closed) {
        wp_free(m)
        m.close()
      }
    })
    const check = (r: number, expectRet: number, expectEnd: () => bigint) => {
      ok(r)
      expect.soft(r).toBe(expectRet)
      expect.soft(walk_end).toBe(expectEnd())
    }
    it('Walk_end: Same start and end address', () => check(pagemap_ioctl(m, 0, 0, v, vec_size, 0, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN), 0, () => m.start))
    it('Walk_end: Same start and end with WP', () => check(pagemap_ioctl(m, 0, 0, v, vec_size, WP, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN), 0, () => m.start))
    it('Walk_end: Same start and end with 0 output buffer', () => check(pagemap_ioctl(m, 0, 0, v, 0, WP, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN), 0, () => m.start))
    it('Walk_end: Big vec', () => check(pagemap_ioctl(m, 0, mem_size, v, vec_size, 0, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN), 1, () => at(vec_size)))
    it('Walk_end: vec of minimum length', () => check(pagemap_ioctl(m, 0, mem_size, v, 1, 0, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN), 1, () => at(vec_size)))
    it('Walk_end: Max pages specified', () => check(pagemap_ioctl(m, 0, mem_size, v, 1, 0, vec_size, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN), 1, () => at(vec_size)))
    it('Walk_end: Half max pages', () => check(pagemap_ioctl(m, 0, mem_size, v, vec_size, 0, vec_size / 2, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN), 1, () => at(vec_size / 2)))
    it('Walk_end: 1 max page', () => check(pagemap_ioctl(m, 0, mem_size, v, vec_size, 0, 1, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN), 1, () => at(1)))
    it('Walk_end: max pages', () => check(pagemap_ioctl(m, 0, mem_size, v, vec_size, 0, -1, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN), 1, () => at(vec_size)))
    it('Walk_end sparse: Big vec', () => {
      wp_addr_range(m)
      const b = m.bytes
      for (let i = 0; i < mem_size; i += 2 * page_size) b[i]++
      check(pagemap_ioctl(m, 0, mem_size, v, vec_size, 0, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN), vec_size / 2, () => at(vec_size))
    })
    it('Walk_end sparse: vec of minimum length', () => check(pagemap_ioctl(m, 0, mem_size, v, 1, 0, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN), 1, () => at(2)))
    it('Walk_end sparse: Max pages specified', () => check(pagemap_ioctl(m, 0, mem_size, v, 1, 0, vec_size, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN), 1, () => at(2)))
    it('Walk_end sparse: Max pages specified', () => check(pagemap_ioctl(m, 0, mem_size, v, vec_size / 2, 0, vec_size, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN), vec_size / 2, () => at(vec_size)))
    it('Walk_end sparse: Max pages specified', () => check(pagemap_ioctl(m, 0, mem_size, v, vec_size, 0, vec_size, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN), vec_size / 2, () => at(vec_size)))
    it('Walk_endsparse : Half max pages', () => check(pagemap_ioctl(m, 0, mem_size, v, vec_size, 0, vec_size / 2, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN), vec_size / 2, () => at(vec_size)))
    it('Walk_end: 1 max page', () => check(pagemap_ioctl(m, 0, mem_size, v, vec_size, 0, 1, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN), 1, () => at(2)))
  })
})

// ---- base_tests() -------------------------------------------------------------------------------
/**
 * base_tests(prefix, mem, mem_size, skip): six results on one mapping. `setup` maps it (and
 * does wp_init + wp_addr_range) or returns the reason it cannot; `teardown` frees it.
 */
function base_tests(prefix: string, setup: () => Mem | string, teardown: (mem: Mem) => void = (m) => { wp_free(m); m.close() }): void {
  describe(prefix, () => {
    let mem: Mem | undefined
    let reason: string | undefined
    let vec_size = 0
    let vec: Vec
    beforeAll(() => {
      if (skipAll) return
      const got = setup()
      if (typeof got === 'string') reason = got
      else {
        mem = got
        vec_size = mem.size / page_size
        vec = new Vec(vec_size)
      }
    })
    afterAll(() => {
      if (mem && !mem.region.closed) teardown(mem)
    })
    beforeEach((ctx) => {
      if (reason) ctx.skip(reason)
    })
    const scan = (flag: number, vlen: number, max: number, ret: number, off = 0, len = mem!.size - off) =>
      ok(pagemap_ioctl(mem!, off, len, vec, vlen, flag, max, PAGE_IS_WRITTEN, 0, 0, ret))

    // 1. all new pages must be not be written (dirty)
    it(`${prefix} all new pages must not be written (dirty)`, () => {
      expect(scan(WP, 1, vec_size - 2, PAGE_IS_WRITTEN)).toBe(0)
    })
    // 2. all pages must be written
    it(`${prefix} all pages must be written (dirty)`, () => {
      mem!.bytes.fill(0xff)
      const written = scan(0, 1, 0, PAGE_IS_WRITTEN)
      expect.soft(written).toBe(1)
      expect.soft(vec.LEN(0)).toBe(mem!.size / page_size)
    })
    // 3. all pages dirty other than first and the last one
    it(`${prefix} all pages dirty other than first and the last one`, () => {
      scan(WP, 1, 0, PAGE_IS_WRITTEN)
      mem!.bytes.fill(0, page_size, mem!.size - page_size)
      const written = scan(WP, 1, 0, PAGE_IS_WRITTEN)
      expect.soft(written).toBe(1)
      expect.soft(vec.LEN(0)).toBeGreaterThanOrEqual(vec_size - 2)
      expect.soft(vec.LEN(0)).toBeLessThanOrEqual(vec_size)
    })
    it(`${prefix} PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC`, () => {
      expect(scan(0, 1, 0, PAGE_IS_WRITTEN)).toBe(0)
    })
    // 4. only middle page dirty
    it(`${prefix} only middle page dirty`, () => {
      scan(WP, 1, 0, PAGE_IS_WRITTEN)
      mem!.bytes[Math.floor(vec_size / 2) * page_size]++
      const written = scan(0, vec_size, 0, PAGE_IS_WRITTEN)
      expect.soft(written).toBe(1)
      expect.soft(vec.LEN(0)).toBeGreaterThanOrEqual(1)
    })
    // 5. only two middle pages dirty and walk over only middle pages
    it(`${prefix} only two middle pages dirty`, () => {
      const mid = Math.floor(vec_size / 2)
      scan(WP, 1, 0, PAGE_IS_WRITTEN | PAGE_IS_HUGE)
      const b = mem!.bytes
      b[mid * page_size]++
      b[(mid + 1) * page_size]++
      const written = scan(0, 1, 0, PAGE_IS_WRITTEN | PAGE_IS_HUGE, mid * page_size, 2 * page_size)
      expect.soft(written).toBe(1)
      expect.soft(vec.starts[0]).toBe(mem!.at(mid * page_size))
      expect.soft(vec.LEN(0)).toBe(2)
    })
  })
}

function tracked(mem: Mem): Mem {
  wp_init(mem)
  wp_addr_range(mem)
  return mem
}

// ---- hugetlb: free pages are needed; reserved only in the VM -------------------------------------
afterAll(restoreHugePages)
/** Private hugetlb mapping of `size` bytes (the C's MAP_PRIVATE | MAP_HUGETLB), or why not. */
function hugetlbPrivate(size: number): Mem | string {
  const noPages = reserveHugePages(Math.ceil(size / hpage_size))
  if (noPages) return noPages
  const fd = native.memfdCreate('uffd-test', native.constants.MFD_CLOEXEC | native.constants.MFD_HUGETLB)
  if (fd < 0) return `memfd_create(MFD_HUGETLB) failed: errno ${-fd}`
  try {
    fs.ftruncateSync(fd, size)
    return new Mem(Region.file(`/proc/self/fd/${fd}`, { prot: 'rw' }))
  } catch (error) {
    // ftruncate (a Node errno error) or mmap (SyscallError) refused: why the case skips. Not a bug of ours.
    if (!(error instanceof SyscallError) && !/^E[A-Z0-9]+$/.test(errorCode(error) ?? '')) throw error
    return `hugetlb mapping failed: ${errorCode(error)}: ${String(error)}`
  } finally {
    fs.closeSync(fd)
  }
}

/**
 * Shared hugetlb mapping of `size` bytes, or why not: Region.memfd({ hugetlb: true }), i.e.
 * memfd_create(MFD_HUGETLB) + mmap(MAP_SHARED), as the C's block 7 does. It stands in for the
 * C's SysV shmget(SHM_HUGETLB) + shmat() of block 5 too, because that is the same kernel path:
 * newseg() makes the segment with hugetlb_file_setup() on the internal hugetlbfs mount, the
 * function memfd_create(MFD_HUGETLB) calls, and shmat() maps that file MAP_SHARED through
 * hugetlbfs_file_mmap() (shm_mmap() calls the file's own mmap). Either way the VMA is a
 * VM_SHARED hugetlb VMA over a hugetlbfs inode, which is all PAGEMAP_SCAN and uffd-wp look at.
 * Deviation: the C maps its memfd without ftruncate (hugetlbfs mmap sets i_size) and creates
 * it with MFD_NOEXEC_SEAL; Region.memfd sizes it first and seals it against shrinking.
 * Not in the C: /proc/self/smaps must show the mapping as shared ("rw-s") hugetlb
 * (KernelPageSize = the huge page size), so a wrong mapping cannot pass these tests.
 */
function sharedHugetlb(size: number, name: string): Mem | string {
  const noPages = reserveHugePages(Math.ceil(size / hpage_size))
  if (noPages) return noPages
  const region = Region.memfd(size, { name, hugetlb: true })
  const vma = vmaPageSize(region.address)
  if (vma.perms !== 'rw-s' || vma.kernelPageSize !== region.hugePageSize) {
    region.close()
    throw new Error(`not a shared hugetlb VMA: ${JSON.stringify(vma)}`)
  }
  return new Mem(region)
}

// 2. Normal page testing
base_tests('Page testing:', () => tracked(anon(10 * page_size)))
// 3. Large page testing
base_tests('Large Page testing:', () => tracked(anon(512 * 10 * page_size)))
// 4. Huge page testing
base_tests('Huge page testing:', () => {
  const map = gethugepage(hpage_size)
  return map ? tracked(map) : 'madvise(MADV_HUGEPAGE) failed: THP is not available'
})
// 5. SHM Hugetlb page testing (SysV SHM_HUGETLB in the C: see sharedHugetlb())
base_tests('Hugetlb shmem testing:', () => {
  const mem = sharedHugetlb(2 * 1024 * 1024, 'SYSV2')
  return typeof mem === 'string' ? mem : tracked(mem)
})
// 6. Hugetlb page testing
base_tests('Hugetlb mem testing:', () => {
  const mem = hugetlbPrivate(2 * 1024 * 1024)
  return typeof mem === 'string' ? mem : tracked(mem)
})
// 7. File Hugetlb testing (the C prints the same prefix as 5): MAP_SHARED of an MFD_HUGETLB memfd
base_tests('Hugetlb shmem testing:', () => {
  const mem = sharedHugetlb(2 * 1024 * 1024, 'uffd-test')
  return typeof mem === 'string' ? mem : tracked(mem)
})
// 8. File memory testing: a private mapping of a file of 10 pages of 'c'
base_tests('File memory testing:', () => {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pagemap_ioctl-')), 'pagemap_ioctl.c.tmp0')
  fs.writeFileSync(file, Buffer.alloc(page_size * 10, 'c'))
  const mem = new Mem(Region.file(file, { prot: 'rw' }))
  fs.rmSync(path.dirname(file), { recursive: true })
  return tracked(mem)
})
// 9. File anonymous memory testing: MAP_PRIVATE of a memfd (via /proc/self/fd of a memfd Region)
base_tests('File anonymous memory testing:', () => {
  const backing = Region.memfd(page_size * 10, { name: 'pagemap_ioctl.c.tmp00' })
  backing.bytes.fill('c'.charCodeAt(0))
  const mem = new Mem(Region.file(`/proc/self/fd/${backing.fd}`, { prot: 'rw' }))
  backing.close()
  return tracked(mem)
})

// ---- 10. hpage_unit_tests ------------------------------------------------------------------------
describe('hpage_unit_tests', () => {
  const fn = 'hpage_unit_tests'
  const num_pages = 10
  const map_size = hpage_size * num_pages
  const vec_size = map_size / page_size
  let vec: Vec
  let map: Mem | null = null
  const noThp = 'madvise(MADV_HUGEPAGE) failed: THP is not available'
  const scan = (m: Mem, vlen: number, flag: number, max: number, off = 0, len = m.size - off) =>
    ok(pagemap_ioctl(m, off, len, vec, vlen, flag, max, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
  const fresh = (ctx: TestContext): Mem => {
    const m = gethugepage(map_size)
    if (!m) ctx.skip(noThp)
    wp_init(m!)
    wp_addr_range(m!)
    return m!
  }
  const free = (m: Mem | null) => {
    if (m && !m.region.closed) {
      wp_free(m)
      m.close()
    }
  }
  beforeAll(() => {
    vec = new Vec(vec_size)
  })
  afterAll(() => free(map))

  it(`${fn} all new huge page must not be written (dirty)`, (ctx) => {
    map = fresh(ctx)
    expect(scan(map, vec_size, WP, 0)).toBe(0)
  })
  it(`${fn} all the huge page must not be written`, (ctx) => {
    if (!map) ctx.skip(noThp)
    expect(scan(map!, vec_size, 0, 0)).toBe(0)
  })
  it(`${fn} all the huge page must be written and clear`, (ctx) => {
    if (!map) ctx.skip(noThp)
    map!.bytes.fill(0xff)
    const ret = scan(map!, vec_size, WP, 0)
    expect.soft(ret).toBe(1)
    expect.soft(vec.starts[0]).toBe(map!.start)
    expect.soft(vec.LEN(0)).toBe(vec_size)
    expect.soft(vec.categories[0]).toBe(PAGE_IS_WRITTEN)
  })
  it(`${fn} only middle page written`, (ctx) => {
    free(map)
    map = fresh(ctx)
    map.bytes[(vec_size / 2) * page_size]++
    const ret = scan(map, vec_size, 0, 0)
    expect.soft(ret).toBe(1)
    expect.soft(vec.LEN(0)).toBeGreaterThan(0)
    free(map)
    map = null
  })
  // 5. clear first half of huge page
  it(`${fn} clear first half of huge page`, (ctx) => {
    const m = fresh(ctx)
    try {
      m.bytes.fill(0)
      wp_addr_range(m, 0, map_size / 2)
      const ret = scan(m, vec_size, 0, 0)
      expect.soft(ret).toBe(1)
      expect.soft(vec.LEN(0)).toBe(vec_size / 2)
      expect.soft(vec.starts[0]).toBe(m.at(map_size / 2))
    } finally {
      free(m)
    }
  })
  // 6. clear first half of huge page with limited buffer
  it(`${fn} clear first half of huge page with limited buffer`, (ctx) => {
    const m = fresh(ctx)
    try {
      m.bytes.fill(0)
      scan(m, vec_size, WP, vec_size / 2)
      const ret = scan(m, vec_size, 0, 0)
      expect.soft(ret).toBe(1)
      expect.soft(vec.LEN(0)).toBe(vec_size / 2)
      expect.soft(vec.starts[0]).toBe(m.at(map_size / 2))
    } finally {
      free(m)
    }
  })
  // 7. clear second half of huge page
  it(`${fn} clear second half huge page`, (ctx) => {
    const m = fresh(ctx)
    try {
      m.bytes.fill(0xff)
      scan(m, vec_size, WP, vec_size / 2, map_size / 2, map_size / 2)
      const ret = scan(m, vec_size, 0, 0)
      expect.soft(ret).toBe(1)
      expect.soft(vec.LEN(0)).toBe(vec_size / 2)
    } finally {
      free(m)
    }
  })
  // 8. get half huge page
  let half: Mem | null = null
  it(`${fn} get half huge page`, async (ctx) => {
    half = fresh(ctx)
    half.bytes.fill(0xff)
    await new Promise((resolve) => setTimeout(resolve, 1)) // usleep(100)
    const ret = scan(half, 1, WP, hpage_size / (2 * page_size))
    expect.soft(ret).toBe(1)
    expect.soft(vec.LEN(0)).toBe(hpage_size / (2 * page_size))
  })
  it(`${fn} get half huge page`, (ctx) => {
    if (!half) ctx.skip(noThp)
    try {
      const ret2 = scan(half!, vec_size, 0, 0)
      expect.soft(ret2).toBe(1)
      expect.soft(vec.LEN(0)).toBe((map_size - hpage_size / 2) / page_size)
    } finally {
      free(half)
      half = null
    }
  })
})

// ---- 11. test_simple ---------------------------------------------------------------------------
describe('test_simple', () => {
  it('Test test_simple', () => {
    const map = anon(page_size)
    const vec = new Vec(1)
    try {
      wp_init(map)
      wp_addr_range(map)
      let i: number
      for (i = 0; i < TEST_ITERATIONS; i++) {
        if (pagemap_ioctl(map, 0, page_size, vec, 1, 0, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN) === 1) {
          console.log(`written bit was 1, but should be 0 (i=${i})`)
          break
        }
        wp_addr_range(map)
        // Write something to the page to get the written bit enabled on the page
        map.bytes[0]++
        if (pagemap_ioctl(map, 0, page_size, vec, 1, 0, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN) === 0) {
          console.log(`written bit was 0, but should be 1 (i=${i})`)
          break
        }
        wp_addr_range(map)
      }
      wp_free(map)
      expect(i).toBe(TEST_ITERATIONS)
    } finally {
      map.close()
    }
  })
})

// ---- 12. mprotect_tests -------------------------------------------------------------------------
describe('mprotect_tests', () => {
  const fn = 'mprotect_tests'
  let mem: Mem
  const vec = new Vec(1)
  const scan = () => ok(pagemap_ioctl(mem, 0, 2 * page_size, vec, 1, 0, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
  beforeAll(() => {
    if (skipAll) return
    // 1. Map two pages
    mem = anon(2 * page_size)
    wp_init(mem)
    wp_addr_range(mem)
  })
  afterAll(() => {
    if (mem && !mem.region.closed) {
      wp_free(mem)
      mem.close()
    }
  })
  it(`${fn} Both pages written`, () => {
    // Populate both pages.
    mem.bytes.fill(1)
    const ret = scan()
    expect.soft(ret).toBe(1)
    expect.soft(vec.LEN(0)).toBe(2)
  })
  it(`${fn} Both pages are not written (dirty)`, () => {
    // 2. Start tracking
    wp_addr_range(mem)
    expect(scan()).toBe(0)
  })
  it(`${fn} Both pages written after remap and mprotect`, () => {
    // 3. Remap the second page. The C maps a fresh page over it with MAP_FIXED (dropping its
    // uffd registration); a Region cannot map over itself, so: unregister, zap, re-register.
    wp_free(mem, page_size, page_size)
    mem.region.advise('dontneed', mem.range(page_size, page_size))
    wp_init(mem, page_size, page_size)
    wp_addr_range(mem, page_size, page_size)
    // Protect + unprotect.
    mem.region.protect('none', mem.range(0, page_size))
    mem.region.protect('r', mem.range(0, 2 * page_size))
    mem.region.protect('rw', mem.range(0, 2 * page_size))
    // Modify both pages.
    mem.bytes.fill(2)
    // Protect + unprotect.
    mem.region.protect('none', mem.range(0, page_size))
    mem.region.protect('r', mem.range(0, page_size))
    mem.region.protect('rw', mem.range(0, page_size))
    const ret = scan()
    expect.soft(ret).toBe(1)
    expect.soft(vec.LEN(0)).toBe(2)
  })
  it(`${fn} Clear and make the pages written`, () => {
    // 4. Clear and make the pages written
    wp_addr_range(mem)
    mem.bytes.fill('A'.charCodeAt(0))
    const ret = scan()
    expect.soft(ret).toBe(1)
    expect.soft(vec.LEN(0)).toBe(2)
  })
})

// ---- 13. transact_test ----------------------------------------------------------------------------
// The C's writer threads store into the scanning thread's own mapping. PAGE_IS_WRITTEN lives in
// that mapping's PTEs, so the writers must store through the very same virtual addresses: a second
// mapping of a shared memfd (e.g. Region.file on /proc/self/fd/N in each worker) would be another
// VMA whose writes this scan never sees. So each worker loads the native addon and wraps the main
// thread's Region addresses in an ArrayBuffer (what Region.bytes is, zero-copy). That is sound
// because the main thread keeps the Region open until every worker has exited (awaited below).
// Barriers are pthread_barrier_t rebuilt on Atomics over a SharedArrayBuffer.
const nthreads = 6, pages_per_thread = 32, access_per_thread = 8
const iter_count = inVm ? 200 : 1000

const barrierSource = `
function barrier_wait(sync, base, parties) {
  const gen = Atomics.load(sync, base + 1)
  if (Atomics.add(sync, base, 1) === parties - 1) {
    Atomics.store(sync, base, 0)
    Atomics.add(sync, base + 1, 1)
    Atomics.notify(sync, base + 1)
  } else {
    while (Atomics.load(sync, base + 1) === gen) Atomics.wait(sync, base + 1, gen)
  }
}`
// eslint-disable-next-line @typescript-eslint/no-implied-eval
const barrier_wait = new Function(`${barrierSource}; return barrier_wait`)() as (sync: Int32Array, base: number, parties: number) => void
const START = 0, END = 2, FINISH = 4

const workerSource = `
const { workerData } = require('node:worker_threads')
const native = require(workerData.addon)
${barrierSource}
const { address, length, pageSize, accesses, parties } = workerData
const sync = new Int32Array(workerData.sync)
const m = new Int32Array(native.wrap(address, length))
const stride = pageSize / 4
while (!Atomics.load(sync, ${FINISH})) {
  barrier_wait(sync, ${START}, parties)
  for (let i = 0; i < accesses; ++i) Atomics.add(m, i * stride, 1)
  barrier_wait(sync, ${END}, parties)
}
`

describe('transact_test', () => {
  const fn = 'transact_test'
  const size = page_size * nthreads * pages_per_thread
  let mem: Mem
  const rgns = new Vec(256)
  beforeAll(() => {
    if (skipAll) return
    mem = anon(size)
    wp_init(mem)
    wp_addr_range(mem)
    mem.bytes.fill(0)
  })
  afterAll(() => {
    if (mem && !mem.region.closed) {
      wp_free(mem)
      mem.close()
    }
  })

  function get_dirty_pages_reset(count: number, reset: boolean): number {
    const ret = ok(pagemap_ioctl(mem, 0, count * page_size, rgns, 256, reset ? WP : 0, count, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
    let cnt = 0
    for (let i = 0; i < ret; ++i) {
      if (rgns.categories[i] !== PAGE_IS_WRITTEN) throw new Error('wrong flags')
      cnt += rgns.LEN(i)
    }
    return cnt
  }

  it(`${fn} count %d`, (ctx) => {
    const count = get_dirty_pages_reset(nthreads * pages_per_thread, true)
    void ctx.annotate(`count ${count}`)
    expect(count).toBeGreaterThan(0)
  })
  it(`${fn} count %d`, (ctx) => {
    const count = get_dirty_pages_reset(nthreads * pages_per_thread, true)
    void ctx.annotate(`count ${count}`)
    expect(count).toBe(0)
  })
  it(`${fn} Extra pages %u (%.1lf%%), extra thread faults %d.`, async (ctx) => {
    const sync = new Int32Array(new SharedArrayBuffer(8 * 4))
    const addon = path.join(repoRoot, 'build', 'Release', 'memdedup.node')
    const faultsBefore = process.resourceUsage().minorPageFault
    const workers = Array.from({ length: nthreads }, (_, i) => new Worker(workerSource, {
      eval: true,
      workerData: { addon, sync: sync.buffer, address: Number(mem.at(page_size * i * pages_per_thread)), length: page_size * pages_per_thread, pageSize: page_size, accesses: access_per_thread, parties: nthreads + 1 },
    }))
    const exited = workers.map((w) => new Promise<void>((resolve, reject) => {
      w.on('error', reject)
      w.on('exit', () => resolve())
    }))
    let extra_pages = 0
    let failure: string | undefined
    try {
      for (let i = 0; i < iter_count; ++i) {
        barrier_wait(sync, START, nthreads + 1)
        let count = get_dirty_pages_reset(nthreads * pages_per_thread, true)
        barrier_wait(sync, END, nthreads + 1)
        if (count > nthreads * access_per_thread) {
          failure = `Too big count ${count} expected ${nthreads * access_per_thread}, iter ${i}`
          break
        }
        const c = get_dirty_pages_reset(nthreads * pages_per_thread, true)
        count += c
        if (c > nthreads * access_per_thread) {
          failure = `${fn} count > nthreads`
          break
        }
        if (count !== nthreads * access_per_thread) {
          // Counting a page twice on two consecutive read-resets is expected (see the C).
          if (count < nthreads * access_per_thread) {
            failure = `Lost update, iter ${i}, ${count} vs ${nthreads * access_per_thread}.`
            break
          }
          extra_pages += count - nthreads * access_per_thread
        }
      }
    } finally {
      // Release the workers whether or not the loop finished, then wait for them to exit
      // before the Region can be closed.
      barrier_wait(sync, START, nthreads + 1)
      Atomics.store(sync, FINISH, 1)
      barrier_wait(sync, END, nthreads + 1)
      await Promise.all(exited)
    }
    const faults = process.resourceUsage().minorPageFault - faultsBefore
    void ctx.annotate(`Extra pages ${extra_pages} (${((100 * extra_pages) / (iter_count * nthreads * access_per_thread)).toFixed(1)}%), process-wide minor faults ${faults} (per-thread counts are not available to workers), ${iter_count} iterations`)
    expect(failure).toBeUndefined()
  })
})

// ---- 14. sanity_tests ---------------------------------------------------------------------------
describe('sanity_tests', () => {
  const fn = 'sanity_tests'
  const mem_size = 10 * page_size
  const vec_size = mem_size / page_size
  const vec = new Vec(vec_size)
  let mem: Mem
  const fresh = () => {
    const m = anon(mem_size)
    wp_init(m)
    wp_addr_range(m)
    return m
  }
  const release = (m: Mem | undefined) => {
    if (m && !m.region.closed) {
      wp_free(m)
      m.close()
    }
  }
  afterAll(() => release(mem))
  // 1. wrong operation
  it(`${fn} WP op can be specified with !PAGE_IS_WRITTEN`, () => {
    mem = fresh()
    expect(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, WP, 0, PAGEMAP_BITS_ALL, 0, 0, PAGEMAP_BITS_ALL)).toBeGreaterThanOrEqual(0)
  })
  it(`${fn} required_mask specified`, () => {
    expect(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, 0, 0, PAGEMAP_BITS_ALL, 0, 0, PAGEMAP_BITS_ALL)).toBeGreaterThanOrEqual(0)
  })
  it(`${fn} anyof_mask specified`, () => {
    expect(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, 0, 0, 0, PAGEMAP_BITS_ALL, 0, PAGEMAP_BITS_ALL)).toBeGreaterThanOrEqual(0)
  })
  it(`${fn} excluded_mask specified`, () => {
    expect(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, 0, 0, 0, 0, PAGEMAP_BITS_ALL, PAGEMAP_BITS_ALL)).toBeGreaterThanOrEqual(0)
  })
  it(`${fn} required_mask and anyof_mask specified`, () => {
    expect(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, 0, 0, PAGEMAP_BITS_ALL, PAGEMAP_BITS_ALL, 0, PAGEMAP_BITS_ALL)).toBeGreaterThanOrEqual(0)
    release(mem)
  })
  const allWrittenPresent = (ret: number) => {
    expect.soft(ret).toBeGreaterThanOrEqual(0)
    expect.soft(vec.starts[0]).toBe(mem.start)
    expect.soft(vec.LEN(0)).toBe(vec_size)
    expect.soft(vec.categories[0] & (PAGE_IS_WRITTEN | PAGE_IS_PRESENT)).toBe(PAGE_IS_WRITTEN | PAGE_IS_PRESENT)
  }
  // 2. Get sd and present pages with anyof_mask
  it(`${fn} Get sd and present pages with anyof_mask`, () => {
    mem = fresh()
    mem.bytes.fill(0)
    allWrittenPresent(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, 0, 0, 0, PAGEMAP_BITS_ALL, 0, PAGEMAP_BITS_ALL))
  })
  // 3. Get sd and present pages with required_mask
  it(`${fn} Get all the pages with required_mask`, () => {
    allWrittenPresent(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, 0, 0, PAGEMAP_BITS_ALL, 0, 0, PAGEMAP_BITS_ALL))
  })
  // 4. Get sd and present pages with required_mask and anyof_mask
  it(`${fn} Get sd and present pages with required_mask and anyof_mask`, () => {
    allWrittenPresent(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, 0, 0, PAGE_IS_WRITTEN, PAGE_IS_PRESENT, 0, PAGEMAP_BITS_ALL))
  })
  // 5. Don't get sd pages
  it(`${fn} Don't get sd pages`, () => {
    expect(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, 0, 0, PAGE_IS_WRITTEN, 0, PAGE_IS_WRITTEN, PAGEMAP_BITS_ALL)).toBe(0)
  })
  // 6. Don't get present pages
  it(`${fn} Don't get present pages`, () => {
    expect(pagemap_ioctl(mem, 0, mem_size, vec, vec_size, 0, 0, PAGE_IS_PRESENT, 0, PAGE_IS_PRESENT, PAGEMAP_BITS_ALL)).toBe(0)
    release(mem)
  })
  // 8. Find written present pages with return mask
  it(`${fn} Find written present pages with return mask`, () => {
    mem = fresh()
    mem.bytes.fill(0)
    const ret = pagemap_ioctl(mem, 0, mem_size, vec, vec_size, WP, 0, 0, PAGEMAP_BITS_ALL, 0, PAGE_IS_WRITTEN)
    expect.soft(ret).toBeGreaterThanOrEqual(0)
    expect.soft(vec.starts[0]).toBe(mem.start)
    expect.soft(vec.LEN(0)).toBe(vec_size)
    expect.soft(vec.categories[0]).toBe(PAGE_IS_WRITTEN)
    release(mem)
  })
  // 9. Memory mapped file (the C maps its own binary; this maps this test file)
  it(`${fn} Memory mapped file`, () => {
    const size = fs.statSync(here).size
    using fmem = Region.file(here, { prot: 'r' })
    fmem.read() // the C's memcpy(tmp_buf, fmem, st_size): every page present
    const m = new Mem(fmem)
    const ret = pagemap_ioctl(m, 0, fmem.length, vec, vec_size, 0, 0, 0, PAGEMAP_NON_WRITTEN_BITS, 0, PAGEMAP_NON_WRITTEN_BITS)
    expect.soft(ret).toBeGreaterThanOrEqual(0)
    expect.soft(vec.starts[0]).toBe(fmem.address)
    expect.soft(vec.LEN(0)).toBe(Math.ceil(size / page_size))
    expect.soft(vec.categories[0] & PAGE_IS_FILE).toBeTruthy()
  })
  // 10. Create and read/write to a memory mapped file
  it(`${fn} Read/write to memory`, () => {
    const buf_size = page_size * 10
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pagemap_ioctl-'))
    const file = path.join(dir, 'pagemap_ioctl.c.tmp2')
    fs.writeFileSync(file, Buffer.alloc(buf_size, 'c'))
    const fmem = new Mem(Region.file(file, { prot: 'rw' }))
    fs.rmSync(dir, { recursive: true })
    try {
      wp_init(fmem)
      wp_addr_range(fmem)
      fmem.bytes.fill('z'.charCodeAt(0))
      // msync(MS_SYNC) of a private mapping writes nothing back; Region has no msync.
      const ret = pagemap_ioctl(fmem, 0, buf_size, vec, vec_size, 0, 0, PAGE_IS_WRITTEN, PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_FILE, 0, PAGEMAP_BITS_ALL)
      expect.soft(ret).toBeGreaterThanOrEqual(0)
      expect.soft(vec.starts[0]).toBe(fmem.start)
      expect.soft(vec.LEN(0)).toBe(buf_size / page_size)
      expect.soft(vec.categories[0] & PAGE_IS_WRITTEN).toBeTruthy()
      wp_free(fmem)
    } finally {
      fmem.close()
    }
  })
})

// ---- 15. unmapped_region_tests ----------------------------------------------------------------
describe('unmapped_region_tests', () => {
  it('unmapped_region_tests Get status of pages', () => {
    const start = 0x10000000n
    const len = 0x00040000
    const vec_size = len / page_size
    const vec = new Vec(vec_size)
    // Nothing of ours is mapped there: the read-only raw scan (no WP_MATCHING) only reads page
    // tables and writes into vec.
    const written = pagemap.scanAddressesReadOnly(start, len, { vec, vecLen: vec_size, categoryAnyofMask: PAGEMAP_NON_WRITTEN_BITS, returnMask: PAGEMAP_NON_WRITTEN_BITS })
    expect(written.regions).toBeGreaterThanOrEqual(0)
  })
})

// ---- 16. userfaultfd_tests ------------------------------------------------------------------------
describe('userfaultfd_tests', () => {
  it('userfaultfd_tests all new pages must not be written (dirty)', () => {
    const num_pages = 16
    const mem_size = num_pages * page_size
    const mem = anon(mem_size, 'none')
    try {
      wp_init(mem)
      // Change protection of pages differently
      const prots = ['rw', 'r', 'rw', 'r', 'rw', 'none', 'rw', 'r'] as const
      prots.forEach((prot, k) => mem.region.protect(prot, mem.range((k * mem_size) / 8, mem_size / 8)))
      wp_addr_range(mem, mem_size / 16, mem_size - 2 * (mem_size / 8))
      wp_addr_range(mem)
      const vec_size = mem_size / page_size
      const vec = new Vec(vec_size)
      const written = ok(pagemap_ioctl(mem, 0, mem_size, vec, 1, WP, vec_size - 2, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
      expect(written).toBe(0)
      wp_free(mem)
    } finally {
      mem.close()
    }
  })
})

// ---- 17. Unpopulated pte and PMD-hole scan consistency (kernel-patches/0038) -----------------------
// Not in Debian's 6.12 selftest: the selftest halves of the two upstream fixes that 6.12.118 carries
// ("fix PAGEMAP_SCAN written state for unpopulated ptes" / "... for PMD holes"), added by the lab's
// patch 0038 (plan 115 → 117). A kernel without the fixes fails them, as the C does.
describe('unpopulated scan consistency', () => {
  it('unpopulated_scan_test unpopulated ptes reported written by both paths (%ld, %ld of %d)', () => {
    const npages = 16
    const mem_size = npages * page_size
    const regions = new Vec(16)
    const mem = anon(mem_size)
    try {
      wp_init(mem)
      // Populate, then drop: the ptes become pte_none without a marker.
      mem.bytes.fill(1)
      mem.region.advise('dontneed', mem.range())
      // Fast path: category_mask == return_mask == PAGE_IS_WRITTEN.
      const fast = get_reads(regions, ok(pagemap_ioctl(mem, 0, mem_size, regions, npages, 0, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN)))
      // Generic path: same query expressed via category_anyof_mask.
      const slow = get_reads(regions, ok(pagemap_ioctl(mem, 0, mem_size, regions, npages, 0, 0, 0, PAGE_IS_WRITTEN, 0, PAGE_IS_WRITTEN)))
      expect.soft(fast, 'fast path').toBe(npages)
      expect.soft(slow, 'generic path').toBe(npages)
      wp_free(mem)
    } finally {
      mem.close()
    }
  })

  it('unpopulated_thp_hole_test pmd-hole reported written (%ld of %ld)', (ctx) => {
    // if (!hpage_size) ksft_test_result_skip("%s THP not supported")
    if (pmdSize() === 0) ctx.skip('unpopulated_thp_hole_test THP not supported')
    // check_huge_anon() reads AnonHugePages; PAGEMAP_SCAN's 'huge' category says the same per page.
    if (!features().pagemapScan) ctx.skip('check_huge_anon() needs PAGEMAP_SCAN here')
    const npages = hpage_size / page_size
    const regions = new Vec(16)
    // Get a PMD-aligned range so the range can be a single THP.
    const area = Region.anonymous(2 * hpage_size)
    try {
      const misalign = Number(area.address % BigInt(hpage_size))
      const mem = new Mem(area, misalign === 0 ? 0 : hpage_size - misalign, hpage_size)
      mem.bytes.fill(1)
      let collapsed = true
      try {
        area.advise('collapse', mem.range())
      } catch (error) {
        if (!(error instanceof SyscallError)) throw error
        collapsed = false // the C's madvise(MADV_COLLAPSE) != 0
      }
      if (!collapsed || pagemap.scan(area, { range: mem.range(), require: ['huge'] }).pages !== npages) {
        ctx.skip('unpopulated_thp_hole_test could not form a THP')
      }
      wp_init(mem)
      // Drop the whole PMD: it is cleared to a pmd_none hole.
      area.advise('dontneed', mem.range())
      const ret = ok(pagemap_ioctl(mem, 0, hpage_size, regions, 16, 0, 0, PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN))
      expect(get_reads(regions, ret), 'pages of the PMD hole reported written').toBe(npages)
      wp_free(mem)
    } finally {
      area.close()
    }
  })
})
