#!/usr/bin/env node
// npm run fuzz: 10^6 fuzz operations (default) in child processes, `--jobs` at a time.
//   node test/fuzz/run.mjs [--ops=1000000] [--chunk=20000] [--jobs=N] [--seed=S] [--avoid=tags]
// Prints each child's verdict and the totals: operations, ops/s, crashes, wrong bytes, other
// failures (each with its seed and last steps). Exits 1 on any failure.
import os from 'node:os'
import { fuzzOnce } from './driver.mjs'

const argv = Object.fromEntries(process.argv.slice(2).map((a) => a.replace(/^--/, '').split('=')))
const totalOps = Number(argv.ops ?? process.env.MEMDEDUP_FUZZ_OPS ?? 1_000_000)
const chunk = Math.min(totalOps, Number(argv.chunk ?? 20_000))
const jobs = Number(argv.jobs ?? Math.max(1, (os.availableParallelism?.() ?? os.cpus().length)))
const baseSeed = Number(argv.seed ?? process.env.MEMDEDUP_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31)) >>> 0
const children = Math.ceil(totalOps / chunk)
// ~1000 ops/s on an idle host core; generous, a hang is caught anyway.
const timeoutMs = Number(argv.timeout ?? Math.max(120_000, chunk * 20))

console.log(`fuzz: ${totalOps} operations in ${children} children of ${chunk}, ${jobs} at a time, seeds ${baseSeed}..${baseSeed + children - 1}`)
const started = performance.now()
const results = []
let next = 0
async function worker() {
  while (next < children) {
    const i = next++
    const ops = Math.min(chunk, totalOps - i * chunk)
    const run = await fuzzOnce({ seed: (baseSeed + i) >>> 0, ops, timeoutMs, avoid: argv.avoid ?? '' })
    results.push(run)
    const s = run.summary
    console.log(`  seed ${run.seed}: ${run.ok ? 'ok' : run.kind} ${s ? `${s.ops} ops, ${s.opsPerSec}/s` : ''}`)
    if (!run.ok) console.log(run.problem.replace(/^/gm, '    '))
  }
}
await Promise.all(Array.from({ length: Math.min(jobs, children) }, worker))
const seconds = (performance.now() - started) / 1000
const ops = results.reduce((n, r) => n + (r.summary?.ops ?? 0), 0)
const count = (kind) => results.filter((r) => r.kind === kind).length
const failed = results.filter((r) => !r.ok)
console.log(`\n${ops} operations in ${seconds.toFixed(1)} s: ${Math.round(ops / seconds)} ops/s overall (${jobs} jobs); ` +
  `${count('crash')} crashes, ${count('hang')} hangs, ${count('wrong-bytes')} wrong bytes, ${failed.length} failed children of ${results.length}`)
if (failed.length) console.log(`failed seeds: ${failed.map((r) => `${r.seed} (${r.kind})`).join(', ')}`)
process.exitCode = failed.length ? 1 : 0
