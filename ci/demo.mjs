#!/usr/bin/env zx
// `npm run demo`: the SKSM RFC's measurement, reproduced in the lab VM, next to the RFC's numbers.
//
//   npm run demo                         1000 processes (like the RFC), 20 Node ones, KSM, 1 GiB bulk
//   npm run demo -- --procs 200 --node-procs 10 --memory 6G --skip ksm,bulk --json
//
// Builds the lab kernel if needed (cached after the first time), boots it in QEMU, and runs
// ci/demo/guest.mjs in the guest, which measures nr_anon_pages while N processes COW every page
// of libc's text (what user-space code patching does) and then madvise(MADV_MERGE) it:
//   1. N small C processes (ci/demo/sksm_demo.c), as in the RFC ("1000 instances of sleep 500")
//   2. Node processes using memdedup itself (Region.file, protect, sksm.merge)
//   3. the same N processes with KSM instead: MADV_MERGEABLE and ksmd at its defaults and at
//      full speed, until it frees as much (capped)
//   4. time to savings for --bulk-mib MiB of duplicates, SKSM against ksmd, and merge throughput
// Options: --procs N (1000) --node-procs N (20) --memory SIZE (6G) --ksm-cap S (180)
//   --ksm-fast-cap S (120) --bulk-mib N (1024) --skip node,ksm,bulk --timeout S (3600) --json
//   --kernel BZIMAGE (use this kernel as is, e.g. while kernel-patches/ is being edited)
import { $, fs, path, chalk } from 'zx'
import { createHash } from 'node:crypto'
import { cacheDir, repoRoot, log, fail, formatSeconds, isMain, runMain } from './lib.mjs'
import { ensureKernelBuild } from './kernel.mjs'
import { runInVm } from './vm.mjs'

// The RFC's numbers (seeds/002: "cat /proc/vmstat | grep nr_anon_pages" with 1000 × "sleep 500").
export const seed = { procs: 1000, baseline: 39721, afterCow: 419927, afterMerge: 45525 }
const goals = { residualPercent: 1.5, mergeSeconds1000: 60, bulkSpeedup: 100 }

export function parseOptions(argv) {
  const options = { procs: 1000, nodeProcs: 20, memory: '6G', ksmCap: 180, ksmFastCap: 120, bulkMib: 1024, skip: '', timeout: 3600, json: false, kernel: '' }
  const names = { procs: 'procs', 'node-procs': 'nodeProcs', memory: 'memory', 'ksm-cap': 'ksmCap', 'ksm-fast-cap': 'ksmFastCap',
    'bulk-mib': 'bulkMib', skip: 'skip', timeout: 'timeout', kernel: 'kernel' }
  for (let i = 0; i < argv.length; i++) {
    const match = /^--([\w-]+)(?:=(.*))?$/.exec(argv[i])
    if (!match) fail(`unexpected argument ${argv[i]} (see the header of ci/demo.mjs)`)
    if (match[1] === 'json') { options.json = true; continue }
    const key = names[match[1]]
    if (!key) fail(`unknown option --${match[1]}; options: --procs N --node-procs N --memory 6G --ksm-cap S --ksm-fast-cap S --bulk-mib N --skip node,ksm,bulk --timeout S --kernel BZIMAGE --json`)
    const value = match[2] ?? argv[++i]
    if (value === undefined) fail(`--${match[1]} needs a value`)
    options[key] = typeof options[key] === 'number' ? Number(value) : value
    if (typeof options[key] === 'number' && !(options[key] >= 0)) fail(`--${match[1]} must be a non-negative number`)
  }
  if (!/^\d+[MG]$/.test(options.memory)) fail(`--memory must look like 6G or 6144M`)
  return options
}

/** Compiles the guest helper on the host (the guest sees the host's / read-only). */
async function buildHelper() {
  const source = path.join(repoRoot, 'ci', 'demo', 'sksm_demo.c')
  const hash = createHash('sha256').update(await fs.readFile(source)).digest('hex').slice(0, 12)
  const binary = path.join(cacheDir, 'demo', `sksm_demo-${hash}`)
  if (!fs.existsSync(binary)) {
    await fs.mkdirp(path.dirname(binary))
    await $`gcc -O2 -Wall -Wextra -o ${binary}.tmp ${source}`
    await fs.move(`${binary}.tmp`, binary, { overwrite: true })
  }
  return binary
}

