/**
 * The deduplicator for other processes: user space doing ksmd's job for programs that know
 * nothing of memdedup. Each pass, per target process: PAGEMAP_SCAN of its pagemap finds the pages
 * present and those written since the last pass (soft-dirty, cleared again through clear_refs);
 * a page unwritten for `stablePasses` passes is hashed through /proc/<pid>/mem (nothing pinned);
 * a TwinIndex per security domain counts who holds each content; and pages whose content another
 * page of the same domain holds are merged with process_madvise(MADV_MERGE) (lab kernel patch
 * 0052), which compares the bytes itself. A written page is forgotten until it is stable again.
 *
 * Pages are followed by address, in blocks of 512, not by mapping: a process's mappings grow,
 * shrink and merge (malloc and V8 map next to what is there) while its pages stay what they are.
 * Where the kernel cannot say which pages were written, the pages are hashed again and those whose
 * content stayed keep their place: in a mapping created or resized since the last pass (it carries
 * VM_SOFTDIRTY, so every page of it reads as written), and in a transparent huge page (one
 * soft-dirty bit for its 512 pages: one hot page makes all of them read as written), and in a
 * block merged in the last pass (the merge splits a huge page and copies its soft-dirty bit, set
 * again by any write since the scan, to all 512 pages). After the split the bits are the pages' own;
 * a block where nothing stays is checked less and less often.
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
import { kpageflag, openKpageflags, PageCategory } from './pagemap.ts'
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
  /**
   * Pages hashed to tell which changed where the kernel reads all as written: mappings created or
   * resized since the last pass (malloc or V8 mapping next to them), transparent huge pages, and
   * blocks merged in the last pass (there a page still on its KSM frame is not read).
   */
  checkedPages: number
  /** Pages hashed this pass (stable for stablePasses passes and not hashed yet; those checked before keep that hash). */
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
  /**
   * Nothing new: no target opened, no failure, and fewer pages merged or rewritten than 1 in 1000
   * of those present (whole Node processes never stop churning heap pages: some are hashed every
   * pass, few merge). run() doubles its wait after such a pass.
   */
  idle: boolean
}

/** Per page: where it stands. Checked: its hash is known (see #check) but it is not in the index. */
const enum PageState { Unhashed = 0, Indexed = 1, Merged = 2, Checked = 3 }

/** Pages in a block. */
const blockPages = 512

/** `blockPages` pages of a target's address space, followed page by page, whichever mappings cover them. */
interface Block {
  /** Its first page (address / pageSize). */
  first: number
  /** Per page: the last pass that saw it written or absent (it may merge stablePasses passes later). */
  changed: Uint32Array
  state: Uint8Array
  hashes: BigUint64Array
  /** Pages whose state is not Unhashed: while 0, a change needs no look at `state`. */
  known: number
  /** Page ranges [from, to) present and unwritten at the last scan: where #hash looks. */
  quiet: number[]
  /** The last pass whose scan met a present page of it, and where that scan got to. */
  seen: number
  cursor: number
  /** Of the pages #check found with a known hash this pass, those whose content stayed. */
  checkKnown: number
  checkStayed: number
  /** Checks found nothing staying: the block is not checked before pass `checkAfter` (see #scan). */
  checkAfter: number
  checkBackoff: number
  /** The last pass that gave pages of it to MADV_MERGE, and each merged page's frame then (0: unknown). */
  mergedAt: number
  mergedPfns: BigUint64Array | null
}

interface Target {
  pid: number
  process: TargetProcess
  scope: string
  /** By block number (first page / blockPages); a block exists while a page of it is present. */
  blocks: Map<number, Block>
  /** The followed mappings ("start-end") of the last scan; null before the first. */
  extents: Set<string> | null
}

/** A holder of a content that had no twin yet: merged when the twin comes. */
interface Waiting {
  target: Target
  block: Block
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
  /** /proc/kpageflags and what it said of frames this pass (see #ksmFrame). */
  readonly #kpageflags = { fd: null as number | null, pass: 0, ksm: new Map<bigint, boolean>() }
  /** Passes begun (Block.changed counts in them). */
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
    const report: DaemonPassReport = { time, targets: 0, newTargets: 0, presentPages: 0, writtenPages: 0, checkedPages: 0, hashedPages: 0, mergedPages: 0, rewrittenPages: 0, failures: [], durationMs: 0, cpuMs: 0, idle: false }
    const wanted = this.#wanted()
    for (const [pid, target] of this.#targets) if (!wanted.has(pid)) this.#drop(target)
    const merges = new Map<Target, number[]>()
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
        hashBudget = this.#scan(target, report, hashBudget)
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
    for (const [target, pages] of merges) {
      try {
        report.mergedPages += this.#mergePages(target, pages)
      } catch (error) {
        report.failures.push({ pid: target.pid, code: errorCode(error), message: (error as Error).message })
        this.#drop(target)
      }
    }
    const cpu = process.cpuUsage(cpu0)
    report.cpuMs = (cpu.user + cpu.system) / 1000
    report.durationMs = Date.now() - time
    report.idle = report.newTargets + report.failures.length === 0 &&
      (report.mergedPages + report.rewrittenPages) * 1000 <= report.presentPages
    return report
  }

