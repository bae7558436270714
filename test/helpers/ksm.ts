// Shared helpers for tests that drive KSM (ksmd sysfs knobs, PR_SET_MEMORY_MERGE): save and
// restore what they change, wait for ksmd, prove merges with pagemap PFNs, spawn child scripts.
import fs from 'node:fs'
import path from 'node:path'
import { spawn, type ChildProcess } from 'node:child_process'
import { afterAll, beforeAll, beforeEach } from 'vitest'
import { Region, ksm, pagemap, features, pageSize, type Range } from '../../lib/index.ts'
import type { KsmSettings } from '../../lib/ksm.ts'

import { inVm, ksmSettingsDenied } from './env.mjs'
import { repoRoot } from './dist.mjs'
import { errorCode } from './errors.ts'
export { inVm, ksmSettingsDenied } from './env.mjs'
export { acquireKsmLock, ksmLockTimeoutMs } from './lock.mjs'
import { acquireKsmLock, ksmLockTimeoutMs } from './lock.mjs'
export { ensureDist, repoRoot } from './dist.mjs'

export const ksmSysfs = '/sys/kernel/mm/ksm'
export const fixturesDir = path.join(repoRoot, 'test', 'fixtures')
/** How long to wait for ksmd: below vitest's per-test timeout (60 s host, 600 s VM). */
export const ksmdTimeoutMs = inVm ? 540_000 : 50_000
/** KsmState.until()'s floor: ksmd gets at least this long, whatever the scan count. */
const untilMinMs = inVm ? 20_000 : 2_000

/**
 * ksmd settings that make a full scan take milliseconds on the host: a large batch, no sleep.
 * In the VM ksmd gets a short sleep so it does not starve Node of one of the two vCPUs.
 */
export const fastKsmd: KsmSettings = inVm ? { pagesToScan: 10_000, sleepMillisecs: 5 } : { pagesToScan: 10_000, sleepMillisecs: 0 }

export interface KsmProbe {
  kernelRelease: string
  ksm: boolean
  ksmProcess: boolean
  userfaultfd: boolean
  uffdWpAsync: boolean
  /** /proc/self/ksm_stat exists (6.1+). */
  ksmStat: boolean
  /** /proc/self/pagemap exposes PFNs (needs CAP_SYS_ADMIN): without them no PFN check can fail. */
  pfnsVisible: boolean
}

let probed: KsmProbe | undefined
/**
 * features() plus what these tests additionally need. features() throwing is a bug of lib/, so it
 * fails the test (no fallback that would turn the uffd cases into skips).
 */
export function probe(): KsmProbe {
  if (probed) return probed
  const f = features()
  probed = {
    kernelRelease: f.kernelRelease,
    ksm: f.ksm,
    ksmProcess: f.ksmProcess,
    userfaultfd: f.userfaultfd,
    uffdWpAsync: f.uffdWpAsync,
    ksmStat: fs.existsSync('/proc/self/ksm_stat'),
    pfnsVisible: pfnsVisible(),
  }
  return probed
}

function pfnsVisible(): boolean {
  const page = Region.anonymous(pageSize)
  try {
    page.bytes[0] = 1
    return pagemap.entries(page).pfns[0] !== 0n
  } finally {
    page.close()
  }
}

/**
 * Writes ksmd settings and remembers the value each knob had before the first change, so
 * restore() puts back exactly the original state, `run` included (configure() orders `run`).
 * Also restores this process's PR_SET_MEMORY_MERGE flag.
 */
export class KsmState {
  #original: KsmSettings = {}
  #processMerge: boolean | undefined

