// KSM and SKSM in one boot (the lab kernel builds both): the same pages MADV_MERGEABLE for ksmd
// running at full speed and MADV_MERGE'd synchronously, merges racing with writers in worker
// threads and in other processes, content checked byte for byte, and no WARNING/BUG in the
// kernel log. Changes ksmd's settings: restores them afterwards (vitest runs each file in its
// own process, one file at a time).
import os from 'node:os'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { Worker } from 'node:worker_threads'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Region, ksm, pagemap, pageSize, sksm } from '../lib/index.ts'
import type { KsmSettings } from '../lib/ksm.ts'
import { checkPattern, fillPattern, kernelProblemsSince, kmsgCursor } from './fixtures/sksm-common.mjs'
import { acquireKsmLock } from './helpers/ksm.ts'
import { inVm } from './helpers/env.mjs'

const hasSksm = sksm.available()
const hasKsm = ksm.available()
// Merge scopes (0048): ksmd's and MADV_MERGE's pages meet only within one scope.
const hasScopes = hasKsm && ksm.stats().sksmScope !== undefined
const skipReason = !hasSksm
  ? ` [skipped: kernel ${os.release()} has no SKSM (madvise(MADV_MERGE) is EINVAL); run in the lab VM]`
  : !hasKsm
    ? ` [skipped: kernel ${os.release()} has no KSM (/sys/kernel/mm/ksm missing)]`
    : ''
// TCG runs Node ~18x slower: fewer pages, longer races
const raceMs = inVm ? 20_000 : 3_000
const run = `${process.pid}-${Date.now()}`
const pfnsOf = (region: Region) => Array.from(pagemap.entries(region).pfns)

interface Raced {
  phase: 'raced'
  id: number
  merges: number
  writes: number
  sameByteWrites: number
  remaps: number
  verifies: number
}
interface Final {
  phase: 'final'
  id: number
  pfns: string[]
  intact: boolean
}

function expectOneCopy(finals: Final[]): void {
  for (const r of finals) expect(r.intact, `racer ${r.id} content`).toBe(true)
  for (const other of finals.slice(1)) expect(other.pfns, `racer ${other.id} vs racer ${finals[0].id}`).toEqual(finals[0].pfns)
  expect(finals[0].pfns.every((pfn) => pfn !== '0')).toBe(true)
}

function expectRaced(raced: Raced[]): void {
  for (const r of raced) {
    expect(r.merges, `racer ${r.id} merges`).toBeGreaterThan(2)
    expect(r.writes).toBeGreaterThan(0)
    expect(r.verifies).toBeGreaterThan(0)
  }
}

