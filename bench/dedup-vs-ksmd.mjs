// Deduplicator v2 (lib/deduplicator.ts: uffd WP_ASYNC + one native PAGEMAP_SCAN pass per Region +
// twin index + MADV_MERGE, or its KSM fallback) against ksmd on the same workload in the same
// boot: memory saved, CPU seconds (and their ratio to ksmd at defaults), time to savings.
// The SKSM row needs the lab kernel: `npm run bench:dedup` runs it in the VM. On a kernel
// without SKSM the SKSM row is skipped and the others run.
//
// Workload: `--mib` MiB in 8 Regions; half the pages carry one of 64 contents repeated across
// the Regions (the duplicates), the rest random; 5% of the pages are rewritten every 50 ms (hot,
// never worth merging). Savings are counted the same way for both: present pages minus distinct
// PFNs over all the Regions (/proc/self/pagemap: the kernel's own truth).
import fs from 'node:fs'
import { randomFillSync } from 'node:crypto'
import { parseArgs } from 'node:util'
import { Region, Deduplicator, ksm, pagemap, features, pageSize } from '../dist/lib/index.js'
import { withKsmLock } from './harness.mjs'

const { values } = parseArgs({
  options: {
    mib: { type: 'string', default: '64' },
    'cap-s': { type: 'string', default: '120' },
    json: { type: 'boolean', default: false },
  },
})
const totalPages = (Number(values.mib) * 2 ** 20) / pageSize
const capMs = Number(values['cap-s']) * 1000
const regionCount = 8
const pagesPerRegion = totalPages / regionCount
const contents = 64
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const ticks = 100 // USER_HZ: /proc/<pid>/stat times are in 1/100 s

function makeWorkload() {
  const regions = []
  const hot = []
  for (let r = 0; r < regionCount; r++) {
    const region = Region.anonymous(pagesPerRegion * pageSize)
    const bytes = region.bytes
    randomFillSync(bytes)
    for (let page = 0; page < pagesPerRegion; page += 2) bytes.fill((page / 2) % contents, page * pageSize, (page + 1) * pageSize)
    for (let page = 1; page < pagesPerRegion; page += 40) hot.push([region, page]) // odd pages: random, 5%
    regions.push(region)
  }
  // Duplicates: pagesPerRegion/2 per region, `contents` distinct ones overall.
  const target = (totalPages / 2) - contents
  let counter = 0
  const writer = setInterval(() => {
    counter++
    for (const [region, page] of hot) region.bytes[page * pageSize + (counter % pageSize)] = counter & 0xff
  }, 50)
  return {
    regions,
    target,
    saved() {
      let present = 0
      const pfns = new Set()
      for (const region of regions) {
        const e = pagemap.entries(region)
        for (let i = 0; i < e.length; i++) {
          if (!e.present(i)) continue
          present++
          pfns.add(e.pfns[i])
        }
      }
      return present - pfns.size
    },
    close() {
      clearInterval(writer)
      for (const region of regions) region.close()
    },
  }
}

function ksmdCpuSeconds() {
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      if (fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() !== 'ksmd') continue
      const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
      return (Number(fields[11]) + Number(fields[12])) / ticks // utime + stime
    } catch {
      // raced with an exiting process
    }
  }
  return NaN
}

/** Polls savings until 90% of the target or the cap; returns the time to 90% and what was reached. */
async function until(workload, started) {
  const goal = workload.target * 0.9
  let saved = 0
  while (performance.now() - started < capMs) {
    saved = workload.saved()
    if (saved >= goal) return { timeToSavingsMs: performance.now() - started, saved }
    await sleep(100)
  }
  return { timeToSavingsMs: null, saved }
}

async function runKsmd(label, settings) {
  return withKsmLock(async () => {
    const workload = makeWorkload()
    const previous = ksm.configure({ ...settings, run: 1 })
    const cpuBefore = ksmdCpuSeconds()
    try {
      for (const region of workload.regions) ksm.enable(region)
      const started = performance.now()
      const result = await until(workload, started)
      return { label, ...result, target: workload.target, cpuSeconds: ksmdCpuSeconds() - cpuBefore }
    } finally {
      for (const region of workload.regions) ksm.disable(region)
      ksm.configure(previous)
      workload.close()
    }
  })
}

