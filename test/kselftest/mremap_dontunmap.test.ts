// Port of tools/testing/selftests/mm/mremap_dontunmap.c (Linux 6.12): MREMAP_DONTUNMAP moves the
// page tables and leaves the source mapped. Same tests, same names, same checks, through
// Region.remap(n, { dontUnmap: true [, fixed] }). Not like the C: a fixed destination must be a
// free range of a Reservation, so the C's "X" destination mapping is placed there and closed (or
// split and partly closed) before the move; memdedup refuses to move over a live Region, which
// each fixed case also checks.
import { beforeAll, describe, expect, it } from 'vitest'
import { Region, SyscallError, pageSize } from '../../lib/index.ts'
import { expectThrowsCode } from '../helpers/errors.ts'

const P = pageSize
let unsupported: string | undefined

/** kernel_support_for_mremap_dontunmap(): a one-page PROT_NONE move fails only without it. */
beforeAll(() => {
  using source = Region.anonymous(P, { prot: 'none' })
  try {
    source.remap(P, { dontUnmap: true }).close()
  } catch (error) {
    if (!(error instanceof SyscallError)) throw error
    unsupported = `No kernel support for MREMAP_DONTUNMAP (${error.code})`
  }
})

/** check_region_contains_byte() */
function expectContains(region: Region, byte: number, range = { offset: 0, length: region.length }): void {
  const data = region.read(range)
  const bad = data.findIndex((b) => b !== byte)
  expect(bad, `byte ${bad} of [${range.offset}, +${range.length}) is ${data[bad]}, not ${byte}`).toBe(-1)
}

/** A Region filled with `byte`, moved into the reservation (no view left on the placed Region). */
function placedFilled(reservation: ReturnType<typeof Region.reserve>, offset: number, pages: number, byte: number): Region {
  const r = Region.anonymous(pages * P)
  r.bytes.fill(byte)
  return r.remap(pages * P, { fixed: { into: reservation, offset } })
}

describe('mremap_dontunmap', () => {
  it('mremap_dontunmap_simple', (ctx) => {
    if (unsupported) ctx.skip(unsupported)
    using source = Region.anonymous(5 * P)
    source.bytes.fill(0x61)
    using dest = source.remap(5 * P, { dontUnmap: true })
    expect(source.closed).toBe(false)
    expectContains(dest, 0x61) // pages did not migrate
    expectContains(source, 0) // source should have no ptes
  })

  it('mremap_dontunmap_simple_shmem', (ctx) => {
    if (unsupported) ctx.skip(unsupported)
    using source = Region.memfd(5 * P)
    source.bytes.fill(0x61)
    let dest: Region
    try {
      dest = source.remap(5 * P, { dontUnmap: true })
    } catch (error) {
      // Old kernel which doesn't support MREMAP_DONTUNMAP on shmem (before 5.13).
      if (error instanceof SyscallError && error.code === 'EINVAL') ctx.skip('MREMAP_DONTUNMAP on shmem: EINVAL (kernel before 5.13)')
      throw error
    }
    using _dest = dest
    expectContains(dest, 0x61)
    // Because the region is backed by shmem, we will actually see the same memory at the source location still.
    expectContains(source, 0x61)
  })

  it('mremap_dontunmap_simple_fixed', (ctx) => {
    if (unsupported) ctx.skip(unsupported)
    using reservation = Region.reserve(5 * P)
    const destMapping = placedFilled(reservation, 0, 5, 0x58)
    using source = Region.anonymous(5 * P)
    source.bytes.fill(0x61)
    // Not in the C: moving over a live Region is refused, nothing changes.
    expectThrowsCode(() => source.remap(5 * P, { fixed: { into: reservation, offset: 0 }, dontUnmap: true }), RangeError, 'ERR_OUT_OF_RANGE')
    expectContains(destMapping, 0x58)
    destMapping.close()
    using remapped = source.remap(5 * P, { fixed: { into: reservation, offset: 0 }, dontUnmap: true })
    expect(remapped.address).toBe(reservation.address) // placed at dest_mapping
    expectContains(remapped, 0x61)
    expectContains(source, 0)
  })

  it('mremap_dontunmap_partial_mapping', (ctx) => {
    if (unsupported) ctx.skip(unsupported)
    const source = Region.anonymous(10 * P)
    source.bytes.fill(0x61)
    // We will grab the last 5 pages of the source and move them.
    const [first, last] = source.split(5 * P)
    using dest = last.remap(5 * P, { dontUnmap: true })
    expectContains(first, 0x61) // first 5 pages of source should have original pages
    expectContains(last, 0) // final 5 pages of source should have no ptes
    expectContains(dest, 0x61) // dest mapping should contain ptes from the source
    first.close()
    last.close()
  })

  it('mremap_dontunmap_partial_mapping_overwrite', (ctx) => {
    if (unsupported) ctx.skip(unsupported)
    using source = Region.anonymous(5 * P)
    source.bytes.fill(0x61)
    using reservation = Region.reserve(10 * P)
    const destMapping = placedFilled(reservation, 0, 10, 0x58)
    expectThrowsCode(() => source.remap(5 * P, { fixed: { into: reservation, offset: 0 }, dontUnmap: true }), RangeError, 'ERR_OUT_OF_RANGE')
    const [overwritten, kept] = destMapping.split(5 * P)
    overwritten.close()
    using remapped = source.remap(5 * P, { fixed: { into: reservation, offset: 0 }, dontUnmap: true })
    expect(remapped.address).toBe(reservation.address)
    expectContains(source, 0) // first 5 pages of source should have no ptes
    expectContains(remapped, 0x61) // dest mapping should contain ptes from the source
    expectContains(kept, 0x58) // dest mapping should have retained the last 5 pages
  })
})
