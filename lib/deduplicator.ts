// The user-space deduplicator the SKSM thread proposes (seed 000): instead of ksmd scanning all
// mergeable memory, track writes with userfaultfd WP_ASYNC + PAGEMAP_SCAN, and merge only pages
// that (1) stayed unwritten for `stablePasses` passes and (2) have a twin: another page, in this
// process or any process sharing the TwinIndex, with the same content (the "unstable tree" idea:
// never touch a page that cannot be deduplicated). Pages written soon after a merge (a COW) are
// left alone for `backoffPasses` passes, so hot pages do not ping-pong between merged and private.
//
// A pass is two native calls per Region (native/dedup.cc): dedupScan, one PAGEMAP_SCAN walk that
// reports written/present pages and re-protects the written ones, then candidate selection and
// hashing within the CPU budget into the shared index; after every Region's scan, dedupMerge, the
// twin lookup and the merge runs: madvise(MADV_MERGE) with SKSM, or, without it, MADV_MERGEABLE on
// exactly those runs so ksmd finishes the job (and MADV_UNMERGEABLE on marked pages that turn hot).
// MADV_MERGEABLE splits a VMA at both ends of every marked run, and a process may hold only
// vm.max_map_count VMAs (V8 cannot map its heap beyond: the process dies), so the marked runs of
// all Regions stay within vmaBudget / 2 (coarser runs when they must), and close() and untrack()
// unmark them, which gives the VMAs back.
import fs from 'node:fs'
import { native, constants as C, pageSize } from './native.ts'
import { codedError, errno, FeatureUnavailableError, fsCall, SyscallError } from './errors.ts'
import { Region } from './region.ts'
import { Userfaultfd } from './uffd.ts'
import * as sksm from './sksm.ts'
import { available as ksmPresent, sysfsDir as ksmSysfsDir } from './ksm.ts'
import { TwinIndex, twinIndexHandle } from './twin_index.ts'
import { guardReceivers } from './internal.ts'
import { invalidArgType, outOfRange, readOptions, validateInteger, validateOneOf } from './validate.ts'

/** How a Deduplicator merges: 'sksm' (MADV_MERGE), 'ksm' (marks twin runs for ksmd), 'none' (reports only), 'auto' (SKSM where present, else KSM). */
export type MergeMode = 'auto' | 'sksm' | 'ksm' | 'none'

/** Options of `new Deduplicator()`; every one has a default. */
export interface DeduplicatorOptions {
  /** 'sksm' merges with madvise(MADV_MERGE); 'ksm' marks the twin runs MADV_MERGEABLE for ksmd;
   *  'none' only reports (a dry run); 'auto' (default): 'sksm' where the kernel has it, else 'ksm'. */
  merge?: MergeMode
  /** The content index shared with other processes (default: a private one, closed with this). */
  index?: TwinIndex
  /** Passes a page must stay unwritten before it is considered (default 2). */
  stablePasses?: number
  /** Passes a page that was written right after a merge is left alone (default 16). */
  backoffPasses?: number
  /** Thread CPU time a pass may spend (0, the default: no limit). The write scan always runs;
   *  hashing new pages stops at half the budget, merging at the whole (after at least one batch of
   *  64 pages per Region, so every pass makes progress). What the budget leaves, later passes do. */
  cpuBudgetMs?: number
  /** Pass reports kept in stats().history (default 600). */
  historyLength?: number
  /** SKSM: merge only during this process's turn among all sharing the index (TwinIndex.tryMergeTurn);
   *  a pass that finds the turn taken leaves its twins for the next (default false). It saves the CPU
   *  that MADV_MERGE callers spin away waiting for each other (measured in the lab: 86 µs of CPU per
   *  page alone, 142-159 µs with 4-8 processes merging at once), at the price of merging one process
   *  at a time: on the fleet benchmark, whose 50 ms budgets rarely overlap, it saved no CPU and
   *  reached 90% of the savings later (77 s instead of 49 s). For many unbudgeted Deduplicators. */
  mergeTurns?: boolean
  /** KSM: the most VMAs the marking may add to the process (MADV_MERGEABLE splits a VMA at both
   *  ends of each marked run, and a process past vm.max_map_count cannot map memory: V8 aborts).
   *  The marked runs of all tracked Regions stay within vmaBudget / 2 (each Region gets its share);
   *  where twins would need more, the smallest gaps between runs are marked too (untouched, unique
   *  or hot pages: harmless, ksmd merges only identical pages), see PassReport.coarsenedPages.
   *  Default min(1024, vm.max_map_count / 8), read at construction; at most vm.max_map_count / 2. */
  vmaBudget?: number
}

