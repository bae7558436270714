// Port of tools/testing/selftests/mm/mremap_test.c (Linux 6.12): MREMAP_FIXED moves of regions
// whose source and destination are PTE / 1 MiB / PMD / PUD aligned, with the C's names, configs
// and checks (default threshold: the first 4 MiB of each region is filled and compared). The
// three 1 GiB timing cases are bench rows (bench/mremap.bench.mjs against the C), not tests.
//
// Not like the C: source and destination live in one Reservation aligned to twice the largest
// alignment, so "aligned to A but not to 2A" is an offset choice instead of a MAP_FIXED_NOREPLACE
// search; the regions are private anonymous MAP_NORESERVE (MAP_SHARED anonymous in the C); the
// three expected failures are refused by memdedup's argument checks (RangeError) before any
// syscall, where the C gets EINVAL from the kernel; the expand-merge and move-within-range cases
// unmap by closing a split part of a Region.
import crypto from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { Region, pageSize, type Reservation } from '../../lib/index.ts'
import { procMemWrite } from '../helpers/ksm.ts'
import { isRangeMapped } from '../helpers/vma.ts'

const P = pageSize
const KB = 1024
const MB = 1024 * KB
const GB = 1024 * MB
const PTE = P
const PMD = 2 * MB
const PUD = GB
const threshold = 4 * MB // VALIDATION_DEFAULT_THRESHOLD
const destPreambleSize = 10 * 4 * MB

// The C's rand() pattern: 4 MiB of random bytes, repeated to the 40 MiB the preamble needs.
const pattern = (() => {
  const unit = crypto.randomBytes(4 * MB)
  const out = Buffer.allocUnsafe(destPreambleSize)
  for (let at = 0; at < out.length; at += unit.length) unit.copy(out, at)
  return out
})()

interface Config {
  srcAlignment: number
  destAlignment: number
  regionSize: number
  overlapping: boolean
  destPreambleSize?: number
}

const EXPECT_FAILURE = true
const EXPECT_SUCCESS = false
const cases: [name: string, config: Config, expectFailure: boolean][] = [
  ['mremap - Source and Destination Regions Overlapping', { srcAlignment: P, destAlignment: P, regionSize: P, overlapping: true }, EXPECT_FAILURE],
  ['mremap - Destination Address Misaligned (1KB-aligned)', { srcAlignment: P, destAlignment: P / 4, regionSize: P, overlapping: false }, EXPECT_FAILURE],
  ['mremap - Source Address Misaligned (1KB-aligned)', { srcAlignment: P / 4, destAlignment: P, regionSize: P, overlapping: false }, EXPECT_FAILURE],
  ['8KB mremap - Source PTE-aligned, Destination PTE-aligned', { srcAlignment: PTE, destAlignment: PTE, regionSize: PTE * 2, overlapping: false }, EXPECT_SUCCESS],
  ['2MB mremap - Source 1MB-aligned, Destination PTE-aligned', { srcAlignment: MB, destAlignment: PTE, regionSize: 2 * MB, overlapping: false }, EXPECT_SUCCESS],
  ['2MB mremap - Source 1MB-aligned, Destination 1MB-aligned', { srcAlignment: MB, destAlignment: MB, regionSize: 2 * MB, overlapping: false }, EXPECT_SUCCESS],
  ['4MB mremap - Source PMD-aligned, Destination PTE-aligned', { srcAlignment: PMD, destAlignment: PTE, regionSize: 4 * MB, overlapping: false }, EXPECT_SUCCESS],
  ['4MB mremap - Source PMD-aligned, Destination 1MB-aligned', { srcAlignment: PMD, destAlignment: MB, regionSize: 4 * MB, overlapping: false }, EXPECT_SUCCESS],
  ['4MB mremap - Source PMD-aligned, Destination PMD-aligned', { srcAlignment: PMD, destAlignment: PMD, regionSize: 4 * MB, overlapping: false }, EXPECT_SUCCESS],
  ['2GB mremap - Source PUD-aligned, Destination PTE-aligned', { srcAlignment: PUD, destAlignment: PTE, regionSize: 2 * GB, overlapping: false }, EXPECT_SUCCESS],
  ['2GB mremap - Source PUD-aligned, Destination 1MB-aligned', { srcAlignment: PUD, destAlignment: MB, regionSize: 2 * GB, overlapping: false }, EXPECT_SUCCESS],
  ['2GB mremap - Source PUD-aligned, Destination PMD-aligned', { srcAlignment: PUD, destAlignment: PMD, regionSize: 2 * GB, overlapping: false }, EXPECT_SUCCESS],
  ['2GB mremap - Source PUD-aligned, Destination PUD-aligned', { srcAlignment: PUD, destAlignment: PUD, regionSize: 2 * GB, overlapping: false }, EXPECT_SUCCESS],
  ['5MB mremap - Source 1MB-aligned, Destination 1MB-aligned', { srcAlignment: MB, destAlignment: MB, regionSize: 5 * MB, overlapping: false }, EXPECT_SUCCESS],
  ['5MB mremap - Source 1MB-aligned, Dest 1MB-aligned with 40MB Preamble', { srcAlignment: MB, destAlignment: MB, regionSize: 5 * MB, overlapping: false, destPreambleSize }, EXPECT_SUCCESS],
]

