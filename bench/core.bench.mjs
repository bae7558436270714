// Per-call cost of the thin bindings against the raw syscalls (bench/c/core.c). C and memdedup
// alternate for ROUNDS rounds (so load from other processes hits both alike); each side's result
// is its best round's median (medianNs), the least disturbed by other work on this shared machine. `rawNs` times the bare N-API function from
// dist/lib/native.js, to split memdedup's overhead into lib/ (TS) and binding (N-API) parts.
const GiB = 1024 * 1024 * 1024
const ROUNDS = 5

export default async function (h) {
  const { Region, ksm, pagemap } = await h.memdedup()
  const { native, constants: C } = await import(new URL('../dist/lib/native.js', import.meta.url))
  const binary = h.compileC('c/core.c')
  const rows = []
  const compare = (name, test, fn, raw, goal, { iterations = 21, warmup = 2000, batch = 2000, extra = [], rounds = ROUNDS, bytes } = {}) => {
    const c = [], js = [], bare = []
    for (let round = 0; round < rounds; round++) {
      c.push(h.runC(binary, [test, iterations, warmup, batch, ...extra]).ns)
      // Alternate memdedup and the bare binding too: whichever runs right after the C process pays for its exit.
      if (raw && round % 2 === 0) bare.push(h.medianNs(raw, { iterations, warmup, batch }))
      js.push(h.medianNs(fn, { iterations, warmup, batch }))
      if (raw && round % 2 === 1) bare.push(h.medianNs(raw, { iterations, warmup, batch }))
    }
    rows.push({ name, cNs: Math.min(...c), jsNs: Math.min(...js), ...(raw ? { rawNs: Math.min(...bare) } : {}), goal, ...(bytes ? { bytes } : {}) })
  }

  compare('prctl(PR_GET_MEMORY_MERGE): ksm.process.get', 'prctl_get', () => ksm.process.get(), () => native.prctlGetMemoryMerge(), 1.15)
  const mmapFlags = C.MAP_PRIVATE | C.MAP_ANONYMOUS
  const rawMmap = () => native.munmap(native.mmap(0, 4096, C.PROT_READ | C.PROT_WRITE, mmapFlags, -1, 0), 4096)
  compare('mmap+munmap 4 KiB: Region.anonymous().close', 'mmap_munmap', () => Region.anonymous(4096).close(), rawMmap, 2, { batch: 500, warmup: 500 })
  // The async-consumer rule: with a view handed out, close() replaces the written page with
  // zero-filled memory (mmap MAP_FIXED) and unmaps it when the view is collected (a finalizer).
  // The C twin writes the page and puts the same stand-in in its place (mmap_write_standin): the
  // ratio is memdedup's overhead, not the page fault and the rule's extra mapping.
  const standIn = mmapFlags | C.MAP_NORESERVE | C.MAP_FIXED
  const rawView = () => {
    const address = native.mmap(0, 4096, C.PROT_READ | C.PROT_WRITE, mmapFlags, -1, 0)
    new Uint8Array(native.wrap(address, 4096))[0] = 1
    native.mmap(address, 4096, C.PROT_READ | C.PROT_WRITE, standIn, -1, 0)
    native.munmap(address, 4096)
  }
  compare('mmap+write+close 4 KiB, view out (stand-in)', 'mmap_write_standin', () => {
    const r = Region.anonymous(4096)
    r.bytes[0] = 1
    r.close()
  }, rawView, 1.1, { batch: 500, warmup: 500 })

  // 1 GiB populated. The C process maps and populates its own GiB each round; ours lives across rounds.
  const big = Region.anonymous(GiB)
  try {
    big.advise('populateWrite')
    const pages = GiB / 4096
    const fd = (await import('node:fs')).openSync('/proc/self/pagemap', 'r')
    const bigAddress = Number(big.address)
    // Both sides reuse their result arrays, as the C reference reuses its malloc'ed buffer
    // (without `output`, each call also pays for page-faulting 2.25 MiB of fresh arrays).
    const pfns = new BigUint64Array(pages)
    const flags = new Uint8Array(pages)
    const rawEntries = () => native.pagemapEntries(fd, bigAddress, pages, pfns, flags)
    const output = pagemap.entriesOutput(pages)
    let got = 0
    compare('pagemap.entries 1 GiB populated (output reused)', 'pagemap_entries', () => (got = pagemap.entries(big, undefined, { output }).length), rawEntries, 1.15, {
      iterations: 7, warmup: 1, batch: 1, rounds: 4, extra: [GiB], bytes: GiB,
    })
    if (got !== pages) throw new Error(`pagemap.entries returned ${got} pages, expected ${pages}`)
  } finally {
    big.close()
  }
  // Last: MADV_MERGEABLE registers this process with ksmd for good, and a running ksmd (sleep_millisecs 0)
  // would then keep scanning our mm during the other rows. Node 20 has no `using`: close in finally.
  const page = Region.anonymous(4096)
  const pageAddress = Number(page.address)
  try {
    compare('madvise(NORMAL) 1 page: region.advise', 'madvise_normal', () => page.advise('normal'), () => native.madvise(pageAddress, 4096, C.MADV_NORMAL), 1.15)
    // MADV_MERGEABLE hands the page to ksmd: hold the KSM tests' lock so a concurrent test sees no foreign KSM user.
    await h.withKsmLock(() =>
      compare('madvise(MERGEABLE) 1 page: ksm.enable', 'madvise_mergeable', () => ksm.enable(page), () => native.madvise(pageAddress, 4096, C.MADV_MERGEABLE), 1.15),
    )
  } finally {
    page.close()
  }
  return rows
}
