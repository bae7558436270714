// lib/deduplicator.ts: the user-space deduplicator (uffd WP_ASYNC + one PAGEMAP_SCAN per Region per
// pass + a twin index shared across processes + MADV_MERGE, or MADV_MERGEABLE for ksmd without
// SKSM). Write tracking, the stable-pass rule, the twin rule, budgets and the run loop run
// everywhere (dry run); the KSM fallback runs where ksmd is (the host); SKSM merges in the lab VM.
// Every merge claim is proven with PFNs (/proc/<pid>/pagemap, read as root).
import fs from 'node:fs'
import { spawn, type ChildProcess } from 'node:child_process'
import { describe, expect, it, vi } from 'vitest'
import { Region, Deduplicator, TwinIndex, features, pagemap, pageSize as P, InvalidStateError, SyscallError, type PassReport } from '../lib/index.ts'
import { passFailure } from '../lib/deduplicator.ts'
import { native } from '../lib/native.ts'
import { thrown } from './helpers/errors.ts'
import { requires } from './helpers/env.mjs'
import { holdKsmLock, fastKsmd, foreignKsmUsers, inVm, probe } from './helpers/ksm.ts'
import { distEntry, ensureDist } from './helpers/dist.mjs'
import { mergeTurnHolder } from './helpers/merge-turn.ts'

const f = features()
const why = requires(f, ['uffdWpAsync', 'pagemapScan'])
const tracking = why === ''
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Page i of both regions: 32 distinct contents shared by A and B, then content unique to each. */
function fillTwins(a: Region, b: Region): void {
  for (let i = 0; i < a.pages; i++) {
    a.bytes.fill(i < 32 ? i + 1 : 40 + i, i * P, (i + 1) * P) // 72..103: unique
    b.bytes.fill(i < 32 ? i + 1 : 140 + i, i * P, (i + 1) * P) // 172..203: unique
  }
}

/** PFNs of `pages` pages at `address` of process `pid` (/proc/<pid>/pagemap; 0 when not present). */
function pfnsOf(pid: number, address: number, pages: number): bigint[] {
  const fd = fs.openSync(`/proc/${pid}/pagemap`, 'r')
  try {
    const raw = Buffer.alloc(pages * 8)
    fs.readSync(fd, raw, 0, raw.length, (address / P) * 8)
    const out: bigint[] = []
    for (let i = 0; i < pages; i++) {
      const e = raw.readBigUInt64LE(i * 8)
      out.push(e >> 63n ? e & ((1n << 55n) - 1n) : 0n)
    }
    return out
  } finally {
    fs.closeSync(fd)
  }
}

/** ksmd's full scans are shared with every KSM user of the machine (a lab VM's guest RAM on the host). */
function skipIfKsmdShared(ctx: { skip: (note: string) => never }, what: string): never {
  const others = foreignKsmUsers().filter((u) => u.rmapItems > 10_000)
  if (others.length > 0) ctx.skip(`ksmd did not merge ${what} within 4 full scans while ${others.map((u) => `pid ${u.pid} (${u.rmapItems} rmap items)`).join(', ')} also use it`)
  expect.fail(`ksmd merged ${what} within 4 full scans`)
}