/** What one pass saw and did, in pages. */
export interface PassReport {
  pass: number
  /** Date.now() at the start of the pass. */
  time: number
  /** Pages of all tracked Regions. */
  trackedPages: number
  /** Written since the previous pass (PAGEMAP_SCAN PAGE_IS_WRITTEN). */
  writtenPages: number
  /** Present, unwritten for stablePasses, not merged, not backing off. */
  candidatePages: number
  /** Candidates hashed this pass (a hash is kept while its page stays unwritten). */
  hashedPages: number
  /** Candidates whose content has another holder in the index. */
  duplicatePages: number
  /** SKSM: pages merged (madvise(MADV_MERGE)) this pass. 0 with KSM and in a dry run. */
  mergedPages: number
  /** KSM: pages of twin runs marked MADV_MERGEABLE for ksmd this pass (the twins and the cold
   *  candidates between them; ksmd merges what stays identical, when it gets to them, which the pass
   *  does not see: see ksm.processStats()). 0 with SKSM and in a dry run. */
  markedPages: number
  /** Merged (or marked) pages written since: they back off. */
  cowAfterMerge: number
  /** SKSM: pages merged by this deduplicator now (0 with KSM). */
  mergedTotal: number
  /** KSM: pages of twin runs marked by this deduplicator now (0 with SKSM). */
  markedTotal: number
  /** KSM fallback: marked pages that turned hot, given back with MADV_UNMERGEABLE. */
  unmarkedPages: number
  /** Candidates left unhashed for a later pass because the CPU budget ran out. */
  deferredPages: number
  /** Duplicates left unmerged (or unmarked) for a later pass: the CPU budget ran out, or it was
   *  another process's merge turn. */
  mergeDeferredPages: number
  /** SKSM: another process sharing the index had the merge turn, so this pass merged nothing. */
  mergeTurnBusy: boolean
  /** Candidates the index had no free slot for (grow TwinIndex slots). */
  indexFullPages: number
  /** Merged pages PAGEMAP_SCAN reported written although still shared (so not written): the
   *  kernel's KSM merge dropped uffd-wp (a kernel without kernel-patches/0001). Not counted as writes. */
  wpLostPages: number
  /** KSM: pages marked MADV_MERGEABLE (or left marked) this pass only to keep within vmaBudget: gaps
   *  between twin runs, and hot pages whose unmarking would split one VMA too many. 0 while the
   *  twin runs fit. */
  coarsenedPages: number
  /** KSM: runs of marked pages in the tracked Regions after the pass (at most vmaBudget / 2; each
   *  adds at most two VMAs). */
  markedRuns: number
  /** Thread CPU time of the pass, and of its steps: the write scan (PAGEMAP_SCAN), hashing, merging. */
  cpuMs: number
  scanMs: number
  hashMs: number
  mergeMs: number
  durationMs: number
}

/** Totals over a Deduplicator's life (`stats()`), with the latest passes' reports. */
export interface DeduplicatorStats {
  passes: number
  /** Thread CPU time of all passes. */
  cpuMs: number
  /** SKSM: pages merged now (PassReport.mergedTotal of the latest pass). */
  mergedPages: number
  /** KSM: pages of twin runs marked for ksmd now (PassReport.markedTotal of the latest pass). */
  markedPages: number
  /** Merged (or marked) pages written since their merge, over all passes. */
  cowAfterMerge: number
  /** The latest pass reports, oldest first. */
  history: PassReport[]
}

interface Tracked {
  region: Region
  unsubscribe: () => void
  /** Per page: passes unwritten, held-in-index and merged bits, back-off (native/dedup.cc). */
  state: Uint32Array
  /** Content hash of each page held in the index. */
  hashes: BigUint64Array
  /** The native report of this Region's current pass. */
  out: Float64Array
  /** KSM: runs of marked pages (kMarked) in the Region now. */
  runs: number
}

