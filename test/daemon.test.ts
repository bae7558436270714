// lib/daemon.ts: the deduplicator of other, unmodified processes (test/fixtures/daemon-target.c:
// cold pages, twins across targets with the same seed, and hot pages a thread rewrites every 2 ms).
// What merged is read from the targets' /proc/<pid>/pagemap (root) and checked byte for byte by
// the targets themselves.
import { spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import { Daemon, features, FeatureUnavailableError } from '../lib/index.ts'
import { fixtureBinary } from './helpers/c-fixture.ts'
import { distEntry, ensureDist, repoRoot } from './helpers/dist.mjs'
import { noFdLeak } from './helpers/process.ts'
import { pfnsOf, startDaemonTarget, type DaemonTarget } from './helpers/daemon-target.ts'

const isRoot = process.getuid?.() === 0
const softDirty = features().softDirty
const remoteMerge = features().remoteMerge
const missing = !softDirty
  ? `kernel ${os.release()} does not track soft-dirty pages (CONFIG_MEM_SOFT_DIRTY)`
  : !remoteMerge
    ? `kernel ${os.release()}: process_madvise() does not take MADV_MERGE (lab kernel patch 0053)`
    : !isRoot
      ? 'needs root (PFNs of other processes, CAP_SYS_NICE)'
      : ''
const skipWhy = missing ? ` [skipped: ${missing}]` : ''

const coldPages = 256
const hotPages = 8

const running: DaemonTarget[] = []

async function startTarget(seed: number, options: { uid?: number; gid?: number } = {}): Promise<DaemonTarget> {
  const target = await startDaemonTarget(coldPages, hotPages, seed, options)
  running.push(target)
  return target
}

afterEach(async () => {
  for (const target of running.splice(0)) await target.stop()
})

const pfns = pfnsOf

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
    expect(pa.filter((pfn, i) => pfn !== 0n && pfn === pb[i]).length).toBeGreaterThanOrEqual(coldPages * 0.95)
    expect(await a.ask('verify')).toEqual({ bad: 0 })
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
    expect(pa.filter((pfn, i) => pfn !== 0n && pfn === pb[i]).length, 'pages shared after the move').toBeGreaterThanOrEqual(coldPages * 0.95)
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
    expect(pa.filter((pfn, i) => pfn !== 0n && pfn === pb[i]).length, 'the exec\'d image merged again').toBeGreaterThanOrEqual(coldPages * 0.95)
    expect(await a.ask('verify')).toEqual({ bad: 0 })
  }, 120_000)

  it.skipIf(missing !== '')('--cgroup: every process of a cgroup v2 group and its children, one started later picked up', async () => {
    const group = `/sys/fs/cgroup/memdedup-daemon-${process.pid}`
    fs.mkdirSync(`${group}/child`, { recursive: true })
    try {
      const [a, b] = await Promise.all([startTarget(8), startTarget(8)])
      fs.writeFileSync(`${group}/cgroup.procs`, String(a.pid))
      fs.writeFileSync(`${group}/child/cgroup.procs`, String(b.pid))
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
      expect(pa.filter((pfn, i) => pfn !== 0n && pfn === pl[i]).length, 'the late member merged with the others').toBeGreaterThanOrEqual(coldPages * 0.95)
      expect(po.filter((pfn, i) => pfn === pa[i]).length, 'the process outside the group untouched').toBe(0)
      for (const t of running) await t.stop()
    } finally {
      // Empty once its processes are gone (afterEach kills them; rmdir needs them gone now).
      for (const t of running) await t.stop()
      fs.rmdirSync(`${group}/child`)
      fs.rmdirSync(group)
    }
  }, 180_000)

  it.skipIf(missing !== '')('scope uid (the default): twins of different users stay apart', async () => {
    const mine = await startTarget(4)
    const nobody = await startTarget(4, { uid: 65534, gid: 65534 })
    const daemon = new Daemon({ pids: [mine.pid, nobody.pid] })
    await passes(daemon, 4)
    daemon.close()
    const [pm, pn] = [pfns(mine.pid, mine.cold, coldPages), pfns(nobody.pid, nobody.cold, coldPages)]
    expect(pm.filter((pfn, i) => pfn !== 0n && pfn === pn[i]).length, 'pages shared across uids').toBe(0)
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

  it.skipIf(missing !== '')('run() backs off: each idle pass doubles the wait up to maxIntervalMs, a busy pass brings it back to intervalMs', async () => {
    const [a, b] = await Promise.all([startTarget(8), startTarget(8)])
    const daemon = new Daemon({ pids: [a.pid, b.pid] })
    expect(() => daemon.run({ intervalMs: 100, maxIntervalMs: 50 })).toThrow(RangeError)
    const reports: Array<{ time: number; durationMs: number; idle: boolean }> = []
    await new Promise<void>((resolve) => {
      daemon.run({
        intervalMs: 50, maxIntervalMs: 800,
        onPass: (r) => {
          reports.push({ time: r.time, durationMs: r.durationMs, idle: r.newTargets + r.hashedPages + r.mergedPages + r.rewrittenPages + r.failures.length === 0 })
          // Five idle passes in a row after merging: the wait has reached 800 ms.
          if (reports.length > 40 || (reports.length >= 6 && reports.slice(-5).every((x) => x.idle))) {
            daemon.stop()
            resolve()
          }
        },
      })
    })
    daemon.close()
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
