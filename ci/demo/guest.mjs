// Guest half of `npm run demo` (ci/demo.mjs boots the lab kernel and runs this inside it).
// Runs each measurement, prints progress as it goes, and one `@@demo {json}` line per result,
// which the host collects into the table. Works on any kernel with SKSM (and KSM for the KSM
// rows); exits 3 with a reason elsewhere.
//
//   node ci/demo/guest.mjs --helper <sksm_demo binary> [--procs 1000] [--node-procs 20]
//        [--ksm-cap 180] [--ksm-fast-cap 120] [--bulk-mib 1024] [--skip node,ksm,bulk]
import os from 'node:os'
import { spawn } from 'node:child_process'
import * as lib from '../../dist/lib/index.js'
import { startChild } from '../../test/fixtures/sksm-common.mjs'

const { sksm, stats } = lib
const args = parseArgs(process.argv.slice(2))
const procs = Number(args.procs ?? 1000)
const nodeProcs = Number(args['node-procs'] ?? 20)
const ksmCap = Number(args['ksm-cap'] ?? 180)
const ksmFastCap = Number(args['ksm-fast-cap'] ?? 120)
const bulkMib = Number(args['bulk-mib'] ?? 1024)
const skip = new Set(String(args.skip ?? '').split(',').filter(Boolean))
// ksmd "at full speed": no sleep between batches, batches as large as ksm_tests.c uses
const fast = { pagesToScan: 10000, sleepMs: 0 }
const defaults = { pagesToScan: 100, sleepMs: 20 } // the kernel's defaults

function parseArgs(argv) {
  const out = {}
  for (let i = 0; i < argv.length; i++) {
    const match = /^--([\w-]+)(?:=(.*))?$/.exec(argv[i])
    if (!match) continue
    out[match[1]] = match[2] ?? (argv[i + 1] && !argv[i + 1].startsWith('--') ? argv[++i] : 'true')
  }
  return out
}

const say = (message) => process.stderr.write(`[demo] ${message}\n`)
const emit = (row) => process.stdout.write(`@@demo ${JSON.stringify(row)}\n`)
const nrAnonPages = () => stats.vmstat().nr_anon_pages
const seconds = (start) => Number(process.hrtime.bigint() - start) / 1e9

