// mremap_test.c's perf cases (Linux 6.12): 1 GiB populated, moved with MREMAP_FIXED between
// PTE-, PMD- and PUD-aligned addresses (HAVE_MOVE_PMD / HAVE_MOVE_PUD move whole page tables).
// C (bench/c/mremap.c): one mremap. memdedup: `region.remap(n, { fixed: { into, offset } })` of a
// Region placed in a Reservation, which moves with MREMAP_DONTUNMAP and then hands the old range
// back to the reservation (mmap MAP_FIXED PROT_NONE), so the source never becomes a hole. The
// bare binding column is native.mremapFixed on the same layout: the one syscall the C times.
// Every side populates its own GiB per sample (only the move is timed).
const KiB = 1024
const MiB = 1024 * KiB
const GiB = 1024 * MiB
const ITERATIONS = 5

export default async function (h) {
  const { Region } = await h.memdedup()
  const { native } = await import(new URL('../dist/lib/native.js', import.meta.url))
  const binary = h.compileC('c/mremap.c')
  const page = 4096
  const cases = [
    ['1GB mremap - Source PTE-aligned, Destination PTE-aligned', page],
    ['1GB mremap - Source PMD-aligned, Destination PMD-aligned', 2 * MiB],
    ['1GB mremap - Source PUD-aligned, Destination PUD-aligned', GiB],
  ]
  // Warm the JIT on the same path (placed Region, fixed move, source handed back) with 1 page,
  // so the rows time the move and not the first compilation of remap().
  {
    const warm = Region.reserve(4 * page)
    let r = warm.mapAnonymous({ offset: 0, length: page })
    for (let i = 0; i < 2000; i++) r = r.remap(page, { fixed: { into: warm, offset: (i % 2 ? 0 : 2) * page } })
    warm.close()
  }
  const rows = []
  for (const [name, align] of cases) {
    const size = GiB
    // The same layout as the C: reservation aligned to 2 * align, source at +align.
    const layout = (body) => {
      const span = 4 * align + 2 * size + 2 * align
      const reservation = Region.reserve(span, { alignment: 2 * align })
      try {
        const base = Number(reservation.address)
        const src = reservation.mapAnonymous({ offset: align, length: size }, { noReserve: true })
        src.advise('populateWrite')
        let dest = Math.floor((base + align + size + align) / align) * align
        if (Math.floor(dest / align) % 2 === 0) dest += align
        return body(reservation, src, dest - base)
      } finally {
        reservation.close()
      }
    }
    const c = h.runC(binary, [align, size, ITERATIONS]).ns
    const js = []
    const bare = []
    for (let i = 0; i < ITERATIONS; i++) {
      js.push(layout((reservation, src, offset) => h.timeNs(() => src.remap(size, { fixed: { into: reservation, offset } }))))
      bare.push(layout((reservation, src, offset) => {
        const to = Number(reservation.address) + offset
        let rc
        const ns = h.timeNs(() => (rc = native.mremapFixed(Number(src.address), size, size, 0, to, Number(reservation.address), reservation.length)))
        if (rc !== to) throw new Error(`mremapFixed returned ${rc}`)
        return ns
      }))
    }
    // Informational (goal null): the lib's extra step (re-reserving the source) costs a fixed
    // few µs; with page-table-level moves the C itself takes only a few µs.
    rows.push({ name, cNs: c, jsNs: h.median(js), rawNs: h.median(bare), goal: null })
  }
  return rows
}
