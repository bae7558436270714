/**
 * KSM: per-range advice (MADV_MERGEABLE/UNMERGEABLE), per-process merging (PR_SET_MEMORY_MERGE),
 * ksmd's sysfs knobs and counters. ksmd merges in the background; see sksm.ts for synchronous.
 *
 * @module
 */
import fs from 'node:fs'
import { native, constants as C } from './native.ts'
import { check, codedError, FeatureUnavailableError, fsCall, parseError, SyscallError } from './errors.ts'
import { resolveSpan, type Range, type Region } from './region.ts'
import { invalidArgType, invalidArgValue, readOptions, validateBoolean, validateInteger, validateObject, validatePid } from './validate.ts'

/** Where ksmd's settings and counters live; writing them needs root. */
export const sysfsDir = '/sys/kernel/mm/ksm'

/** Marks the Region (or a range) MADV_MERGEABLE: ksmd may merge it from now on. */
export function enable(region: Region, range?: Range): void {
  const span = resolveSpan(region, range, 'ksm.enable')
  check(native.madvise(span.address, span.length, C.MADV_MERGEABLE), 'madvise(MADV_MERGEABLE)')
}

/** MADV_UNMERGEABLE: unmerges (breaks COW of) every KSM page in the range and stops merging it. */
export function disable(region: Region, range?: Range): void {
  const span = resolveSpan(region, range, 'ksm.disable')
  check(native.madvise(span.address, span.length, C.MADV_UNMERGEABLE), 'madvise(MADV_UNMERGEABLE)')
}

/** Process-wide KSM (PR_SET_MEMORY_MERGE): every compatible VMA, present and future, and inherited by fork/exec. */
export const process = {
  get(): boolean {
    return check(native.prctlGetMemoryMerge(), 'prctl(PR_GET_MEMORY_MERGE)') === 1
  },
  set(enabled: boolean): void {
    validateBoolean(enabled, 'enabled')
    check(native.prctlSetMemoryMerge(enabled ? 1 : 0), 'prctl(PR_SET_MEMORY_MERGE)')
  },
}

/** /sys/kernel/mm/ksm, typed. Files this version does not know are passed through in `other`. */
export interface KsmStats {
  run: number
  pagesToScan: number
  sleepMillisecs: number
  fullScans: number
  pagesShared: number
  pagesSharing: number
  pagesUnshared: number
  pagesVolatile: number
  pagesScanned?: number
  pagesSkipped?: number
  ksmZeroPages?: number
  generalProfit?: number
  useZeroPages?: number
  mergeAcrossNodes?: number
  maxPageSharing?: number
  stableNodeChains?: number
  stableNodeDups?: number
  stableNodeChainsPruneMillisecs?: number
  smartScan?: number
  advisorMode?: string
  /** Which pages ksmd merges with each other: everyone's (upstream) or one uid's (lab kernel). */
  ksmdScope?: MergeScope
  /** Which pages MADV_MERGE merges with each other (lab kernel): one uid's by default. */
  sksmScope?: MergeScope
  /** THP subpages MADV_MERGE found no twin for and left in their THP, waiting for one (lab kernel). */
  sksmCandidates?: number
  [file: string]: number | string | undefined
}

/**
 * A merge scope (lab kernel, /sys/kernel/mm/ksm/{ksmd,sksm}_scope): pages merge only with pages
 * of the same scope. A merge tells the merging process that its content exists somewhere in the
 * scope, so 'global' lets one user learn another's content (see docs/security.md).
 */
export type MergeScope = 'global' | 'uid'

const camel = (file: string) => file.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase())
const snake = (key: string) => key.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase())

/**
 * Whether this kernel has KSM (CONFIG_KSM: /sys/kernel/mm/ksm exists): the one probe, read by
 * features().ksm, stats.system(), the Deduplicator's merge choice and the CLI.
 */
export function available(): boolean {
  return fs.existsSync(sysfsDir)
}

/** FeatureUnavailableError unless available(). */
export function assertAvailable(): void {
  if (!available()) throw new FeatureUnavailableError('ksm', `${sysfsDir} does not exist (CONFIG_KSM=n)`)
}

function parseValue(text: string): number | string {
  const trimmed = text.trim()
  // advisor_mode prints "[none] scan-time": report the selected one.
  const selected = /\[([^\]]+)\]/.exec(trimmed)
  if (selected) return selected[1]
  return /^-?\d+$/.test(trimmed) ? Number(trimmed) : trimmed
}

/** Every readable file of /sys/kernel/mm/ksm, camelCased (pages_sharing → pagesSharing). */
export function stats(): KsmStats {
  assertAvailable()
  const out: Record<string, number | string> = {}
  for (const file of fsCall('scandir', sysfsDir, () => fs.readdirSync(sysfsDir))) {
    try {
      out[camel(file)] = parseValue(fs.readFileSync(`${sysfsDir}/${file}`, 'utf8'))
    } catch {
      // write-only or vanished file: nothing to report
    }
  }
  return out as KsmStats
}

/** /proc/<pid>/ksm_stat: this process's KSM accounting. */
export interface KsmProcessStats {
  ksmRmapItems: number
  ksmZeroPages: number
  ksmMergingPages: number
  ksmProcessProfit: number
  ksmMergeAny: boolean
  ksmMergeable: boolean
  [field: string]: number | boolean
}

/**
 * /proc/<pid>/ksm_stat of `pid` (6.1+), camelCased: numbers and yes/no flags; a field that is
 * neither is left out. FeatureUnavailableError where the process exists but the file does not
 * (a kernel before 6.1 or without CONFIG_KSM); SyscallError for an unreadable or absent process.
 */
