// Page-table cost of N processes mapping the same memory (seed 004: "at 2000 processes, one
// 4 KiB page costs 8 KiB of PTEs"). Each row forks N small C processes (bench/c/pte_fleet.c)
// that map the same memory and touch every page, then reads, with all of them alive, the sum of
// VmPTE (/proc/<pid>/status: every page-table level the process is charged for) and the change
// of nr_page_table_pages (/proc/vmstat: what the kernel really allocated, shared tables once),
// both from the moment all children exist (forked, nothing mapped yet) in that same run.
//   memfd    plain MAP_SHARED memfd, 4 KiB pages: one PTE per page per process
//   hugetlb  MAP_SHARED 2 MiB hugetlb at 1 GiB-aligned addresses: 6.12's PMD sharing (each whole
//            aligned GiB of the mapping shares one PMD page among all processes) where the kernel
//            has CONFIG_HUGETLB_PMD_PAGE_TABLE_SHARING (it needs split PMD locks: NR_CPUS >= 4);
//            `sharedTables` in the row says whether it happened
//   mshare   an msharefs region (lib/mshare.ts) all children mmap: one set of page tables
//   sksm     private anonymous memory of identical content, merged by madvise(MADV_MERGE): the
//            pages are shared after the merge, the page tables are not
// `npm run bench:pte` runs it in the lab VM (`--n=100,1000 --mib=256 --hugetlb-mib=1024
// --sksm-n=20` by default: each SKSM child writes and merges its 256 MiB, ~10 s a child under
// TCG; the page tables left per process do not depend on N). The last line is one JSON object.
import fs from 'node:fs'
import { parseArgs } from 'node:util'
import { compileC, runC } from './harness.mjs'

const { values } = parseArgs({
  options: {
    n: { type: 'string', default: '100,1000' },
    mib: { type: 'string', default: '256' },
    'hugetlb-mib': { type: 'string', default: '1024' },
    'sksm-n': { type: 'string', default: '20' },
    rows: { type: 'string', default: 'memfd,hugetlb,mshare,sksm' },
    'compile-only': { type: 'boolean', default: false },
  },
})

const fleet = compileC('c/pte_fleet.c')
if (values['compile-only']) process.exit(0)

const { mshare, MshareRegion, sksm, pageSize } = await import('../dist/lib/index.js')
const MiB = 2 ** 20
const counts = values.n.split(',').map(Number)
const bytes = Number(values.mib) * MiB
const hugetlbBytes = Number(values['hugetlb-mib']) * MiB
const sksmMax = Number(values['sksm-n'])
const rowNames = values.rows.split(',')
/** Seed 004's arithmetic: 8 bytes of PTE per 4 KiB page per process. */
const seedBytes = (n, size) => n * (size / 4096) * 8

function hugePagesFree() {
  const meminfo = fs.readFileSync('/proc/meminfo', 'utf8')
  const free = Number(/^HugePages_Free:\s+(\d+)/m.exec(meminfo)?.[1] ?? 0)
  const size = Number(/^Hugepagesize:\s+(\d+) kB/m.exec(meminfo)?.[1] ?? 0) * 1024
  return { free, size }
}

function mshareRow(n) {
  const why = mshare.probe()
  if (why) return { skip: why }
  if (!mshare.mounted()) mshare.mount() // mshare_info lives in the mounted msharefs
  const align = mshare.alignment()
  const regionSize = Math.ceil(bytes / align) * align
  const name = `pte-bench-${process.pid}`
  const region = MshareRegion.create(name, regionSize)
  try {
    region.mapAnonymous({ offset: 0, length: bytes })
    // Populate once here (the owner): every child then only links the shared tables in.
    const attachment = region.attach()
    const view = attachment.view({ offset: 0, length: bytes })
    for (let off = 0; off < bytes; off += pageSize) view[off] = 1
    attachment.close()
    return runC(fleet, ['mshare', n, bytes, region.path, regionSize])
  } finally {
    region.close()
    region.unlink()
  }
}

