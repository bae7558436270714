// Write tracking cost (bench/c/pagemap_scan.c): PAGEMAP_SCAN get + WP (PM_SCAN_WP_MATCHING) over
// 1 GiB registered with a WP_ASYNC userfaultfd — clean, with 1/8 and 1/64 of the pages written,
// the first arming of a never-protected GiB — and the WP_ASYNC first-write fault per page.
// Both sides time only the measured call (untimed setup between iterations: dirtying, re-arming),
// median over iterations; C and memdedup alternate for ROUNDS rounds and each keeps its best round.
// memdedup scans into a reused ScanOutput (the scanner's hot loop); `rawNs` is the bare N-API
// binding into preallocated arrays, which separates lib/ overhead from what any multi-threaded
// Node process pays in the kernel (WP_MATCHING's TLB flushes reach CPUs running Node's other
// threads; the C reference is single-threaded).
import fs from 'node:fs'

const GiB = 1024 * 1024 * 1024
const ROUNDS = 5

export default async function (h) {
  const { Region, Userfaultfd, pagemap, features } = await h.memdedup()
  const { native } = await import(new URL('../dist/lib/native.js', import.meta.url))
  const f = features()
  if (!f.pagemapScan || !f.uffdWpAsync) {
    return [{ name: 'PAGEMAP_SCAN + WP_ASYNC', skip: `not available on ${f.kernelRelease}` }]
  }
  const binary = h.compileC('c/pagemap_scan.c')
  const page = f.pageSize

  /** Median ns of `timed()` over iterations, `setup()` untimed before each (like the C loop). */
  const medianTimed = (iterations, warmup, setup, timed) => {
    const samples = []
    for (let i = -warmup; i < iterations; i++) {
      setup()
      const start = process.hrtime.bigint()
      timed()
      const ns = Number(process.hrtime.bigint() - start)
      if (i >= 0) samples.push(ns)
    }
    return h.median(samples)
  }

  // One GiB populated, registered and armed, like the C process does for itself.
  const setupRegion = (bytes) => {
    const region = Region.anonymous(bytes)
    region.advise('populateWrite')
    const uffd = Userfaultfd.open({ features: ['wpAsync'] })
    uffd.register(region, { writeProtect: true })
    pagemap.scan(region, { require: ['written'], writeProtect: true, vectorLength: 1 })
    return { region, uffd, close: () => (uffd.close(), region.close()) }
  }
  const dirty = (region, divisor) => {
    const b = region.bytes
    const stride = divisor * page
    for (let off = 0; off < b.length; off += stride) b[off]++
  }

  const rows = []
  const compare = (name, cArgs, js, goal, expectRegions, raw) => {
    const c = [], mine = [], bare = []
    let cRegions
    for (let round = 0; round < ROUNDS; round++) {
      const out = h.runC(binary, cArgs)
      c.push(out.ns)
      cRegions = out.regions
      if (raw && round % 2 === 0) bare.push(raw())
      mine.push(js())
      if (raw && round % 2 === 1) bare.push(raw())
    }
    if (expectRegions !== undefined && cRegions !== expectRegions) throw new Error(`${name}: C found ${cRegions} regions, expected ${expectRegions}`)
    rows.push({ name, cNs: Math.min(...c), jsNs: Math.min(...mine), ...(raw ? { rawNs: Math.min(...bare) } : {}), goal })
  }
  const pagemapFd = fs.openSync('/proc/self/pagemap', 'r')
  const bareScan = (region, vectorLength) => {
    const out = pagemap.scanOutput(vectorLength)
    const start = BigInt(region.address), end = start + BigInt(region.length)
    const flags = BigInt(pagemap.ScanFlag.wpMatching | pagemap.ScanFlag.checkWpAsync), written = BigInt(pagemap.PageCategory.written)
    // pm_scan_arg's slots by name (native.pagemapScanArg), as lib/pagemap.ts fills them.
    const slot = native.pagemapScanArg
    const arg = new BigUint64Array(slot.length)
    return () => {
      arg.fill(0n)
      arg[slot.flags] = flags
      arg[slot.start] = start
      arg[slot.end] = end
      arg[slot.vecLen] = BigInt(vectorLength)
      arg[slot.categoryMask] = written
      arg[slot.returnMask] = written
      return native.pagemapScan(pagemapFd, arg, out.starts, out.ends, out.categories)
    }
  }

  const { region, uffd, close } = setupRegion(GiB)
  try {
    const getWp = (vectorLength) => {
      const output = pagemap.scanOutput(vectorLength)
      return () => pagemap.scan(region, { require: ['written'], writeProtect: true, output })
    }
    let got
    compare('scan get+WP 1 GiB clean', ['scan_clean', 21, 3, GiB, 1024], () => {
      const scan = getWp(1024)
      return medianTimed(21, 3, () => {}, () => (got = scan()))
    }, 1.1, 0, () => medianTimed(21, 3, () => {}, bareScan(region, 1024)))
    if (got.starts.length !== 0) throw new Error(`clean scan found ${got.starts.length} regions`)

    for (const divisor of [8, 64]) {
      const regions = GiB / page / divisor
      compare(`scan get+WP 1 GiB, 1/${divisor} written`, ['scan_sparse', 11, 2, GiB, regions, divisor], () => {
        const scan = getWp(regions)
        return medianTimed(11, 2, () => dirty(region, divisor), () => (got = scan()))
      }, 1.1, regions, () => medianTimed(11, 2, () => dirty(region, divisor), bareScan(region, regions)))
      if (got.starts.length !== regions) throw new Error(`1/${divisor}: found ${got.starts.length} regions, expected ${regions}`)
    }

    compare('first arming (get+WP) of 1 GiB', ['arm_first', 7, 1, GiB, 1024], () => {
      const scan = getWp(1024)
      // Unregister + register clears the WP bits (untimed), so every page reads as written again.
      return medianTimed(7, 1, () => (uffd.unregister(region), uffd.register(region, { writeProtect: true })), () => (got = scan()))
    }, 1.1, 1, () => medianTimed(7, 1, () => (uffd.unregister(region), uffd.register(region, { writeProtect: true })), bareScan(region, 1024)))
    if (got.pages !== GiB / page) throw new Error(`first arming reported ${got.pages} pages`)
  } finally {
    close()
  }

  // Per page: the write loop over an armed 64 MiB, divided by its pages; re-armed untimed.
  const faultBytes = 64 * 1024 * 1024
  const small = setupRegion(faultBytes)
  try {
    const pages = faultBytes / page
    compare('WP_ASYNC first-write fault, per page', ['async_fault', 11, 2, faultBytes, 1024], () => {
      return medianTimed(11, 2, () => pagemap.scan(small.region, { require: ['written'], writeProtect: true, vectorLength: 1 }), () => dirty(small.region, 1)) / pages
    }, 1.1)
  } finally {
    small.close()
    fs.closeSync(pagemapFd)
  }
  return rows
}