describe.skipIf(skipReason !== '')(`KSM and SKSM in one boot${skipReason}`, () => {
  let previous: KsmSettings | undefined
  let releaseKsm: (() => void) | undefined
  let kmsg = -1

  beforeAll(async () => {
    kmsg = kmsgCursor()
    // ksmd's knobs are system-wide: one driver at a time (see test/helpers/ksm.ts)
    releaseKsm = await acquireKsmLock()
    // full speed: no sleep between batches, large batches. ksmd merges per uid as MADV_MERGE does
    // (kernel patch 0048), so their pages meet: with ksmd global they are separate scopes.
    previous = ksm.configure({ run: 1, pagesToScan: 4000, sleepMillisecs: 0, ...(hasScopes ? { ksmdScope: 'uid' } : {}) })
  })
  afterAll(() => {
    try {
      if (previous) ksm.configure(previous)
    } finally {
      releaseKsm?.()
    }
  })

  it('pages both MADV_MERGEABLE and MADV_MERGE\'d stay shared and intact while ksmd scans them', async () => {
    const pages = 128
    const seed = `${run}-both`
    using first = Region.anonymous(pages * pageSize)
    using twin = Region.anonymous(pages * pageSize)
    // a KSM-only pair, to prove ksmd is merging in this boot
    using ksmOnly = Region.anonymous(pages * pageSize)
    using ksmTwin = Region.anonymous(pages * pageSize)
    for (const r of [first, twin]) fillPattern(r.bytes, seed, pageSize)
    for (const r of [ksmOnly, ksmTwin]) fillPattern(r.bytes, `${seed}-ksm`, pageSize)
    for (const r of [first, twin, ksmOnly, ksmTwin]) ksm.enable(r)

    sksm.merge(first)
    sksm.merge(twin)
    expect(pfnsOf(twin)).toEqual(pfnsOf(first))

    // ksmd sees the SKSM pages (mergeable, already write-protected and shared) twice
    await ksm.waitForFullScans(3, { timeoutMs: inVm ? 300_000 : 60_000 })
    expect(pfnsOf(twin)).toEqual(pfnsOf(first))
    expect(checkPattern(first.read(), seed, pageSize)).toBe(-1)
    expect(checkPattern(twin.read(), seed, pageSize)).toBe(-1)
    expect(pfnsOf(ksmTwin), 'ksmd merged the KSM-only pair').toEqual(pfnsOf(ksmOnly))

    // COW out of the shared page, change one page, merge again: only that page stays private
    first.bytes[5 * pageSize] ^= 0xff
    for (let i = 0; i < pages; i++) if (i !== 5) first.bytes[i * pageSize] = first.bytes[i * pageSize]
    const samePages = () => {
      const twinPfns = pfnsOf(twin)
      return pfnsOf(first).filter((pfn, i) => i !== 5 && pfn === twinPfns[i]).length
    }
    // SKSM merges them with twin's copies at once. MADV_MERGE is best-effort per page: ksmd (at
    // full speed on these mergeable pages) holds a reference while it looks at a page, and
    // write_protect_page()'s refcount check then skips it, as KSM skips pinned pages. A caller
    // simply merges again; a few tries must get every page.
    for (let attempt = 0; attempt < 5 && samePages() !== pages - 1; attempt++) sksm.merge(first)
    // Should a port hand SKSM pages over to ksmd (both advised here), ksmd must have merged
    // them within a few scans instead.
    if (samePages() !== pages - 1) await ksm.waitForFullScans(3, { timeoutMs: inVm ? 300_000 : 60_000 })
    const [a, b] = [pfnsOf(first), pfnsOf(twin)]
    for (let i = 0; i < pages; i++) {
      if (i === 5) expect(a[i]).not.toBe(b[i])
      else expect(a[i], `page ${i}`).toBe(b[i])
    }
    expect(checkPattern(twin.read(), seed, pageSize)).toBe(-1)
    first.bytes[5 * pageSize] ^= 0xff
    expect(checkPattern(first.read(), seed, pageSize)).toBe(-1)

    // MADV_UNMERGEABLE on SKSM-merged pages: content intact whatever it unshares
    ksm.disable(twin)
    expect(checkPattern(twin.read(), seed, pageSize)).toBe(-1)
    twin.bytes[0] ^= 1
    expect(checkPattern(first.read(), seed, pageSize)).toBe(-1)
    twin.bytes[0] ^= 1
    expect(checkPattern(twin.read(), seed, pageSize)).toBe(-1)
  })

  it('MADV_MERGE on pages ksmd already merged leaves them, and merges a third copy into them', async () => {
    const pages = 64
    const seed = `${run}-ksm-first`
    using one = Region.anonymous(pages * pageSize)
    using two = Region.anonymous(pages * pageSize)
    using three = Region.anonymous(pages * pageSize)
    for (const r of [one, two, three]) fillPattern(r.bytes, seed, pageSize)
    ksm.enable(one)
    ksm.enable(two)
    await ksm.waitForFullScans(3, { timeoutMs: inVm ? 300_000 : 60_000 })
    expect(pfnsOf(two), 'ksmd merged one and two').toEqual(pfnsOf(one))
    // SKSM on pages ksmd already shares (KSM pages: left as they are), and on a third copy
    // ksmd never saw: SKSM v2 searches KSM's stable tree, so it maps ksmd's pages.
    const ksmPfns = pfnsOf(one)
    sksm.merge(one)
    sksm.merge(two)
    sksm.merge(three)
    for (const r of [one, two, three]) expect(checkPattern(r.read(), seed, pageSize)).toBe(-1)
    expect(pfnsOf(one)).toEqual(ksmPfns)
    expect(pfnsOf(two)).toEqual(ksmPfns)
    expect(pfnsOf(three), 'MADV_MERGE found the KSM pages ksmd made').toEqual(ksmPfns)
    three.bytes[0] ^= 1
    three.bytes[0] ^= 1
    expect(checkPattern(three.read(), seed, pageSize)).toBe(-1)
  })

  it('with ksmd global and MADV_MERGE per uid (the defaults), a copy MADV_MERGE\'d stays out of ksmd\'s pages', async (ctx) => {
    if (!hasScopes) ctx.skip('SKSM without merge scopes: no /sys/kernel/mm/ksm/sksm_scope')
    const pages = 16
    const seed = `${run}-scopes`
    using one = Region.anonymous(pages * pageSize)
    using two = Region.anonymous(pages * pageSize)
    using three = Region.anonymous(pages * pageSize)
    using four = Region.anonymous(pages * pageSize)
    for (const r of [one, two, three, four]) fillPattern(r.bytes, seed, pageSize)
    const before = ksm.configure({ ksmdScope: 'global', sksmScope: 'uid' })
    try {
      ksm.enable(one)
      ksm.enable(two)
      await ksm.waitForFullScans(3, { timeoutMs: inVm ? 300_000 : 60_000 })
      expect(pfnsOf(two), 'ksmd merged one and two').toEqual(pfnsOf(one))
      sksm.merge(three)
      sksm.merge(four)
      expect(pfnsOf(four), 'MADV_MERGE merged three and four').toEqual(pfnsOf(three))
      const ksmPfns = new Set(pfnsOf(one))
      expect(pfnsOf(three).filter((pfn) => ksmPfns.has(pfn)), 'frames shared across the scopes').toEqual([])
      for (const r of [one, two, three, four]) expect(checkPattern(r.read(), seed, pageSize)).toBe(-1)
    } finally {
      ksm.configure(before)
    }
  })

  it('merges race COW writes and unmaps in 4 worker threads (ksmd scanning half of them)', async () => {
    const seed = `${run}-threads`
    const pages = inVm ? 48 : 256
    const workers = Array.from({ length: 4 }, (_, id) =>
      new Worker(new URL('./fixtures/sksm-race.mjs', import.meta.url), {
        workerData: { racer: { id, seed, pages, durationMs: raceMs, ksm: id % 2 === 0 } },
      }),
    )
    const next = (worker: Worker) => new Promise<Raced | Final>((resolve, reject) => {
      const onExit = (code: number) => reject(new Error(`worker exited (${code}) before answering`))
      worker.once('error', reject)
      worker.once('exit', onExit)
      worker.once('message', (message) => {
        worker.off('error', reject)
        worker.off('exit', onExit)
        resolve(message)
      })
    })
    try {
      expectRaced((await Promise.all(workers.map(next))) as Raced[])
      // every racer rewrites the pattern and merges: one physical copy for all four
      const finals = workers.map(next)
      for (const worker of workers) worker.postMessage('finalize')
      expectOneCopy((await Promise.all(finals)) as Final[])
    } finally {
      for (const worker of workers) worker.postMessage('close')
      await Promise.all(workers.map((worker) => new Promise((resolve) => (worker.threadId === -1 ? resolve(null) : worker.once('exit', resolve)))))
    }
  })

  it('merges race writes of the same content in 3 processes and in this one', async () => {
    const seed = `${run}-processes`
    const pages = inVm ? 48 : 256
    const script = new URL('./fixtures/sksm-race.mjs', import.meta.url).pathname
    const children = Array.from({ length: 3 }, (_, id) =>
      spawn(process.execPath, [script, JSON.stringify({ id, seed, pages, durationMs: raceMs, ksm: id === 0 })], {
        stdio: ['pipe', 'pipe', 'inherit'],
      }),
    )
    const lines = children.map((child) => {
      const queue: string[] = []
      const waiting: Array<{ resolve: (line: string) => void; reject: (error: Error) => void }> = []
      createInterface({ input: child.stdout! }).on('line', (line) => {
        const w = waiting.shift()
        if (w) w.resolve(line)
        else queue.push(line)
      })
      child.once('exit', (code) => {
        for (const w of waiting.splice(0)) w.reject(new Error(`racer process exited (${code}) before answering`))
      })
      return () => new Promise<Raced | Final>((resolve, reject) => {
        const line = queue.shift()
        if (line !== undefined) return resolve(JSON.parse(line))
        if (child.exitCode !== null) return reject(new Error(`racer process exited (${child.exitCode})`))
        waiting.push({ resolve: (l) => resolve(JSON.parse(l)), reject })
      })
    })
    try {
      const racedReports = Promise.all(lines.map((next) => next()))
      // this process merges and COWs its own copy meanwhile
      using mine = Region.anonymous(pages * pageSize)
      fillPattern(mine.bytes, seed, pageSize)
      const deadline = Date.now() + raceMs
      let rounds = 0
      while (Date.now() < deadline) {
        sksm.merge(mine)
        for (let i = rounds % 7; i < pages; i += 7) mine.bytes[i * pageSize] = mine.bytes[i * pageSize]
        rounds++
        await new Promise((resolve) => setImmediate(resolve))
      }
      expectRaced((await racedReports) as Raced[])
      expect(rounds).toBeGreaterThan(2)
      const finals = Promise.all(lines.map((next) => next()))
      for (const child of children) child.stdin!.write('finalize\n')
      const results = (await finals) as Final[]
      fillPattern(mine.bytes, seed, pageSize)
      sksm.merge(mine)
      expect(checkPattern(mine.read(), seed, pageSize)).toBe(-1)
      expectOneCopy([...results, { phase: 'final', id: -1, pfns: pfnsOf(mine).map(String), intact: true }])
    } finally {
      for (const child of children) child.stdin!.end()
      await Promise.all(children.map((child) => (child.exitCode !== null ? null : new Promise((resolve) => child.once('exit', resolve)))))
    }
  })

  it('the kernel log has no WARNING/BUG from any of the above', (ctx) => {
    if (kmsg < 0) ctx.skip('/dev/kmsg is not readable here (needs root or CAP_SYSLOG): the kernel log cannot be checked')
    const { problems } = kernelProblemsSince(kmsg)
    expect(problems).toEqual([])
  })
})
