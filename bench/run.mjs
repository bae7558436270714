#!/usr/bin/env node
// Runs bench/*.bench.mjs (each pairs memdedup with a C reference measured in the same run) and
// prints one table. Usage: node bench/run.mjs [name ...] [--json] [--no-build]
// Exits 0 when goals are missed (benchmarks inform, they are not tests); 1 only when a bench crashed.
import fs from 'node:fs'
import path from 'node:path'
import * as h from './harness.mjs'
import { ensureDist } from '../test/helpers/dist.mjs'

const scriptIndex = process.argv.findIndex((arg) => arg.endsWith('run.mjs'))
const argv = process.argv.slice(scriptIndex + 1)
const json = argv.includes('--json')
const build = !argv.includes('--no-build')
const filters = argv.filter((arg) => !arg.startsWith('--'))
const log = (...args) => console.error(...args)

function newestMtime(dir, ext) {
  let newest = 0
  if (!fs.existsSync(dir)) return 0
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const file = path.join(dir, entry.name)
    if (entry.isDirectory()) newest = Math.max(newest, newestMtime(file, ext))
    else if (entry.name.endsWith(ext)) newest = Math.max(newest, fs.statSync(file).mtimeMs)
  }
  return newest
}

/** tsc when lib/ is newer than dist/: the tests' one "dist is built" check. */
async function buildDist() {
  ensureDist()
  const addon = path.join(h.rootDir, 'build', 'Release', 'memdedup.node')
  if (!fs.existsSync(addon)) throw new Error('build/Release/memdedup.node missing: run `npm run build` first')
  if (newestMtime(path.join(h.rootDir, 'native'), '.cc') > fs.statSync(addon).mtimeMs) {
    log('warning: native/*.cc is newer than build/Release/memdedup.node (run `npm run build` to benchmark the current source)')
  }
}

if (build) await buildDist()

const benches = fs
  .readdirSync(h.benchDir)
  .filter((file) => file.endsWith('.bench.mjs'))
  .sort()
  .filter((file) => filters.length === 0 || filters.some((f) => file.replace(/\.bench\.mjs$/, '') === f || file.includes(f)))
if (benches.length === 0) {
  log(`no bench/*.bench.mjs matches ${filters.join(' ')}`)
  process.exit(1)
}

const results = []
let crashed = false
for (const file of benches) {
  const suite = file.replace(/\.bench\.mjs$/, '')
  const started = Date.now()
  log(`running ${suite} ...`)
  try {
    const { default: bench } = await import(path.join(h.benchDir, file))
    const rows = await bench(h)
    for (const row of rows) results.push(summarize(suite, row))
    log(`  ${suite}: ${rows.length} rows in ${((Date.now() - started) / 1000).toFixed(1)} s`)
  } catch (error) {
    crashed = true
    log(`  ${suite} FAILED: ${error.stack ?? error}`)
    results.push({ suite, name: '(crashed)', error: String(error.message ?? error).split('\n')[0] })
  }
}

function summarize(suite, row) {
  const out = { suite, ...row }
  if (row.skip) return out
  if (row.cNs > 0 && row.jsNs > 0) out.ratio = row.jsNs / row.cNs
  if (typeof row.goal === 'number' && out.ratio !== undefined) out.ok = out.ratio <= row.goal
  if (row.bytes) {
    out.cMiBs = h.mibPerSec(row.bytes, row.cNs)
    out.jsMiBs = h.mibPerSec(row.bytes, row.jsNs)
  }
  return out
}

function table(headers, rows) {
  const widths = headers.map((header, i) => Math.max(header.length, ...rows.map((r) => String(r[i]).length)))
  const line = (cells) => cells.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join(' | ')
  return [line(headers), widths.map((w) => '-'.repeat(w)).join('-|-'), ...rows.map(line)].join('\n')
}

if (json) {
  console.log(JSON.stringify({ date: new Date().toISOString(), node: process.version, results }, null, 2))
} else {
  const rows = results.map((r) => {
    const name = `${r.suite}: ${r.name}`
    if (r.error) return [name, '-', '-', '-', '-', `ERROR ${r.error}`, '']
    if (r.skip) return [name, '-', '-', '-', '-', `skipped: ${r.skip}`, '']
    const ok = r.ok === undefined ? 'info' : r.ok ? 'ok' : 'MISSED'
    const raw = r.rawNs === undefined ? '' : `${h.formatNs(r.rawNs)} (${(r.rawNs / r.cNs).toFixed(2)}x)`
    return [name, h.formatNs(r.cNs), h.formatNs(r.jsNs), r.ratio === undefined ? '-' : r.ratio.toFixed(2) + 'x', r.goal ? `≤ ${r.goal}x` : '-', ok, raw]
  })
  console.log(table(['name', 'C median', 'memdedup median', 'ratio', 'goal', 'ok?', 'bare binding'], rows))
  const throughput = results.filter((r) => r.cMiBs !== undefined)
  if (throughput.length > 0) {
    console.log('\nThroughput')
    console.log(table(['name', 'size', 'C MiB/s', 'memdedup MiB/s'], throughput.map((r) => [`${r.suite}: ${r.name}`, `${(r.bytes / h.MiB).toFixed(r.bytes < h.MiB ? 2 : 0)} MiB`, r.cMiBs.toFixed(1), r.jsMiBs.toFixed(1)])))
  }
  const missed = results.filter((r) => r.ok === false).length
  console.log(`\n${results.length} rows, ${missed} goal${missed === 1 ? '' : 's'} missed${crashed ? ', a bench CRASHED' : ''}`)
}
process.exit(crashed ? 1 : 0)
