/**
 * The deduplicator for other processes: user space doing ksmd's job for programs that know
 * nothing of memdedup. Each pass, per target process: PAGEMAP_SCAN of its pagemap finds the pages
 * present and those written since the last pass (soft-dirty, cleared again through clear_refs);
 * a page unwritten for `stablePasses` passes is hashed through /proc/<pid>/mem (nothing pinned);
 * a TwinIndex per security domain counts who holds each content; and pages whose content another
 * page of the same domain holds are merged with process_madvise(MADV_MERGE) (lab kernel patch
 * 0052), which compares the bytes itself. A written page is forgotten until it is stable again.
 *
 * Security: merging reveals content across the processes merged (a write to a merged page takes
 * longer). By default pages meet only within one effective uid (`scope: 'uid'`), the kernel's
 * own merge scope for remote merges; `scope: 'global'` is the explicit opt-out.
 *
 * @module
 */
import fs from 'node:fs'
import path from 'node:path'
import { codedError, FeatureUnavailableError, parseError } from './errors.ts'
import { features } from './features.ts'
import { pageSize } from './native.ts'
import { PageCategory } from './pagemap.ts'
import { TargetProcess, type Mapping } from './remote.ts'
import { TwinIndex } from './twin_index.ts'
import { invalidArgType, outOfRange, readOptions, validateBoolean, validateInteger, validateOneOf } from './validate.ts'

/** What the daemon works on and how. */
export interface DaemonOptions {
  /** Processes by pid. */
  pids?: readonly number[]
  /** cgroup v2 directories: every process in them or their descendants, read again each pass. */
  cgroups?: readonly string[]
  /** Every process that opted in to KSM (PR_SET_MEMORY_MERGE or MADV_MERGEABLE areas): ksmd's own population. */
  optedIn?: boolean
  /** Passes a page must stay unwritten before it is hashed and may merge (default 2, 1 … 255). */
  stablePasses?: number
  /** Which pages may meet: 'uid' (default; targets with the same effective uid) or 'global' (the kernel then merges across uids only with sksm_scope=global as well). */
  scope?: 'uid' | 'global'
  /** 'sksm' (default): process_madvise(MADV_MERGE); 'none': a dry run that only counts. */
  merge?: 'sksm' | 'none'
  /** Pages hashed per pass at most, over all targets (default 262144 = 1 GiB). */
  maxHashPerPass?: number
}

/** One target's failure in a pass (it is dropped: a later pass opens it again if it is still a target). */
export interface DaemonFailure {
  pid: number
  /** The error's code ('EACCES', 'ESRCH', 'ERR_TARGET_EXITED', …). */
  code: string
  message: string
}

/** What one pass did. */
export interface DaemonPassReport {
  /** Date.now() when the pass began. */
  time: number
  /** Targets worked on this pass. */
  targets: number
  /** Of those, targets opened this pass (soft-dirty cleared: their first scan is the next pass's). */
  newTargets: number
  /** Pages present in the targets' private anonymous memory. */
  presentPages: number
  /** Present pages written since the last pass. */
  writtenPages: number
  /** Pages hashed this pass (stable for stablePasses passes and not hashed yet). */
  hashedPages: number
  /** Pages given to MADV_MERGE this pass (in a dry run: that would have been). */
  mergedPages: number
  /** Pages merged earlier and written since (copy-on-write unmerged them). */
  rewrittenPages: number
  /** Targets that failed this pass. */
  failures: DaemonFailure[]
  /** Wall time of the pass. */
  durationMs: number
  /** CPU time of this process during the pass (user + system). */
  cpuMs: number
}

/** Per page: passes unwritten (0 … 255) and where it stands. */
const enum PageState { Unhashed = 0, Indexed = 1, Merged = 2 }

