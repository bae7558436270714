// Shared helpers for bench/*.bench.mjs: compile and run a C reference, time a JS function the
// same way the C side times itself (median of batches), format numbers. No dependencies.
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const benchDir = path.dirname(fileURLToPath(import.meta.url))
export const rootDir = path.resolve(benchDir, '..')
export const outDir = path.join(benchDir, '.out')
export const MiB = 1024 * 1024
const ccFlags = ['-O2', '-Wall', '-Wextra', '-Wno-unused-parameter', '-D_GNU_SOURCE']

/**
 * Compiles bench/<relPath> with `cc -O2` into bench/.out/ and returns the binary's absolute path.
 * Recompiles only when the source text or the flags changed (a hash sits next to the binary).
 */
export function compileC(relPath, { flags = [], libs = [] } = {}) {
  const source = path.resolve(benchDir, relPath)
  const text = fs.readFileSync(source)
  const allFlags = [...ccFlags, `-I${path.join(benchDir, 'c')}`, ...flags]
  // native/compat.h is included by every reference: a constant changed there rebuilds them.
  const compat = fs.readFileSync(path.join(rootDir, 'native', 'compat.h'))
  const hash = createHash('sha256').update(text).update(compat).update(JSON.stringify([allFlags, libs])).digest('hex')
  const binary = path.join(outDir, relPath.replace(/^c\//, '').replace(/\.cc?$/, '').replaceAll('/', '_'))
  const stamp = `${binary}.hash`
  if (fs.existsSync(binary) && fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === hash) return binary
  fs.mkdirSync(outDir, { recursive: true })
  try {
    execFileSync('cc', [...allFlags, '-o', binary, source, ...libs], { stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (error) {
    throw new Error(`cc failed for bench/${relPath}:\n${error.stderr?.toString() ?? error.message}`)
  }
  fs.writeFileSync(stamp, hash)
  return binary
}

/** Runs a compiled C reference and returns the JSON object it printed on stdout. */
export function runC(binary, args = []) {
  let stdout
  try {
    stdout = execFileSync(binary, args.map(String), { stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * MiB }).toString()
  } catch (error) {
    throw new Error(`${path.basename(binary)} ${args.join(' ')} exited ${error.status ?? error.signal}:\n${error.stderr?.toString() ?? ''}`)
  }
  try {
    return JSON.parse(stdout)
  } catch {
    throw new Error(`${path.basename(binary)} printed no JSON object on stdout:\n${stdout}`)
  }
}

export function median(values) {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/**
 * Median ns per call of `fn`: `warmup` untimed calls (lets the JIT settle), then `iterations`
 * batches of `batch` calls each timed with process.hrtime.bigint(); the median batch / batch.
 * The C references use the same scheme (clock_gettime around batches), so the ratios compare like with like.
 */
export function medianNs(fn, { iterations = 31, warmup = 1000, batch = 1000 } = {}) {
  for (let i = 0; i < warmup; i++) fn()
  const samples = new Array(iterations)
  for (let i = 0; i < iterations; i++) {
    const start = process.hrtime.bigint()
    for (let j = 0; j < batch; j++) fn()
    samples[i] = Number(process.hrtime.bigint() - start) / batch
  }
  return median(samples)
}

/** Median ns of an async `fn` run `iterations` times (for second-scale work: ksmd merges). */
export async function medianNsAsync(fn, { iterations = 3, warmup = 0 } = {}) {
  for (let i = 0; i < warmup; i++) await fn()
  const samples = []
  for (let i = 0; i < iterations; i++) {
    const start = process.hrtime.bigint()
    await fn()
    samples.push(Number(process.hrtime.bigint() - start))
  }
  return median(samples)
}

/** Elapsed ns of one synchronous call. */
export function timeNs(fn) {
  const start = process.hrtime.bigint()
  fn()
  return Number(process.hrtime.bigint() - start)
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** MiB/s for `bytes` processed in `ns`. */
export const mibPerSec = (bytes, ns) => bytes / MiB / (ns / 1e9)

/** Human-readable duration: 123 ns, 4.56 µs, 7.89 ms, 1.23 s. */
export function formatNs(ns) {
  if (ns === undefined || ns === null || Number.isNaN(ns)) return '-'
  if (ns < 1e3) return `${ns.toFixed(ns < 10 ? 2 : ns < 100 ? 1 : 0)} ns`
  if (ns < 1e6) return `${(ns / 1e3).toFixed(2)} µs`
  if (ns < 1e9) return `${(ns / 1e6).toFixed(2)} ms`
  return `${(ns / 1e9).toFixed(2)} s`
}

/** The library under test, compiled (run.mjs builds dist/ first). */
export async function memdedup() {
  return import(path.join(rootDir, 'dist', 'lib', 'index.js'))
}

// The KSM tests' cross-process lock: whoever drives ksmd (run, pages_to_scan, global counters)
// holds it, so a bench and a KSM test never disturb each other.
export { ksmLockPath, withKsmLock } from '../test/helpers/lock.mjs'