describe.skipIf(!tracking)(`Deduplicator${why}`, () => {
  it('dry run: only pages unwritten for stablePasses and with a twin are chosen', () => {
    using dedup = new Deduplicator({ merge: 'none', stablePasses: 2 })
    using a = Region.anonymous(64 * P)
    using b = Region.anonymous(64 * P)
    fillTwins(a, b)
    dedup.track(a)
    dedup.track(b)
    const first = dedup.pass()
    expect(first.trackedPages).toBe(128)
    expect(first.writtenPages).toBe(0) // armed at track(): nothing written since
    expect(first.candidatePages).toBe(0) // clean for 1 pass only
    a.bytes[0] = 77 // A[0] is written: it and its twin B[0] drop out
    const second = dedup.pass()
    expect(second.writtenPages).toBe(1)
    expect(second.candidatePages).toBe(127)
    expect(second.hashedPages).toBe(127)
    // Every Region is scanned before any merges: twins between Regions count in the same pass.
    expect(second.duplicatePages).toBe(62)
    expect(second.mergedPages).toBe(0)
    const third = dedup.pass()
    expect(third.writtenPages).toBe(0)
    expect(third.candidatePages).toBe(127)
    expect(third.hashedPages).toBe(0) // hashes are kept while pages stay unwritten
    expect(third.duplicatePages).toBe(62) // a dry run merges nothing: still candidates
    expect(dedup.stats()).toMatchObject({ passes: 3, mergedPages: 0, cowAfterMerge: 0 })
    expect(dedup.stats().history.map((r) => r.pass)).toEqual([1, 2, 3])
  })

  it('no twin, no merge: unique pages are never chosen, however long they stay clean', () => {
    using dedup = new Deduplicator({ merge: 'none', stablePasses: 1 })
    using r = Region.anonymous(32 * P)
    for (let i = 0; i < 32; i++) r.bytes.fill(i + 1, i * P, (i + 1) * P)
    dedup.track(r)
    for (let i = 0; i < 4; i++) expect(dedup.pass()).toMatchObject({ candidatePages: 32, duplicatePages: 0 })
  })

  it('twins are found across Deduplicators sharing one index, and untrack/close give hashes back', () => {
    using index = TwinIndex.create({ slots: 4096 })
    using one = new Deduplicator({ merge: 'none', stablePasses: 1, index })
    using two = new Deduplicator({ merge: 'none', stablePasses: 1, index })
    using a = Region.anonymous(64 * P)
    using b = Region.anonymous(64 * P)
    fillTwins(a, b)
    one.track(a)
    two.track(b)
    expect(one.pass().duplicatePages).toBe(0) // b not hashed yet
    expect(two.pass().duplicatePages).toBe(32)
    expect(one.pass().duplicatePages).toBe(32)
    expect(index.usedSlots).toBe(32 + 64) // 32 twin contents, 2 × 32 unique ones
    two.untrack(b)
    expect(index.usedSlots).toBe(64)
    expect(one.pass().duplicatePages).toBe(0)
    one.close()
    expect(index.usedSlots).toBe(0)
    expect(index.closed).toBe(false) // an index passed in belongs to the caller
  })

  it('rejects hostile options and bad use clearly', () => {
    expect(() => new Deduplicator({ stablePasses: 0 })).toThrow(RangeError)
    expect(() => new Deduplicator({ backoffPasses: -1 })).toThrow(RangeError)
    expect(() => new Deduplicator({ merge: 'bogus' as never })).toThrow(TypeError)
    expect(() => new Deduplicator({ cpuBudgetMs: -1 })).toThrow(RangeError)
    expect(() => new Deduplicator({ cpuBudgetMs: NaN })).toThrow(RangeError)
    expect(() => new Deduplicator({ cpuBudgetMs: '5' as never })).toThrow(TypeError)
    expect(() => new Deduplicator({ mergeTurns: 1 as never })).toThrow(TypeError)
    expect(() => new Deduplicator({ index: {} as never })).toThrow(TypeError)
    expect(() => new Deduplicator({ stablepasses: 2 } as never)).toThrow(TypeError)
    expect(() => new Deduplicator(42 as never)).toThrow(TypeError)
    const closedIndex = TwinIndex.create({ slots: 64 })
    closedIndex.close()
    expect(() => new Deduplicator({ merge: 'none', index: closedIndex })).toThrow(expect.objectContaining({ code: 'ERR_TWIN_INDEX_CLOSED' }))
    if (!f.sksm) expect(() => new Deduplicator({ merge: 'sksm' })).toThrow(expect.objectContaining({ code: 'ERR_MEMDEDUP_FEATURE_UNAVAILABLE' }))
    using dedup = new Deduplicator({ merge: 'none' })
    using r = Region.anonymous(P)
    dedup.track(r)
    expect(() => dedup.track(r)).toThrow(expect.objectContaining({ code: 'ERR_DEDUP_ALREADY_TRACKED' }))
    using file = Region.memfd(P)
    expect(() => dedup.track(file)).toThrow(TypeError)
    expect(() => dedup.track({} as never)).toThrow(TypeError)
    expect(() => dedup.run({ intervalMs: -1 })).toThrow(RangeError)
    expect(() => dedup.run({ onPass: 5 } as never)).toThrow(TypeError)
    expect(dedup.running).toBe(false)
    dedup.close()
    dedup.close()
    expect(() => dedup.pass()).toThrow(InvalidStateError)
    expect(() => dedup.track(r)).toThrow(expect.objectContaining({ code: 'ERR_DEDUP_CLOSED' }))
    expect(() => dedup.run()).toThrow(expect.objectContaining({ code: 'ERR_DEDUP_CLOSED' }))
  })

  it('a Region closed while tracked drops out and leaves the index', () => {
    using index = TwinIndex.create({ slots: 1024 })
    using dedup = new Deduplicator({ merge: 'none', stablePasses: 1, index })
    const r = Region.anonymous(4 * P)
    for (let i = 0; i < 4; i++) r.bytes.fill(i + 1, i * P, (i + 1) * P)
    dedup.track(r)
    dedup.pass()
    expect(index.usedSlots).toBe(4)
    r.close()
    expect(dedup.regions).toEqual([])
    expect(index.usedSlots).toBe(0)
    expect(dedup.pass().trackedPages).toBe(0)
  })

  it('a tracked Region moved (remap) right next to another tracked Region leaves that one tracked (fuzz seed 424010380: pass() was EPERM)', () => {
    using d = new Deduplicator({ merge: 'none' })
    using res = Region.reserve(64 * P)
    using b = res.mapAnonymous({ offset: 32 * P, length: 4 * P })
    const a = Region.anonymous(12 * P)
    d.track(a)
    d.track(b)
    // Never touched: no anon_vma, so the kernel may merge the moved VMA into b's (see test/uffd.test.ts).
    using moved = a.remap(15 * P, { fixed: { into: res, offset: 17 * P } })
    expect(moved.address + BigInt(moved.length)).toBe(b.address)
    expect(d.pass().trackedPages).toBe(4)
    d.track(moved)
    b.bytes.fill(3)
    expect(d.pass().trackedPages).toBe(19)
  })

  it('a closed index makes pass() an InvalidStateError, not a crash', () => {
    const index = TwinIndex.create({ slots: 64 })
    using dedup = new Deduplicator({ merge: 'none', index })
    using r = Region.anonymous(2 * P)
    dedup.track(r)
    index.close()
    expect(() => dedup.pass()).toThrow(expect.objectContaining({ code: 'ERR_TWIN_INDEX_CLOSED' }))
    dedup.untrack(r) // cannot give hashes back to a closed index: just forgets them
    expect(dedup.regions).toEqual([])
  })

  it('an index closed during a pass (from a Region\'s own readableSpan) is ERR_TWIN_INDEX_CLOSED, not an errno no syscall returned', () => {
    const index = TwinIndex.create({ slots: 64 })
    using dedup = new Deduplicator({ merge: 'none', index, stablePasses: 1 })
    using r = Region.anonymous(2 * P)
    r.bytes.fill(1)
    dedup.track(r)
    dedup.pass()
    // Caller code runs between the pass's start and its native calls: it may close the index there.
    Object.defineProperty(r, 'readableSpan', { value: (...args: Parameters<Region['readableSpan']>) => (index.close(), Region.prototype.readableSpan.apply(r, args)) })
    const error = thrown(() => dedup.pass())
    expect(error).not.toBeInstanceOf(SyscallError)
    expect(error).toMatchObject({ name: 'InvalidStateError', code: 'ERR_TWIN_INDEX_CLOSED' })
  })

  it('a failed pass is the SyscallError of the call its stage names; a stage naming no call is ERR_INTERNAL_ASSERTION', () => {
    const stage = native.dedupFailedStage
    expect(passFailure(-9, stage.pagemapScan, 'ctx')).toMatchObject({ constructor: SyscallError, syscall: 'ioctl(PAGEMAP_SCAN)', code: 'EBADF', errno: -9 })
    expect(passFailure(-22, stage.madviseMergeable, 'ctx')).toMatchObject({ syscall: 'madvise(MADV_MERGEABLE)', code: 'EINVAL' })
    expect(passFailure(-5, stage.pagemapRead, 'ctx')).toMatchObject({ syscall: 'pread(/proc/self/pagemap)', code: 'EIO' })
    // Before: SyscallError('' or 'dedupPass', EBADF), an errno passed off as a syscall's.
    for (const unknown of [0, 99]) {
      const error = passFailure(-9, unknown, 'ctx')
      expect(error).not.toBeInstanceOf(SyscallError)
      expect(error).toMatchObject({ name: 'Error', code: 'ERR_INTERNAL_ASSERTION', message: expect.stringMatching(/names no call/) })
      expect(error).not.toHaveProperty('errno')
    }
  })

  it('a CPU budget defers hashing to later passes, and every candidate is hashed eventually', () => {
    using dedup = new Deduplicator({ merge: 'none', stablePasses: 1, cpuBudgetMs: 0.001 })
    using r = Region.anonymous(4096 * P)
    for (let i = 0; i < r.pages; i++) r.bytes[i * P] = (i % 251) + 1
    dedup.track(r)
    const first = dedup.pass()
    expect(first.candidatePages).toBe(4096)
    expect(first.deferredPages).toBeGreaterThan(0)
    expect(first.hashedPages + first.deferredPages).toBe(4096)
    let hashed = first.hashedPages
    for (let i = 0; i < 10_000 && hashed < 4096; i++) hashed += dedup.pass().hashedPages
    expect(hashed).toBe(4096)
    const stats = dedup.stats()
    expect(stats.cpuMs).toBeGreaterThan(0)
    expect(stats.cpuMs).toBeCloseTo(stats.history.reduce((s, h) => s + h.cpuMs, 0), 3)
  })

  it('run()/stop(): passes in the background, one loop at a time, stop and close end it', async () => {
    using dedup = new Deduplicator({ merge: 'none', stablePasses: 1 })
    using r = Region.anonymous(16 * P)
    dedup.track(r)
    const seen: number[] = []
    dedup.run({ intervalMs: 5, onPass: (report) => seen.push(report.pass) })
    expect(dedup.running).toBe(true)
    expect(() => dedup.run({ intervalMs: 5 })).toThrow(expect.objectContaining({ code: 'ERR_DEDUP_RUNNING' }))
    while (dedup.stats().passes < 3) await sleep(10) // under TCG a pass can take tens of ms
    await dedup.stop()
    await dedup.stop() // idempotent
    const passes = dedup.stats().passes
    expect(passes).toBeGreaterThan(2)
    expect(seen).toEqual(Array.from({ length: passes }, (_, i) => i + 1))
    await sleep(40)
    expect(dedup.stats().passes).toBe(passes) // nothing ran after stop()
    // Untrack, then close, while running.
    dedup.run({ intervalMs: 1 })
    await sleep(20)
    dedup.untrack(r)
    await sleep(20)
    dedup.close()
    const after = dedup.stats().passes
    await sleep(30)
    expect(dedup.stats().passes).toBe(after)
    expect(dedup.running).toBe(false)
    await dedup.stop()
  })

  it('run({ maxIntervalMs }): idle passes double the wait up to the maximum; activity resets it', async () => {
    using dedup = new Deduplicator({ merge: 'none', stablePasses: 1 })
    using r = Region.anonymous(16 * P)
    dedup.track(r)
    expect(() => dedup.run({ intervalMs: 10, maxIntervalMs: 5 })).toThrow(RangeError)
    const waits: number[] = []
    dedup.run({ intervalMs: 2, maxIntervalMs: 16, onPass: () => waits.push(dedup.intervalMs) })
    while (waits.length < 6) await sleep(5)
    // Untouched (never-written, not present) pages: nothing to hash, every pass idle.
    expect(waits.slice(0, 5)).toEqual([4, 8, 16, 16, 16])
    // A written page becomes a candidate and is hashed: activity, back to 2 ms.
    r.bytes[3 * P] = 1
    const before = waits.length
    while (!waits.slice(before).includes(2)) await sleep(5)
    await dedup.stop()
    // Without maxIntervalMs the wait never changes.
    waits.length = 0
    dedup.run({ intervalMs: 3, onPass: () => waits.push(dedup.intervalMs) })
    while (waits.length < 4) await sleep(5)
    await dedup.stop()
    expect(new Set(waits)).toEqual(new Set([3]))
  })

  it('run(): an error in a pass ends the loop and stop() rejects with it; run() after stop() works', async () => {
    using dedup = new Deduplicator({ merge: 'none' })
    using r = Region.anonymous(P)
    dedup.track(r)
    const boom = new Error('onPass failed')
    dedup.run({ intervalMs: 1, onPass: () => { throw boom } })
    await sleep(30)
    expect(dedup.running).toBe(false)
    await expect(dedup.stop()).rejects.toBe(boom)
    dedup.run({ intervalMs: 1 })
    await sleep(10)
    await dedup.stop()
    expect(dedup.stats().passes).toBeGreaterThan(1)
  })

  // Re-entrancy: onPass may call run/stop/pass/close. The timers are vitest's fake ones (only
  // setTimeout/clearTimeout), so every pass and every pending timer can be counted exactly.
  it('stop(); run() inside onPass replaces the loop: exactly one timer chain, one pass per interval', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] })
    try {
      using dedup = new Deduplicator({ merge: 'none' })
      using r = Region.anonymous(P)
      dedup.track(r)
      let restarts = 0
      const onPass = () => {
        if (restarts === 3) return
        restarts++
        void dedup.stop()
        dedup.run({ intervalMs: 100, onPass })
      }
      dedup.run({ intervalMs: 100, onPass })
      // A run's first pass comes at once: the three restarts and the fourth loop's first pass.
      vi.advanceTimersByTime(10)
      expect(restarts).toBe(3)
      expect(dedup.stats().passes).toBe(4)
      expect(dedup.running).toBe(true)
      expect(vi.getTimerCount()).toBe(1)
      // Five intervals, five passes (a stale loop left alive would add its own, and its restarts more).
      vi.advanceTimersByTime(500)
      expect(dedup.stats().passes).toBe(9)
      expect(vi.getTimerCount()).toBe(1)
      await dedup.stop()
      expect(vi.getTimerCount()).toBe(0)
      vi.advanceTimersByTime(1000)
      expect(dedup.stats().passes).toBe(9)
      // onPass restarting and then throwing: the error ends the loop it started; stop() rejects with it.
      const boom = new Error('onPass failed after a restart')
      let thrown = false
      dedup.run({
        intervalMs: 100,
        onPass: () => {
          if (thrown) return
          thrown = true
          void dedup.stop()
          dedup.run({ intervalMs: 100 })
          throw boom
        },
      })
      vi.advanceTimersByTime(1000)
      expect(dedup.stats().passes).toBe(10)
      expect(dedup.running).toBe(false)
      expect(vi.getTimerCount()).toBe(0)
      await expect(dedup.stop()).rejects.toBe(boom)
    } finally {
      vi.useRealTimers()
    }
  })

  it('close() inside onPass ends the loop; later calls throw ERR_DEDUP_CLOSED, stop() and close() stay harmless', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] })
    try {
      using r = Region.anonymous(P)
      const dedup = new Deduplicator({ merge: 'none' })
      dedup.track(r)
      const seen: number[] = []
      dedup.run({
        intervalMs: 100,
        onPass: (report) => {
          seen.push(report.pass)
          dedup.close()
        },
      })
      vi.advanceTimersByTime(1000)
      expect(seen).toEqual([1])
      expect(dedup.stats().passes).toBe(1)
      expect(dedup.closed).toBe(true)
      expect(dedup.running).toBe(false)
      expect(vi.getTimerCount()).toBe(0)
      expect(() => dedup.pass()).toThrow(expect.objectContaining({ name: 'InvalidStateError', code: 'ERR_DEDUP_CLOSED' }))
      expect(() => dedup.run({ intervalMs: 100 })).toThrow(expect.objectContaining({ name: 'InvalidStateError', code: 'ERR_DEDUP_CLOSED' }))
      expect(() => dedup.track(r)).toThrow(expect.objectContaining({ name: 'InvalidStateError', code: 'ERR_DEDUP_CLOSED' }))
      await expect(dedup.stop()).resolves.toBeUndefined()
      dedup.close()
      expect(r.closed).toBe(false) // a tracked Region outlives its Deduplicator
    } finally {
      vi.useRealTimers()
    }
  })

  it('pass() inside onPass runs one more pass there (onPass is not called for it); the loop goes on', () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] })
    try {
      using dedup = new Deduplicator({ merge: 'none', stablePasses: 1 })
      using r = Region.anonymous(4 * P)
      dedup.track(r)
      const seen: number[] = []
      const nested: PassReport[] = []
      dedup.run({
        intervalMs: 100,
        onPass: (report) => {
          seen.push(report.pass)
          nested.push(dedup.pass())
        },
      })
      vi.advanceTimersByTime(250) // loop passes at 0, 100 and 200 ms
      expect(seen).toEqual([1, 3, 5])
      expect(nested.map((report) => report.pass)).toEqual([2, 4, 6])
      expect(dedup.stats().history.map((report) => report.pass)).toEqual([1, 2, 3, 4, 5, 6])
      expect(dedup.running).toBe(true)
      expect(vi.getTimerCount()).toBe(1)
    } finally {
      vi.useRealTimers()
    }
  })

  it('stop() right after run() and run() right after stop() never run two loops', async () => {
    using dedup = new Deduplicator({ merge: 'none' })
    using r = Region.anonymous(P)
    dedup.track(r)
    for (let i = 0; i < 50; i++) {
      dedup.run({ intervalMs: 0 })
      await dedup.stop()
    }
    expect(dedup.stats().passes).toBe(0) // every run was stopped before its first pass
    dedup.run({ intervalMs: 0 })
    await sleep(30)
    await dedup.stop()
    const passes = dedup.stats().passes
    await sleep(20)
    expect(dedup.stats().passes).toBe(passes)
  })
})

