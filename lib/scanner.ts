// The user-space deduplicator the SKSM thread proposes (seed 000): instead of ksmd scanning all
// mergeable memory, track writes with userfaultfd WP_ASYNC + PAGEMAP_SCAN, and merge with
// MADV_MERGE only pages that (1) stayed unwritten for `stablePasses` passes and (2) have a twin
// with the same content (the "unstable tree" idea: never write-protect a page that cannot be
// deduplicated). Pages that are written soon after a merge (a COW) are left alone for
// `backoffPasses` passes, so hot pages do not ping-pong between merged and private.
import { native, pageSize } from './native.ts'
import { check, codedError, FeatureUnavailableError } from './errors.ts'
import { Region, type Range } from './region.ts'
import { Userfaultfd } from './uffd.ts'
import * as pagemap from './pagemap.ts'
import * as sksm from './sksm.ts'
import { invalidArgType, outOfRange, readOptions, validateInteger, validateOneOf } from './validate.ts'

export interface DeduplicatorOptions {
  /** Passes a page must stay unwritten before it is considered (default 2). */
  stablePasses?: number
  /** Passes a page that was written right after a merge is left alone (default 16). */
  backoffPasses?: number
  /** 'sksm' merges with madvise(MADV_MERGE); 'none' only reports what it would merge (a dry
   *  run, for kernels without SKSM). Default: 'sksm' when available, else 'none'. */
  merge?: 'sksm' | 'none'
}

/** What one pass saw and did, in pages. */
export interface PassReport {
  pass: number
  /** Pages of all registered Regions. */
  trackedPages: number
  /** Written since the previous pass (PAGEMAP_SCAN PAGE_IS_WRITTEN). */
  writtenPages: number
  /** Unwritten for stablePasses, present, not merged, not backing off. */
  candidatePages: number
  /** Candidates whose content has a twin (another candidate or an already merged page). */
  duplicatePages: number
  /** Pages passed to MADV_MERGE (0 in a dry run). */
  mergedPages: number
  /** Merged pages written since (COW back to private): these back off. */
  cowAfterMerge: number
  /** Pages currently merged by this deduplicator. */
  mergedTotal: number
  durationMs: number
}

interface Tracked {
  region: Region
  unsubscribe: () => void
  /** Consecutive unwritten passes per page (saturating). */
  clean: Uint8Array
  /** 1 while the page is merged by us. */
  merged: Uint8Array
  /** Remaining back-off passes per page. */
  backoff: Uint16Array
  /** Content hash of each merged page (0n otherwise). */
  hashes: BigUint64Array
}

const PRESENT = pagemap.PageCategory.present

export class Deduplicator {
  #uffd: Userfaultfd
  #tracked = new Map<Region, Tracked>()
  #stablePasses: number
  #backoffPasses: number
  #merge: 'sksm' | 'none'
  #pass = 0
  /** Hashes of merged content ("stable tree"): a later page with one of these merges at once. */
  #stableHashes = new Map<bigint, number>()
  #output = pagemap.scanOutput(4096)
  #closed = false

  constructor(options?: DeduplicatorOptions) {
    const opts = readOptions(options, 'options', ['stablePasses', 'backoffPasses', 'merge'])
    this.#stablePasses = validateInteger(opts.stablePasses ?? 2, 'options.stablePasses', 1, 255)
    this.#backoffPasses = validateInteger(opts.backoffPasses ?? 16, 'options.backoffPasses', 0, 65535)
    this.#merge = validateOneOf(opts.merge ?? (sksm.available() ? 'sksm' : 'none'), 'options.merge', ['sksm', 'none'] as const)
    if (this.#merge === 'sksm' && !sksm.available()) {
      throw new FeatureUnavailableError('sksm', "the deduplicator merges with madvise(MADV_MERGE); use { merge: 'none' } for a dry run")
    }
    this.#uffd = Userfaultfd.open({ features: ['wpAsync', 'wpUnpopulated'] })
  }