/** One private anonymous mapping of a target, followed page by page. */
interface Area {
  start: bigint
  pages: number
  /** Per page: the last pass that saw it written or absent (it may merge stablePasses passes later). */
  changed: Uint32Array
  state: Uint8Array
  hashes: BigUint64Array
  /** Pages whose state is not Unhashed: while 0, a change needs no look at `state`. */
  indexed: number
  /** Page ranges [from, to) present and unwritten at the last scan: where #hash looks. */
  quiet: number[]
}

interface Target {
  pid: number
  process: TargetProcess
  scope: string
  areas: Map<string, Area>
}

/** A holder of a content that had no twin yet: merged when the twin comes. */
interface Waiting {
  target: Target
  area: Area
  page: number
}

interface Domain {
  index: TwinIndex
  waiting: Map<bigint, Waiting>
}

/** Memory the daemon follows: private, writable, anonymous (heap and [anon:…] included). */
function followed(m: Mapping): boolean {
  return m.perms.startsWith('rw') && m.perms.endsWith('p') && m.inode === 0 &&
    (m.path === '' || m.path === '[heap]' || m.path.startsWith('[anon:'))
}

/** The effective uid of a process (/proc/<pid>/status, the second Uid: field). */
function effectiveUid(pid: number): number {
  const file = `/proc/${pid}/status`
  const text = fs.readFileSync(file, 'utf8')
  const uid = /^Uid:\s+\d+\s+(\d+)/m.exec(text)
  if (!uid) throw parseError(file, text, 'a line "Uid: real effective saved fs"')
  return Number(uid[1])
}

/** Errors that say the target process is gone. */
const gone = new Set(['ESRCH', 'ENOENT', 'ERR_TARGET_EXITED'])

function errorCode(error: unknown): string {
  return (error as { code?: unknown }).code?.toString() ?? 'ERR_MEMDEDUP_DAEMON'
}

/** Pids of a cgroup v2 directory and its descendants (a group removed meanwhile has none). */
function cgroupPids(dir: string): number[] {
  const pids: number[] = []
  const visit = (d: string) => {
    let procs: string
    let children: fs.Dirent[]
    try {
      procs = fs.readFileSync(path.join(d, 'cgroup.procs'), 'utf8')
      children = fs.readdirSync(d, { withFileTypes: true })
    } catch (error) {
      if (errorCode(error) === 'ENOENT' || errorCode(error) === 'ENODEV') return
      throw error
    }
    for (const line of procs.split('\n')) if (line) pids.push(Number(line))
    for (const entry of children) if (entry.isDirectory()) visit(path.join(d, entry.name))
  }
  visit(dir)
  return pids
}

/** Whether a process opted in to KSM: ksm_stat's ksm_mergeable (6.10+), else an 'mg' area in smaps. */
function optedIn(pid: number): boolean {
  const stat = fs.readFileSync(`/proc/${pid}/ksm_stat`, 'utf8')
  const mergeable = /^ksm_mergeable:\s*(\w+)/m.exec(stat)
  if (mergeable) return mergeable[1] === 'yes'
  return /^VmFlags:.*\bmg\b/m.test(fs.readFileSync(`/proc/${pid}/smaps`, 'utf8'))
}

/** Readable procfs files of a process that may be gone: false when it is. */
function alive(read: () => boolean): boolean {
  try {
    return read()
  } catch (error) {
    const code = errorCode(error)
    if (code === 'ENOENT' || code === 'ESRCH' || code === 'EACCES' || code === 'EPERM') return false
    throw error
  }
}

/**
 * A deduplicator of other processes (see the module's description). Create it, then call pass()
 * (one pass) or run() (passes on a timer until stop()); close() releases every target.
 */
export class Daemon {
  readonly #pids: readonly number[]
  readonly #cgroups: readonly string[]
  readonly #optedIn: boolean
  readonly #stablePasses: number
  readonly #scope: 'uid' | 'global'
  readonly #merge: 'sksm' | 'none'
  readonly #maxHash: number
  readonly #targets = new Map<number, Target>()
  readonly #domains = new Map<string, Domain>()
  readonly #exited = new Set<number>()
  #timer: NodeJS.Timeout | null = null
  #closed = false
  /** Passes begun (Area.changed counts in them). */
  #pass = 1