/**
 * A pass's merges stop at its CPU budget. `a` is tracked with a budget of 1 µs: its passes hash
 * a few pages each until all are held (no twins yet: `b` is not in the index). Then a second
 * Deduplicator without a budget hashes `b` into the same index in one pass, and every page of
 * `a` with a twin is ready at once: `a`'s next passes merge (or mark) one 64-page batch each,
 * report the rest as mergeDeferredPages, and get through them all. `b` is merged by `other`.
 * `whileOpen` runs before both Deduplicators close.
 */
function budgetedMerges(merge: 'sksm' | 'ksm', a: Region, b: Region, whileOpen?: () => void): void {
  const twins = 768
  for (const [k, region] of [a, b].entries()) {
    const view = new DataView(region.bytes.buffer, region.bytes.byteOffset, region.length)
    for (let i = 0; i < region.pages; i++) view.setUint32(i * P, i < twins ? 1000 + i : 100_000 * (k + 1) + i)
  }
  using index = TwinIndex.create({ slots: 8192 })
  using dedup = new Deduplicator({ merge, index, stablePasses: 1, cpuBudgetMs: 0.001 })
  using other = new Deduplicator({ merge, index, stablePasses: 1 })
  // SKSM merges; KSM marks for ksmd (and merges nothing itself): the other pair stays 0.
  const [pages, total] = merge === 'sksm' ? (['mergedPages', 'mergedTotal'] as const) : (['markedPages', 'markedTotal'] as const)
  const [otherPages, otherTotal] = merge === 'sksm' ? (['markedPages', 'markedTotal'] as const) : (['mergedPages', 'mergedTotal'] as const)
  dedup.track(a)
  let report = dedup.pass()
  for (let i = 0; i < 1000 && report.deferredPages > 0; i++) report = dedup.pass()
  expect(report).toMatchObject({ deferredPages: 0, duplicatePages: 0, [total]: 0 })
  other.track(b)
  expect(other.pass()).toMatchObject({ hashedPages: 1024, duplicatePages: twins, [pages]: twins, [otherPages]: 0 })
  report = dedup.pass()
  expect(report).toMatchObject({ hashedPages: 0, duplicatePages: twins, [pages]: 64, mergeDeferredPages: twins - 64 })
  for (let done = 64; done < twins; done += 64) {
    expect(report.scanMs + report.hashMs + report.mergeMs).toBeLessThanOrEqual(report.cpuMs + 1e-6)
    expect(report[total]).toBe(done)
    expect(report[otherTotal]).toBe(0)
    report = dedup.pass()
    expect(report[pages]).toBe(64)
  }
  expect(report).toMatchObject({ mergeDeferredPages: 0, [total]: twins })
  expect(dedup.pass()).toMatchObject({ [pages]: 0, mergeDeferredPages: 0, [total]: twins })
  whileOpen?.()
}

