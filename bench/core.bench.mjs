// Per-call cost of the thin bindings against the raw syscalls (bench/c/core.c). Each row runs the
// C reference and then memdedup back to back, with the same iterations/warmup/batch.
const GiB = 1024 * 1024 * 1024

export default async function (h) {
  const { Region, ksm, pagemap } = await h.memdedup()
  const binary = h.compileC('c/core.c')
  const rows = []
  const pair = (name, test, fn, goal, { iterations = 31, warmup = 2000, batch = 2000, bytes, extra = [] } = {}) => {
    const c = h.runC(binary, [test, iterations, warmup, batch, ...extra])
    const jsNs = h.medianNs(fn, { iterations, warmup, batch })
    rows.push({ name, cNs: c.ns, jsNs, goal, ...(bytes ? { bytes } : {}) })
  }

  // Node 20 has no `using`: close in finally.
  const page = Region.anonymous(4096)
  try {
    pair('madvise(MERGEABLE) 1 page: ksm.enable', 'madvise_mergeable', () => ksm.enable(page), 1.15)
    pair('madvise(NORMAL) 1 page: region.advise', 'madvise_normal', () => page.advise('normal'), 1.15)
  } finally {
    page.close()
  }
  pair('prctl(PR_GET_MEMORY_MERGE): ksm.process.get', 'prctl_get', () => ksm.process.get(), 1.15)
  pair('mmap+munmap 4 KiB: Region.anonymous().close', 'mmap_munmap', () => Region.anonymous(4096).close(), 2)

  // 1 GiB populated: C maps and populates its own GiB, then we do (never both at once).
  const c = h.runC(binary, ['pagemap_entries', 9, 2, 1, GiB])
  const big = Region.anonymous(GiB)
  try {
    big.advise('populateWrite')
    let pages = 0
    const jsNs = h.medianNs(() => (pages = pagemap.entries(big).length), { iterations: 9, warmup: 2, batch: 1 })
    if (pages !== GiB / 4096) throw new Error(`pagemap.entries returned ${pages} pages`)
    rows.push({ name: 'pagemap.entries 1 GiB populated', cNs: c.ns, jsNs, goal: 1.15, bytes: GiB })
  } finally {
    big.close()
  }
  return rows
}