// The layouts of config and report, the modes, failure stages and state bits: native/dedup.cc's,
// by name (checked at load, lib/native.ts).
const Config = native.dedupConfig
const Report = native.dedupReport
/** The per-page state bit of a page inside a range this Deduplicator marked MADV_MERGEABLE. */
const kMarked = native.dedupStateBit.marked
function addReport(report: PassReport, { region, out }: Tracked): void {
  report.trackedPages += region.pages
  report.writtenPages += out[Report.written]
  report.candidatePages += out[Report.candidates]
  report.hashedPages += out[Report.hashed]
  report.duplicatePages += out[Report.duplicates]
  report.mergedPages += out[Report.merged]
  report.markedPages += out[Report.marked]
  report.cowAfterMerge += out[Report.cow]
  report.mergedTotal += out[Report.mergedTotal]
  report.markedTotal += out[Report.markedTotal]
  report.unmarkedPages += out[Report.unmarked]
  report.deferredPages += out[Report.deferred]
  report.indexFullPages += out[Report.indexFull]
  report.wpLostPages += out[Report.wpLost]
  report.mergeDeferredPages += out[Report.mergeDeferred]
  report.coarsenedPages += out[Report.coarsened]
  report.scanMs += out[Report.scanNs] / 1e6
  report.hashMs += out[Report.hashNs] / 1e6
  report.mergeMs += out[Report.mergeNs] / 1e6
}

/** The call behind each failure stage a pass reports with its -errno. */
const stageSyscalls: Record<keyof typeof native.dedupFailedStage, string> = {
  pagemapScan: 'ioctl(PAGEMAP_SCAN)',
  madviseMerge: 'madvise(MADV_MERGE)',
  madviseMergeable: 'madvise(MADV_MERGEABLE)',
  madviseUnmergeable: 'madvise(MADV_UNMERGEABLE)',
  pagemapRead: 'pread(/proc/self/pagemap)',
}
const failedSyscall = new Map(Object.entries(stageSyscalls).map(([stage, syscall]) => [native.dedupFailedStage[stage as keyof typeof stageSyscalls], syscall]))

/**
 * @internal The error of a failed dedupScan / dedupMerge: the SyscallError of the call its failure
 * stage names, with the errno that call returned. A -errno without a known stage is no syscall's:
 * native code broke its contract (ERR_INTERNAL_ASSERTION), never an errno passed off as one.
 */
export function passFailure(rc: number, stage: number, context: string): Error {
  const syscall = failedSyscall.get(stage)
  if (syscall !== undefined) return new SyscallError(syscall, -rc, context)
  return codedError('ERR_INTERNAL_ASSERTION', `${context}: the native pass returned ${rc} with failure stage ${stage}, which names no call (native/dedup.cc and lib/ disagree)`)
}

/** vm.max_map_count: the VMAs a process may hold (the kernel's default where /proc/sys is absent). */
function maxMapCount(): number {
  try {
    return Number(fs.readFileSync('/proc/sys/vm/max_map_count', 'latin1'))
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error
    return 65530 // DEFAULT_MAX_MAP_COUNT
  }
}

function resolveMerge(requested: MergeMode): 'sksm' | 'ksm' | 'none' {
  if (requested === 'auto') {
    // SKSM switched off by the administrator (sksm_enabled = 0): ksmd merges instead.
    if (sksm.enabled()) return 'sksm'
    if (ksmPresent()) return 'ksm'
    throw new FeatureUnavailableError('sksm', "neither madvise(MADV_MERGE) nor KSM (CONFIG_KSM) is available; use { merge: 'none' } for a dry run")
  }
  if (requested === 'sksm' && !sksm.available()) {
    throw new FeatureUnavailableError('sksm', "the deduplicator merges with madvise(MADV_MERGE); use { merge: 'ksm' } to let ksmd merge, or 'none' for a dry run")
  }
  if (requested === 'sksm' && !sksm.enabled()) {
    throw new FeatureUnavailableError('sksm', `madvise(MADV_MERGE) is switched off (${sksm.enabledKnob} is 0); use { merge: 'ksm' } to let ksmd merge, or 'none' for a dry run`)
  }
  if (requested === 'ksm' && !ksmPresent()) throw new FeatureUnavailableError('ksm', `${ksmSysfsDir} does not exist (CONFIG_KSM=n)`)
  return requested
}