  /** Starts tracking a private anonymous Region: registers it for async write-protection and arms it. */
  add(region: Region): void {
    this.#assertOpen('add')
    if (!Region.isRegion(region)) throw invalidArgType('region', 'an instance of Region', region)
    if (region.kind !== 'anonymous') throw invalidArgType('region', "an anonymous Region (MADV_MERGE merges private anonymous pages)", region.kind)
    if (this.#tracked.has(region)) throw codedError('ERR_DEDUP_ALREADY_TRACKED', 'The Region is already tracked by this Deduplicator')
    region.readableSpan(undefined, 'Deduplicator.add')
    // Per-page state first: a Region too large to track fails here, before anything is registered.
    const pages = region.pages
    let state: Pick<Tracked, 'clean' | 'merged' | 'backoff' | 'hashes'>
    try {
      state = { clean: new Uint8Array(pages), merged: new Uint8Array(pages), backoff: new Uint16Array(pages), hashes: new BigUint64Array(pages) }
    } catch {
      throw outOfRange('region.length', 'small enough to track (12 bytes of state per page)', region.length)
    }
    this.#uffd.register(region, { writeProtect: true })
    try {
      // Arm: every page write-protected, so the first pass sees only writes made after add().
      this.#uffd.writeProtect(region, { offset: 0, length: region.length }, true)
    } catch (error) {
      this.#uffd.unregister(region)
      throw error
    }
    const unsubscribe = region.onClose(() => this.#tracked.delete(region))
    this.#tracked.set(region, { region, unsubscribe, ...state })
  }

  /** Stops tracking the Region (it stays mapped; merged pages stay merged until written). */
  remove(region: Region): void {
    const tracked = this.#tracked.get(region)
    if (!tracked) return
    tracked.unsubscribe()
    this.#tracked.delete(region)
    if (!region.closed && !this.#uffd.closed) this.#uffd.unregister(region)
  }

  get regions(): Region[] {
    return [...this.#tracked.keys()]
  }

  /** One pass: collect writes (and re-arm), find stable duplicated pages, merge them. */
  pass(): PassReport {
    this.#assertOpen('pass')
    const started = performance.now()
    const report: PassReport = {
      pass: ++this.#pass,
      trackedPages: 0,
      writtenPages: 0,
      candidatePages: 0,
      duplicatePages: 0,
      mergedPages: 0,
      cowAfterMerge: 0,
      mergedTotal: 0,
      durationMs: 0,
    }
    // 1. Writes since the last pass; PM_SCAN_WP_MATCHING re-protects them in the same ioctl.
    const candidates: { tracked: Tracked; pages: Uint32Array; hashes: BigUint64Array }[] = []
    for (const tracked of this.#tracked.values()) {
      report.trackedPages += tracked.region.pages
      this.#collectWrites(tracked, report)
      const present = this.#presentPages(tracked.region)
      const pages = this.#candidates(tracked, present)
      if (pages.length === 0) continue
      const hashes = new BigUint64Array(pages.length)
      const span = tracked.region.readableSpan(undefined, 'Deduplicator.pass')
      check(native.hashPages(span.address, pages, pages.length, hashes, 0), 'hashPages')
      candidates.push({ tracked, pages, hashes })
      report.candidatePages += pages.length
    }
    // 2. Content index of this pass's candidates: a hash seen twice, or already merged, has a twin.
    const counts = new Map<bigint, number>()
    for (const { hashes } of candidates) for (const h of hashes) counts.set(h, (counts.get(h) ?? 0) + 1)
    // 3. Merge runs of consecutive pages with twins.
    for (const { tracked, pages, hashes } of candidates) {
      let runStart = -1
      let runEnd = -1
      const flush = () => {
        if (runStart < 0) return
        const range: Range = { offset: runStart * pageSize, length: (runEnd - runStart) * pageSize }
        if (this.#merge === 'sksm') {
          sksm.merge(tracked.region, range)
          // The merged PTEs are new and read-only: arm write tracking on them again.
          this.#uffd.writeProtect(tracked.region, range, true)
          report.mergedPages += runEnd - runStart
          tracked.merged.fill(1, runStart, runEnd)
        }
        runStart = -1
      }
      for (let i = 0; i < pages.length; i++) {
        const page = pages[i]
        const hash = hashes[i]
        if ((counts.get(hash) ?? 0) < 2 && !this.#stableHashes.has(hash)) continue
        report.duplicatePages++
        if (this.#merge === 'sksm') {
          tracked.hashes[page] = hash
          this.#stableHashes.set(hash, (this.#stableHashes.get(hash) ?? 0) + 1)
        }
        if (page !== runEnd) {
          flush()
          runStart = page
        }
        runEnd = page + 1
      }
      flush()
    }
    for (const tracked of this.#tracked.values()) for (const m of tracked.merged) report.mergedTotal += m
    report.durationMs = performance.now() - started
    return report
  }

  /** Runs passes every `intervalMs` until `signal` aborts; calls onPass with each report. */
  async run(options: { intervalMs?: number; signal?: AbortSignal; onPass?: (report: PassReport) => void }): Promise<void> {
    const opts = readOptions(options, 'options', ['intervalMs', 'signal', 'onPass'])
    const intervalMs = validateInteger(opts.intervalMs ?? 1000, 'options.intervalMs', 0)
    const signal = opts.signal as AbortSignal | undefined
    while (!signal?.aborted && !this.#closed) {
      const report = this.pass()
      ;(opts.onPass as ((r: PassReport) => void) | undefined)?.(report)
      await new Promise((resolve) => setTimeout(resolve, intervalMs))
    }
  }

  /** Stops tracking everything and closes the userfaultfd. Idempotent. */
  close(): void {
    if (this.#closed) return
    for (const tracked of this.#tracked.values()) tracked.unsubscribe()
    this.#tracked.clear()
    this.#uffd.close()
    this.#closed = true
  }

  [Symbol.dispose](): void {
    this.close()
  }

  #collectWrites(tracked: Tracked, report: PassReport): void {
    const { clean, merged, backoff, hashes } = tracked
    for (let page = 0; page < clean.length; page++) {
      if (clean[page] < 255) clean[page]++
      if (backoff[page] > 0) backoff[page]--
    }
    const base = tracked.region.address
    for (const batch of pagemap.scanAll(tracked.region, { require: ['written'], report: ['written'], writeProtect: true, output: this.#output })) {
      for (let i = 0; i < batch.starts.length; i++) {
        const first = Number((batch.starts[i] - base) / BigInt(pageSize))
        const end = Number((batch.ends[i] - base) / BigInt(pageSize))
        report.writtenPages += end - first
        for (let page = first; page < end; page++) {
          clean[page] = 0
          if (merged[page]) {
            // Written after we merged it: it COWed back to a private copy. Leave it alone a while.
            merged[page] = 0
            backoff[page] = this.#backoffPasses
            report.cowAfterMerge++
            const left = (this.#stableHashes.get(hashes[page]) ?? 1) - 1
            if (left > 0) this.#stableHashes.set(hashes[page], left)
            else this.#stableHashes.delete(hashes[page])
            hashes[page] = 0n
          }
        }
      }
    }
  }

  #presentPages(region: Region): Uint8Array {
    const present = new Uint8Array(region.pages)
    const base = region.address
    // Present and not the shared zero page: untouched memory has nothing to deduplicate.
    for (const batch of pagemap.scanAll(region, { require: PRESENT, exclude: ['pfnZero'], report: PRESENT, output: this.#output })) {
      for (let i = 0; i < batch.starts.length; i++) {
        present.fill(1, Number((batch.starts[i] - base) / BigInt(pageSize)), Number((batch.ends[i] - base) / BigInt(pageSize)))
      }
    }
    return present
  }

  #candidates(tracked: Tracked, present: Uint8Array): Uint32Array {
    const { clean, merged, backoff } = tracked
    const out: number[] = []
    for (let page = 0; page < clean.length; page++) {
      if (present[page] && clean[page] >= this.#stablePasses && !merged[page] && backoff[page] === 0) out.push(page)
    }
    return Uint32Array.from(out)
  }

  #assertOpen(operation: string): void {
    if (this.#closed) throw codedError('ERR_DEDUP_CLOSED', `Cannot ${operation}: the Deduplicator is closed`)
  }
}

/** Content hashes of the Region's pages (or a range): equal content, equal hash. */
export function hashPages(region: Region, range?: Range): BigUint64Array {
  if (!Region.isRegion(region)) throw invalidArgType('region', 'an instance of Region', region)
  const span = region.readableSpan(range, 'hashPages')
  const pages = span.length / pageSize
  const indexes = new Uint32Array(pages).map((_, i) => i)
  const out = new BigUint64Array(pages)
  // A file's pages are copied through the kernel first: a truncated file is EFAULT, not SIGBUS.
  check(native.hashPages(span.address, indexes, pages, out, region.kind === 'file' ? 1 : 0), 'pread(/proc/self/mem)', 'hashPages')
  return out
}
