// npm run bench:merge (issue 21): what MADV_MERGE costs per page against what a merge must cost at
// least, in the same boot on the same data (bench/c/merge_limit.cc): the user-space limit (read the
// page and its twin, XXH64, memcmp), MADV_MERGE for runs of 1, 64 and 4096 pages, and ksmd's CPU per
// page, each for duplicate and unique content, THP-backed and not. The ratios are the point:
// "merging costs what it costs" is shown, or not, by MADV_MERGE / limit. Runs on the perf kernel
// flavour (`npm run bench:merge`); on the debug one (`npm run vm -- node bench/merge.mjs`) the
// difference is the debug options' tax.
//   node bench/merge.mjs [--pages=N] [--json] [--compile-only]
import fs from 'node:fs'
import os from 'node:os'
import { parseArgs } from 'node:util'
import { compileC, runC } from './harness.mjs'
import { inVm } from '../test/helpers/env.mjs'
import { features } from '../dist/lib/index.js'

const { values } = parseArgs({ options: { pages: { type: 'string' }, json: { type: 'boolean', default: false }, 'compile-only': { type: 'boolean', default: false } } })
// In the VM the checkout is read-only: `npm run bench:merge` compiles on the host first.
const binary = compileC('c/merge_limit.cc')
if (values['compile-only']) {
  console.log(binary)
  process.exit(0)
}
// 32 MiB under TCG (~18x slower than the host), 64 MiB elsewhere; a multiple of the longest run.
const pages = Number(values.pages ?? (inVm ? 8192 : 16384))
const runs = [1, 64, 4096]
const f = features()
if (!f.sksm) {
  console.error(`bench:merge: kernel ${os.release()} has no SKSM (madvise(MADV_MERGE) is EINVAL); run it in the lab VM (npm run bench:merge)`)
  process.exit(2)
}
const ksmdPid = fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d)).find((pid) => {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'ksmd'
  } catch (error) {
    if (error.code === 'ENOENT' || error.code === 'ESRCH') return false // exited while listed
    throw error
  }
})
const root = process.getuid?.() === 0

const rows = []
for (const thp of [false, true]) {
  for (const content of ['dup', 'unique']) {
    const args = (what, ...more) => [what, content, thp ? 'thp' : 'nothp', pages, ...more]
    const limit = runC(binary, args('limit', 0, 5))
    for (const run of runs) {
      const merge = runC(binary, args('merge', run, 3))
      rows.push({ content, thp, thpPages: merge.thpPages, run, what: 'MADV_MERGE', nsPerPage: merge.nsPerPage, limitNsPerPage: limit.nsPerPage })
    }
    if (root && ksmdPid) {
      const ksmd = runC(binary, args('ksmd', 0, 1, ksmdPid))
      rows.push({ content, thp, thpPages: ksmd.thpPages, run: null, what: content === 'dup' ? 'ksmd CPU per merged page' : 'ksmd CPU per scanned page', nsPerPage: ksmd.nsPerPage, limitNsPerPage: limit.nsPerPage, wallMs: ksmd.wallMs })
    }
  }
}
for (const row of rows) row.ratio = Number((row.nsPerPage / row.limitNsPerPage).toFixed(1))

// One MADV_MERGE over the same pages in 1, 100 and 10,000 vmas: the cost per page should not grow
// with the vma count (issue 21: the rmap list walk restarted per vma, lru_add_drain_all() per vma).
const vmaPages = 10_000
const vmaRows = []
for (const content of ['dup', 'unique']) {
  for (const vmas of [1, 100, 10_000]) {
    const result = runC(binary, ['vmas', content, 'nothp', vmaPages, vmas, 3])
    vmaRows.push({ content, vmas, nsPerPage: result.nsPerPage })
  }
  const one = vmaRows.find((r) => r.content === content && r.vmas === 1)
  for (const row of vmaRows.filter((r) => r.content === content)) row.ratioToOneVma = Number((row.nsPerPage / one.nsPerPage).toFixed(2))
}

// fork() of a process holding `pages` merged pages against the same number of private ones: what
// giving the child an rmap_item per inherited KSM page (kernel patch 0055) adds to a fork.
const forkRows = ['unique', 'dup'].map((content) => ({ content, nsPerFork: runC(binary, ['fork', content, 'nothp', pages, 0, 9]).nsPerFork }))
for (const row of forkRows) row.ratioToPrivate = Number((row.nsPerFork / forkRows[0].nsPerFork).toFixed(2))

// 1, 2 and 4 processes merging their own twins at once (issue 21, "scale with CPUs"): wall time per
// page of all of them, against one process. 1.0x at N processes would be N times the throughput;
// N.0x, fully serialised (ksm_thread_mutex).
const procRows = []
for (const content of ['dup', 'unique']) {
  for (const procs of [1, 2, 4]) {
    procRows.push({ content, procs, nsPerPage: runC(binary, ['procs', content, 'nothp', pages / 4, procs, 3]).nsPerPage })
  }
  const one = procRows.find((r) => r.content === content && r.procs === 1)
  for (const row of procRows.filter((r) => r.content === content)) row.speedup = Number((one.nsPerPage / row.nsPerPage).toFixed(2))
}

if (values.json) {
  console.log(JSON.stringify({ kernel: os.release(), cpus: os.availableParallelism(), pages, rows, vmaPages, vmaRows, forkRows, procRows }))
} else {
  const us = (ns) => (ns / 1000).toFixed(2)
  console.log(`\nbench:merge on ${os.release()}${inVm ? ' (lab VM, TCG)' : ''}: ${pages} pages (${(pages * 4096) / 2 ** 20} MiB) a case, medians\n`)
  console.log('| content | THP | run (pages) | what | µs per page | limit µs per page | ratio to the limit |')
  console.log('|---|---|---|---|---|---|---|')
  for (const r of rows) {
    const thp = r.thp ? `yes (${r.thpPages} pages THP)` : 'no'
    console.log(`| ${r.content} | ${thp} | ${r.run ?? '-'} | ${r.what} | ${us(r.nsPerPage)} | ${us(r.limitNsPerPage)} | ${r.ratio}x |`)
  }
  console.log(`\nOne MADV_MERGE of ${vmaPages} pages (${((vmaPages * 4096) / 2 ** 20).toFixed(1)} MiB) split into vmas, medians\n`)
  console.log('| content | vmas | µs per page | ratio to 1 vma |')
  console.log('|---|---|---|---|')
  for (const r of vmaRows) console.log(`| ${r.content} | ${r.vmas} | ${us(r.nsPerPage)} | ${r.ratioToOneVma}x |`)
  console.log(`\nfork() + exit of a process holding ${pages} pages, medians of 9\n`)
  console.log('| pages | µs per fork | ratio to private pages |')
  console.log('|---|---|---|')
  for (const r of forkRows) console.log(`| ${r.content === 'dup' ? 'merged (KSM pages)' : 'private'} | ${us(r.nsPerFork)} | ${r.ratioToPrivate}x |`)
  console.log(`\nN processes MADV_MERGE ${pages / 4} pages each at once, ${os.availableParallelism()} CPUs, medians of 3: wall µs per page of all\n`)
  console.log('| content | processes | µs per page | throughput to 1 process |')
  console.log('|---|---|---|---|')
  for (const r of procRows) console.log(`| ${r.content} | ${r.procs} | ${us(r.nsPerPage)} | ${r.speedup}x |`)
  if (!root || !ksmdPid) console.log(`\n(ksmd rows skipped: ${!root ? 'not root (its sysfs knobs need it)' : 'no ksmd thread'})`)
}