describe.skipIf(!tracking || !f.sksm)(`Deduplicator with MADV_MERGE${requires(f, ['uffdWpAsync', 'pagemapScan', 'sksm'])}`, () => {
  it('merges twins (same PFN), saves their frames, keeps content, and backs off after a COW', () => {
    using dedup = new Deduplicator({ merge: 'sksm', stablePasses: 1, backoffPasses: 4 })
    using a = Region.anonymous(64 * P)
    using b = Region.anonymous(64 * P)
    fillTwins(a, b)
    const expectedA = Buffer.from(a.bytes)
    const expectedB = Buffer.from(b.bytes)
    dedup.track(a)
    dedup.track(b)
    expect(dedup.pass().mergedPages).toBe(64)
    const pa = pagemap.entries(a).pfns
    const pb = pagemap.entries(b).pfns
    for (let i = 0; i < 32; i++) expect(pa[i], `page ${i}`).toBe(pb[i])
    for (let i = 32; i < 64; i++) expect(pa[i]).not.toBe(pb[i])
    // 128 mapped pages now use 96 frames (the kernel's own truth).
    expect(new Set([...pa, ...pb]).size).toBe(96)
    expect(Buffer.from(a.bytes).equals(expectedA)).toBe(true)
    expect(Buffer.from(b.bytes).equals(expectedB)).toBe(true)
    // SKSM v2 keeps uffd-wp across the merge (kernel-patches/0001): no re-arming, and the merged
    // pages are not reported as written.
    expect(pagemap.entries(a).count(pagemap.PageFlag.uffdWp)).toBe(64)
    const quiet = dedup.pass()
    expect(quiet.writtenPages).toBe(0)
    expect(quiet.wpLostPages).toBe(0)
    expect(quiet.mergedTotal).toBe(64)
    // A write COWs A[3] back to a private page, which backs off.
    a.bytes[3 * P] = 0xee
    expect(pagemap.entries(a).pfns[3]).not.toBe(pagemap.entries(b).pfns[3])
    const after = dedup.pass()
    expect(after.cowAfterMerge).toBe(1)
    expect(after.mergedTotal).toBe(63)
    expect(b.bytes[3 * P]).toBe(4)
    expect(a.bytes[3 * P + 1]).toBe(4)
    for (let i = 0; i < 3; i++) expect(dedup.pass().mergedPages).toBe(0) // backing off (4 passes)
    expect(dedup.stats().cowAfterMerge).toBe(1)
  })

  it('mergeTurns: while another process has the index\'s merge turn, a pass only counts its twins', async () => {
    using index = TwinIndex.create({ slots: 4096 })
    using dedup = new Deduplicator({ merge: 'sksm', index, stablePasses: 1, mergeTurns: true })
    using free = new Deduplicator({ merge: 'sksm', stablePasses: 1 }) // mergeTurns off (default): never waits
    using a = Region.anonymous(64 * P)
    using b = Region.anonymous(64 * P)
    using c = Region.anonymous(64 * P)
    using d = Region.anonymous(64 * P)
    fillTwins(a, b)
    fillTwins(c, d)
    dedup.track(a)
    dedup.track(b)
    free.track(c)
    free.track(d)
    const holder = mergeTurnHolder(index, 600_000)
    try {
      expect(await holder.took).toBe('true')
      const waiting = dedup.pass()
      expect(waiting).toMatchObject({ mergeTurnBusy: true, duplicatePages: 64, mergedPages: 0, mergeDeferredPages: 64, mergedTotal: 0 })
      expect(free.pass()).toMatchObject({ mergeTurnBusy: false, mergedPages: 64 })
      expect(await holder.ended()).toBe('ended')
      expect(dedup.pass()).toMatchObject({ mergeTurnBusy: false, mergedPages: 64, mergeDeferredPages: 0, mergedTotal: 64 })
      const pa = pagemap.entries(a).pfns
      const pb = pagemap.entries(b).pfns
      for (let i = 0; i < 32; i++) expect(pa[i], `page ${i}`).toBe(pb[i])
    } finally {
      holder.child.kill('SIGKILL')
    }
  })

  it('a CPU budget bounds the merges too: one batch per Region a pass, the rest merged later', () => {
    using a = Region.anonymous(1024 * P)
    using b = Region.anonymous(1024 * P)
    budgetedMerges('sksm', a, b)
    const pa = pagemap.entries(a).pfns
    const pb = pagemap.entries(b).pfns
    for (let i = 0; i < 1024; i++) expect(pa[i] === pb[i], `page ${i} shared`).toBe(i < 768)
  })
})