  constructor(options?: DaemonOptions) {
    const o = readOptions(options, 'options', ['pids', 'cgroups', 'optedIn', 'stablePasses', 'scope', 'merge', 'maxHashPerPass'])
    // Arrays copied once, item by item (a Proxy or getter answers once).
    const list = <T>(value: unknown, name: string, item: (v: unknown, n: string) => T): T[] => {
      if (value === undefined) return []
      if (!Array.isArray(value)) throw invalidArgType(name, 'an array', value)
      return Array.from(value as unknown[], (v, i) => item(v, `${name}[${i}]`))
    }
    this.#pids = list(o.pids, 'options.pids', (v, n) => validateInteger(v, n, 1, 2 ** 22))
    this.#cgroups = list(o.cgroups, 'options.cgroups', (v, n) => {
      if (typeof v !== 'string' || v === '') throw invalidArgType(n, 'a cgroup directory path (a non-empty string)', v)
      return v
    })
    this.#optedIn = o.optedIn === undefined ? false : validateBoolean(o.optedIn, 'options.optedIn')
    this.#stablePasses = o.stablePasses === undefined ? 2 : validateInteger(o.stablePasses, 'options.stablePasses', 1, 255)
    this.#scope = o.scope === undefined ? 'uid' : validateOneOf(o.scope, 'options.scope', ['uid', 'global'] as const)
    this.#merge = o.merge === undefined ? 'sksm' : validateOneOf(o.merge, 'options.merge', ['sksm', 'none'] as const)
    this.#maxHash = o.maxHashPerPass === undefined ? 262144 : validateInteger(o.maxHashPerPass, 'options.maxHashPerPass', 1, 2 ** 30)
    if (!features().softDirty) {
      throw new FeatureUnavailableError('softDirty', 'the kernel does not track soft-dirty pages (CONFIG_MEM_SOFT_DIRTY): the daemon cannot see which pages a process writes')
    }
    if (this.#merge === 'sksm' && !features().remoteMerge) {
      throw new FeatureUnavailableError('remoteMerge', "process_madvise() does not take MADV_MERGE here (lab kernel patch 0052); use { merge: 'none' } for a dry run")
    }
  }

  /** Pids of the targets followed now. */
  get targets(): number[] {
    return [...this.#targets.keys()]
  }

  /** Whether run() is active. */
  get running(): boolean {
    return this.#timer !== null
  }

  /** One pass over every target (see DaemonPassReport). */
  pass(): DaemonPassReport {
    if (this.#closed) throw codedError('ERR_DAEMON_CLOSED', 'pass')
    this.#pass++
    const time = Date.now()
    const cpu0 = process.cpuUsage()
    const report: DaemonPassReport = { time, targets: 0, newTargets: 0, presentPages: 0, writtenPages: 0, hashedPages: 0, mergedPages: 0, rewrittenPages: 0, failures: [], durationMs: 0, cpuMs: 0 }
    const wanted = this.#wanted()
    for (const [pid, target] of this.#targets) if (!wanted.has(pid)) this.#drop(target)
    const merges = new Map<Target, Array<{ start: bigint; length: number }>>()
    let hashBudget = this.#maxHash
    for (const pid of wanted) {
      let target: Target | undefined
      try {
        target = this.#targets.get(pid)
        // A new target's soft-dirty bits were just cleared: its first scan is the next pass's.
        if (!target) {
          this.#open(pid)
          report.targets++
          report.newTargets++
          continue
        }
        this.#scan(target, report)
        hashBudget = this.#hash(target, report, hashBudget, merges)
        report.targets++
      } catch (error) {
        report.failures.push({ pid, code: errorCode(error), message: (error as Error).message })
        // Alive, the target is opened again next pass: after an exec its pagemap and mem still name
        // the old mm (ESRCH, EIO). A pid given by number whose process exited is not tried again
        // (the number may come back as another process); members of cgroups and opted-in
        // processes are listed anew each pass.
        const exited = target ? !target.process.alive() : gone.has(errorCode(error))
        // Pages of it queued by a twin earlier in this pass go with it: it is closed now.
        if (target) {
          merges.delete(target)
          this.#drop(target)
        }
        if (exited) this.#exited.add(pid)
      }
    }
    for (const [target, ranges] of merges) {
      try {
        report.mergedPages += this.#mergeRanges(target, ranges)
      } catch (error) {
        report.failures.push({ pid: target.pid, code: errorCode(error), message: (error as Error).message })
        this.#drop(target)
      }
    }
    const cpu = process.cpuUsage(cpu0)
    report.cpuMs = (cpu.user + cpu.system) / 1000
    report.durationMs = Date.now() - time
    return report
  }

  /**
   * Passes every `intervalMs` (default 1000) until stop() or close(), each reported to `onPass`.
   * With `maxIntervalMs` above `intervalMs`, each idle pass (no target new, nothing hashed, merged
   * or rewritten after a merge, no failure: only hot pages written) doubles the wait up to
   * `maxIntervalMs`, and any activity brings it back to `intervalMs`, as Deduplicator.run() does:
   * a merged, steady fleet costs a pass per `maxIntervalMs`. `cpuBudget` (0 < b <= 1, default 1)
   * stretches the wait so that the passes' CPU stays under that share of one CPU.
   */
  run(options?: { intervalMs?: number; maxIntervalMs?: number; cpuBudget?: number; onPass?: (report: DaemonPassReport) => void }): void {
    const o = readOptions(options, 'options', ['intervalMs', 'maxIntervalMs', 'cpuBudget', 'onPass'])
    const interval = o.intervalMs === undefined ? 1000 : validateInteger(o.intervalMs, 'options.intervalMs', 1, 2 ** 31 - 1)
    const maxInterval = o.maxIntervalMs === undefined ? interval : validateInteger(o.maxIntervalMs, 'options.maxIntervalMs', interval, 2 ** 31 - 1)
    const budget = o.cpuBudget ?? 1
    if (typeof budget !== 'number') throw invalidArgType('options.cpuBudget', 'of type number', budget)
    if (!(budget > 0 && budget <= 1)) throw outOfRange('options.cpuBudget', '> 0 and <= 1', budget)
    const onPass = o.onPass
    if (onPass !== undefined && typeof onPass !== 'function') throw invalidArgType('options.onPass', 'a function', onPass)
    if (this.#closed) throw codedError('ERR_DAEMON_CLOSED', 'run')
    if (this.#timer) throw codedError('ERR_DAEMON_RUNNING')
    let wait = interval
    const tick = () => {
      const report = this.pass()
      const idle = report.newTargets + report.hashedPages + report.mergedPages + report.rewrittenPages + report.failures.length === 0
      wait = idle ? Math.min(maxInterval, wait * 2) : interval
      ;(onPass as ((report: DaemonPassReport) => void) | undefined)?.(report)
      if (!this.#timer) return
      this.#timer = setTimeout(tick, Math.max(wait, Math.ceil(report.cpuMs / budget) - report.durationMs))
    }
    this.#timer = setTimeout(tick, 0)
  }

  /** Ends run() after the pass in progress (if any). */
  stop(): void {
    if (this.#timer) clearTimeout(this.#timer)
    this.#timer = null
  }

  /** Stops and releases every target and index. Idempotent. */
  close(): void {
    this.stop()
    for (const target of this.#targets.values()) target.process.close()
    this.#targets.clear()
    for (const domain of this.#domains.values()) domain.index.close()
    this.#domains.clear()
    this.#closed = true
  }

  /** The pids to follow this pass (never this process). */
  #wanted(): Set<number> {
    const pids = new Set<number>(this.#pids.filter((pid) => !this.#exited.has(pid)))
    for (const dir of this.#cgroups) for (const pid of cgroupPids(dir)) pids.add(pid)
    if (this.#optedIn) {
      for (const name of fs.readdirSync('/proc')) {
        const pid = Number(name)
        if (Number.isInteger(pid) && pid > 0 && alive(() => optedIn(pid))) pids.add(pid)
      }
    }
    pids.delete(process.pid)
    return pids
  }

  #open(pid: number): Target {
    const scope = this.#scope === 'global' ? 'global' : `uid:${effectiveUid(pid)}`
    const target: Target = { pid, process: TargetProcess.open(pid), scope, areas: new Map() }
    try {
      target.process.clearSoftDirty()
    } catch (error) {
      target.process.close()
      throw error
    }
    this.#targets.set(pid, target)
    return target
  }

  #drop(target: Target): void {
    for (const area of target.areas.values()) this.#forget(target, area, 0, area.pages)
    target.process.close()
    this.#targets.delete(target.pid)
  }

  #domain(scope: string): Domain {
    let domain = this.#domains.get(scope)
    if (!domain) {
      domain = { index: TwinIndex.create(), waiting: new Map() }
      this.#domains.set(scope, domain)
    }
    return domain
  }

  /** Pages [from, to) of an area leave the index (written, unmapped, or the target gone); returns those that were merged. */
  #forget(target: Target, area: Area, from: number, to: number): number {
    if (area.indexed === 0) return 0
    const domain = this.#domain(target.scope)
    const released: bigint[] = []
    let rewritten = 0
    const states = area.state.subarray(from, to)
    // indexOf runs at native speed: most of a range is Unhashed.
    let nextIndexed = states.indexOf(PageState.Indexed)
    let nextMerged = states.indexOf(PageState.Merged)
    while (nextIndexed >= 0 || nextMerged >= 0) {
      const merged = nextIndexed < 0 || (nextMerged >= 0 && nextMerged < nextIndexed)
      const at = merged ? nextMerged : nextIndexed
      const page = from + at
      if (merged) rewritten++
      const hash = area.hashes[page]
      released.push(hash)
      const waiting = domain.waiting.get(hash)
      if (waiting && waiting.area === area && waiting.page === page) domain.waiting.delete(hash)
      area.state[page] = PageState.Unhashed
      if (merged) nextMerged = states.indexOf(PageState.Merged, at + 1)
      else nextIndexed = states.indexOf(PageState.Indexed, at + 1)
    }
    area.indexed -= released.length
    if (released.length) domain.index.release(BigUint64Array.from(released))
    return rewritten
  }

  /** Pages [from, to) were written or are absent this pass: not stable, out of the index. */
  #changed(target: Target, area: Area, from: number, to: number, report: DaemonPassReport): void {
    if (from >= to) return
    area.changed.fill(this.#pass, from, to)
    report.rewrittenPages += this.#forget(target, area, from, to)
  }

  /** Which pages are present and which were written since the last pass; soft-dirty cleared again. */
  #scan(target: Target, report: DaemonPassReport): void {
    // An exited target's /proc files read as empty: say so instead of following nothing.
    if (!target.process.alive()) throw codedError('ERR_TARGET_EXITED', target.pid)
    const mappings = target.process.mappings().filter(followed)
    const keep = new Set<string>()
    for (const m of mappings) {
      const key = `${m.start}-${m.end}`
      keep.add(key)
      let area = target.areas.get(key)
      if (!area) {
        const pages = Number(m.end - m.start) / pageSize
        // Soft-dirty was cleared at the last pass; a mapping created since reads as written.
        area = { start: m.start, pages, changed: new Uint32Array(pages).fill(this.#pass - 1), state: new Uint8Array(pages), hashes: new BigUint64Array(pages), indexed: 0, quiet: [] }
        target.areas.set(key, area)
      }
      // Work per present range and per change, not per page of the mapping: a Node process maps
      // far more than it touches.
      area.quiet.length = 0
      let cursor = 0
      for (const result of target.process.scanAll({ start: area.start, length: area.pages * pageSize, require: ['present'], report: ['present', 'softDirty'] })) {
        for (let i = 0; i < result.starts.length; i++) {
          const from = Number(result.starts[i] - area.start) / pageSize
          const to = Number(result.ends[i] - area.start) / pageSize
          this.#changed(target, area, cursor, from, report) // absent
          report.presentPages += to - from
          if ((result.categories[i] & PageCategory.softDirty) !== 0) {
            report.writtenPages += to - from
            this.#changed(target, area, from, to, report)
          } else {
            area.quiet.push(from, to)
          }
          cursor = to
        }
      }
      this.#changed(target, area, cursor, area.pages, report)
    }
    for (const [key, area] of target.areas) {
      if (keep.has(key)) continue
      this.#forget(target, area, 0, area.pages)
      target.areas.delete(key)
    }
    target.process.clearSoftDirty()
  }

  /** Hashes the newly stable pages, indexes them, and collects the pages with a twin to merge. */
  #hash(target: Target, report: DaemonPassReport, budget: number, merges: Map<Target, Array<{ start: bigint; length: number }>>): number {
    const domain = this.#domain(target.scope)
    // A page may merge once it stayed present and unwritten since pass `ripe`.
    const ripe = this.#pass - this.#stablePasses
    const eligible = (area: Area, page: number) => area.changed[page] <= ripe && area.state[page] === PageState.Unhashed
    for (const area of target.areas.values()) {
      for (let q = 0; q < area.quiet.length && budget > 0; q += 2) {
        const last = area.quiet[q + 1]
        for (let page = area.quiet[q]; page < last && budget > 0;) {
          if (!eligible(area, page)) {
            page++
            continue
          }
          let end = page + 1
          while (end < last && end - page < budget && eligible(area, end)) end++
          const hashes = target.process.hashPages(area.start + BigInt(page * pageSize), end - page)
          const holders = domain.index.add(hashes)
          report.hashedPages += end - page
          budget -= end - page
          area.indexed += end - page
          for (let k = 0; k < hashes.length; k++) {
            const p = page + k
            area.hashes[p] = hashes[k]
            area.state[p] = PageState.Indexed
            if (holders[k] < 2) {
              domain.waiting.set(hashes[k], { target, area, page: p })
              continue
            }
            addMerge(merges, target, area, p)
            const waiting = domain.waiting.get(hashes[k])
            if (waiting) {
              domain.waiting.delete(hashes[k])
              if (waiting.area.state[waiting.page] === PageState.Indexed && this.#targets.get(waiting.target.pid) === waiting.target) addMerge(merges, waiting.target, waiting.area, waiting.page)
            }
          }
          page = end
        }
      }
    }
    return budget
  }

  /** MADV_MERGE of a target's ranges, 1024 per call; returns the pages given to it. */
  #mergeRanges(target: Target, ranges: Array<{ start: bigint; length: number }>): number {
    ranges.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0))
    const runs: Array<{ start: bigint; length: number }> = []
    for (const r of ranges) {
      const last = runs.at(-1)
      if (last && last.start + BigInt(last.length) === r.start) last.length += r.length
      else runs.push({ ...r })
    }
    let pages = 0
    for (let i = 0; i < runs.length; i += 1024) {
      const batch = runs.slice(i, i + 1024)
      if (this.#merge === 'sksm') target.process.madvise(batch, 'merge')
      pages += batch.reduce((sum, r) => sum + r.length / pageSize, 0)
    }
    for (const area of target.areas.values()) {
      for (const r of runs) {
        const from = Number(r.start - area.start) / pageSize
        if (from < 0 || from >= area.pages) continue
        area.state.fill(PageState.Merged, from, Math.min(area.pages, from + r.length / pageSize))
      }
    }
    return pages
  }
}

function addMerge(merges: Map<Target, Array<{ start: bigint; length: number }>>, target: Target, area: Area, page: number): void {
  let ranges = merges.get(target)
  if (!ranges) merges.set(target, (ranges = []))
  ranges.push({ start: area.start + BigInt(page * pageSize), length: pageSize })
}