/** The first byte at which `region` [0, length) differs from the pattern, or -1. */
function mismatch(region: Region, length: number, at = 0): number {
  const data = region.read({ offset: at, length })
  if (data.equals(pattern.subarray(0, length))) return -1
  return data.findIndex((b, i) => b !== pattern[i])
}

/**
 * remap_region(): a source aligned to src_alignment (not to twice it), the first `threshold`
 * bytes filled, moved with MREMAP_FIXED to the C's destination address; returns the destination
 * Region after checking its bytes and the preamble's.
 */
function remapRegion(c: Config): void {
  const largest = Math.max(c.srcAlignment, c.destAlignment, P)
  const preamble = c.destPreambleSize ?? 0
  const span = 2 * largest + c.regionSize + 2 * Math.max(c.destAlignment, P) + preamble + c.regionSize
  using reservation = Region.reserve(Math.ceil(span / P) * P, { alignment: 2 * largest })
  const base = Number(reservation.address)
  // Aligned to srcAlignment, not to 2 * srcAlignment (the C's "no coincidental alignment").
  const srcOffset = c.srcAlignment
  const src = reservation.mapAnonymous({ offset: srcOffset, length: c.regionSize }, { noReserve: true })
  const fill = Math.min(threshold, c.regionSize)
  procMemWrite(src.address, pattern.subarray(0, fill))
  // Offset of the destination from the end of the source, aligned down, after the preamble.
  const offset = c.overlapping ? -c.destAlignment : c.destAlignment
  let addr = Math.floor((base + srcOffset + c.regionSize + offset) / c.destAlignment) * c.destAlignment + preamble
  if (Math.floor(addr / c.destAlignment) % 2 === 0) addr += c.destAlignment
  let pre: Region | undefined
  if (preamble) {
    pre = reservation.mapAnonymous({ offset: addr - preamble - base, length: preamble }, { noReserve: true })
    procMemWrite(pre.address, pattern.subarray(0, preamble))
  }
  const dest = src.remap(c.regionSize, { fixed: { into: reservation, offset: addr - base } })
  expect(dest.address).toBe(BigInt(addr))
  expect(mismatch(dest, fill), 'Data after remap doesn\'t match').toBe(-1)
  if (pre) expect(mismatch(pre, preamble), 'Preamble data after remap doesn\'t match').toBe(-1)
}

