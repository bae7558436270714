/**
 * Kernel counters that prove (or disprove) savings: /proc/vmstat, smaps_rollup, status, and per
 * process what KSM merged (ksm_stat) next to its memory and page tables (what `memdedup top` shows).
 * A file that cannot be read (no such pid) is a SyscallError, like every kernel failure here.
 *
 * @module
 */
import fs from 'node:fs'
import os from 'node:os'
import { fsCall, SyscallError } from './errors.ts'
import { available as ksmAvailable, readKsmStat, stats as ksmStats, type KsmStats } from './ksm.ts'
import { pageSize } from './native.ts'
import { readOptions, validateBoolean, validatePid } from './validate.ts'

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

/** One process as `memdedup top` shows it: KSM's accounting, memory and page tables, all from /proc/<pid>. */
export interface ProcessStats {
  pid: number
  /** /proc/<pid>/cmdline joined by spaces, or `[comm]` when it is empty. */
  command: string
  /** ksm_stat ksm_merging_pages (pages of this process KSM or SKSM merged; /proc/<pid>/ksm_merging_pages before 6.1's ksm_stat). */
  ksmMergingPages: number
  /** ksm_stat ksm_zero_pages (pages merged with the zero page, use_zero_pages); null where the kernel does not count them. */
  ksmZeroPages: number | null
  /** ksm_stat ksm_rmap_items: pages ksmd is tracking for this process. */
  ksmRmapItems: number | null
  /** ksm_stat ksm_process_profit, bytes (merged pages minus rmap item overhead; may be negative). */
  ksmProcessProfit: number | null
  /** PR_SET_MEMORY_MERGE is set (ksm_stat ksm_merge_any); null where the kernel does not say. */
  ksmMergeAny: boolean | null
  /** Some VMA of this process is mergeable (ksm_stat ksm_mergeable); null where the kernel does not say. */
  ksmMergeable: boolean | null
  /** smaps_rollup Rss, Pss and Anonymous, bytes. */
  rss: number
  pss: number
  anonymous: number
  /** Page-table memory (status VmPTE), bytes. */
  pageTableBytes: number
}

/** A process whose /proc files could not be read: another user's (EACCES, EPERM), or a kernel error. */
export interface UnreadableProcess {
  pid: number
  command: string
  /** The errno name: 'EACCES', 'EPERM', … */
  error: string
}

const gone = (error: unknown) => ['ENOENT', 'ESRCH'].includes((error as SyscallError).code)

function readText(path: string): string {
  return fsCall('open', path, () => fs.readFileSync(path, 'utf8'))
}

function commandOf(pid: number): string {
  const argv = readText(`/proc/${pid}/cmdline`).split('\0')
  while (argv.length > 0 && argv[argv.length - 1] === '') argv.pop()
  if (argv.length > 0) return argv.join(' ')
  return `[${readText(`/proc/${pid}/comm`).trimEnd()}]`
}

function ksmOf(pid: number): Pick<ProcessStats, 'ksmMergingPages' | 'ksmZeroPages' | 'ksmRmapItems' | 'ksmProcessProfit' | 'ksmMergeAny' | 'ksmMergeable'> {
  // ksm_stat is 6.1+; a kernel without CONFIG_KSM has neither file.
  const fields: Record<string, number | boolean | undefined> = readKsmStat(pid) ?? {}
  const number = (name: string) => (typeof fields[name] === 'number' ? (fields[name] as number) : null)
  const flag = (name: string) => (typeof fields[name] === 'boolean' ? (fields[name] as boolean) : null)
  let merging = number('ksmMergingPages')
  if (merging === null) {
    try {
      merging = Number(readText(`/proc/${pid}/ksm_merging_pages`).trim()) || 0
    } catch (error) {
      if ((error as SyscallError).code !== 'ENOENT' || !fs.existsSync(`/proc/${pid}`)) throw error
      merging = 0 // CONFIG_KSM=n: nothing merged
    }
  }
  return {
    ksmMergingPages: merging,
    ksmZeroPages: number('ksmZeroPages'),
    ksmRmapItems: number('ksmRmapItems'),
    ksmProcessProfit: number('ksmProcessProfit'),
    ksmMergeAny: flag('ksmMergeAny'),
    ksmMergeable: flag('ksmMergeable'),
  }
}

