// lib/daemon.ts: the deduplicator of other, unmodified processes (test/fixtures/daemon-target.c:
// cold pages, twins across targets with the same seed, and hot pages a thread rewrites every 2 ms).
// What merged is read from the targets' /proc/<pid>/pagemap (root) and checked byte for byte by
// the targets themselves.
import { spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import { Daemon, features, FeatureUnavailableError, ksm, pageSize, type DaemonPassReport } from '../lib/index.ts'
import { fixtureBinary } from './helpers/c-fixture.ts'
import { distEntry, ensureDist, repoRoot } from './helpers/dist.mjs'
import { noFdLeak } from './helpers/process.ts'
import { fastKsmd, holdKsmLock, inVm, kpfKsmWorks, ksmFlags, skipUnlessKsmSettings, skipUnlessOnlyKsmUser } from './helpers/ksm.ts'
import { kernelProblemsSince, kmsgCursor } from './fixtures/sksm-common.mjs'
import { pfnsOf, sharedFrames, startDaemonTarget, type DaemonTarget } from './helpers/daemon-target.ts'
import { thpUnavailable } from './helpers/mm-fork.ts'

const isRoot = process.getuid?.() === 0
const softDirty = features().softDirty
const remoteMerge = features().remoteMerge
const missing = !softDirty
  ? `kernel ${os.release()} does not track soft-dirty pages (CONFIG_MEM_SOFT_DIRTY)`
  : !remoteMerge
    ? `kernel ${os.release()}: process_madvise() does not take MADV_MERGE (lab kernel patch 0052)`
    : !isRoot
      ? 'needs root (PFNs of other processes, CAP_SYS_NICE)'
      : ''
const skipWhy = missing ? ` [skipped: ${missing}]` : ''

const coldPages = 256
const hotPages = 8
// The churn test: how long the target unmaps and moves its pages, and its longest rest between cycles.
const churnMs = inVm ? 20_000 : 2_000
const churnPauseMs = inVm ? 400 : 40

const running: DaemonTarget[] = []

async function startTarget(seed: number, options: { uid?: number; gid?: number; growable?: boolean } = {}): Promise<DaemonTarget> {
  const target = await startDaemonTarget(coldPages, hotPages, seed, options)
  running.push(target)
  return target
}

afterEach(async () => {
  for (const target of running.splice(0)) await target.stop()
})

const pfns = pfnsOf

/** PFNs of every page process `pid` maps (0 where none). */
function allPfns(pid: number): bigint[] {
  const ranges = fs.readFileSync(`/proc/${pid}/maps`, 'utf8').trim().split('\n').map((line) => line.split(' ')[0].split('-').map((a) => BigInt(`0x${a}`)))
  // [vsyscall] lies above the range pagemap covers.
  return ranges.filter(([start]) => start < 1n << 47n).flatMap(([start, end]) => pfns(pid, start, Number(end - start) / pageSize))
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** `count` passes, `gapMs` apart (the hot pages are written meanwhile). */
async function passes(daemon: Daemon, count: number, gapMs = 100) {
  const reports = []
  for (let i = 0; i < count; i++) {
    await sleep(gapMs)
    reports.push(daemon.pass())
  }
  return reports
}

/**
 * cgroup v2 groups for one test (`names` under a group of this run, parents first): `body` gets
 * their paths; afterwards every target is stopped, and the groups removed once empty (a forked
 * child dies with its parent, PR_SET_PDEATHSIG, a moment later).
 */
async function withCgroups(names: string[], body: (groups: string[]) => Promise<void>): Promise<void> {
  const root = `/sys/fs/cgroup/memdedup-daemon-${process.pid}`
  const groups = names.map((name) => `${root}/${name}`)
  for (const group of [root, ...groups]) fs.mkdirSync(group, { recursive: true })
  try {
    await body(groups)
  } finally {
    for (const t of running.splice(0)) await t.stop()
    for (const group of [...groups].reverse().concat(root)) {
      for (let waited = 0; fs.readFileSync(`${group}/cgroup.procs`, 'utf8') !== ''; waited += 50) {
        if (waited > 30_000) throw new Error(`${group} still has processes: ${fs.readFileSync(`${group}/cgroup.procs`, 'utf8')}`)
        await sleep(50)
      }
      fs.rmdirSync(group)
    }
  }
}

beforeAll(() => {
  // Built on the host run, so the lab guest (read-only checkout) finds it.
  fixtureBinary('daemon-target')
})

describe('Daemon: arguments and kernel support', () => {
  it('rejects bad options with TypeError/RangeError before it looks at the kernel', () => {
    expect(() => new Daemon({ pids: 'x' as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }))
    expect(() => new Daemon({ pids: [0] })).toThrow(RangeError)
    expect(() => new Daemon({ pids: [1.5] })).toThrow(RangeError)
    expect(() => new Daemon({ cgroups: [''] })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }))
    expect(() => new Daemon({ stablePasses: 0 })).toThrow(RangeError)
    expect(() => new Daemon({ scope: 'everyone' as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }))
    expect(() => new Daemon({ pid: 1 } as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }))
    // A Proxy array answers each read once: the pids read are the pids used.
    let reads = 0
    const pids = new Proxy([1], { get: (t, k, r) => (k === '0' ? ++reads : Reflect.get(t, k, r)) })
    if (softDirty && remoteMerge) new Daemon({ pids }).close()
    else expect(() => new Daemon({ pids })).toThrow(FeatureUnavailableError)
    expect(reads).toBe(1)
  })

  it('memdedup daemon: --max-interval below --interval is a usage error (exit 2), before any target is opened', () => {
    ensureDist()
    const cli = spawnSync(process.execPath, [`${repoRoot}/dist/lib/cli.js`, 'daemon', '--pid', String(process.pid), '--interval', '2', '--max-interval', '1'], { encoding: 'utf8', timeout: 60_000 })
    expect(cli.status, cli.stderr).toBe(2)
    expect(cli.stderr).toMatch(/--max-interval \(1\) must be at least --interval \(2\)/)
  })

  it('says which kernel feature it needs where one is missing, and works where none is', () => {
    if (!softDirty) {
      expect(() => new Daemon({ pids: [process.pid] })).toThrow(expect.objectContaining({ code: 'ERR_MEMDEDUP_FEATURE_UNAVAILABLE', feature: 'softDirty' }))
    } else if (!remoteMerge) {
      expect(() => new Daemon({ pids: [process.pid] })).toThrow(expect.objectContaining({ feature: 'remoteMerge' }))
      new Daemon({ pids: [process.pid], merge: 'none' }).close()
    } else {
      const daemon = new Daemon({ pids: [process.pid] })
      expect(daemon.pass().targets, 'never this process').toBe(0)
      daemon.close()
    }
  })
})