export function processStats(pid: number | 'self' = 'self'): KsmProcessStats {
  const id = validatePid(pid)
  const fields = readKsmStat(id)
  if (fields === undefined) throw new FeatureUnavailableError('ksm', `/proc/${id}/ksm_stat does not exist`)
  return fields
}

/**
 * @internal The one ksm_stat parser (processStats(), stats.process()): undefined where the
 * process exists and the file does not.
 */
export function readKsmStat(pid: number | 'self'): KsmProcessStats | undefined {
  const file = `/proc/${pid}/ksm_stat`
  let text: string
  try {
    text = fsCall('open', file, () => fs.readFileSync(file, 'utf8'))
  } catch (error) {
    if ((error as SyscallError).code === 'ENOENT' && fs.existsSync(`/proc/${pid}`)) return undefined
    throw error
  }
  const out: Record<string, number | boolean> = {}
  for (const line of text.split('\n')) {
    const match = /^(\w+):?\s+(\S+)$/.exec(line)
    if (!match) continue
    const value = match[2]
    if (value === 'yes' || value === 'no') out[camel(match[1])] = value === 'yes'
    else if (/^-?\d+$/.test(value)) out[camel(match[1])] = Number(value)
  }
  return out as KsmProcessStats
}

/** Settings accepted by configure(); each maps to the sysfs file of the same name in snake_case. */
export interface KsmSettings {
  /** 0 stop, 1 run, 2 stop and unmerge everything. */
  run?: 0 | 1 | 2
  pagesToScan?: number
  sleepMillisecs?: number
  useZeroPages?: boolean | 0 | 1
  mergeAcrossNodes?: boolean | 0 | 1
  maxPageSharing?: number
  smartScan?: boolean | 0 | 1
  stableNodeChainsPruneMillisecs?: number
  advisorMode?: 'none' | 'scan-time'
  ksmdScope?: MergeScope
  sksmScope?: MergeScope
  [file: string]: number | string | boolean | undefined
}

/**
 * Writes ksmd settings and returns the previous values of exactly those settings, so a caller
 * (a test) can restore them with configure(previous). `run` is written first when it stops
 * ksmd (some knobs can only change while it is stopped) and last when it starts it.
 */
export function configure(settings: KsmSettings): KsmSettings {
  const opts = validateObject(settings, 'settings', false)
  assertAvailable()
  const entries = Object.entries(opts).filter(([, v]) => v !== undefined)
  for (const [key, value] of entries) {
    if (!/^[a-zA-Z]+$/.test(key) || !fs.existsSync(`${sysfsDir}/${snake(key)}`)) {
      throw invalidArgValue(`settings.${key}`, `is not a KSM setting (no ${sysfsDir}/${snake(key)})`, value)
    }
    if (typeof value === 'number') validateInteger(value, `settings.${key}`, 0)
    else if (typeof value !== 'boolean' && typeof value !== 'string') throw invalidArgType(`settings.${key}`, 'a number, boolean or string', value)
    if (key === 'run' && ![0, 1, 2].includes(value as number)) throw invalidArgValue('settings.run', 'must be 0, 1 or 2', value)
  }
  const previous: KsmSettings = {}
  for (const [key] of entries) {
    const file = `${sysfsDir}/${snake(key)}`
    previous[key] = parseValue(fsCall('read', file, () => fs.readFileSync(file, 'utf8')))
  }
  const rank = ([key, value]: [string, unknown]) => (key !== 'run' ? 1 : value === 1 ? 2 : 0)
  const ordered = entries.sort((a, b) => rank(a) - rank(b))
  for (const [key, value] of ordered) {
    const text = typeof value === 'boolean' ? (value ? '1' : '0') : String(value)
    const file = `${sysfsDir}/${snake(key)}`
    fsCall('write', `${text} to ${file}`, () => fs.writeFileSync(file, text))
  }
  return previous
}

/**
 * Resolves once ksmd has completed `scans` more full scans (ksm_tests.c waits for 2 so every
 * page had a chance to be seen twice: once to enter the unstable tree, once to merge). A scan
 * under way when this is called counts as the first, and memory just made mergeable is queued
 * behind ksmd's cursor: after marking, 3 make sure every page was seen twice. ksmd only scans
 * while some memory is mergeable: with none, this times out (ETIMEDOUT).
 */
export async function waitForFullScans(scans = 2, options?: { timeoutMs?: number; pollMs?: number }): Promise<void> {
  validateInteger(scans, 'scans', 1)
  const opts = readOptions(options, 'options', ['timeoutMs', 'pollMs'])
  const timeoutMs = validateInteger(opts.timeoutMs ?? 60_000, 'options.timeoutMs', 1)
  const pollMs = validateInteger(opts.pollMs ?? 10, 'options.pollMs', 1)
  assertAvailable()
  const file = `${sysfsDir}/full_scans`
  const read = () => {
    // A count that does not parse would compare false forever: it is an error, not "done".
    const text = fsCall('read', file, () => fs.readFileSync(file, 'utf8'))
    const digits = text.trim()
    if (!/^[0-9]+$/.test(digits)) throw parseError(file, text, 'a decimal count')
    return Number(digits)
  }
  const target = read() + scans
  const deadline = Date.now() + timeoutMs
  while (read() < target) {
    if (Date.now() > deadline) {
      // ksmd counts a full scan only while some memory is mergeable: with none it sleeps.
      throw codedError('ETIMEDOUT', scans, timeoutMs)
    }
    await new Promise((resolve) => setTimeout(resolve, pollMs))
  }
}
