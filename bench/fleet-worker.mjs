// One worker of the fleet benchmark (bench/fleet.mjs forks N of these). It loads the state a
// real service would: a module graph from node_modules, the shared dataset parsed into typed
// arrays in a memdedup Region, some per-process unique data; then it serves a request loop over
// the dataset and rewrites its hot pages every second. The parent tells it when to start
// deduplicating and when to stop, and reads its memory from /proc; the worker reports its own
// request throughput and, under a Deduplicator, that Deduplicator's stats.
// A plain worker (FLEET_PLAIN=1) never loads memdedup: its dataset and unique data are ordinary
// ArrayBuffers, as in any Node service; KSM or the daemon reach it from outside.
//
// Messages: worker → parent {type:'ready'}, {type:'tick', ops}, {type:'final', ...};
//           parent → worker {type:'start'}, {type:'stop'}.
import fs from 'node:fs'
import { createRequire } from 'node:module'
import { randomFillSync } from 'node:crypto'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const rootDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const env = (name) => {
  const value = process.env[name]
  if (value === undefined) throw new Error(`fleet-worker: ${name} is not set (run bench/fleet.mjs, not this file)`)
  return value
}
const config = env('FLEET_CONFIG')
const datasetPath = env('FLEET_DATASET')
const uniqueBytes = Number(env('FLEET_UNIQUE_BYTES'))
const hotEvery = Number(env('FLEET_HOT_EVERY')) // every hotEvery-th page of the dataset is hot
const intervalMs = Number(env('FLEET_INTERVAL_MS'))
const maxIntervalMs = Number(env('FLEET_MAX_INTERVAL_MS'))
const cpuBudgetMs = Number(env('FLEET_CPU_BUDGET_MS'))
const busyPct = Number(env('FLEET_BUSY_PCT'))
const plain = process.env.FLEET_PLAIN === '1'

const lib = plain ? null : await import(path.join(rootDir, 'dist', 'lib', 'index.js'))
const pageSize = Number(env('FLEET_PAGE_SIZE'))
/** `length` bytes: a memdedup Region (page-aligned), or for a plain worker an ordinary ArrayBuffer (where malloc puts it). */
function allocate(length) {
  if (!plain) return lib.Region.anonymous(length)
  const bytes = new Uint8Array(length)
  return { bytes, pages: Math.ceil(length / pageSize) }
}

// The module graph: a few real packages, each exercised once so its functions are compiled.
// (Few files: in the lab every require() reads the host's tree over 9p under TCG.)
function loadModules() {
  const require = createRequire(path.join(rootDir, 'package.json'))
  const postcss = require('postcss')
  const { minimatch } = require('minimatch')
  const { Command } = require('commander')
  const debug = require('debug')
  postcss.parse('a { color: red; margin: 0 auto }').toString()
  minimatch('lib/region.ts', 'lib/**/*.ts')
  new Command('fleet').option('--x <n>').parse(['node', 'fleet', '--x', '1'])
  debug('fleet')('loaded')
  return [postcss, minimatch, Command, debug].length
}

// The dataset file holds rows of 16 bytes (u32 id, u16 category, u16 quantity, f32 price,
// u32 timestamp); parsing turns them into page-aligned columns, widened: ids u32, category u16,
// quantity u16, price f64, timestamp f64 (24 bytes a record in the Region).
const columns = [
  ['id', Uint32Array], ['category', Uint16Array], ['quantity', Uint16Array], ['price', Float64Array], ['time', Float64Array],
]
const alignPage = (n) => Math.ceil(n / pageSize) * pageSize

function parseDataset() {
  const fd = fs.openSync(datasetPath, 'r')
  try {
    const records = fs.fstatSync(fd).size / 16
    const offsets = []
    let length = 0
    for (const [, Type] of columns) {
      offsets.push(length)
      length = alignPage(length + records * Type.BYTES_PER_ELEMENT)
    }
    const region = allocate(length)
    const buffer = region.bytes.buffer
    const view = Object.fromEntries(columns.map(([name, Type], i) => [name, new Type(buffer, offsets[i], records)]))
    // Row fields read through typed views of the chunk (rows are 16 bytes, fields naturally aligned).
    const chunk = new Uint8Array(16 * 65536)
    const u32 = new Uint32Array(chunk.buffer)
    const u16 = new Uint16Array(chunk.buffer)
    const f32 = new Float32Array(chunk.buffer)
    const { id, category, quantity, price, time } = view
    for (let first = 0; first < records; first += 65536) {
      const count = Math.min(65536, records - first)
      fs.readSync(fd, chunk, 0, count * 16, first * 16)
      for (let i = 0, r = first; i < count; i++, r++) {
        id[r] = u32[i * 4]
        category[r] = u16[i * 8 + 2]
        quantity[r] = u16[i * 8 + 3]
        price[r] = f32[i * 4 + 2]
        time[r] = u32[i * 4 + 3] * 1000
      }
    }
    return { region, view, records }
  } finally {
    fs.closeSync(fd)
  }
}