describe(`Daemon: unmodified processes${skipWhy}`, () => {
  it.skipIf(missing !== '')('merges cold twins across targets of one uid, never a hot page, and every byte stays', async () => {
    const twins = await Promise.all([startTarget(1), startTarget(1), startTarget(1)])
    const unique = await startTarget(2)
    const daemon = new Daemon({ pids: [...twins, unique].map((t) => t.pid), stablePasses: 2 })
    const reports = await passes(daemon, 4)
    daemon.close()
    console.log(`daemon passes: ${JSON.stringify(reports.map((r) => ({ present: r.presentPages, written: r.writtenPages, hashed: r.hashedPages, merged: r.mergedPages, cpuMs: r.cpuMs })))}`)
    expect(reports.flatMap((r) => r.failures)).toEqual([])
    const cold = twins.map((t) => pfns(t.pid, t.cold, coldPages))
    const shared = cold[0].filter((pfn, i) => pfn !== 0n && pfn === cold[1][i] && pfn === cold[2][i]).length
    expect(shared, 'cold twin pages sharing one frame in all three targets').toBeGreaterThanOrEqual(coldPages * 0.95)
    const uniqueCold = pfns(unique.pid, unique.cold, coldPages)
    expect(uniqueCold.filter((pfn, i) => pfn === cold[0][i]).length, 'the other content shares nothing').toBe(0)
    const hot = twins.map((t) => pfns(t.pid, t.hot, hotPages))
    const hotShared = hot[0].filter((pfn, i) => pfn !== 0n && (pfn === hot[1][i] || pfn === hot[2][i])).length
    expect(hotShared, 'hot pages (written every 2 ms) merged').toBe(0)
    for (const t of [...twins, unique]) expect(await t.ask('verify')).toEqual({ bad: 0 })
    const status = fs.readFileSync(`/proc/${twins[0].pid}/ksm_stat`, 'utf8')
    expect(Number(/ksm_merging_pages (\d+)/.exec(status)?.[1]), 'ksm_merging_pages of a target').toBeGreaterThanOrEqual(coldPages * 0.95)
  }, 120_000)

  it.skipIf(missing !== '')('a target that exits mid-run is dropped, the others go on, nothing leaks', async () => {
    const [a, b, c] = await Promise.all([startTarget(3), startTarget(3), startTarget(3)])
    noFdLeak(() => {
      const daemon = new Daemon({ pids: [a.pid, b.pid, c.pid] })
      daemon.pass()
      c.child.kill('SIGKILL')
      spawnSync('sleep', ['0.2'])
      const reports = [daemon.pass(), daemon.pass(), daemon.pass()]
      expect(reports.at(-1)!.targets).toBe(2)
      expect(daemon.targets.sort()).toEqual([a.pid, b.pid].sort())
      daemon.close()
    })
    const [pa, pb] = [pfns(a.pid, a.cold, coldPages), pfns(b.pid, b.cold, coldPages)]
    expect(sharedFrames(pa, pb)).toBeGreaterThanOrEqual(coldPages * 0.95)
    expect(await a.ask('verify')).toEqual({ bad: 0 })
  }, 120_000)

  it.skipIf(missing !== '')('a target that exits in the pass whose twin finds its waiting pages: one failure, its own exit, no advice to the closed target', async () => {
    const [twin, exiting] = await Promise.all([startTarget(16), startTarget(16)])
    // The twin first: in the third pass it finds the exiting target's pages waiting, before that target is looked at.
    const daemon = new Daemon({ pids: [twin.pid, exiting.pid], stablePasses: 1 })
    daemon.pass()
    // Written since the first pass: the twin's pages are hashed one pass after the other's.
    expect(await twin.ask('rewrite')).toEqual({ rewritten: coldPages })
    const waiting = daemon.pass()
    expect(waiting.hashedPages, 'the exiting target\'s pages hashed, waiting for a twin').toBeGreaterThanOrEqual(coldPages)
    await exiting.stop()
    const found = daemon.pass()
    expect(found.failures).toEqual([{ pid: exiting.pid, code: 'ERR_TARGET_EXITED', message: expect.any(String) }])
    expect(daemon.targets).toEqual([twin.pid])
    daemon.close()
    expect(await twin.ask('verify')).toEqual({ bad: 0 })
  }, 120_000)

  it.skipIf(missing !== '')('merges cut short by signals (SIGTERM to stop it, say): a pass reports only the pages the kernel merged, the rest merge in later passes', async () => {
    // process_madvise(MADV_MERGE) stops at a signal to the daemon once it merged something and
    // says how far it got (kernel patch 0056). The daemon counted every page it gave as merged and
    // never gave the rest again. Here another process sends SIGUSR2 (handled) every ~10 ms.
    const cold = 4096
    const [a, b] = await Promise.all([startDaemonTarget(cold, hotPages, 31), startDaemonTarget(cold, hotPages, 31)])
    running.push(a, b)
    const merging = () => [a, b].reduce((sum, t) => sum + Number(/ksm_merging_pages (\d+)/.exec(fs.readFileSync(`/proc/${t.pid}/ksm_stat`, 'utf8'))?.[1]), 0)
    const merging0 = merging()
    const onSignal = () => {}
    process.on('SIGUSR2', onSignal)
    const sender = spawn('sh', ['-c', `while kill -USR2 ${process.pid} 2>/dev/null; do sleep 0.01; done`], { stdio: 'ignore' })
    const daemon = new Daemon({ pids: [a.pid, b.pid], stablePasses: 1 })
    let signalled: DaemonPassReport[]
    try {
      signalled = await passes(daemon, 3)
    } finally {
      const exited = new Promise((resolve) => sender.once('exit', resolve))
      sender.kill('SIGKILL')
      await exited
      process.off('SIGUSR2', onSignal)
    }
    const reported = signalled.reduce((sum, r) => sum + r.mergedPages, 0)
    const merged = merging() - merging0
    console.log(`daemon passes under signals: merged ${JSON.stringify(signalled.map((r) => r.mergedPages))}, the kernel's count ${merged}`)
    expect(signalled.flatMap((r) => r.failures)).toEqual([])
    expect(merged, 'the signals cut the merges short (else this test tests nothing)').toBeLessThan(2 * cold)
    expect(reported, 'pages the passes say they merged, against ksm_merging_pages of the targets').toBe(merged)
    const quiet = await passes(daemon, 4)
    daemon.close()
    expect(quiet.flatMap((r) => r.failures)).toEqual([])
    expect(sharedFrames(pfns(a.pid, a.cold, cold), pfns(b.pid, b.cold, cold)), 'cold twins sharing a frame once the signals stopped').toBeGreaterThanOrEqual(cold * 0.95)
    expect(reported + quiet.reduce((sum, r) => sum + r.mergedPages, 0)).toBe(merging() - merging0)
    for (const t of [a, b]) expect(await t.ask('verify')).toEqual({ bad: 0 })
  }, 300_000)

  it.skipIf(missing !== '')('a target whose mapping grows (a new mapping joins it: the kernel reads all of it as written) keeps its merged pages merged and found', async () => {
    // What a Node process does all the time: malloc and V8 map next to a buffer. The bench's plain
    // fleet merged 0.3% of what ksmd merged while every mapping that grew was forgotten whole.
    const [a, b] = await Promise.all([startTarget(21, { growable: true }), startTarget(21, { growable: true })])
    const daemon = new Daemon({ pids: [a.pid, b.pid] })
    const before = await passes(daemon, 4)
    expect(before.reduce((sum, r) => sum + r.mergedPages, 0), 'cold twins merged before the growth').toBeGreaterThanOrEqual(2 * coldPages * 0.95)
    const grownPages = 16
    const grown = await a.ask(`grow ${grownPages}`)
    expect(grown, 'premise: the new mapping joined the cold one, flagged VM_SOFTDIRTY').toEqual({ grown: grownPages, start: `0x${(a.cold - BigInt(grownPages * pageSize)).toString(16)}`, softDirty: true })
    const after = await passes(daemon, 3)
    daemon.close()
    console.log(`daemon passes after growth: ${JSON.stringify(after.map((r) => ({ written: r.writtenPages, checked: r.checkedPages, hashed: r.hashedPages, merged: r.mergedPages, rewritten: r.rewrittenPages })))}`)
    expect(after.flatMap((r) => r.failures)).toEqual([])
    // The grown mapping reads as written throughout: its new pages are read, its merged ones told by their KSM frame.
    expect(after[0].checkedPages, 'pages of the grown mapping read').toBeGreaterThanOrEqual(grownPages)
    expect(after[0].checkedPages, 'pages of the grown mapping read').toBeLessThanOrEqual(grownPages + 8)
    // Written every pass: both targets' hot pages and a few of their stacks and heaps.
    expect(after[0].writtenPages, 'written: the new pages and what every pass sees written, not the cold').toBeLessThanOrEqual(after[2].writtenPages + grownPages + 8)
    // Hashed anew: the grown pages and a few of heap and stack the commands wrote, not the cold ones.
    expect(after.reduce((sum, r) => sum + r.hashedPages, 0), 'pages hashed after the growth').toBeLessThanOrEqual(grownPages + 8)
    const [pa, pb] = [pfns(a.pid, a.cold, coldPages), pfns(b.pid, b.cold, coldPages)]
    expect(sharedFrames(pa, pb), 'pages shared after the growth').toBeGreaterThanOrEqual(coldPages * 0.95)
    for (const t of [a, b]) expect(await t.ask('verify')).toEqual({ bad: 0 })
  }, 120_000)

  it.skipIf(missing !== '')('cold pages in a transparent huge page with one page of it written all the time (one soft-dirty bit for all 512) merge once, stay merged, every byte stays', async (ctx) => {
    if (thpUnavailable()) ctx.skip(thpUnavailable())
    // The plain fleet's datasets: THP-backed ArrayBuffers with 5% hot pages, every huge page read as
    // written each pass; and the merge that splits it copies its soft-dirty bit to all 512 pages.
    const thpPages = 512
    const [a, b] = await Promise.all([startDaemonTarget(thpPages, hotPages, 23, { thp: true }), startDaemonTarget(thpPages, hotPages, 23, { thp: true })])
    running.push(a, b)
    for (const t of [a, b]) {
      const rollup = fs.readFileSync(`/proc/${t.pid}/smaps_rollup`, 'utf8')
      expect(Number(/AnonHugePages:\s+(\d+)/.exec(rollup)?.[1]), 'premise: the cold pages are a transparent huge page (kB)').toBeGreaterThanOrEqual(2048)
      // The first page written with its own bytes every 1 ms: soft-dirty set, content unchanged.
      expect(await t.ask('warm')).toEqual({ warm: 1 })
    }
    const daemon = new Daemon({ pids: [a.pid, b.pid] })
    const reports = await passes(daemon, 7)
    daemon.close()
    console.log(`daemon passes over huge pages: ${JSON.stringify(reports.map((r) => ({ written: r.writtenPages, checked: r.checkedPages, hashed: r.hashedPages, merged: r.mergedPages, rewritten: r.rewrittenPages })))}`)
    expect(reports.flatMap((r) => r.failures)).toEqual([])
    const [pa, pb] = [pfns(a.pid, a.cold, thpPages), pfns(b.pid, b.cold, thpPages)]
    expect(sharedFrames(pa.slice(1), pb.slice(1)), 'cold pages after the written one sharing a frame').toBeGreaterThanOrEqual((thpPages - 1) * 0.95)
    // Merged once: the split's soft-dirty bits are not taken for writes (a few pages of stacks and heaps aside).
    const total = (key: 'mergedPages' | 'rewrittenPages') => reports.reduce((sum, r) => sum + r[key], 0)
    expect(total('rewrittenPages'), 'merged pages taken for rewritten').toBeLessThanOrEqual(8)
    expect(total('mergedPages'), 'pages given to MADV_MERGE').toBeLessThanOrEqual(2 * thpPages + 8)
    // The pass after the merge tells the merged pages by their KSM frame (kpageflags), not by reading them.
    const mergePass = reports.findIndex((r) => r.mergedPages >= thpPages)
    expect(mergePass, 'the pass that merged the huge pages').toBeGreaterThanOrEqual(0)
    expect(reports[mergePass + 1].checkedPages, 'pages read again after the merge').toBeLessThan(thpPages / 4)
    for (const t of [a, b]) expect(await t.ask('verify')).toEqual({ bad: 0 })
  }, 120_000)

  it.skipIf(missing !== '')('a target that moves its merged memory (mremap) between passes: followed at the new address, merged again, every byte stays', async () => {
    const [a, b] = await Promise.all([startTarget(7), startTarget(7)])
    const daemon = new Daemon({ pids: [a.pid, b.pid] })
    await passes(daemon, 3)
    const moved = BigInt((await a.ask('remap')).cold)
    expect(moved).not.toBe(a.cold)
    const after = await passes(daemon, 4)
    daemon.close()
    expect(after.flatMap((r) => r.failures)).toEqual([])
    const [pa, pb] = [pfns(a.pid, moved, coldPages), pfns(b.pid, b.cold, coldPages)]
    expect(sharedFrames(pa, pb), 'pages shared after the move').toBeGreaterThanOrEqual(coldPages * 0.95)
    expect(await a.ask('verify')).toEqual({ bad: 0 })
    expect(await b.ask('verify')).toEqual({ bad: 0 })
  }, 120_000)

  it.skipIf(missing !== '')('a target that execs (same pid, a new mm) is opened again and merged again', async () => {
    const [a, b] = await Promise.all([startTarget(9), startTarget(9)])
    const daemon = new Daemon({ pids: [a.pid, b.pid] })
    await passes(daemon, 3)
    const again = await a.ask('exec')
    const reports = await passes(daemon, 5)
    daemon.close()
    // At most one failed pass for it: the one that finds its old pagemap and mem gone.
    expect(reports.flatMap((r) => r.failures).length).toBeLessThanOrEqual(1)
    const [pa, pb] = [pfns(a.pid, BigInt(again.cold), coldPages), pfns(b.pid, b.cold, coldPages)]
    expect(sharedFrames(pa, pb), 'the exec\'d image merged again').toBeGreaterThanOrEqual(coldPages * 0.95)
    expect(await a.ask('verify')).toEqual({ bad: 0 })
  }, 120_000)

  it.skipIf(missing !== '')('--cgroup: every process of a cgroup v2 group and its children, one started later picked up', async () => {
    await withCgroups(['in', 'in/child'], async ([group, child]) => {
      const [a, b] = await Promise.all([startTarget(8), startTarget(8)])
      fs.writeFileSync(`${group}/cgroup.procs`, String(a.pid))
      fs.writeFileSync(`${child}/cgroup.procs`, String(b.pid))
      const outside = await startTarget(8)
      const daemon = new Daemon({ cgroups: [group] })
      await passes(daemon, 2)
      expect(daemon.targets.sort(), 'the group and its child group, not the process outside').toEqual([a.pid, b.pid].sort())
      const late = await startTarget(8)
      fs.writeFileSync(`${group}/cgroup.procs`, String(late.pid))
      const reports = await passes(daemon, 4)
      expect(daemon.targets.sort()).toEqual([a.pid, b.pid, late.pid].sort())
      daemon.close()
      expect(reports.flatMap((r) => r.failures)).toEqual([])
      const [pa, pl, po] = [pfns(a.pid, a.cold, coldPages), pfns(late.pid, late.cold, coldPages), pfns(outside.pid, outside.cold, coldPages)]
      expect(sharedFrames(pa, pl), 'the late member merged with the others').toBeGreaterThanOrEqual(coldPages * 0.95)
      expect(po.filter((pfn, i) => pfn === pa[i]).length, 'the process outside the group untouched').toBe(0)
    })
  }, 180_000)

  it.skipIf(missing !== '')('--cgroup: a target that forks mid-run; the child is picked up, its own copies and the pages it still shares copy-on-write join one KSM frame with the parent\'s and a twin\'s; a child forked after the merge is counted for the KSM pages it inherits; every byte stays', async () => {
    await withCgroups(['in'], async ([group]) => {
      const [parent, twin] = await Promise.all([startTarget(11), startTarget(11)])
      for (const t of [parent, twin]) fs.writeFileSync(`${group}/cgroup.procs`, String(t.pid))
      const daemon = new Daemon({ cgroups: [group] })
      const opened = daemon.pass()
      const { child } = await parent.ask('fork')
      const half = coldPages / 2
      // The child rewrote its first half (frames of its own); the second half is still the parent's, copy-on-write.
      const [pp0, pc0] = [pfns(parent.pid, parent.cold, coldPages), pfns(child, parent.cold, coldPages)]
      expect(sharedFrames(pp0.slice(0, half), pc0.slice(0, half)), 'rewritten by the child').toBe(0)
      expect(sharedFrames(pp0.slice(half), pc0.slice(half)), 'shared copy-on-write').toBe(half)
      // A COW-shared page with no twin in the stable tree stays as it is (lab 0042); the twin's KSM
      // pages are that twin, so the parent's and the child's mappings both move to them.
      const reports = [opened, ...(await passes(daemon, 5))]
      expect(daemon.targets.sort(), 'the child, in the group by birth').toEqual([parent.pid, twin.pid, child].sort())
      expect(reports.flatMap((r) => r.failures)).toEqual([])
      const [pp, pc, pt] = [pfns(parent.pid, parent.cold, coldPages), pfns(child, parent.cold, coldPages), pfns(twin.pid, twin.cold, coldPages)]
      expect(sharedFrames(pp.slice(0, half), pc.slice(0, half)), 'the child\'s copies merged with the parent\'s pages').toBeGreaterThanOrEqual(half * 0.95)
      expect(sharedFrames(pp, pt), 'the parent\'s pages merged with the twin\'s').toBeGreaterThanOrEqual(coldPages * 0.95)
      expect(sharedFrames(pc, pt), 'the child\'s pages merged with the twin\'s').toBeGreaterThanOrEqual(coldPages * 0.95)
      if (kpfKsmWorks()) expect(ksmFlags(pp).filter(Boolean).length, 'KSM pages among the parent\'s cold pages').toBeGreaterThanOrEqual(coldPages * 0.95)
      expect(ksm.processStats(child).ksmMergingPages, 'ksm_merging_pages of the child').toBeGreaterThanOrEqual(coldPages * 0.95)
      // Forked after the merge: the second half is KSM pages the child inherits, which the daemon's
      // MADV_MERGE gives rmap_items of the child's own (lab 0042), so ksm_stat counts them.
      const { child: late } = await twin.ask('fork')
      const inherited = await passes(daemon, 4)
      daemon.close()
      expect(inherited.flatMap((r) => r.failures)).toEqual([])
      const pl = pfns(late, twin.cold, coldPages)
      expect(sharedFrames(pl, pt), 'the late child\'s pages on the twin\'s frames').toBeGreaterThanOrEqual(coldPages * 0.95)
      expect(ksm.processStats(late).ksmMergingPages, 'ksm_merging_pages of the late child').toBeGreaterThanOrEqual(coldPages * 0.95)
      for (const t of [parent, twin]) {
        expect(await t.ask('verify')).toEqual({ bad: 0 })
        expect(await t.ask('child verify')).toEqual({ bad: 0 })
      }
    })
  }, 240_000)

  it.skipIf(missing !== '')('--cgroup: a target moved out of the group mid-run is dropped and no longer merged, nothing harmed; moved back in, it is picked up again', async () => {
    await withCgroups(['in', 'out'], async ([inside, outside]) => {
      const [a, b] = await Promise.all([startTarget(12), startTarget(12)])
      for (const t of [a, b]) fs.writeFileSync(`${inside}/cgroup.procs`, String(t.pid))
      const daemon = new Daemon({ cgroups: [inside] })
      const merging = await passes(daemon, 4)
      const cold = () => [pfns(a.pid, a.cold, coldPages), pfns(b.pid, b.cold, coldPages)] as const
      expect(sharedFrames(...cold()), 'merged while both are in the group').toBeGreaterThanOrEqual(coldPages * 0.95)
      fs.writeFileSync(`${outside}/cgroup.procs`, String(b.pid))
      const away = await passes(daemon, 1)
      expect(daemon.targets, 'moved out: dropped').toEqual([a.pid])
      // Frames of its own again: only a daemon that still followed it would merge them back.
      expect(await b.ask('rewrite')).toEqual({ rewritten: coldPages })
      away.push(...(await passes(daemon, 4)))
      expect(sharedFrames(...cold()), 'merged while it is out of the group').toBe(0)
      expect(away.reduce((sum, r) => sum + r.mergedPages, 0), 'pages given to MADV_MERGE while it is out').toBe(0)
      expect(await b.ask('verify')).toEqual({ bad: 0 })
      fs.writeFileSync(`${inside}/cgroup.procs`, String(b.pid))
      const back = await passes(daemon, 4)
      expect(daemon.targets.sort(), 'moved back in: picked up').toEqual([a.pid, b.pid].sort())
      daemon.close()
      expect([...merging, ...away, ...back].flatMap((r) => r.failures)).toEqual([])
      expect(sharedFrames(...cold()), 'merged again').toBeGreaterThanOrEqual(coldPages * 0.95)
      for (const t of [a, b]) expect(await t.ask('verify')).toEqual({ bad: 0 })
    })
  }, 240_000)

  it.skipIf(missing !== '')('a target that unmaps, maps anew and moves its cold pages while passes run: no pass throws, each failure is the target\'s own and reported, then it is followed at its new address and merged', async () => {
    const [churner, twin] = await Promise.all([startTarget(13), startTarget(13)])
    // stablePasses 1: pages are hashed and merged in the first pass that finds them unwritten.
    const daemon = new Daemon({ pids: [churner.pid, twin.pid], stablePasses: 1 })
    await passes(daemon, 2)
    let churning = true
    const churned = churner.ask(`churn ${churnMs} ${churnPauseMs}`).finally(() => (churning = false))
    const during: DaemonPassReport[] = []
    while (churning) {
      await sleep(10)
      during.push(daemon.pass())
    }
    const moved = await churned
    expect(moved.cycles, 'unmap-map-move cycles').toBeGreaterThan(0)
    const failures = during.flatMap((r) => r.failures)
    console.log(`churn: ${moved.cycles} cycles, ${during.length} passes, hashed ${during.reduce((sum, r) => sum + r.hashedPages, 0)}, merged ${during.reduce((sum, r) => sum + r.mergedPages, 0)}, failures ${JSON.stringify(failures.map((f) => f.code))}`)
    expect(during.length, 'passes while it churned').toBeGreaterThanOrEqual(2)
    // EIO: a page read through /proc/<pid>/mem was unmapped meanwhile; ENOMEM: so was a range given to MADV_MERGE.
    for (const failure of failures) expect(failure).toEqual(expect.objectContaining({ pid: churner.pid, code: expect.stringMatching(/^(EIO|ENOMEM)$/) }))
    const after = await passes(daemon, 3)
    expect(daemon.targets.sort()).toEqual([churner.pid, twin.pid].sort())
    daemon.close()
    expect(after.flatMap((r) => r.failures)).toEqual([])
    const cold = BigInt(moved.cold)
    expect(sharedFrames(pfns(churner.pid, cold, coldPages), pfns(twin.pid, twin.cold, coldPages)), 'merged at its new address').toBeGreaterThanOrEqual(coldPages * 0.95)
    for (const t of [churner, twin]) expect(await t.ask('verify')).toEqual({ bad: 0 })
  }, 240_000)

  it.skipIf(missing !== '')('scope uid (the default): twins of different users stay apart', async () => {
    const mine = await startTarget(4)
    const nobody = await startTarget(4, { uid: 65534, gid: 65534 })
    const daemon = new Daemon({ pids: [mine.pid, nobody.pid] })
    await passes(daemon, 4)
    daemon.close()
    const [pm, pn] = [pfns(mine.pid, mine.cold, coldPages), pfns(nobody.pid, nobody.cold, coldPages)]
    expect(sharedFrames(pm, pn), 'pages shared across uids').toBe(0)
    expect(await nobody.ask('verify')).toEqual({ bad: 0 })
  }, 120_000)

  it.skipIf(missing !== '')('a daemon without privileges is refused another user\'s process, with a clear error per target', async () => {
    const target = await startTarget(5)
    ensureDist()
    const script = `
      import { Daemon } from ${JSON.stringify(distEntry)}
      const daemon = new Daemon({ pids: [${target.pid}], merge: 'none' })
      console.log(JSON.stringify(daemon.pass().failures))
      daemon.close()
    `
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { uid: 65534, gid: 65534, encoding: 'utf8', cwd: repoRoot })
    expect(child.status, child.stderr).toBe(0)
    const failures = JSON.parse(child.stdout)
    expect(failures).toEqual([expect.objectContaining({ pid: target.pid, code: expect.stringMatching(/^(EACCES|EPERM)$/) })])
    expect(await target.ask('verify')).toEqual({ bad: 0 })
  }, 120_000)

  it.skipIf(missing !== '')('memdedup daemon killed (SIGKILL) in the middle of its passes: no target harmed, every byte stays; SIGTERM ends it with 0', async () => {
    const targets = await Promise.all([startTarget(10), startTarget(10), startTarget(10)])
    ensureDist()
    const args = [`${repoRoot}/dist/lib/cli.js`, 'daemon', ...targets.flatMap((t) => ['--pid', String(t.pid)]), '--interval', '0.05', '--json']
    for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
      const daemon = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] })
      let lines = 0
      daemon.stdout!.on('data', (chunk: Buffer) => (lines += chunk.toString().split('\n').length - 1))
      while (lines < 4) await sleep(50)
      const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) => daemon.once('exit', (code, sig) => resolve([code, sig])))
      daemon.kill(signal)
      const [code, sig] = await exited
      if (signal === 'SIGTERM') expect(code, 'SIGTERM: exit 0 after the pass in progress').toBe(0)
      else expect(sig).toBe('SIGKILL')
      for (const t of targets) expect(await t.ask('verify')).toEqual({ bad: 0 })
    }
  }, 180_000)

  it.skipIf(missing !== '')('memdedup daemon --pid … --once --json: one JSON line per pass, then exit 0', async () => {
    const [a, b] = await Promise.all([startTarget(6), startTarget(6)])
    ensureDist()
    const cli = spawnSync(process.execPath, [`${repoRoot}/dist/lib/cli.js`, 'daemon', '--pid', String(a.pid), '--pid', String(b.pid), '--once', '--interval', '0.2', '--json'], { encoding: 'utf8', timeout: 120_000 })
    expect(cli.status, cli.stderr).toBe(0)
    const lines = cli.stdout.trim().split('\n').map((line) => JSON.parse(line))
    expect(lines).toHaveLength(3)
    expect(lines.reduce((sum, r) => sum + r.mergedPages, 0)).toBeGreaterThan(0)
    expect(await a.ask('verify')).toEqual({ bad: 0 })
  }, 180_000)

  it.skipIf(missing !== '')('a pass that merges a few pages among many present is idle (heap churn does not keep the daemon at its shortest interval); one that merges many is not', async () => {
    const many = 4096
    const [a, b] = await Promise.all([startDaemonTarget(many, hotPages, 24), startDaemonTarget(many, hotPages, 24)])
    running.push(a, b)
    const daemon = new Daemon({ pids: [a.pid, b.pid] })
    const first = await passes(daemon, 4)
    const merging = first.find((r) => r.mergedPages >= many)
    expect(merging, 'the pass that merged the twins').toBeDefined()
    expect(merging!.idle).toBe(false)
    // Two pages written again: stable two passes later, hashed, merged again.
    expect(await a.ask('rewrite 2')).toEqual({ rewritten: 2 })
    const after = await passes(daemon, 4)
    daemon.close()
    const few = after.find((r) => r.hashedPages > 0)
    expect(few, 'the pass that hashed the rewritten pages').toBeDefined()
    expect(few!.hashedPages + few!.mergedPages + few!.rewrittenPages, 'pages hashed, merged, rewritten').toBeLessThan(few!.presentPages / 1000)
    expect(few!.idle).toBe(true)
    for (const t of [a, b]) expect(await t.ask('verify')).toEqual({ bad: 0 })
  }, 120_000)

  it.skipIf(missing !== '')('run() backs off: each idle pass doubles the wait up to maxIntervalMs, a busy pass brings it back to intervalMs', async () => {
    const [a, b] = await Promise.all([startTarget(8), startTarget(8)])
    const daemon = new Daemon({ pids: [a.pid, b.pid] })
    expect(() => daemon.run({ intervalMs: 100, maxIntervalMs: 50 })).toThrow(RangeError)
    const reports: Array<{ time: number; durationMs: number; idle: boolean; nothingNew: boolean }> = []
    await new Promise<void>((resolve) => {
      daemon.run({
        intervalMs: 50, maxIntervalMs: 800,
        onPass: (r) => {
          // These targets are small (under 1000 pages): a pass is idle exactly when nothing new merged or failed.
          reports.push({ time: r.time, durationMs: r.durationMs, idle: r.idle, nothingNew: r.newTargets + r.mergedPages + r.rewrittenPages + r.failures.length === 0 })
          // Five idle passes in a row after merging: the wait has reached 800 ms.
          if (reports.length > 40 || (reports.length >= 6 && reports.slice(-5).every((x) => x.idle))) {
            daemon.stop()
            resolve()
          }
        },
      })
    })
    daemon.close()
    expect(reports.map((r) => r.idle)).toEqual(reports.map((r) => r.nothingNew))
    // Open (busy), first scan (idle: nothing stable yet), hash and merge (busy), then idle passes.
    const busyAfterIdle = reports.some((r, i) => i > 0 && !r.idle && reports[i - 1].idle)
    expect(busyAfterIdle, 'a busy pass after an idle one').toBe(true)
    // The wait before each pass: its start minus the end of the one before.
    let expected = 50
    for (let i = 0; i + 1 < reports.length; i++) {
      const wait = reports[i + 1].time - (reports[i].time + reports[i].durationMs)
      expected = reports[i].idle ? Math.min(800, expected * 2) : 50
      expect(wait, `wait after pass ${i} (${reports[i].idle ? 'idle' : 'busy'})`).toBeGreaterThanOrEqual(expected - 5)
      if (!reports[i].idle) expect(wait, `wait after busy pass ${i}`).toBeLessThan(400)
    }
    expect(expected).toBe(800)
    for (const t of [a, b]) expect(await t.ask('verify')).toEqual({ bad: 0 })
  }, 180_000)
})