/** Runs the C helper; its progress goes to our stderr, its JSON result is returned. */
function helper(...helperArgs) {
  return new Promise((resolve, reject) => {
    const child = spawn(args.helper, helperArgs.map(String), { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (chunk) => (out += chunk))
    child.on('error', reject)
    child.on('exit', (code) => {
      try {
        resolve({ ...JSON.parse(out), exitCode: code })
      } catch {
        reject(new Error(`${args.helper} ${helperArgs.join(' ')} exited ${code} without a result: ${out.slice(0, 500)}`))
      }
    })
  })
}

/** Row 2: Node processes that use memdedup themselves (test/fixtures/sksm-child.mjs). */
async function nodeRow(count) {
  say(`starting ${count} Node processes using memdedup (under TCG each takes seconds to start)`)
  const started = process.hrtime.bigint()
  const children = []
  try {
    // a few at a time, so the first ones are not starved while 50 start at once
    for (let i = 0; i < count; i += 4) {
      children.push(...(await Promise.all(Array.from({ length: Math.min(4, count - i) }, () => startChild()))))
      say(`  ${children.length}/${count} Node processes up`)
    }
    const spawnSeconds = seconds(started)
    await new Promise((resolve) => setTimeout(resolve, 500))
    const baseline = nrAnonPages()
    say(`  baseline nr_anon_pages ${baseline}`)
    let t = process.hrtime.bigint()
    const texts = await Promise.all(children.map((c) => c.send({ op: 'libc', name: 'libc' })))
    const cowSeconds = seconds(t)
    const afterCow = nrAnonPages()
    say(`  after COW   nr_anon_pages ${afterCow} (+${afterCow - baseline}, ${cowSeconds.toFixed(1)} s)`)
    t = process.hrtime.bigint()
    const merges = await Promise.all(children.map((c) => c.send({ op: 'merge', name: 'libc' })))
    const mergeSeconds = seconds(t)
    const afterMerge = nrAnonPages()
    say(`  after sksm.merge nr_anon_pages ${afterMerge} (${mergeSeconds.toFixed(1)} s)`)
    const verified = await Promise.all(children.map((c) => c.send({ op: 'verify', name: 'libc' })))
    return {
      mode: 'sksm-node', procs: count, textPages: texts[0].pages, baseline, afterCow, afterMerge, spawnSeconds, cowSeconds,
      mergeSeconds, maxMergeMs: Math.max(...merges.map((m) => m.ms)), intact: verified.every((v) => v.firstBad === -1),
    }
  } finally {
    await Promise.all(children.map((c) => c.close()))
  }
}

async function main() {
  say(`kernel ${os.release()}, ${os.cpus().length} CPUs, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`)
  if (!sksm.available()) {
    say(`this kernel has no SKSM (madvise(MADV_MERGE) is EINVAL): nothing to demonstrate`)
    process.exit(3)
  }
  emit({ row: 'env', kernel: os.release(), cpus: os.cpus().length, memGiB: os.totalmem() / 2 ** 30, vm: process.env.MEMDEDUP_VM === '1' })

  say(`[1] ${procs} processes COW libc's text, then madvise(MADV_MERGE) (C, like the RFC's measurement)`)
  const sksmRow = await helper('libc', procs, 'sksm')
  emit({ row: 'sksm-c', ...sksmRow })
  const cowed = sksmRow.afterCow - sksmRow.baseline
  const freedFraction = (sksmRow.afterCow - sksmRow.afterMerge) / cowed

  if (!skip.has('node')) {
    say(`[2] the same with ${nodeProcs} Node processes, each using memdedup (Region.file + protect + sksm.merge)`)
    emit({ row: 'sksm-node', ...(await nodeRow(nodeProcs)) })
  }

  if (!skip.has('ksm')) {
    // "the same savings": 95% of what SKSM freed, as a fraction of the COWed pages
    const target = Math.max(0.5, freedFraction * 0.95)
    for (const [name, knobs, cap] of [['ksm-defaults', defaults, ksmCap], ['ksm-fast', fast, ksmFastCap]]) {
      say(`[3] KSM instead: ${procs} processes MADV_MERGEABLE, ksmd pages_to_scan=${knobs.pagesToScan} sleep_millisecs=${knobs.sleepMs}, ` +
        `until ${(target * 100).toFixed(1)}% of the COWed pages are freed (cap ${cap} s)`)
      const row = await helper('libc', procs, 'ksm', '--pages-to-scan', knobs.pagesToScan, '--sleep-ms', knobs.sleepMs,
        '--cap-s', cap, '--target-fraction', target)
      emit({ row: name, targetFraction: target, ...row })
    }
  }

  if (!skip.has('bulk')) {
    say(`[4] time to savings for ${bulkMib} MiB of duplicates: SKSM`)
    emit({ row: 'bulk-sksm', ...(await helper('bulk', bulkMib, 'sksm')) })
    for (const [name, knobs, cap] of [['bulk-ksm-defaults', defaults, ksmCap], ['bulk-ksm-fast', fast, ksmFastCap]]) {
      say(`[4] the same with ksmd pages_to_scan=${knobs.pagesToScan} sleep_millisecs=${knobs.sleepMs} (cap ${cap} s)`)
      emit({ row: name, ...(await helper('bulk', bulkMib, 'ksm', '--pages-to-scan', knobs.pagesToScan, '--sleep-ms', knobs.sleepMs, '--cap-s', cap)) })
    }
  }
  say('done')
}

await main()