const loadStarted = performance.now()
const moduleCount = loadModules()
const modulesMs = performance.now() - loadStarted
const dataset = parseDataset()
const unique = allocate(alignPage(uniqueBytes))
randomFillSync(unique.bytes)
const loadMs = performance.now() - loadStarted

// Hot pages: one word of every hotEvery-th dataset page rewritten each second with a value of
// this process, so those pages differ between workers right after each write.
const words = new Uint32Array(dataset.region.bytes.buffer)
const wordsPerPage = pageSize / 4
let tick = 0
const hotWriter = setInterval(() => {
  tick++
  const word = (tick * 17) % wordsPerPage
  for (let page = hotEvery - 1; page < dataset.region.pages; page += hotEvery) words[page * wordsPerPage + word] = (process.pid << 8) ^ tick
}, 1000)

// The service: each request sums the revenue of one category over 512 consecutive records.
let seed = process.pid >>> 0
let ops = 0
let checksum = 0
function request() {
  seed = (seed * 1664525 + 1013904223) >>> 0
  const first = seed % (dataset.records - 512)
  const category = seed & 63
  const { category: cat, quantity, price } = dataset.view
  let sum = 0
  for (let r = first; r < first + 512; r++) if (cat[r] === category) sum += quantity[r] * price[r]
  checksum += sum
  ops++
}
// A service under moderate load, not a busy loop: every 50 ms it serves requests for busyPct% of
// the cycle and idles the rest (the fleet together asks for less than the machine has, so ksmd
// and the Deduplicator compete for spare CPU as they would in production). Time a dedup pass
// steals from this thread, or CPU it steals from the machine, shows as fewer ops per second.
const cycleMs = 50
const busyMs = (cycleMs * busyPct) / 100
let serving = true
function serve() {
  if (!serving) return
  const cycleStart = performance.now()
  while (performance.now() - cycleStart < busyMs) request()
  setTimeout(serve, Math.max(0, cycleMs - (performance.now() - cycleStart)))
}
serve()

let dedup = null
let index = null
let ticker = null
let cpuAtStart = null

function startDedup() {
  if (config === 'dedup-sksm' || config === 'dedup-ksm') {
    index = lib.TwinIndex.open(env('FLEET_TWIN_INDEX'))
    dedup = new lib.Deduplicator({ merge: config === 'dedup-sksm' ? 'sksm' : 'ksm', index, cpuBudgetMs })
    dedup.track(dataset.region)
    dedup.track(unique)
    dedup.run({ intervalMs, maxIntervalMs })
  } else if (config.startsWith('ksmd-') && !plain) {
    lib.ksm.process.set(true) // a plain worker was started with it on (bench/c/ksm_exec.c)
  }
}

/** The Deduplicator's totals and, summed over its pass reports, where the pages went. */
function summarizeDedup(stats) {
  const sum = (key) => stats.history.reduce((total, report) => total + (report[key] ?? 0), 0)
  return {
    passes: stats.passes, cpuMs: stats.cpuMs, mergedPages: stats.mergedPages, markedPages: stats.markedPages, cowAfterMerge: stats.cowAfterMerge,
    historyPasses: stats.history.length,
    ...Object.fromEntries(['writtenPages', 'candidatePages', 'hashedPages', 'duplicatePages', 'deferredPages', 'mergeDeferredPages', 'indexFullPages', 'unmarkedPages', 'wpLostPages', 'scanMs', 'hashMs', 'mergeMs'].map((key) => [key, sum(key)])),
    maxPassCpuMs: Math.max(0, ...stats.history.map((report) => report.cpuMs)),
  }
}

process.on('message', async (message) => {
  if (message.type === 'start') {
    ops = 0
    cpuAtStart = process.cpuUsage()
    ticker = setInterval(() => {
      process.send({ type: 'tick', ops, dedupCpuMs: dedup ? dedup.stats().cpuMs : 0 })
      ops = 0
    }, 1000)
    startDedup()
  } else if (message.type === 'stop') {
    clearInterval(ticker)
    serving = false
    clearInterval(hotWriter)
    let stats = null
    if (dedup) {
      await dedup.stop()
      stats = dedup.stats()
      dedup.close()
      index.close?.()
    }
    const cpu = process.cpuUsage(cpuAtStart)
    process.send({
      type: 'final',
      ops,
      cpuSeconds: (cpu.user + cpu.system) / 1e6,
      dedup: stats && summarizeDedup(stats),
      checksum,
    }, () => process.exit(0))
  }
})

globalThis.gc?.()
process.send({ type: 'ready', loadMs, modulesMs, moduleCount, datasetPages: dataset.region.pages, uniquePages: unique.pages })