/** Calls fn while the VM's echoed output goes through a line filter (hides @@demo lines). */
async function withFilteredStdout(toStderr, fn) {
  const original = process.stdout.write.bind(process.stdout)
  const sink = toStderr ? process.stderr.write.bind(process.stderr) : original
  let partial = ''
  process.stdout.write = (chunk, ...rest) => {
    partial += chunk.toString()
    const lines = partial.split('\n')
    partial = lines.pop()
    const shown = lines.filter((line) => !line.startsWith('@@demo ')).map((line) => line + '\n').join('')
    if (shown) sink(shown)
    const callback = rest.find((arg) => typeof arg === 'function')
    if (callback) callback()
    return true
  }
  try {
    return await fn()
  } finally {
    process.stdout.write = original
    if (partial && !partial.startsWith('@@demo ')) sink(partial + '\n')
  }
}

const n = (value) => (value === undefined || value === null || Number.isNaN(value) ? '—' : Math.round(value).toLocaleString('en-US').replace(/,/g, ' '))
const pct = (value) => (Number.isFinite(value) ? `${value.toFixed(2)}%` : '—')
const secs = (value) => (Number.isFinite(value) ? `${value < 10 ? value.toFixed(2) : value.toFixed(1)} s` : '—')

export function residualPercent(row) {
  return (100 * (row.afterMerge - row.baseline)) / (row.afterCow - row.baseline)
}