/** Page ranges of [address, address + length) in process `pid` whose VMAs are MADV_MERGEABLE ("mg" in smaps). */
function mergeableRangesAt(pid: number | 'self', address: bigint, length: number): bigint[][] {
  const vmas = fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)
  const marked = vmas.filter((v) => / mg/.test(v.split('VmFlags:')[1] ?? '')).map((v) => v.split(' ')[0].split('-').map((x) => BigInt('0x' + x)))
  const offsets = marked.filter(([s, e]) => s >= address && e <= address + BigInt(length)).map(([s, e]) => [(s - address) / BigInt(P), (e - address) / BigInt(P)])
  // Adjacent VMAs with equal flags may stay split (uffd contexts): report merged ranges.
  const out: bigint[][] = []
  for (const [s, e] of offsets.sort((x, y) => Number(x[0] - y[0]))) {
    if (out.length > 0 && out[out.length - 1][1] === s) out[out.length - 1][1] = e
    else out.push([s, e])
  }
  return out
}

const mergeableRanges = (region: Region): bigint[][] => mergeableRangesAt('self', region.address, region.length)

describe.skipIf(!tracking || !f.ksm)(`Deduplicator KSM fallback, marking${requires(f, ['uffdWpAsync', 'pagemapScan', 'ksm'])}`, () => {
  it('a run spans the cold pages between twins (no VMA per twin), never a hot page or the cold tail', () => {
    using dedup = new Deduplicator({ merge: 'ksm', stablePasses: 1 })
    using a = Region.anonymous(64 * P)
    using b = Region.anonymous(64 * P)
    const va = new DataView(a.bytes.buffer, a.bytes.byteOffset, a.length)
    const vb = new DataView(b.bytes.buffer, b.bytes.byteOffset, b.length)
    for (let i = 0; i < 64; i++) {
      // Even pages below 48: twins; odd pages and the tail: unique to each Region.
      const twin = i % 2 === 0 && i < 48
      va.setUint32(i * P, twin ? i + 1 : 0x10000 + i)
      vb.setUint32(i * P, twin ? i + 1 : 0x20000 + i)
    }
    dedup.track(a)
    dedup.track(b)
    a.bytes[21 * P] = 1 // hot: breaks A's run
    const report = dedup.pass()
    expect(report.duplicatePages).toBe(48)
    expect(mergeableRanges(a)).toEqual([[0n, 21n], [22n, 47n]])
    expect(mergeableRanges(b)).toEqual([[0n, 47n]])
    expect(report).toMatchObject({ markedPages: 21 + 25 + 47, mergedPages: 0 })
    a.bytes[30 * P] = 2 // a marked page turns hot: unmarked
    const hot = dedup.pass()
    expect(hot.unmarkedPages).toBe(1)
    expect(mergeableRanges(a)).toEqual([[0n, 21n], [22n, 30n], [31n, 47n]])
  })

  it('a CPU budget bounds the marking too: one batch per Region a pass, the rest marked later', () => {
    using a = Region.anonymous(1024 * P)
    using b = Region.anonymous(1024 * P)
    budgetedMerges('ksm', a, b, () => {
      for (const region of [a, b]) expect(mergeableRanges(region)).toEqual([[0n, 768n]])
    })
    // close() gave the marks (and the VMAs they split) back.
    for (const region of [a, b]) expect(mergeableRanges(region)).toEqual([])
  })
})