/**
 * KSM accounting, memory and page-table bytes of one process. A process that has exited is a
 * SyscallError ENOENT (or ESRCH while it is exiting); a kernel thread, which has no memory, is
 * ESRCH; another user's process EACCES.
 */
export function process(pid: number | 'self' = 'self'): ProcessStats {
  const id = validatePid(pid)
  const numericPid = id === 'self' ? Number(fsCall('readlink', '/proc/self', () => fs.readlinkSync('/proc/self'))) : id
  // smaps_rollup first: a process without memory (a kernel thread, or one exiting) has no mm,
  // and the kernel answers its read with ESRCH, the error this throws for it.
  const rollup = smapsRollup(numericPid)
  const statusFields = status(numericPid)
  return {
    pid: numericPid,
    command: commandOf(numericPid),
    ...ksmOf(numericPid),
    rss: rollup.Rss ?? 0,
    pss: rollup.Pss ?? 0,
    anonymous: rollup.Anonymous ?? 0,
    pageTableBytes: statusFields.VmPTE ?? 0,
  }
}

/** Whether KSM has anything to do with this process (ksm_stat answered and shows any activity or opt-in). */
function usesKsm(pid: number): boolean {
  const k = ksmOf(pid)
  return k.ksmMergingPages > 0 || (k.ksmZeroPages ?? 0) > 0 || (k.ksmRmapItems ?? 0) > 0 || k.ksmMergeAny === true || k.ksmMergeable === true
}

/**
 * Every process with memory, read once each: processes that exit while they are read are left
 * out, processes whose files cannot be read (another user's) are returned as UnreadableProcess. By default only
 * processes KSM knows about (opted in, tracked or merged); `{ all: true }` lists every one
 * (smaps_rollup walks each page table, so that costs more).
 */
export function processes(options?: { all?: boolean }): (ProcessStats | UnreadableProcess)[] {
  const opts = readOptions(options, 'options', ['all'])
  const all = opts.all === undefined ? false : validateBoolean(opts.all, 'options.all')
  const out: (ProcessStats | UnreadableProcess)[] = []
  for (const entry of fsCall('scandir', '/proc', () => fs.readdirSync('/proc'))) {
    if (!/^[1-9]\d*$/.test(entry)) continue
    const pid = Number(entry)
    try {
      if (!all && !usesKsm(pid)) continue
      out.push(process(pid))
    } catch (error) {
      if (gone(error)) continue
      // Not ours to read (EACCES, EPERM), or the kernel failed this one file: a row that says so.
      if (!(error instanceof SyscallError)) throw error
      let command = `[pid ${pid}]`
      try {
        command = commandOf(pid)
      } catch {
        // unreadable or gone too: keep the placeholder
      }
      out.push({ pid, command, error: (error as SyscallError).code })
    }
  }
  return out
}

/** System-wide counters `memdedup stats` prints: KSM's sysfs (null without CONFIG_KSM) and /proc/vmstat's. */
export interface SystemStats {
  kernelRelease: string
  pageSize: number
  ksm: KsmStats | null
  /** ksm general_profit, bytes (6.1+); null where the kernel does not report it. */
  generalProfit: number | null
  /** pages_sharing × page size: memory KSM saves, bytes (null without KSM). */
  savedBytes: number | null
  nrAnonPages: number
  nrPageTablePages: number
}

/** The machine's counters: ksmd's sysfs files, general_profit, the memory KSM saves, nr_anon_pages and nr_page_table_pages (what `memdedup stats` prints). */
export function system(): SystemStats {
  const vm = vmstat()
  const k = ksmAvailable() ? ksmStats() : null
  return {
    kernelRelease: os.release(),
    pageSize,
    ksm: k,
    generalProfit: typeof k?.generalProfit === 'number' ? k.generalProfit : null,
    savedBytes: k ? k.pagesSharing * pageSize : null,
    nrAnonPages: vm.nr_anon_pages ?? 0,
    nrPageTablePages: vm.nr_page_table_pages ?? 0,
  }
}