  /**
   * Passes every `intervalMs` (default 1000) until stop() or close(), each reported to `onPass`.
   * With `maxIntervalMs` above `intervalMs`, each idle pass (DaemonPassReport.idle: nothing new
   * but hot pages and a little heap churn) doubles the wait up to `maxIntervalMs`, and any other
   * pass brings it back to `intervalMs`, as Deduplicator.run() does: a merged, steady fleet costs
   * a pass per `maxIntervalMs`. `cpuBudget` (0 < b <= 1, default 1)
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
      wait = report.idle ? Math.min(maxInterval, wait * 2) : interval
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
    if (this.#kpageflags.fd !== null && this.#kpageflags.fd >= 0) fs.closeSync(this.#kpageflags.fd)
    this.#kpageflags.fd = null
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
    const target: Target = { pid, process: TargetProcess.open(pid), scope, blocks: new Map(), extents: null }
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
    for (const block of target.blocks.values()) this.#forget(target, block, 0, blockPages)
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

  /** Pages [from, to) of a block leave the index (written, unmapped, or the target gone); returns those that were merged. */
  #forget(target: Target, block: Block, from: number, to: number): number {
    if (block.known === 0) return 0
    const domain = this.#domain(target.scope)
    const released: bigint[] = []
    let rewritten = 0
    for (let page = from; page < to && block.known > 0; page++) {
      const state = block.state[page]
      if (state === PageState.Unhashed) continue
      block.state[page] = PageState.Unhashed
      block.known--
      if (state === PageState.Checked) continue
      if (state === PageState.Merged) rewritten++
      const hash = block.hashes[page]
      released.push(hash)
      const waiting = domain.waiting.get(hash)
      if (waiting && waiting.block === block && waiting.page === page) domain.waiting.delete(hash)
    }
    if (released.length) domain.index.release(BigUint64Array.from(released))
    return rewritten
  }

  /** Pages [from, to) of a block were written or are absent this pass: not stable, out of the index. */
  #changed(target: Target, block: Block, from: number, to: number, report: DaemonPassReport): void {
    if (from >= to) return
    block.changed.fill(this.#pass, from, to)
    report.rewrittenPages += this.#forget(target, block, from, to)
  }

  #block(target: Target, number: number): Block {
    let block = target.blocks.get(number)
    if (!block) {
      // No page of it was present at the last scan: each was absent then, at the latest.
      block = {
        first: number * blockPages, changed: new Uint32Array(blockPages).fill(this.#pass - 1), state: new Uint8Array(blockPages),
        hashes: new BigUint64Array(blockPages), known: 0, quiet: [], seen: 0, cursor: 0, checkKnown: 0, checkStayed: 0, checkAfter: 0, checkBackoff: 0, mergedAt: 0, mergedPfns: null,
      }
      target.blocks.set(number, block)
    }
    return block
  }

  /**
   * Which pages are present and which were written since the last pass, block by block; soft-dirty
   * cleared again. Returns what is left of the hash budget (see #check).
   */
  #scan(target: Target, report: DaemonPassReport, budget: number): number {
    // An exited target's /proc files read as empty: say so instead of following nothing.
    if (!target.process.alive()) throw codedError('ERR_TARGET_EXITED', target.pid)
    const pass = this.#pass
    const extents = new Set<string>()
    // Work per present range and per change, not per page of the mappings: a Node process maps far
    // more than it touches. Mappings come in address order, so each block's ranges do too.
    for (const m of target.process.mappings().filter(followed)) {
      const extent = `${m.start}-${m.end}`
      extents.add(extent)
      const resized = target.extents !== null && !target.extents.has(extent)
      for (const result of target.process.scanAll({ start: m.start, length: Number(m.end - m.start), require: ['present'], report: ['present', 'softDirty', 'huge'] })) {
        for (let i = 0; i < result.starts.length; i++) {
          const from = Number(result.starts[i] / BigInt(pageSize))
          const to = Number(result.ends[i] / BigInt(pageSize))
          const written = (result.categories[i] & PageCategory.softDirty) !== 0
          const unsure = resized || (result.categories[i] & PageCategory.huge) !== 0
          report.presentPages += to - from
          for (let number = Math.floor(from / blockPages); number * blockPages < to; number++) {
            const block = this.#block(target, number)
            if (block.seen !== pass) {
              block.seen = pass
              block.cursor = 0
              block.quiet.length = 0
              block.checkKnown = 0
              block.checkStayed = 0
            }
            const lo = Math.max(from, block.first) - block.first
            const hi = Math.min(to, block.first + blockPages) - block.first
            this.#changed(target, block, block.cursor, lo, report) // absent
            if (!written) {
              quiet(block, lo, hi)
            } else if ((unsure || block.mergedAt === pass - 1) && budget > 0 && block.checkAfter <= pass) {
              budget = this.#check(target, block, lo, hi, report, budget)
            } else {
              report.writtenPages += hi - lo
              this.#changed(target, block, lo, hi, report)
            }
            block.cursor = hi
          }
        }
      }
    }
    for (const [number, block] of target.blocks) {
      if (block.seen === pass) {
        this.#changed(target, block, block.cursor, blockPages, report)
        // Every known page changed (a huge page of hot data): check it after 1, 2, 4 … 64 passes.
        if (block.checkKnown > 0 && block.checkStayed === 0) {
          block.checkBackoff = Math.min(64, Math.max(1, block.checkBackoff * 2))
          block.checkAfter = pass + block.checkBackoff
        } else if (block.checkStayed > 0) {
          block.checkBackoff = 0
        }
      } else {
        this.#changed(target, block, 0, blockPages, report)
        target.blocks.delete(number)
      }
    }
    target.extents = extents
    target.process.clearSoftDirty()
    return budget
  }

  /**
   * Pages [lo, hi) of a block read as written where the kernel reports all as written (see the
   * module's description). Hashed: a page whose content is the hash known for it is unchanged and
   * keeps its place; the others changed, and their hash is kept (Checked) for the next time. Past
   * the budget, pages count as written.
   */
  #check(target: Target, block: Block, lo: number, hi: number, report: DaemonPassReport, budget: number): number {
    // A merged page needs no read: a KSM page keeps its frame until a write copies it away (it is
    // never reused in place). Given to MADV_MERGE is not merged: the frame must be a KSM page.
    let kept: Uint8Array | null = null
    if (block.mergedPfns !== null && block.state.subarray(lo, hi).includes(PageState.Merged)) {
      const pfns = target.process.entries(addressOf(block.first + lo), hi - lo).pfns
      kept = new Uint8Array(hi - lo)
      for (let k = 0; k < hi - lo; k++) {
        if (block.state[lo + k] === PageState.Merged && pfns[k] !== 0n && pfns[k] === block.mergedPfns[lo + k] && this.#ksmFrame(pfns[k])) kept[k] = 1
      }
    }
    for (let page = lo; page < hi;) {
      if (kept !== null && kept[page - lo] === 1) {
        block.checkKnown++
        block.checkStayed++
        quiet(block, page, page + 1)
        page++
        continue
      }
      let end = page + 1
      while (end < hi && (kept === null || kept[end - lo] === 0)) end++
      const count = Math.min(end - page, budget)
      const hashes = count > 0 ? target.process.hashPages(addressOf(block.first + page), count) : new BigUint64Array(0)
      report.checkedPages += count
      budget -= count
      for (let k = 0; k < count; k++) {
        const p = page + k
        if (block.state[p] !== PageState.Unhashed) {
          block.checkKnown++
          if (block.hashes[p] === hashes[k]) {
            block.checkStayed++
            quiet(block, p, p + 1)
            continue
          }
        }
        report.writtenPages++
        this.#changed(target, block, p, p + 1, report)
        block.hashes[p] = hashes[k]
        block.state[p] = PageState.Checked
        block.known++
      }
      // Past the budget: written.
      report.writtenPages += end - page - count
      this.#changed(target, block, page + count, end, report)
      page = end
    }
    return budget
  }

  /** Whether frame `pfn` is a KSM page (/proc/kpageflags, root; false where it cannot be read), once per pass and frame. */
  #ksmFrame(pfn: bigint): boolean {
    if (this.#kpageflags.pass !== this.#pass) {
      this.#kpageflags.pass = this.#pass
      this.#kpageflags.ksm.clear()
    }
    let ksm = this.#kpageflags.ksm.get(pfn)
    if (ksm === undefined) {
      this.#kpageflags.fd ??= openKpageflags()
      ksm = kpageflag(this.#kpageflags.fd, pfn, 'ksm') === true
      this.#kpageflags.ksm.set(pfn, ksm)
    }
    return ksm
  }

  /** Hashes the newly stable pages, indexes them, and collects the pages with a twin to merge. */
  #hash(target: Target, report: DaemonPassReport, budget: number, merges: Map<Target, number[]>): number {
    const domain = this.#domain(target.scope)
    // A page may merge once it stayed present and unwritten since pass `ripe`.
    const ripe = this.#pass - this.#stablePasses
    const eligible = (block: Block, page: number) =>
      block.changed[page] <= ripe && (block.state[page] === PageState.Unhashed || block.state[page] === PageState.Checked)
    for (const block of target.blocks.values()) {
      for (let q = 0; q < block.quiet.length && budget > 0; q += 2) {
        const last = block.quiet[q + 1]
        for (let page = block.quiet[q]; page < last && budget > 0;) {
          if (!eligible(block, page)) {
            page++
            continue
          }
          // A Checked page's hash is its content now (changed since, it would be Unhashed): no read.
          const checked = block.state[page] === PageState.Checked
          let end = page + 1
          while (end < last && end - page < budget && eligible(block, end) && (block.state[end] === PageState.Checked) === checked) end++
          let hashes: BigUint64Array
          if (checked) {
            hashes = block.hashes.slice(page, end)
          } else {
            hashes = target.process.hashPages(addressOf(block.first + page), end - page)
            report.hashedPages += end - page
            budget -= end - page
          }
          const holders = domain.index.add(hashes)
          for (let k = 0; k < hashes.length; k++) {
            const p = page + k
            if (block.state[p] === PageState.Unhashed) block.known++
            block.hashes[p] = hashes[k]
            block.state[p] = PageState.Indexed
            if (holders[k] < 2) {
              domain.waiting.set(hashes[k], { target, block, page: p })
              continue
            }
            addMerge(merges, target, block.first + p)
            const waiting = domain.waiting.get(hashes[k])
            if (waiting) {
              domain.waiting.delete(hashes[k])
              if (waiting.block.state[waiting.page] === PageState.Indexed && this.#targets.get(waiting.target.pid) === waiting.target) {
                addMerge(merges, waiting.target, waiting.block.first + waiting.page)
              }
            }
          }
          page = end
        }
      }
    }
    return budget
  }

  /** MADV_MERGE of a target's pages (page numbers), in runs, 1024 runs per call; returns the pages given to it. */
  #mergePages(target: Target, pages: number[]): number {
    pages.sort((a, b) => a - b)
    const runs: Array<{ start: bigint; length: number }> = []
    for (let i = 0; i < pages.length;) {
      let end = i + 1
      while (end < pages.length && pages[end] === pages[end - 1] + 1) end++
      runs.push({ start: addressOf(pages[i]), length: (end - i) * pageSize })
      i = end
    }
    // The pages given to MADV_MERGE, in order: the kernel returns fewer bytes than it was given
    // when it stopped at a signal to this process (a stop() asked for by SIGTERM, say) or at a range
    // the target unmapped meanwhile. The rest go back to the hashing, for a later pass.
    let given = 0
    for (let i = 0; i < runs.length && this.#merge === 'sksm'; i += 1024) {
      const batch = runs.slice(i, i + 1024)
      const bytes = batch.reduce((sum, run) => sum + run.length, 0)
      const advised = target.process.madvise(batch, 'merge')
      given += advised / pageSize
      if (advised < bytes) {
        for (const page of pages.splice(given)) {
          const block = target.blocks.get(Math.floor(page / blockPages))
          if (block) this.#forget(target, block, page - block.first, page - block.first + 1)
        }
        break
      }
    }
    // Each merged page's frame, read per block (one pread for its merged pages): see #check.
    for (let i = 0; i < pages.length;) {
      const number = Math.floor(pages[i] / blockPages)
      const block = target.blocks.get(number)
      let end = i + 1
      while (end < pages.length && pages[end] < (number + 1) * blockPages) end++
      if (block) {
        // A dry run merges nothing: no frame to go by.
        const pfns = this.#merge === 'sksm' ? target.process.entries(addressOf(pages[i]), pages[end - 1] - pages[i] + 1).pfns : new BigUint64Array(pages[end - 1] - pages[i] + 1)
        block.mergedPfns ??= new BigUint64Array(blockPages)
        for (let k = i; k < end; k++) {
          block.state[pages[k] - block.first] = PageState.Merged
          block.mergedPfns[pages[k] - block.first] = pfns[pages[k] - pages[i]]
        }
        block.mergedAt = this.#pass
      }
      i = end
    }
    return pages.length
  }
}

/** The address of page number `page`. */
function addressOf(page: number): bigint {
  return BigInt(page) * BigInt(pageSize)
}

/** Pages [from, to) of a block are quiet this pass (joined to the last range when they follow it). */
function quiet(block: Block, from: number, to: number): void {
  const ranges = block.quiet
  if (ranges.length > 0 && ranges[ranges.length - 1] === from) ranges[ranges.length - 1] = to
  else ranges.push(from, to)
}

function addMerge(merges: Map<Target, number[]>, target: Target, page: number): void {
  let pages = merges.get(target)
  if (!pages) merges.set(target, (pages = []))
  pages.push(page)
}