function runRow(name, n) {
  switch (name) {
    case 'memfd':
      return { ...runC(fleet, ['memfd', n, bytes]) }
    case 'hugetlb': {
      const { free, size } = hugePagesFree()
      const needed = hugetlbBytes / (size || 1)
      if (size !== 2 * MiB || free < needed) {
        return { skip: `needs ${hugetlbBytes / (2 * MiB)} free 2 MiB huge pages (HugePages_Free ${free}; npm run vm -- --hugepages=N)` }
      }
      return runC(fleet, ['hugetlb', n, hugetlbBytes])
    }
    case 'mshare':
      return mshareRow(n)
    case 'sksm': {
      if (!sksm.available()) return { skip: 'kernel without SKSM (madvise(MADV_MERGE) is EINVAL)' }
      const procs = Math.min(n, sksmMax)
      if (sksmDone.has(procs)) return { skip: `measured at N=${procs} above (--sksm-n=${sksmMax} caps it)` }
      sksmDone.add(procs)
      return runC(fleet, ['sksm', procs, bytes])
    }
    default:
      throw new Error(`unknown row ${name} (rows: memfd,hugetlb,mshare,sksm)`)
  }
}

const results = []
const sksmDone = new Set()
for (const n of counts) {
  for (const name of rowNames) {
    const started = process.hrtime.bigint()
    const result = runRow(name, n)
    if (result.skip) {
      results.push({ row: name, n, skip: result.skip })
      console.log(`${name} N=${n}: skipped — ${result.skip}`)
      continue
    }
    const procs = result.n
    // The fleet measures from the moment all children exist: these are the mapping's own cost.
    const vmPte = result.vmPteSum
    const tables = result.pageTableBytesDelta
    const seed = seedBytes(procs, result.bytes)
    const row = {
      row: name,
      ...result,
      vmPteBytes: Math.round(vmPte),
      pageTableBytes: Math.round(tables),
      seedBytes: seed,
      pageTableToSeed: tables / seed,
      // A shared table is charged to every sharer's VmPTE (hugetlb: mm_inc_nr_pmds) but allocated
      // once: VmPTE above the allocated bytes is the sign that sharing happened.
      sharedTables: vmPte > tables + pageSize * (procs / 2),
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
    }
    results.push(row)
    if (result.failedChild) console.log(`${name} N=${n}: child ${result.failedChild} failed: ${result.failedError}`)
    // One line per row as it completes (a long run cut short keeps what it measured).
    console.log(`${name} N=${procs}: page tables ${(tables / MiB).toFixed(1)} MiB (seed arithmetic ${(seed / MiB).toFixed(1)} MiB) ${JSON.stringify(row)}`)
  }
}

const fmt = (v, d = 1) => (v === undefined || Number.isNaN(v) ? '-' : v.toFixed(d))
console.log('')
console.log('row       N     MiB/proc  VmPTE sum MiB  page tables MiB  per proc KiB  seed MiB  tables/seed  fault-in ms/proc (median)  merge ms/proc')
for (const r of results) {
  if (r.skip) {
    console.log(`${r.row.padEnd(9)} ${String(r.n).padEnd(5)} skipped: ${r.skip}`)
    continue
  }
  console.log(
    [
      r.row.padEnd(9),
      String(r.n).padEnd(5),
      fmt(r.bytes / MiB, 0).padStart(8),
      fmt(r.vmPteBytes / MiB).padStart(14),
      fmt(r.pageTableBytes / MiB).padStart(16),
      fmt(r.pageTableBytes / r.n / 1024).padStart(13),
      fmt(r.seedBytes / MiB).padStart(9),
      fmt(r.pageTableToSeed, 3).padStart(12),
      fmt(r.faultNsMedian / 1e6, 2).padStart(26),
      (r.row === 'sksm' ? fmt(r.mergeNsMedian / 1e6, 1) : '-').padStart(14),
    ].join(' '),
  )
}
console.log(JSON.stringify({ bench: 'pte', mibPerProcess: bytes / MiB, hugetlbMib: hugetlbBytes / MiB, seedBytesPerPagePerProcess: 8, rows: results }))