// Safety net only (close() is the way): a Deduplicator dropped unclosed gives its /proc/self/pagemap
// descriptor back; the uffd and a private index have finalizers of their own.
const unclosed = new FinalizationRegistry<number>((fd) => {
  try {
    fs.closeSync(fd)
  } catch {
    // already closed
  }
})

/** Runs of pages with the kMarked state bit. */
function countRuns(state: Uint32Array): number {
  let runs = 0
  let inRun = false
  for (let page = 0; page < state.length; page++) {
    const marked = (state[page] & kMarked) !== 0
    if (marked && !inRun) runs++
    inRun = marked
  }
  return runs
}

/**
 * The user-space deduplicator: tracks the writes of the Regions you give it (userfaultfd WP_ASYNC +
 * PAGEMAP_SCAN), hashes pages that stay unwritten, and merges only those whose content has a twin
 * in its TwinIndex, which other processes may share. `pass()` does one round; `run()` passes in the
 * background until `await stop()`; `close()` untracks everything.
 */
export class Deduplicator {
  #uffd: Userfaultfd
  #index: TwinIndex
  #ownIndex: boolean
  #pagemapFd: number
  #tracked = new Map<Region, Tracked>()
  #merge: 'sksm' | 'ksm' | 'none'
  #config = new Float64Array(Config.length)
  #cpuBudgetNs: number
  #mergeTurns: boolean
  #vmaBudget: number
  #historyLength: number
  #pass = 0
  #cpuMs = 0
  #cowAfterMerge = 0
  #mergedTotal = 0
  #markedTotal = 0
  #history: PassReport[] = []
  #timer: NodeJS.Timeout | undefined
  #intervalMs = 0
  #running = false
  /** run()'s loop: each run() starts a new one, stop() and close() end it. A timer callback of an
   *  older loop (one onPass stopped, or replaced by stop(); run()) neither passes nor reschedules. */
  #loop = 0
  #runError: unknown
  #closed = false
  #token = {}

