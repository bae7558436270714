// Kernel counters that prove (or disprove) savings: /proc/vmstat, smaps_rollup, status.
// A file that cannot be read (no such pid) is a SyscallError, like every kernel failure here.
import fs from 'node:fs'
import { fsCall } from './errors.ts'
import { validatePid } from './validate.ts'

function readKeyValues(path: string, separator: RegExp, scale: (unit: string | undefined) => number): Record<string, number> {
  const out: Record<string, number> = {}
  for (const line of fsCall('open', path, () => fs.readFileSync(path, 'utf8')).split('\n')) {
    const match = separator.exec(line)
    if (match) out[match[1]] = Number(match[2]) * scale(match[3])
  }
  return out
}

const kB = (unit: string | undefined) => (unit === 'kB' ? 1024 : 1)

/** /proc/vmstat: nr_anon_pages, nr_free_pages, … (page counts and event counters). */
export function vmstat(): Record<string, number> {
  return readKeyValues('/proc/vmstat', /^(\S+)\s+(\d+)$/, () => 1)
}

/** /proc/<pid>/smaps_rollup in bytes: Rss, Pss, Anonymous, Swap, … */
export function smapsRollup(pid: number | 'self' = 'self'): Record<string, number> {
  return readKeyValues(`/proc/${validatePid(pid)}/smaps_rollup`, /^(\w+):\s+(\d+)\s*(kB)?$/, kB)
}

/** /proc/<pid>/status numeric fields, memory ones in bytes: VmRSS, VmPTE, RssAnon, … */
export function status(pid: number | 'self' = 'self'): Record<string, number> {
  return readKeyValues(`/proc/${validatePid(pid)}/status`, /^(\w+):\s+(\d+)\s*(kB)?$/, kB)
}

/** /proc/meminfo in bytes: MemTotal, MemFree, AnonPages, … */
export function meminfo(): Record<string, number> {
  return readKeyValues('/proc/meminfo', /^(\w+):\s+(\d+)\s*(kB)?$/, kB)
}

/** Page table memory of this process (VmPTE), bytes. */
export function pageTableBytes(pid: number | 'self' = 'self'): number {
  return status(pid).VmPTE ?? 0
}