describe('mremap_test', () => {
  it.each(cases)('%s', (_, config, expectFailure) => {
    if (!expectFailure) {
      remapRegion(config)
      return
    }
    // ksft_test_result_xfail "Expected mremap failure": memdedup refuses it before the kernel sees it.
    expect(() => remapRegion(config)).toThrow(RangeError)
  })

  it('mremap expand merge', () => {
    const start = Region.anonymous(3 * P)
    const [first, rest] = start.split(P)
    const [middle, last] = rest.split(P)
    middle.close() // munmap(start + page_size, page_size)
    const remap = first.remap(2 * P, { mayMove: false })
    expect(isRangeMapped(start.address, start.address + BigInt(3 * P))).toBe(true)
    remap.close()
    last.close()
  })

  it('mremap expand merge offset', () => {
    const start = Region.anonymous(3 * P)
    const [first, rest] = start.split(P)
    const [middle, last] = rest.split(P)
    last.close() // Unmap final page to ensure we have space to expand.
    const remap = middle.remap(2 * P, { mayMove: false })
    expect(isRangeMapped(start.address, start.address + BigInt(3 * P))).toBe(true)
    remap.close()
    first.close()
  })

  it('mremap mremap move within range', () => {
    // |DDDDddddSSSSssss|: 256 KiB per letter; s moves over d, S must stay intact.
    using reservation = Region.reserve(20 * MB, { alignment: 2 * MB })
    const ptr = reservation.mapAnonymous({ offset: 0, length: 20 * MB })
    const srcOffset = 6 * MB // ptr + 6 MiB aligned down to 2 MiB: the reservation is 2 MiB aligned
    procMemWrite(ptr.address + BigInt(srcOffset), pattern.subarray(0, 2 * MB))
    const destOffset = srcOffset - 2 * MB
    // Split at dest + 1 MiB, src, src + 1 MiB and src + 2 MiB (bookkeeping only: no syscall).
    const [below, fromDest] = ptr.split(destOffset + MB)
    const [destUpper, fromSrc] = fromDest.split(srcOffset - destOffset - MB)
    const [srcKept, fromMoving] = fromSrc.split(MB)
    const [srcMoving, above] = fromMoving.split(MB)
    destUpper.close() // the C's MREMAP_FIXED replaces it; memdedup moves only into free space
    const moved = srcMoving.remap(MB, { fixed: { into: reservation, offset: destOffset + MB } })
    expect(mismatch(srcKept, MB), 'Data at src got corrupted due to unrelated mremap').toBe(-1)
    expect(moved.read().equals(pattern.subarray(MB, 2 * MB))).toBe(true)
    srcKept.close()
    for (const r of [below, moved, above]) r.close()
  })

  it('mremap move 1mb from start at 1MB+256KB aligned src', () => {
    // Addresses that are multiples of 1.25 MiB but not of 2.5 MiB (get_source_mapping()).
    const alignment = MB + 256 * KB
    const regionSize = 6 * MB
    using reservation = Region.reserve(4 * alignment + 2 * regionSize + 4 * alignment, { alignment: 256 * KB })
    const base = Number(reservation.address)
    const nextAligned = (from: number) => {
      let a = Math.ceil(from / alignment) * alignment
      if ((a / alignment) % 2 === 0) a += alignment
      return a
    }
    const srcAddr = nextAligned(base)
    const destAddr = nextAligned(srcAddr + regionSize)
    const src = reservation.mapAnonymous({ offset: srcAddr - base, length: regionSize })
    const dest = reservation.mapAnonymous({ offset: destAddr - base, length: regionSize })
    procMemWrite(src.address, pattern.subarray(0, 2 * MB))
    // Unmap the beginning of dest so that the aligned address falls on no mapping.
    const [destHead, destRest] = dest.split(MB)
    destHead.close()
    const [destOver, destTail] = destRest.split(MB)
    destOver.close()
    const [srcHead, srcRest] = src.split(MB)
    const [srcMoving, srcTail] = srcRest.split(MB)
    const moved = srcMoving.remap(MB, { fixed: { into: reservation, offset: destAddr + MB - base } })
    expect(mismatch(srcHead, MB), 'Data at src got corrupted due to unrelated mremap').toBe(-1)
    for (const r of [moved, srcTail, destTail, srcHead]) r.close()
  })
})