describe.skipIf(!tracking || !f.ksm || !probe().pfnsVisible)(`Deduplicator KSM fallback${requires({ ...f, pfns: probe().pfnsVisible }, ['uffdWpAsync', 'pagemapScan', 'ksm', 'pfns'])}`, () => {
  const state = holdKsmLock({ ...fastKsmd, run: 1 })

  it('marks exactly the twin runs MADV_MERGEABLE, ksmd merges them, hot pages are unmarked', async (ctx) => {
    using dedup = new Deduplicator({ merge: 'ksm', stablePasses: 1, backoffPasses: 4 })
    using a = Region.anonymous(64 * P)
    using b = Region.anonymous(64 * P)
    fillTwins(a, b)
    dedup.track(a)
    dedup.track(b)
    expect(dedup.pass()).toMatchObject({ markedTotal: 64, mergedTotal: 0 }) // marked for ksmd: merging is ksmd's
    // Exactly the first 32 pages of each Region (the unique ones stay out of ksmd's sight).
    for (const region of [a, b]) expect(mergeableRanges(region)).toEqual([[0n, 32n]])
    const twinsShared = () => {
      const pa = pagemap.entries(a).pfns
      const pb = pagemap.entries(b).pfns
      for (let i = 0; i < 32; i++) if (pa[i] !== pb[i]) return false
      return true
    }
    if (!(await state.until(twinsShared, 4))) skipIfKsmdShared(ctx, 'the twins')
    const pa = pagemap.entries(a).pfns
    const pb = pagemap.entries(b).pfns
    for (let i = 32; i < 64; i++) expect(pa[i]).not.toBe(pb[i])
    // ksmd's merge is not a write: on a kernel whose KSM drops uffd-wp (no kernel-patches/0001)
    // the pass tells it by the page still being shared.
    const quiet = dedup.pass()
    expect(quiet.writtenPages).toBe(0)
    expect(quiet.cowAfterMerge).toBe(0)
    expect(quiet.markedTotal).toBe(64)
    // (6.18 drops it on about half of them; the lab kernel, with the patch, on none.)
    if (f.sksm) expect(quiet.wpLostPages).toBe(0)
    a.bytes[5 * P] = 0xee
    const hot = dedup.pass()
    expect(hot).toMatchObject({ writtenPages: 1, cowAfterMerge: 1, unmarkedPages: 1, markedTotal: 63 })
    expect(b.bytes[5 * P]).toBe(6)
  })
})