/** Deduplicator v2 in the background (run()), with SKSM or its KSM fallback (ksmd at `settings`). */
async function runDeduplicator(merge, intervalMs, settings) {
  const body = async () => {
    const workload = makeWorkload()
    const previous = merge === 'ksm' ? ksm.configure({ ...settings, run: 1 }) : undefined
    const ksmdBefore = ksmdCpuSeconds()
    const dedup = new Deduplicator({ merge, stablePasses: 2 })
    try {
      for (const region of workload.regions) dedup.track(region)
      const started = performance.now()
      dedup.run({ intervalMs })
      const result = await until(workload, started)
      await dedup.stop()
      const stats = dedup.stats()
      const ksmdSeconds = merge === 'ksm' ? ksmdCpuSeconds() - ksmdBefore : 0
      const label = merge === 'sksm' ? `Deduplicator v2, SKSM (pass every ${intervalMs} ms)` : `Deduplicator v2, KSM fallback (pass every ${intervalMs} ms) + ksmd at defaults`
      return { label, ...result, target: workload.target, cpuSeconds: stats.cpuMs / 1000 + ksmdSeconds, dedupCpuSeconds: stats.cpuMs / 1000, ksmdCpuSeconds: ksmdSeconds, passes: stats.passes, cowAfterMerge: stats.cowAfterMerge }
    } finally {
      dedup.close()
      for (const region of workload.regions) if (merge === 'ksm') ksm.disable(region)
      if (previous) ksm.configure(previous)
      workload.close()
    }
  }
  return merge === 'ksm' ? withKsmLock(body) : body()
}

const f = features()
if (!f.uffdWpAsync || !f.pagemapScan || !f.ksm) {
  console.log(`dedup-vs-ksmd: skipped — this kernel (${f.kernelRelease}) lacks ${['uffdWpAsync', 'pagemapScan', 'ksm'].filter((k) => !f[k]).join(', ')}; run it in the lab: npm run bench:dedup`)
  process.exit(0)
}

console.error(`workload: ${values.mib} MiB in ${regionCount} Regions, ${totalPages / 2} duplicate pages of ${contents} contents, 5% hot pages; cap ${capMs / 1000} s`)
const defaults = { pagesToScan: 100, sleepMillisecs: 20 }
const rows = []
if (f.sksm) rows.push(await runDeduplicator('sksm', 100))
else console.error(`  Deduplicator v2, SKSM: skipped (no MADV_MERGE on ${f.kernelRelease})`)
rows.push(await runDeduplicator('ksm', 100, defaults))
rows.push(await runKsmd('ksmd at defaults (pages_to_scan 100, sleep 20 ms)', defaults))
rows.push(await runKsmd('ksmd at full speed (pages_to_scan 10000, sleep 0)', { pagesToScan: 10_000, sleepMillisecs: 0 }))
for (const row of rows) console.error(`  ${row.label}: ${row.saved} pages saved, ${row.cpuSeconds.toFixed(2)} CPU s`)
// Ratios against ksmd at defaults, measured in this run.
const reference = rows.find((row) => row.label.startsWith('ksmd at defaults'))
for (const row of rows) {
  row.cpuRatioToKsmdDefaults = row.cpuSeconds / reference.cpuSeconds
  row.speedupToKsmdDefaults = row.timeToSavingsMs === null || reference.timeToSavingsMs === null ? null : reference.timeToSavingsMs / row.timeToSavingsMs
}

if (values.json) console.log(JSON.stringify({ kernelRelease: f.kernelRelease, mib: Number(values.mib), rows }, null, 2))
else {
  console.log(`\nDeduplication of ${values.mib} MiB (${rows[0].target} pages can be saved) on ${f.kernelRelease}`)
  console.log('who                                                                     | time to 90% savings | saved pages | CPU seconds | CPU / ksmd defaults | 90% sooner than ksmd defaults')
  console.log('------------------------------------------------------------------------|---------------------|-------------|-------------|---------------------|------------------------------')
  for (const row of rows) {
    const time = row.timeToSavingsMs === null ? `> ${capMs / 1000} s (cap)` : `${(row.timeToSavingsMs / 1000).toFixed(2)} s`
    const sooner = row.speedupToKsmdDefaults === null ? 'n/a' : `${row.speedupToKsmdDefaults.toFixed(1)}x`
    console.log(`${row.label.padEnd(71)} | ${time.padStart(19)} | ${String(row.saved).padStart(11)} | ${row.cpuSeconds.toFixed(2).padStart(11)} | ${row.cpuRatioToKsmdDefaults.toFixed(2).padStart(19)} | ${sooner.padStart(28)}`)
  }
}
