// ksm_tests.c -P / -D / -C equivalents (merge time, unmerge time, COW time), C (bench/c/ksm_perf.c)
// and memdedup alternating rep by rep in the same run, same sizes and ksmd settings.
// Merge time = madvise(MADV_MERGEABLE) + run=1 until this process's pages are merged (see ksm_perf.c).
import fs from 'node:fs'

const MiB = 1024 * 1024
const SIZE_MIB = 128
const REPS = 5
const PAGE = 4096
const TIMEOUT_S = 60

// ksmd's CPU time (ns, /proc/<ksmd>/schedstat): merge wall time depends on how much CPU the nice-5
// ksmd thread gets on a loaded machine; its CPU time per merge does much less.
function ksmdCpuReader() {
  const pid = fs.readdirSync('/proc').find((entry) => /^\d+$/.test(entry) && readOr(`/proc/${entry}/comm`) === 'ksmd\n')
  return pid ? () => Number(readOr(`/proc/${pid}/schedstat`).split(' ')[0]) : () => NaN
}
function readOr(file) {
  try {
    return fs.readFileSync(file, 'utf8')
  } catch {
    return ''
  }
}

export default async function (h) {
  const { Region, ksm } = await h.memdedup()
  const binary = h.compileC('c/ksm_perf.c')
  const bytes = SIZE_MIB * MiB
  const pages = bytes / PAGE
  const pagesToScan = pages
  const mergingPages = () => ksm.processStats().ksmMergingPages
  const ksmdCpu = ksmdCpuReader()

  async function waitFor(predicate, what) {
    const deadline = Date.now() + TIMEOUT_S * 1000
    while (!predicate()) {
      if (Date.now() > deadline) throw new Error(`timeout after ${TIMEOUT_S} s waiting for ${what} (ksm_merging_pages ${mergingPages()})`)
      await h.sleep(1)
    }
  }

  // ksm_merging_pages counts rmap items, which ksmd frees only when it next walks this mm: after
  // munmap/UNMERGEABLE of an earlier rep they linger. Run ksmd (untimed) until they are gone, so
  // every rep starts from 0 like a fresh C process.
  const idle = () => {
    const stats = ksm.processStats()
    return stats.ksmMergingPages === 0 && stats.ksmRmapItems === 0
  }
  async function flushStaleRmapItems() {
    if (idle()) return
    ksm.configure({ run: 1 })
    try {
      await waitFor(idle, 'stale KSM rmap items to be freed')
    } finally {
      ksm.configure({ run: 0 })
    }
  }

  async function merge(region, expected) {
    ksm.enable(region)
    ksm.configure({ run: 1 })
    await waitFor(() => mergingPages() >= expected, `${expected} merged pages`)
    ksm.configure({ run: 0 })
  }

  async function jsMergeUnmerge(expected) {
    await flushStaleRmapItems()
    const region = Region.anonymous(bytes)
    try {
      region.bytes.fill(0x2a) // '*', as ksm_tests.c allocate_memory()
      const cpu0 = ksmdCpu()
      const t0 = process.hrtime.bigint()
      await merge(region, expected)
      const t1 = process.hrtime.bigint()
      const cpu1 = ksmdCpu()
      ksm.disable(region)
      const t2 = process.hrtime.bigint()
      return { mergeNs: Number(t1 - t0), unmergeNs: Number(t2 - t1), ksmdNs: cpu1 - cpu0 }
    } finally {
      region.close()
    }
  }

  async function jsCow() {
    await flushStaleRmapItems()
    const region = Region.anonymous(bytes)
    try {
      const view = region.bytes
      view.fill(0x2a)
      const t0 = process.hrtime.bigint()
      for (let page = 0; page + 1 < pages; page += 2) view[page * PAGE] = 0x2d // '-'
      const t1 = process.hrtime.bigint()
      // Pairs of equal pages, each pair different: the same layout as ksm_perf.c.
      const data = new DataView(view.buffer, view.byteOffset, view.byteLength)
      for (let page = 0; page + 1 < pages; page += 2) {
        const start = page * PAGE
        view.fill(0x2b, start, start + PAGE) // '+'
        data.setBigUint64(start + 8, BigInt(page / 2 + 1), true)
        view.copyWithin(start + PAGE, start, start + PAGE)
      }
      await merge(region, pages)
      const t2 = process.hrtime.bigint()
      for (let page = 0; page + 1 < pages; page += 2) view[page * PAGE] = 0x2d
      const t3 = process.hrtime.bigint()
      return { cowUnmergedNs: Number(t1 - t0), cowMergedNs: Number(t3 - t2) }
    } finally {
      region.close()
    }
  }

  // Leaves no KSM memory behind (the tests' skipUnlessOnlyKsmUser checks every process's ksm_stat).
  const samples = { c: [], js: [] }
  await h.withKsmLock(async () => {
    const previous = ksm.configure({ run: 0, pagesToScan, sleepMillisecs: 0 })
    try {
      const maxPageSharing = ksm.stats().maxPageSharing ?? 256
      const expected = pages - (pages % maxPageSharing === 1 ? 1 : 0)
      const runC = () => {
        // ksmd only runs inside merge() (run=0 otherwise), so its CPU time across the process is the merge's.
        const cpu0 = ksmdCpu()
        const merged = h.runC(binary, ['merge', SIZE_MIB, pagesToScan, TIMEOUT_S])
        const ksmdNs = ksmdCpu() - cpu0
        return { ...merged, ksmdNs, ...h.runC(binary, ['cow', SIZE_MIB, pagesToScan, TIMEOUT_S]) }
      }
      const runJs = async () => ({ ...(await jsMergeUnmerge(expected)), ...(await jsCow()) })
      for (let rep = 0; rep < REPS; rep++) {
        // Alternate which side goes first, so drift in machine load does not favour one.
        if (rep % 2 === 0) {
          samples.c.push(runC())
          samples.js.push(await runJs())
        } else {
          samples.js.push(await runJs())
          samples.c.push(runC())
        }
      }
      await flushStaleRmapItems()
    } finally {
      ksm.configure(previous)
    }
  })

  const med = (side, key) => h.median(samples[side].map((s) => s[key]))
  const row = (name, key, rowBytes, goal) => ({ name, cNs: med('c', key), jsNs: med('js', key), goal, bytes: rowBytes })
  const written = (pages / 2) * PAGE // ksm_tests.c -C counts the written pages' size
  return [
    row(`-P merge ${SIZE_MIB} MiB equal pages (ksmd)`, 'mergeNs', bytes, 1.15),
    row(`-P merge ${SIZE_MIB} MiB: ksmd CPU time`, 'ksmdNs', bytes, 1.15),
    row(`-D unmerge ${SIZE_MIB} MiB: ksm.disable`, 'unmergeNs', bytes, 1.15),
    row(`-C COW write, not merged (${pages / 2} pages)`, 'cowUnmergedNs', written, null),
    row(`-C COW write, merged (${pages / 2} pages)`, 'cowMergedNs', written, 1.15),
  ]
}