  set(settings: KsmSettings): void {
    const previous = ksm.configure(settings)
    for (const [key, value] of Object.entries(previous)) {
      if (!(key in this.#original)) this.#original[key] = value
    }
  }

  /**
   * Remembers knobs that something other than set() will change (a child process writing
   * `run`), so restore() puts them back too.
   */
  remember(...keys: string[]): void {
    const current = ksm.stats()
    for (const key of keys) {
      if (!(key in this.#original) && current[key] !== undefined) this.#original[key] = current[key] as number | string
    }
  }

  /** Remembers PR_GET_MEMORY_MERGE once, before a test changes it. */
  saveProcessMerge(): void {
    if (this.#processMerge === undefined && probe().ksmProcess) this.#processMerge = ksm.process.get()
  }

  /** ksm_functional_tests.c ksm_unmerge(): run=2 stops ksmd and unmerges every KSM page. */
  unmerge(): void {
    this.set({ run: 2 })
  }

  /**
   * ksm_functional_tests.c ksm_merge() / ksm_tests.c ksm_merge_pages(): start ksmd and wait for
   * two full scans (one to record checksums, one to merge), "such that any possible merging happened".
   */
  async merge(): Promise<void> {
    this.set({ run: 1 })
    await this.scans(2)
  }

  /**
   * Polls `condition` while ksmd runs; true once it holds, false once `maxScans` full scans and
   * at least `untilMinMs` have passed without it. Unlike waiting for a number of scans this cannot
   * hang when ksmd goes idle: once no process has mergeable memory left, ksmd drops the last mm
   * and stops counting full scans. The time floor is there because at sleep_millisecs=0 a full
   * scan of a test's few pages takes microseconds: on a loaded host 4 scans passed in under a
   * poll interval while the merge itself took 10-25 ms (the CI flake of deduplicator.test.ts).
   */
  async until(condition: () => boolean, maxScans: number): Promise<boolean> {
    const start = ksm.stats().fullScans
    const started = Date.now()
    const deadline = started + ksmdTimeoutMs
    while (Date.now() < deadline) {
      if (condition()) return true
      if (ksm.stats().fullScans >= start + maxScans && Date.now() - started >= untilMinMs) return condition()
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
    return condition()
  }

  /** ksm_tests.c ksm_do_scan(n) with ksmd already running. */
  async scans(count: number): Promise<void> {
    try {
      await ksm.waitForFullScans(count, { timeoutMs: ksmdTimeoutMs })
    } catch (error) {
      // Usually someone else stopped ksmd or is feeding it a huge region: say who.
      const s = ksm.stats()
      const others = foreignKsmUsers().map((u) => `pid ${u.pid} (${u.command.slice(0, 60)}) ${u.rmapItems} rmap items`)
      ;(error as Error).message += `; now run=${s.run} pages_to_scan=${s.pagesToScan} sleep_millisecs=${s.sleepMillisecs}; other KSM users: ${others.join(', ') || 'none'}`
      throw error
    }
  }

  /** Puts back every knob changed through set() and the PR_SET_MEMORY_MERGE flag. Throws after trying all. */
  restore(): void {
    const errors: unknown[] = []
    if (this.#processMerge !== undefined) {
      try {
        if (ksm.process.get() !== this.#processMerge) ksm.process.set(this.#processMerge)
      } catch (error) {
        errors.push(error)
      }
    }
    const original = this.#original
    this.#original = {}
    if (Object.keys(original).length > 0) {
      try {
        // merge_across_nodes and max_page_sharing only change while no page is shared (else EBUSY).
        const current = ksm.stats()
        const needsEmpty = ['mergeAcrossNodes', 'maxPageSharing'].some((k) => k in original && original[k] !== current[k])
        if (needsEmpty) ksm.configure({ run: 2 })
        ksm.configure(original)
      } catch (error) {
        errors.push(error)
      }
    }
    if (errors.length === 1) throw errors[0]
    if (errors.length > 1) throw new AggregateError(errors, 'restoring KSM state failed')
  }
}

/** Pages of the Region mapping each PFN seen more than once (present pages with a PFN only). */
export function duplicatePfns(region: Region, range?: Range): Map<bigint, number[]> {
  const entries = pagemap.entries(region, range)
  const pages = new Map<bigint, number[]>()
  for (let page = 0; page < entries.length; page++) {
    const pfn = entries.pfns[page]
    if (!entries.present(page) || pfn === 0n) continue
    const list = pages.get(pfn)
    if (list) list.push(page)
    else pages.set(pfn, [page])
  }
  for (const [pfn, list] of pages) if (list.length < 2) pages.delete(pfn)
  return pages
}

/**
 * vm_util-based range_maps_duplicates() of ksm_functional_tests.c: does the range map the same
 * PFN twice? Same PFN for two virtual pages of a private mapping = they were merged.
 */
export function rangeMapsDuplicates(region: Region, range?: Range): boolean {
  return duplicatePfns(region, range).size > 0
}

const KPF_KSM = 21n

/** KPF_KSM of each PFN (/proc/kpageflags, root only), false for PFN 0. */
export function ksmFlags(pfns: Iterable<bigint>): boolean[] {
  const fd = fs.openSync('/proc/kpageflags', 'r')
  try {
    const word = Buffer.alloc(8)
    return Array.from(pfns, (pfn) => {
      if (pfn === 0n) return false
      fs.readSync(fd, word, 0, 8, Number(pfn) * 8)
      return ((word.readBigUInt64LE(0) >> KPF_KSM) & 1n) === 1n
    })
  } finally {
    fs.closeSync(fd)
  }
}

/**
 * Whether KPF_KSM means a KSM page here. Before "fs/proc: fix KPF_KSM reported for all anonymous
 * pages" (July 2026; the lab carries it as 0045) /proc/kpageflags set KPF_KSM on every anonymous
 * page (stable_page_flags() tested `mapping & PAGE_MAPPING_KSM`, which any anon mapping's low bit
 * satisfies), so there only PFN sharing tells a merged page.
 */
let kpfKsmReliable: boolean | undefined
export function kpfKsmWorks(): boolean {
  if (kpfKsmReliable === undefined) {
    using plain = Region.anonymous(pageSize)
    plain.bytes[0] = 1
    kpfKsmReliable = !ksmFlags(pagemap.entries(plain).pfns)[0]
  }
  return kpfKsmReliable
}

/** /proc/self/ksm_stat ksm_merging_pages (ksm_functional_tests.c get_my_merging_pages()). */
export function myMergingPages(): number {
  return ksm.processStats().ksmMergingPages
}

/** /proc/self/ksm_stat ksm_zero_pages (ksm_functional_tests.c get_my_ksm_zero_pages()). */
export function myKsmZeroPages(): number {
  return ksm.processStats().ksmZeroPages ?? 0
}

/**
 * First offset at which the Region's bytes differ from `expected(offset)`, or -1. Reads through
 * /proc/self/mem when the Region is not readable (PROT_NONE), like a debugger would.
 */
export function firstMismatch(region: Region, expected: (offset: number) => number, range?: Range): number {
  const start = range?.offset ?? 0
  const length = range?.length ?? region.length
  let bytes: Uint8Array
  try {
    bytes = region.bytes.subarray(start, start + length)
  } catch (error) {
    // Not writable and readable (PROT_NONE, read-only): no view. Anything else (a closed Region) fails.
    if (errorCode(error) !== 'ERR_REGION_PROTECTION') throw error
    bytes = procMemRead(region.address + BigInt(start), length)
  }
  for (let i = 0; i < length; i++) if (bytes[i] !== expected(start + i)) return start + i
  return -1
}

/** pread of /proc/self/mem (FOLL_FORCE: works on PROT_NONE pages, never faults this process). */
export function procMemRead(address: bigint, length: number): Buffer {
  const fd = fs.openSync('/proc/self/mem', 'r')
  try {
    const out = Buffer.alloc(length)
    const got = fs.readSync(fd, out, 0, length, Number(address))
    if (got !== length) throw new Error(`short read of /proc/self/mem: ${got} of ${length} bytes`)
    return out
  } finally {
    fs.closeSync(fd)
  }
}

/** pwrite of /proc/self/mem: the "ptrace write" of ksm_functional_tests.c test_prot_none(). */
export function procMemWrite(address: bigint, data: Uint8Array): void {
  const fd = fs.openSync('/proc/self/mem', 'r+')
  try {
    const put = fs.writeSync(fd, data, 0, data.length, Number(address))
    if (put !== data.length) throw new Error(`short write to /proc/self/mem: ${put} of ${data.length} bytes`)
  } finally {
    fs.closeSync(fd)
  }
}

export interface KsmUser {
  pid: number
  command: string
  mergingPages: number
  rmapItems: number
}

/**
 * Other processes ksmd is working for or would (rmap items, merged pages, or mergeable memory in /proc/<pid>/ksm_stat):
 * while they exist the global counters (pages_shared, pages_sharing) are not ours alone.
 */
export function foreignKsmUsers(): KsmUser[] {
  const users: KsmUser[] = []
  for (const entry of fs.readdirSync('/proc')) {
    const pid = Number(entry)
    if (!Number.isInteger(pid) || pid === process.pid) continue
    try {
      const stat = ksm.processStats(pid)
      // Mergeable memory ksmd has not scanned yet counts too (ksm_mergeable, ksm_merge_any: 6.13+;
      // undefined before): once ksmd runs, its pages are in the global counters.
      if (stat.ksmRmapItems > 0 || stat.ksmMergingPages > 0 || stat.ksmMergeable === true || stat.ksmMergeAny === true) {
        const command = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim()
        users.push({ pid, command, mergingPages: stat.ksmMergingPages, rmapItems: stat.ksmRmapItems })
      }
    } catch (error) {
      // Exited meanwhile (ENOENT, ESRCH), or another user's process a non-root run may not read.
      if (!['ENOENT', 'ESRCH', 'EACCES', 'EPERM'].includes(errorCode(error) ?? '')) throw error
    }
  }
  return users
}

export interface ChildResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  /** Messages received over the IPC channel (child_process.fork only). */
  messages: unknown[]
  pid: number | undefined
}

/** Collects a child's output, IPC messages and exit status; `onSpawn` sees it while it runs. */
export function collect(child: ChildProcess): Promise<ChildResult> {
  const stdout: Buffer[] = []
  const stderr: Buffer[] = []
  const messages: unknown[] = []
  child.stdout?.on('data', (chunk: Buffer) => stdout.push(chunk))
  child.stderr?.on('data', (chunk: Buffer) => stderr.push(chunk))
  child.on('message', (message) => messages.push(message))
  return new Promise((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (code, signal) =>
      resolve({ code, signal, stdout: Buffer.concat(stdout).toString(), stderr: Buffer.concat(stderr).toString(), messages, pid: child.pid }),
    )
  })
}

/** spawn(node, [script, ...args]) in the repository root: libuv forks, the child execs node. */
export function spawnNode(script: string, args: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<ChildResult> {
  const child = spawn(process.execPath, [script, ...args], { cwd: repoRoot, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  return collect(child)
}

/** Skips the test, by name, unless this process may write /sys/kernel/mm/ksm (env.mjs ksmSettingsDenied()). */
export function skipUnlessKsmSettings(ctx: { skip: (note: string) => never }): void {
  const denied = ksmSettingsDenied()
  if (denied) ctx.skip(denied)
}

/**
 * For tests whose checks hold only while they are ksmd's only user (the exact global counters of
 * ksm_tests.c): waits up to `timeoutMs` for other processes with memory under KSM to go (children
 * of an earlier test exiting), then skips naming them. Other KSM users are a fact of many hosts (a
 * QEMU with mergeable guest RAM, a service with MemoryKSM=yes); in the lab VM there are none, and
 * this skip (it names KSM) fails the run there.
 */
export async function skipUnlessOnlyKsmUser(ctx: { skip: (note: string) => never }, timeoutMs = inVm ? 120_000 : 3_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const users = foreignKsmUsers()
    if (users.length === 0) return
    // Users that outlasted a whole wait before are the host's: no second wait for them.
    if (Date.now() > deadline || users.every((u) => lastingKsmUsers.has(u.pid))) {
      for (const u of users) lastingKsmUsers.add(u.pid)
      // No counts in the reason: one reason for every test it skips.
      const list = users.slice(0, 3).map((u) => `pid ${u.pid} (${u.command.slice(0, 50)})`)
      ctx.skip(`other processes use KSM, so the global counters are not this test's alone: ${list.join(', ')}${users.length > 3 ? ` and ${users.length - 3} more` : ''}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
}
const lastingKsmUsers = new Set<number>()

/**
 * For a describe block that drives ksmd: takes the cross-file KSM lock before its tests (when
 * `needed()`), applies `settings`, and after them restores every knob and releases the lock, even
 * if restoring throws. Returns the block's KsmState for further set()/remember().
 */
export function holdKsmLock(settings?: KsmSettings, needed: () => boolean = () => true): KsmState {
  const state = new KsmState()
  let release: (() => void) | undefined
  // Where ksmd's settings may not be written (not root) there is nothing to hold: a block given
  // `settings` needs them, so each of its tests skips saying so; a block without calls
  // skipUnlessKsmSettings() in the tests that write them.
  if (settings) beforeEach((ctx) => {
    if (needed()) skipUnlessKsmSettings(ctx)
  })
  beforeAll(async () => {
    if (!needed() || ksmSettingsDenied()) return
    release = await acquireKsmLock()
    if (settings) state.set(settings)
  }, ksmLockTimeoutMs + 10_000)
  afterAll(() => {
    try {
      state.restore()
    } finally {
      release?.()
    }
  })
  return state
}