  static {
    // A wrong receiver is ERR_INVALID_THIS (stop() rejects with it). No construction guard: `new
    // Deduplicator()` is the public API, and it wraps only descriptors it opens itself.
    guardReceivers(Deduplicator, (value) => #pagemapFd in value)
  }

  constructor(options?: DeduplicatorOptions) {
    const opts = readOptions(options, 'options', ['merge', 'index', 'stablePasses', 'backoffPasses', 'cpuBudgetMs', 'historyLength', 'mergeTurns', 'vmaBudget'])
    const stablePasses = validateInteger(opts.stablePasses ?? 2, 'options.stablePasses', 1, 255)
    const backoffPasses = validateInteger(opts.backoffPasses ?? 16, 'options.backoffPasses', 0, 65535)
    const cpuBudgetMs = opts.cpuBudgetMs ?? 0
    if (typeof cpuBudgetMs !== 'number') throw invalidArgType('options.cpuBudgetMs', 'a number', cpuBudgetMs)
    if (!(cpuBudgetMs >= 0 && cpuBudgetMs <= 3_600_000)) throw outOfRange('options.cpuBudgetMs', '>= 0 and <= 3600000', cpuBudgetMs)
    this.#cpuBudgetNs = cpuBudgetMs * 1e6
    this.#historyLength = validateInteger(opts.historyLength ?? 600, 'options.historyLength', 0, 1_000_000)
    const mergeTurns = opts.mergeTurns ?? false
    if (typeof mergeTurns !== 'boolean') throw invalidArgType('options.mergeTurns', 'a boolean', mergeTurns)
    this.#mergeTurns = mergeTurns
    const maxVmas = maxMapCount()
    this.#vmaBudget = validateInteger(opts.vmaBudget ?? Math.max(2, Math.min(1024, Math.floor(maxVmas / 8))), 'options.vmaBudget', 2, Math.max(2, Math.floor(maxVmas / 2)))
    const index = opts.index
    if (index !== undefined && !(index instanceof TwinIndex)) throw invalidArgType('options.index', 'a TwinIndex', index)
    if (index !== undefined) twinIndexHandle(index, 'create a Deduplicator')
    this.#merge = resolveMerge(validateOneOf(opts.merge ?? 'auto', 'options.merge', ['auto', 'sksm', 'ksm', 'none'] as const))
    this.#config[Config.mode] = native.dedupMode[this.#merge]
    this.#config[Config.stablePasses] = stablePasses
    this.#config[Config.backoffPasses] = backoffPasses
    this.#uffd = Userfaultfd.open({ features: ['wpAsync', 'wpUnpopulated'] })
    try {
      this.#pagemapFd = fsCall('open', '/proc/self/pagemap', () => fs.openSync('/proc/self/pagemap', 'r'))
    } catch (error) {
      this.#uffd.close()
      throw error
    }
    this.#ownIndex = index === undefined
    try {
      this.#index = index ?? TwinIndex.create()
    } catch (error) {
      this.#uffd.close()
      fs.closeSync(this.#pagemapFd)
      throw error
    }
    unclosed.register(this, this.#pagemapFd, this.#token)
  }

  /** How this deduplicator merges ('auto' resolved). */
  get merge(): 'sksm' | 'ksm' | 'none' {
    return this.#merge
  }
  /** The TwinIndex this deduplicator looks twins up in (options.index, or its private one). */
  get index(): TwinIndex {
    return this.#index
  }
  /** KSM: the most VMAs the marking may add (options.vmaBudget). */
  get vmaBudget(): number {
    return this.#vmaBudget
  }
  /** The Regions tracked now. */
  get regions(): Region[] {
    return [...this.#tracked.keys()]
  }
  /** True between run() and stop(). */
  get running(): boolean {
    return this.#running
  }
  /** run()'s current wait between passes (it grows while passes are idle; see run()). */
  get intervalMs(): number {
    return this.#intervalMs
  }
  /** True once close() ran. */
  get closed(): boolean {
    return this.#closed
  }

  /** Starts tracking a private anonymous Region: registers it for async write-protection and arms it. */
  track(region: Region): void {
    this.#assertOpen('track')
    if (!Region.isRegion(region)) throw invalidArgType('region', 'an instance of Region', region)
    if (region.kind !== 'anonymous') throw invalidArgType('region', 'an anonymous Region (KSM and MADV_MERGE merge private anonymous pages)', region.kind)
    if (this.#tracked.has(region)) throw codedError('ERR_DEDUP_ALREADY_TRACKED')
    region.readableSpan(undefined, 'Deduplicator.track')
    // Per-page state first: a Region too large to track fails here, before anything is registered.
    let state: Uint32Array
    let hashes: BigUint64Array
    try {
      state = new Uint32Array(region.pages)
      hashes = new BigUint64Array(region.pages)
    } catch {
      throw outOfRange('region.length', 'small enough to track (12 bytes of state per page)', region.length)
    }
    this.#uffd.register(region, { writeProtect: true })
    try {
      // Arm: every page write-protected, so the first pass sees only writes made after track().
      this.#uffd.writeProtect(region, { offset: 0, length: region.length }, true)
    } catch (error) {
      this.#uffd.unregister(region)
      throw error
    }
    // A Region that closes is unmapped (its marks go with it); one that moves (remap) keeps its
    // marks at the new address: they are given back there.
    const unsubscribe = region.onClose((_, next) => {
      const tracked = this.#tracked.get(region)
      try {
        if (tracked !== undefined && next !== undefined) this.#unmark(tracked, next.address, next.length)
      } finally {
        this.#forget(region)
      }
    })
    this.#tracked.set(region, { region, unsubscribe, state, hashes, out: new Float64Array(Report.length), runs: 0 })
  }

  /**
   * Stops tracking the Region: its hashes leave the index; it stays mapped. SKSM: merged pages stay
   * merged. KSM: what this Deduplicator marked MADV_MERGEABLE is unmarked (MADV_UNMERGEABLE, which
   * gives its VMAs back and turns the pages ksmd merged there into private copies again: the kernel
   * has no way to unmark without unmerging). If that fails, the Region is untracked all the same and
   * the SyscallError is thrown at the end.
   */
  untrack(region: Region): void {
    const tracked = this.#tracked.get(region)
    if (!tracked) return
    tracked.unsubscribe()
    let failure: unknown
    try {
      if (!region.closed) this.#unmark(tracked, Number(region.address), region.length)
    } catch (error) {
      failure = error
    }
    this.#forget(region)
    if (!region.closed && !this.#uffd.closed) this.#uffd.unregister(region)
    if (failure !== undefined) throw failure
  }

  /**
   * One pass over every tracked Region: scan each (writes, candidates, hashes), then merge each; see
   * PassReport. Also allowed inside run()'s onPass: it runs one more pass right there and returns its
   * report (onPass is not called for it; run()'s loop goes on). InvalidStateError ERR_DEDUP_CLOSED
   * once closed (also after a close() inside onPass).
   */
  pass(): PassReport {
    this.#assertOpen('pass')
    twinIndexHandle(this.#index, 'pass') // ERR_TWIN_INDEX_CLOSED before anything is done
    const time = Date.now()
    const started = performance.now()
    const cpuStarted = native.threadCpuNs()
    // Start at a different Region each pass, so a tight CPU budget does not starve the last ones.
    const all = [...this.#tracked.values()]
    const first = all.length > 0 ? this.#pass % all.length : 0
    const order = all.map((_, i) => all[(first + i) % all.length])
    // What is left of the budget for a step that may spend `share` of it (0: no budget).
    const left = (share: number) => (this.#cpuBudgetNs === 0 ? 0 : Math.max(1, this.#cpuBudgetNs * share - (native.threadCpuNs() - cpuStarted)))
    for (const tracked of order) this.#scan(tracked, left(0.5))
    // mergeTurns: one merging process at a time among those sharing the index; when another has
    // the turn, this pass only counts its twins and leaves them for the next.
    // The lease outlasts ten budgets (at least 1 s): the turn ends by endMergeTurn, not by expiry.
    const takesTurns = this.#merge === 'sksm' && this.#mergeTurns
    const turn = takesTurns ? this.#index.tryMergeTurn({ leaseMs: this.#cpuBudgetNs ? Math.max(1000, Math.ceil(this.#cpuBudgetNs / 1e5)) : 10_000 }) : null
    const notOurTurn = takesTurns && turn === null
    try {
      for (const tracked of order) this.#mergeTwins(tracked, notOurTurn ? -1 : left(1))
    } finally {
      if (turn !== null) this.#index.endMergeTurn(turn)
    }
    const report = this.#emptyReport(time)
    for (const tracked of order) addReport(report, tracked)
    for (const tracked of order) report.markedRuns += tracked.runs
    report.mergeTurnBusy = notOurTurn
    report.cpuMs = (native.threadCpuNs() - cpuStarted) / 1e6
    report.durationMs = performance.now() - started
    this.#record(report)
    return report
  }

  /**
   * Runs a pass every `intervalMs` (default 1000) in the background until stop() or close();
   * `onPass` sees each report. With `maxIntervalMs` above `intervalMs`, each idle pass (nothing
   * hashed, merged, deferred or written after a merge: only hot pages rewritten) doubles the wait
   * up to `maxIntervalMs`, and any activity brings it back to `intervalMs`: a deduplicated,
   * steady process costs a pass per `maxIntervalMs`. The timer does not keep the process alive.
   * A pass that throws ends the loop and stop() rejects with its error.
   *
   * onPass runs synchronously after each pass and may call this Deduplicator's methods:
   * - pass(): runs one more pass there and returns its report (not given to onPass);
   * - stop(): no pass starts after it; stop() then run(): the new loop replaces this one (its first
   *   pass comes at once, then one per interval): there is only ever one loop;
   * - close(): ends the loop and closes; then pass(), run() and track() throw InvalidStateError
   *   ERR_DEDUP_CLOSED, while stop() and close() do nothing;
   * - run() without stop() first: throws ERR_DEDUP_RUNNING, like any error thrown by onPass.
   * An error thrown by onPass ends the loop running when it is thrown (also one onPass itself
   * started with stop(); run()), and stop() rejects with it.
   */
  run(options?: { intervalMs?: number; maxIntervalMs?: number; onPass?: (report: PassReport) => void }): void {
    const opts = readOptions(options, 'options', ['intervalMs', 'maxIntervalMs', 'onPass'])
    const intervalMs = validateInteger(opts.intervalMs ?? 1000, 'options.intervalMs', 0, 2 ** 31 - 1)
    const maxIntervalMs = validateInteger(opts.maxIntervalMs ?? intervalMs, 'options.maxIntervalMs', intervalMs, 2 ** 31 - 1)
    const onPass = opts.onPass
    if (onPass !== undefined && typeof onPass !== 'function') throw invalidArgType('options.onPass', 'a function', onPass)
    this.#assertOpen('run')
    if (this.#running) throw codedError('ERR_DEDUP_RUNNING')
    this.#running = true
    this.#runError = undefined
    this.#intervalMs = intervalMs
    const loop = ++this.#loop
    const current = () => this.#running && this.#loop === loop
    const tick = () => {
      if (!current()) return
      this.#timer = undefined
      try {
        const report = this.pass()
        const idle = report.hashedPages + report.mergedPages + report.markedPages + report.deferredPages + report.mergeDeferredPages + report.cowAfterMerge === 0
        this.#intervalMs = idle ? Math.min(maxIntervalMs, Math.max(1, this.#intervalMs * 2)) : intervalMs
        ;(onPass as ((report: PassReport) => void) | undefined)?.(report)
      } catch (error) {
        this.#endLoop()
        this.#runError = error
        return
      }
      // onPass may have stopped this loop, replaced it (stop(); run()) or closed: then it ends here.
      if (current()) this.#timer = setTimeout(tick, this.#intervalMs).unref()
    }
    this.#timer = setTimeout(tick, 0).unref()
  }

  /** Ends run()'s loop (no pass starts after this); rejects with the error that ended it early, if any. */
  async stop(): Promise<void> {
    this.#endLoop()
    const error = this.#runError
    this.#runError = undefined
    if (error !== undefined) throw error
  }

  /** Totals and the latest pass reports. */
  stats(): DeduplicatorStats {
    return { passes: this.#pass, cpuMs: this.#cpuMs, mergedPages: this.#mergedTotal, markedPages: this.#markedTotal, cowAfterMerge: this.#cowAfterMerge, history: [...this.#history] }
  }

  /**
   * Stops run(), gives every hash back to the index, unregisters, closes the private index. KSM:
   * unmarks what it marked, as untrack() does, so the VMAs the marking split are merged back.
   * Idempotent. An unmarking that fails does not stop the rest: it is closed, then the first
   * SyscallError is thrown.
   */
  close(): void {
    if (this.#closed) return
    this.#endLoop()
    let failure: unknown
    for (const tracked of [...this.#tracked.values()]) {
      tracked.unsubscribe()
      try {
        if (!tracked.region.closed) this.#unmark(tracked, Number(tracked.region.address), tracked.region.length)
      } catch (error) {
        failure ??= error
      }
      this.#forget(tracked.region)
    }
    this.#uffd.close()
    if (this.#ownIndex) this.#index.close()
    unclosed.unregister(this.#token)
    fs.closeSync(this.#pagemapFd)
    this.#closed = true
    if (failure !== undefined) throw failure
  }

  [Symbol.dispose](): void {
    this.close()
  }

  /** Ends run()'s loop, whichever it is: its pending timer is cleared, and a callback of it already running (onPass) does not reschedule. */
  #endLoop(): void {
    this.#running = false
    this.#loop++
    if (this.#timer !== undefined) clearTimeout(this.#timer)
    this.#timer = undefined
  }

  /** Steps 1-2: writes since the last pass, then the candidates, hashed into the index. */
  #scan(tracked: Tracked, budgetNs: number): void {
    const { region, state, hashes, out } = tracked
    const span = region.readableSpan(undefined, 'Deduplicator.pass')
    this.#config[Config.budgetNs] = budgetNs
    this.#config[Config.runAllowance] = this.#runAllowance(tracked)
    // The index's handle right before the call (no JS runs in between: a closed index is ERR_TWIN_INDEX_CLOSED).
    const rc = native.dedupScan(this.#pagemapFd, twinIndexHandle(this.#index, 'pass'), span.address, region.pages, state, hashes, this.#config, out)
    // A failed call may have unmarked some runs before it stopped: count them from the state then.
    if (this.#merge === 'ksm') tracked.runs = rc >= 0 ? out[Report.markedRuns] : countRuns(state)
    this.#check(rc, tracked)
  }

  /** Step 3: candidates with a twin anywhere, merged (or marked for ksmd) in runs. */
  #mergeTwins(tracked: Tracked, budgetNs: number): void {
    const { region, state, hashes, out } = tracked
    const span = region.readableSpan(undefined, 'Deduplicator.pass')
    this.#config[Config.budgetNs] = budgetNs
    this.#config[Config.runAllowance] = this.#runAllowance(tracked)
    const rc = native.dedupMerge(twinIndexHandle(this.#index, 'pass'), span.address, region.pages, state, hashes, this.#config, out)
    // A failed call keeps the marks it made before the failure: count them from the state then.
    if (this.#merge === 'ksm') tracked.runs = rc >= 0 ? out[Report.markedRuns] : countRuns(state)
    this.#check(rc, tracked)
  }

  /**
   * KSM: the marked runs this Region may hold after its next native call: its share of vmaBudget / 2
   * (at least 1), and never more than the other Regions leave, so all of them together stay within
   * the budget whatever order they pass in. A share that shrank (a Region was tracked) is reached by
   * coarsening at the Region's next merge step.
   */
  #runAllowance(tracked: Tracked): number {
    const budgetRuns = Math.floor(this.#vmaBudget / 2)
    let others = 0
    for (const t of this.#tracked.values()) if (t !== tracked) others += t.runs
    const share = Math.max(1, Math.floor(budgetRuns / Math.max(1, this.#tracked.size)))
    return Math.max(0, Math.min(share, budgetRuns - others))
  }

  /**
   * KSM: MADV_UNMERGEABLE over the runs of the Region this Deduplicator marked, at `address`
   * (where the Region's memory is now) within `length`: the split VMAs merge back. A SyscallError
   * if one fails (EINTR and EAGAIN are retried); the runs before it are unmarked.
   */
  #unmark(tracked: Tracked, address: number, length: number): void {
    const { state } = tracked
    const pages = Math.min(state.length, Math.floor(length / pageSize))
    for (let page = 0; page < pages; ) {
      if (!(state[page] & kMarked)) {
        page++
        continue
      }
      const first = page
      while (page < pages && state[page] & kMarked) page++
      let rc = native.madvise(address + first * pageSize, (page - first) * pageSize, C.MADV_UNMERGEABLE)
      for (let attempt = 0; attempt < 3 && (rc === -errno.EINTR || rc === -errno.EAGAIN); attempt++) {
        rc = native.madvise(address + first * pageSize, (page - first) * pageSize, C.MADV_UNMERGEABLE)
      }
      if (rc < 0) throw new SyscallError('madvise(MADV_UNMERGEABLE)', -rc, `Deduplicator unmarking ${page - first} pages`)
      for (let p = first; p < page; p++) state[p] &= ~kMarked
    }
    tracked.runs = countRuns(state)
  }

  #check(rc: number, tracked: Tracked): void {
    if (rc < 0) throw passFailure(rc, tracked.out[Report.failedStage], `Deduplicator.pass on ${tracked.region.length} bytes`)
  }

  #emptyReport(time: number): PassReport {
    return {
      pass: this.#pass + 1, time, trackedPages: 0, writtenPages: 0, candidatePages: 0, hashedPages: 0, duplicatePages: 0,
      mergedPages: 0, markedPages: 0, cowAfterMerge: 0, mergedTotal: 0, markedTotal: 0, unmarkedPages: 0, deferredPages: 0, mergeDeferredPages: 0, mergeTurnBusy: false, indexFullPages: 0, wpLostPages: 0,
      coarsenedPages: 0, markedRuns: 0, cpuMs: 0, scanMs: 0, hashMs: 0, mergeMs: 0, durationMs: 0,
    }
  }

  #record(report: PassReport): void {
    this.#pass++
    this.#cpuMs += report.cpuMs
    this.#cowAfterMerge += report.cowAfterMerge
    this.#mergedTotal = report.mergedTotal
    this.#markedTotal = report.markedTotal
    if (this.#historyLength === 0) return
    this.#history.push(report)
    if (this.#history.length > this.#historyLength) this.#history.splice(0, this.#history.length - this.#historyLength)
  }

  /** Drops the Region's record and gives its hashes back to the index (it may be closing). */
  #forget(region: Region): void {
    const tracked = this.#tracked.get(region)
    if (tracked === undefined) return
    this.#tracked.delete(region)
    if (!this.#index.closed) native.dedupRelease(twinIndexHandle(this.#index, 'untrack'), tracked.state.length, tracked.state, tracked.hashes)
  }

  #assertOpen(operation: string): void {
    if (this.#closed) throw codedError('ERR_DEDUP_CLOSED', operation)
  }
}