describe.skipIf(!tracking || !probe().pfnsVisible || !(f.sksm || f.ksm))(`Deduplicator across processes${requires({ ...f, pfns: probe().pfnsVisible }, ['uffdWpAsync', 'pagemapScan', 'pfns'])}`, () => {
  const state = holdKsmLock({ ...fastKsmd, run: 1 }, () => !f.sksm)

  it('three workers with the same data (unique within each) share it; their unique pages stay private', async (ctx) => {
    ensureDist()
    using index = TwinIndex.create({ slots: 4096 })
    const pages = 64
    const shared = 48 // pages 0..47 the same in every worker, 48..63 unique to each
    const script = `
      const { Region, Deduplicator, TwinIndex, ksm, pageSize: P } = await import(${JSON.stringify(distEntry)})
      const index = TwinIndex.open(process.env.INDEX)
      const r = Region.anonymous(${pages} * P)
      const view = new DataView(r.bytes.buffer, r.bytes.byteOffset, r.length)
      for (let i = 0; i < ${pages}; i++) view.setUint32(i * P, i < ${shared} ? 1000 + i : 100000 * process.pid + i)
      const d = new Deduplicator({ merge: 'auto', index, stablePasses: 1 })
      d.track(r)
      d.run({ intervalMs: 20 })
      process.stdout.write(JSON.stringify({ address: Number(r.address), merge: d.merge }) + '\\n')
      process.stdin.resume()
      process.stdin.on('end', async () => {
        await d.stop()
        const s = d.stats()
        const merging = ksm.processStats().ksmMergingPages
        process.stdout.write(JSON.stringify({ passes: s.passes, mergedPages: s.mergedPages, markedPages: s.markedPages, merging }) + '\\n')
        d.close()
        process.exit(0)
      })
    `
    const children: ChildProcess[] = []
    try {
      const lines: string[][] = []
      const started = [0, 1, 2].map((k) => {
        const child = spawn(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, INDEX: index.path }, stdio: ['pipe', 'pipe', 'inherit'] })
        children.push(child)
        lines[k] = []
        let buffered = ''
        return new Promise<{ address: number; merge: string }>((resolve) => {
          child.stdout!.on('data', (chunk) => {
            buffered += chunk
            const parts = buffered.split('\n')
            buffered = parts.pop()!
            for (const line of parts) {
              lines[k].push(line)
              if (lines[k].length === 1) resolve(JSON.parse(line))
            }
          })
        })
      })
      const infos = await Promise.all(started)
      expect(infos.every((i) => i.merge === (f.sksm ? 'sksm' : 'ksm'))).toBe(true)
      const pfns = () => children.map((c, k) => pfnsOf(c.pid!, infos[k].address, pages))
      const allShared = () => {
        const [p0, p1, p2] = pfns()
        for (let i = 0; i < shared; i++) if (p0[i] === 0n || p0[i] !== p1[i] || p0[i] !== p2[i]) return false
        return true
      }
      if (f.sksm) {
        const deadline = Date.now() + (inVm ? 500_000 : 50_000)
        while (!allShared() && Date.now() < deadline) await sleep(50)
        expect(allShared()).toBe(true)
      } else {
        // ksmd's full scans count only once every worker has marked its twins: under load a
        // worker's first passes can come after several of ksmd's (fast, nearly empty) scans.
        const marked = () => children.every((c, k) => mergeableRangesAt(c.pid!, BigInt(infos[k].address), pages * P).some(([s, e]) => s === 0n && e >= BigInt(shared)))
        const deadline = Date.now() + (inVm ? 300_000 : 30_000)
        while (!marked() && Date.now() < deadline) await sleep(20)
        expect(marked(), 'every worker marked its shared pages MADV_MERGEABLE').toBe(true)
      }
      if (!f.sksm && !(await state.until(allShared, 4))) {
        skipIfKsmdShared(ctx, "the workers' shared pages")
      }
      const [p0, p1, p2] = pfns()
      for (let i = shared; i < pages; i++) expect(new Set([p0[i], p1[i], p2[i]]).size, `unique page ${i}`).toBe(3)
      for (const c of children) c.stdin!.end()
      await Promise.all(children.map((c) => new Promise((resolve) => c.once('exit', resolve))))
      for (const k of [0, 1, 2]) {
        const end = JSON.parse(lines[k].at(-1)!)
        // SKSM merged them itself; with KSM it marked them and ksmd merged them (merging, below).
        const sksmMerged = JSON.parse(lines[k][0]).merge === 'sksm'
        expect(end).toMatchObject({ mergedPages: sksmMerged ? shared : 0, markedPages: sksmMerged ? 0 : shared })
        // The kernel's own count (/proc/<pid>/ksm_stat): every shared page and none of the unique ones.
        expect(end.merging).toBe(shared)
      }
      expect(index.usedSlots).toBe(0) // every worker gave its hashes back on close()
    } finally {
      for (const c of children) if (c.exitCode === null) c.kill('SIGKILL')
    }
  })
})