function table(headers, rows) {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)))
  const line = (cells) => cells.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ')
  return [line(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n')
}

export function formatReport(rows, options) {
  const out = []
  const by = Object.fromEntries(rows.map((r) => [r.row, r]))
  const env = by.env
  if (env) out.push(chalk.bold(`SKSM demo on ${env.kernel} (${env.cpus} vCPUs, ${env.memGiB.toFixed(1)} GiB${env.vm ? ', QEMU' : ''})`))
  const c = by['sksm-c']
  const textPages = c ? Math.round((c.afterCow - c.baseline) / c.procs) : undefined
  out.push(`Processes COW every page of libc's text (${textPages ?? '?'} pages each here), then merge it. nr_anon_pages from /proc/vmstat;`)
  out.push('residual = (after merge - baseline) / (after COW - baseline): the share of the COWed memory still used.')
  const headers = ['', 'procs', 'baseline', 'after COW', 'after merge', 'residual', 'merge time']
  const body = [['seed (RFC, 1000 x sleep 500)', seed.procs, n(seed.baseline), n(seed.afterCow), n(seed.afterMerge), pct(residualPercent(seed)), '—']]
  if (c) body.push(['ours: SKSM, C processes', c.procs, n(c.baseline), n(c.afterCow), n(c.afterMerge), pct(residualPercent(c)), secs(c.mergeSeconds)])
  const node = by['sksm-node']
  if (node) body.push(['ours: SKSM, Node + memdedup', node.procs, n(node.baseline), n(node.afterCow), n(node.afterMerge), pct(residualPercent(node)), secs(node.mergeSeconds)])
  for (const [key, label] of [['ksm-defaults', 'KSM, ksmd defaults'], ['ksm-fast', 'KSM, ksmd full speed']]) {
    const k = by[key]
    if (!k) continue
    const time = k.secondsToTarget >= 0 ? secs(k.secondsToTarget) : `> ${secs(k.capSeconds)} (cap)`
    body.push([`${label} (${k.pagesToScan}/${k.sleepMillisecs} ms)`, k.procs, n(k.baseline), n(k.afterCow), n(k.afterMerge), pct(residualPercent(k)), time])
  }
  out.push(table(headers, body))
  if (c) {
    const residual = residualPercent(c)
    const scaled = c.procs >= 1000 ? c.mergeSeconds : undefined
    out.push(`goal: residual <= ${goals.residualPercent}%: ${residual <= goals.residualPercent ? chalk.green('met') : chalk.red('missed')} (${pct(residual)}); ` +
      `1000 processes merged in < ${goals.mergeSeconds1000} s: ${scaled === undefined ? `not measured (--procs ${c.procs})` : scaled < goals.mergeSeconds1000 ? chalk.green(`met (${secs(scaled)})`) : chalk.red(`missed (${secs(scaled)})`)}` +
      `; slowest madvise ${c.maxMadviseMs.toFixed(1)} ms, mean ${c.meanMadviseMs.toFixed(1)} ms; ${c.errors} errors`)
    if (node) out.push(`Node row: ${node.textPages} text pages per process, every byte verified ${node.intact ? 'intact' : chalk.red('NOT intact')}, slowest sksm.merge ${node.maxMergeMs.toFixed(1)} ms; ` +
      `its residual cannot go below 1/${node.procs} = ${pct(100 / node.procs)} (one copy stays), the rest is the Node processes' own heap activity`)
    for (const key of ['ksm-defaults', 'ksm-fast']) {
      const k = by[key]
      if (!k) continue
      const freed = k.afterCow - k.afterMerge
      out.push(`${key}: target ${n(k.targetFreed)} pages freed (95% of what SKSM freed); ${k.secondsToTarget >= 0 ? `reached in ${secs(k.secondsToTarget)}` : `reached ${pct((100 * freed) / (k.afterCow - k.baseline))} of the COWed pages after ${secs(k.elapsedSeconds)}`}, ${k.fullScans} full scans` +
        (k.secondsToTarget >= 0 && c.mergeSeconds > 0 ? `: ${(k.secondsToTarget / c.mergeSeconds).toFixed(0)}x the SKSM merge time` : ''))
    }
  }
  const bs = by['bulk-sksm']
  if (bs) {
    const mib = bs.mib
    out.push('')
    out.push(chalk.bold(`Time to savings: ${mib} MiB of duplicates (${n(bs.pages)} pages, two identical copies, no THP)`))
    const rows2 = [[`SKSM MADV_MERGE (index ${secs(bs.indexSeconds)}, dedup ${secs(bs.dedupSeconds)})`, secs(bs.secondsToTarget), n(bs.freed),
      `${n(mib / bs.dedupSeconds)} MiB/s`, `${n(bs.pages / bs.dedupSeconds)} pages/s`, '1x']]
    for (const [key, label] of [['bulk-ksm-defaults', 'ksmd defaults'], ['bulk-ksm-fast', 'ksmd full speed']]) {
      const k = by[key]
      if (!k) continue
      const freed = k.afterFill - k.afterMerge
      const rate = freed / k.elapsedSeconds
      const reached = k.secondsToTarget >= 0
      // at the cap, a lower bound: the time already spent, or a linear extrapolation of the rate
      const estimate = reached ? k.secondsToTarget : freed > 0 ? Math.max(k.elapsedSeconds, (k.pages * 0.99) / rate) : undefined
      const time = reached ? secs(k.secondsToTarget) : `> ${secs(k.elapsedSeconds)}${estimate ? ` (~${secs(estimate)} at this rate)` : ''}`
      const ratio = (estimate ?? k.elapsedSeconds) / bs.secondsToTarget
      rows2.push([`${label} (${k.pagesToScan} pages / ${k.sleepMillisecs} ms)`, time, n(Math.max(0, freed)),
        freed > 0 ? `${n((rate * bs.pageSize) / 2 ** 20)} MiB/s` : '—', freed > 0 ? `${n(rate)} pages/s` : '—', `${reached ? '' : '>= '}${ratio.toFixed(0)}x`])
    }
    out.push(table(['', 'time to savings', 'pages freed', 'merge speed', '', 'vs SKSM'], rows2))
    const d = by['bulk-ksm-defaults']
    if (d) {
      const reached = d.secondsToTarget >= 0
      const measured = (reached ? d.secondsToTarget : d.elapsedSeconds) / bs.secondsToTarget
      const freed = d.afterFill - d.afterMerge
      const estimated = reached || freed <= 0 ? measured : Math.max(d.elapsedSeconds, (d.pages * 0.99 * d.elapsedSeconds) / freed) / bs.secondsToTarget
      const verdict = measured >= goals.bulkSpeedup ? chalk.green('met') : estimated >= goals.bulkSpeedup ? chalk.yellow('met by extrapolation') : chalk.red('missed')
      // ksmd cannot be faster than its rate limit: a page merges on its 2nd full scan at the earliest
      // (the 1st only records checksums), and a full scan covers both copies at pages_to_scan per sleep
      const floorSeconds = d.sleepMillisecs > 0 ? (2 * (2 * d.pages) / d.pagesToScan) * (d.sleepMillisecs / 1000) : 0
      out.push(`goal: SKSM >= ${goals.bulkSpeedup}x sooner than ksmd at defaults: ${verdict} (${reached ? '' : 'at least '}${measured.toFixed(0)}x measured` +
        `${reached ? '' : freed > 0 ? `, ~${estimated.toFixed(0)}x extrapolated` : ', ksmd freed nothing before the cap'}` +
        `${floorSeconds ? `; ksmd's own rate limit alone needs >= ${secs(floorSeconds)} (2 full scans of ${n(2 * d.pages)} pages at ${d.pagesToScan} pages / ${d.sleepMillisecs} ms) = ${(floorSeconds / bs.secondsToTarget).toFixed(0)}x` : ''})`)
      if (env?.vm) out.push('note: under QEMU/TCG SKSM (CPU-bound hashing and copying) runs ~18x slower than natively while ksmd at defaults is bound by its sleeps, so these ratios understate the native ones')
    }
  }
  return out.join('\n')
}

async function main() {
  const options = parseOptions(process.argv.slice(process.argv.findIndex((arg) => arg.endsWith('demo.mjs')) + 1))
  const started = Date.now()
  let kernel
  if (options.kernel) {
    if (!fs.existsSync(options.kernel)) fail(`--kernel ${options.kernel} does not exist`)
    kernel = { bzImage: path.resolve(options.kernel), release: (await fs.readFile(`${options.kernel}.release`, 'utf8').catch(() => '?')).trim(), cached: true }
    log(`step 1/3: using ${kernel.bzImage} (${kernel.release}) as given`)
  } else {
    log('step 1/3: lab kernel (Debian linux-source-6.12 + kernel-patches/, cached after the first build; a first build takes a while)')
    kernel = await ensureKernelBuild()
    log(`kernel ${kernel.release}${kernel.cached ? ' (cached)' : ` built in ${formatSeconds(kernel.buildMs)}`}`)
  }
  const helper = await buildHelper()
  await $`test -f ${path.join(repoRoot, 'dist', 'lib', 'index.js')}`.catch(() => fail('dist/ is missing: run `npx tsc -p tsconfig.json` (npm run demo does)'))

  const guestArgs = ['--helper', helper, '--procs', options.procs, '--node-procs', options.nodeProcs, '--ksm-cap', options.ksmCap,
    '--ksm-fast-cap', options.ksmFastCap, '--bulk-mib', options.bulkMib]
  if (options.skip) guestArgs.push('--skip', options.skip)
  if (options.nodeProcs === 0) guestArgs.push('--skip', ['node', options.skip].filter(Boolean).join(','))
  log(`step 2/3: booting it (${options.memory}) and measuring in the guest: ${options.procs} processes, progress below`)
  const result = await withFilteredStdout(options.json, () =>
    runInVm(['node', 'ci/demo/guest.mjs', ...guestArgs.map(String)], {
      cwd: repoRoot, memory: options.memory, timeoutMs: options.timeout * 1000, stdio: 'pipe', echo: true, kernel: kernel.bzImage,
      env: { TMPDIR: '/tmp' },
    }),
  )
  const rows = (result.output ?? '').split('\n').filter((line) => line.startsWith('@@demo ')).map((line) => JSON.parse(line.slice(7)))
  log(`step 3/3: results (${formatSeconds(Date.now() - started)} in all, VM ${formatSeconds(result.durationMs)}, ${result.accel})`)
  if (options.json) {
    console.log(JSON.stringify({ seed, rows, vm: { exitCode: result.exitCode, problems: result.problems, accel: result.accel, consoleLog: result.consoleLog } }, null, 2))
  } else {
    console.log('')
    console.log(formatReport(rows, options))
  }
  if (!result.ok) log(chalk.red(`the guest run failed (exit ${result.exitCode}${result.problems.length ? `, ${result.problems.length} kernel problems in the console` : ''})`))
  return result.ok ? 0 : 1
}

if (isMain(import.meta.url)) await runMain(main)