// ksmd's knobs are system-wide: these tests hold the cross-file KSM lock and restore every knob.
describe(`Daemon and ksmd${skipWhy}`, () => {
  const ksmState = holdKsmLock(undefined, () => missing === '')

  it.skipIf(missing !== '')('ksmd and the daemon on the same processes (PR_SET_MEMORY_MERGE, MADV_MERGEABLE, neither), ksmd first: one KSM frame per content, ksm_stat and /sys/kernel/mm/ksm agree, every byte stays, no kernel report', async (ctx) => {
    skipUnlessKsmSettings(ctx)
    // The global counters must be these targets' alone.
    await skipUnlessOnlyKsmUser(ctx)
    const kmsg = kmsgCursor()
    const [anyMerge, mergeable, plain] = await Promise.all([startTarget(14), startTarget(14), startTarget(14)])
    const targets = [anyMerge, mergeable, plain]
    expect(await anyMerge.ask('merge-any')).toEqual({ errno: 0 })
    expect(await mergeable.ask('mergeable')).toEqual({ errno: 0 })
    // ksmd's scope as MADV_MERGE's (0048), so that both merge into the same KSM pages.
    ksmState.set({ ...fastKsmd, ...(ksm.stats().ksmdScope === undefined ? {} : { ksmdScope: 'uid' as const }), run: 1 })
    // ksmd first, so that the daemon meets KSM pages ksmd made (and keeps running beside it).
    const mergedByKsmd = () => sharedFrames(pfns(anyMerge.pid, anyMerge.cold, coldPages), pfns(mergeable.pid, mergeable.cold, coldPages))
    expect(await ksmState.until(() => mergedByKsmd() >= coldPages * 0.95, 4), 'ksmd merged the two that opted in').toBe(true)
    const daemon = new Daemon({ pids: targets.map((t) => t.pid) })
    const reports = await passes(daemon, 4)
    await ksmState.scans(2)
    // Stopped (not unmerged): nothing merges while the counters are read.
    ksmState.set({ run: 0 })
    daemon.close()
    expect(reports.flatMap((r) => r.failures)).toEqual([])
    const cold = targets.map((t) => pfns(t.pid, t.cold, coldPages))
    const oneFrame = cold[0].filter((pfn, i) => pfn !== 0n && pfn === cold[1][i] && pfn === cold[2][i]).length
    expect(oneFrame, 'cold pages of the three on one frame').toBeGreaterThanOrEqual(coldPages * 0.95)
    const counted = targets.map((t) => ksm.processStats(t.pid).ksmMergingPages)
    if (kpfKsmWorks()) {
      for (const [i, t] of targets.entries()) {
        const mapped = ksmFlags(allPfns(t.pid)).filter(Boolean).length
        expect(counted[i], `pid ${t.pid}: ksm_merging_pages ${counted[i]} >= ${mapped} KSM pages mapped`).toBeGreaterThanOrEqual(mapped)
        expect(mapped, `pid ${t.pid}: KSM pages mapped`).toBeGreaterThanOrEqual(coldPages * 0.95)
      }
    }
    const s = ksm.stats()
    console.log(`ksmd + daemon: ksm_merging_pages ${counted.join(', ')}; pages_shared ${s.pagesShared}, pages_sharing ${s.pagesSharing}; merged by the daemon ${reports.reduce((sum, r) => sum + r.mergedPages, 0)}`)
    expect(counted.reduce((a, b) => a + b, 0), 'sum of ksm_merging_pages = pages_shared + pages_sharing').toBe(s.pagesShared + s.pagesSharing)
    for (const t of targets) expect(await t.ask('verify')).toEqual({ bad: 0 })
    expect(kernelProblemsSince(kmsg).problems).toEqual([])
  }, 300_000)

  it.skipIf(missing !== '')('memdedup daemon --opted-in: only processes that opted in to KSM are targets; twins that did not are left alone', async (ctx) => {
    skipUnlessKsmSettings(ctx)
    // Any other opted-in process would be a target too.
    await skipUnlessOnlyKsmUser(ctx)
    // ksmd stopped: whatever merges is the daemon's doing.
    ksmState.set({ run: 0 })
    const [anyMerge, mergeable, plain, plainTwin] = await Promise.all([startTarget(15), startTarget(15), startTarget(15), startTarget(15)])
    expect(await anyMerge.ask('merge-any')).toEqual({ errno: 0 })
    expect(await mergeable.ask('mergeable')).toEqual({ errno: 0 })
    ensureDist()
    const cli = spawnSync(process.execPath, [`${repoRoot}/dist/lib/cli.js`, 'daemon', '--opted-in', '--once', '--interval', '0.2', '--json'], { encoding: 'utf8', timeout: 240_000 })
    expect(cli.status, cli.stderr).toBe(0)
    const lines = cli.stdout.trim().split('\n').map((line) => JSON.parse(line))
    expect(lines.map((r) => r.targets), 'targets per pass: the two that opted in').toEqual([2, 2, 2])
    expect(lines.flatMap((r) => r.failures)).toEqual([])
    const [pa, pm, pp, pt] = [anyMerge, mergeable, plain, plainTwin].map((t) => pfns(t.pid, t.cold, coldPages))
    expect(sharedFrames(pa, pm), 'the two that opted in, merged').toBeGreaterThanOrEqual(coldPages * 0.95)
    expect(sharedFrames(pp, pa), 'one that did not, with them').toBe(0)
    expect(sharedFrames(pp, pt), 'the two that did not, with each other').toBe(0)
    for (const t of [plain, plainTwin]) expect(ksm.processStats(t.pid).ksmRmapItems, `pid ${t.pid}: rmap items`).toBe(0)
    for (const t of [anyMerge, mergeable, plain, plainTwin]) expect(await t.ask('verify')).toEqual({ bad: 0 })
  }, 300_000)
})
