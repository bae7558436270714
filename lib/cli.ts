#!/usr/bin/env node
// memdedup command line: what this kernel offers and what it is merging right now.
import { features } from './features.ts'
import * as ksm from './ksm.ts'
import * as stats from './stats.ts'

const usage = `usage: memdedup <command> [--json]

commands:
  probe    which deduplication and write-tracking features this kernel offers
  stats    KSM counters (/sys/kernel/mm/ksm), this system's anonymous pages and KSM savings
`

function table(rows: [string, unknown][]): string {
  const width = Math.max(...rows.map(([k]) => k.length))
  return rows.map(([k, v]) => `${k.padEnd(width)}  ${String(v)}`).join('\n')
}

function main(argv: string[]): number {
  const json = argv.includes('--json')
  const command = argv.find((a) => !a.startsWith('-'))
  if (command === 'probe') {
    const f = features()
    console.log(json ? JSON.stringify(f, null, 2) : table(Object.entries(f)))
    return 0
  }
  if (command === 'stats') {
    const f = features()
    const vm = stats.vmstat()
    const out: Record<string, unknown> = { kernelRelease: f.kernelRelease, nrAnonPages: vm.nr_anon_pages }
    if (f.ksm) Object.assign(out, ksm.stats())
    if (json) console.log(JSON.stringify(out, null, 2))
    else {
      console.log(table(Object.entries(out)))
      if (f.ksm) {
        const s = ksm.stats()
        console.log(`\nKSM saves ${(((s.pagesSharing ?? 0) * f.pageSize) / 2 ** 20).toFixed(1)} MiB (pages_sharing × page size)`)
      }
    }
    return 0
  }
  process.stderr.write(usage)
  return command === undefined || command === 'help' || argv.includes('--help') ? 0 : 2
}

process.exitCode = main(process.argv.slice(2))
