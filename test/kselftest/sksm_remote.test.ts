// Port of tools/testing/selftests/sksm/remote_test.c (kernel-patches/0052): process_madvise()
// with MADV_MERGE and MADV_UNMERGEABLE on another process, through TargetProcess. The C forks
// children that fill pages of two contents; here the target is test/fixtures/daemon-target.c
// (page i holds class i % classes). Each case asserts what the C asserts, by PFN and content.
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import { afterEach, describe, expect, it } from 'vitest'
import { features, pageSize, Region, sksm, SyscallError, TargetProcess } from '../../lib/index.ts'
import { distEntry, ensureDist, repoRoot } from '../helpers/dist.mjs'
import { pfnsOf, startDaemonTarget, type DaemonTarget } from '../helpers/daemon-target.ts'

const isRoot = process.getuid?.() === 0
const missing = !features().remoteMerge
  ? `kernel ${os.release()}: process_madvise() does not take MADV_MERGE (lab kernel patch 0052)`
  : !isRoot
    ? 'needs root (PFNs of other processes, CAP_SYS_NICE, a target of another uid)'
    : ''
const skipWhy = missing ? ` [skipped: ${missing}]` : ''
const NOBODY = 65534
const scopeKnob = '/sys/kernel/mm/ksm/sksm_scope'
const pages = 4
const length = pages * pageSize

const running: DaemonTarget[] = []
afterEach(async () => {
  for (const target of running.splice(0)) await target.stop()
})

/** remote_test.c's child: PAGES pages, classes { 0, 1, 0, 1 } (twins 0/2 and 1/3). */
async function twinsTarget(seed: number, uid?: number): Promise<DaemonTarget> {
  const target = await startDaemonTarget(pages, 0, seed, { classes: 2, ...(uid === undefined ? {} : { uid, gid: uid }) })
  running.push(target)
  return target
}

/** daemon-target.c's word(): the content of class `c` of `seed`, 8 bytes at a time. */
function classWords(seed: number, c: number): BigUint64Array {
  const mask = (1n << 64n) - 1n
  return BigUint64Array.from({ length: pageSize / 8 }, (_, k) =>
    ((((BigInt(seed) + 1n) * 0x9e3779b97f4a7c15n) & mask) ^ ((BigInt(c) * 0x100000001b3n) & mask) ^ BigInt(k)) & mask)
}

describe(`sksm remote_test.c${skipWhy}`, () => {
  it.skipIf(missing !== '')('process_madvise(MADV_MERGE) merges the target\'s twins; MADV_UNMERGEABLE unmerges them, content intact', async () => {
    const target = await twinsTarget(11)
    using remote = TargetProcess.open(target.pid)
    expect(remote.madvise([{ start: target.cold, length }], 'merge')).toBe(length)
    const f = pfnsOf(target.pid, target.cold, pages)
    expect(f[0]).not.toBe(0n)
    expect(f[0], 'twins 0 and 2 share a frame').toBe(f[2])
    expect(f[1], 'twins 1 and 3 share a frame').toBe(f[3])
    expect(f[0], 'different contents do not').not.toBe(f[1])
    expect(await target.ask('verify')).toEqual({ bad: 0 })

    expect(remote.madvise([{ start: target.cold, length }], 'unmergeable')).toBe(length)
    const g = pfnsOf(target.pid, target.cold, pages)
    expect(g[0], 'unmerged').not.toBe(g[2])
    expect(await target.ask('verify')).toEqual({ bad: 0 })
  }, 60_000)

  it.skipIf(missing !== '')('a remote merge uses the target\'s uid as its scope, not the caller\'s', async () => {
    const seed = 12
    using own = Region.anonymous(pageSize)
    new BigUint64Array(own.bytes.buffer, own.bytes.byteOffset, pageSize / 8).set(classWords(seed, 0))
    // As the C: sksm_scope=uid for the case, then back to what it was ("global [uid]": the bracketed one).
    const saved = /\[(\w+)\]/.exec(fs.readFileSync(scopeKnob, 'utf8'))?.[1] ?? 'uid'
    fs.writeFileSync(scopeKnob, 'uid')
    try {
      sksm.merge(own)
      const target = await twinsTarget(seed, NOBODY)
      using remote = TargetProcess.open(target.pid)
      expect(remote.madvise([{ start: target.cold, length }], 'merge')).toBe(length)
      const mine = pfnsOf('self', own.address, 1)[0]
      const [t0, , t2] = pfnsOf(target.pid, target.cold, pages)
      expect(t0, 'the target\'s twins merged').toBe(t2)
      expect(t0, 'root\'s frame of the same content').not.toBe(mine)
      expect(await target.ask('verify')).toEqual({ bad: 0 })
    } finally {
      fs.writeFileSync(scopeKnob, saved)
    }
  }, 60_000)

  it.skipIf(missing !== '')('an unprivileged process merges itself through its own pidfd, and is refused another process', async () => {
    const other = await twinsTarget(13, NOBODY)
    ensureDist()
    // As nobody: its own Region of two twin pages, then the other target (no CAP_SYS_NICE).
    const script = `
      import { Region, TargetProcess, pageSize, stats } from ${JSON.stringify(distEntry)}
      const region = Region.anonymous(2 * pageSize)
      region.bytes.fill(0x5a)
      const self = TargetProcess.open(process.pid)
      const merged = self.madvise([{ start: region.address, length: region.length }], 'merge')
      let refused = null
      try {
        TargetProcess.open(${other.pid}).madvise([{ start: ${other.cold}n, length: ${length} }], 'merge')
      } catch (error) {
        refused = error.code
      }
      console.log(JSON.stringify({ merged, merging: stats.process('self').ksmMergingPages, refused }))
    `
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { uid: NOBODY, gid: NOBODY, encoding: 'utf8', cwd: repoRoot })
    expect(child.status, child.stderr).toBe(0)
    const result = JSON.parse(child.stdout)
    expect(result.merged).toBe(2 * pageSize)
    expect(result.merging, 'ksm_merging_pages of the process that merged itself').toBe(2)
    // EPERM: no CAP_SYS_NICE (the C's setuid child is not dumpable and gets EACCES from ptrace first).
    expect(['EPERM', 'EACCES']).toContain(result.refused)
    const f = pfnsOf(other.pid, other.cold, pages)
    expect(f[0], 'the other target was not merged').not.toBe(f[2])
  }, 60_000)

  it.skipIf(missing !== '')('bad ranges: an unaligned address is refused before the syscall, an unmapped range is ENOMEM', async () => {
    const target = await twinsTarget(14)
    using remote = TargetProcess.open(target.pid)
    // The C passes the unaligned address to the kernel (EINVAL); the library refuses it itself.
    expect(() => remote.madvise([{ start: target.cold + 1n, length: pageSize }], 'merge')).toThrow(RangeError)
    let error: unknown
    try {
      remote.madvise([{ start: 1n << 40n, length: pageSize }], 'merge')
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(SyscallError)
    expect(error).toMatchObject({ code: 'ENOMEM' })
  }, 60_000)
})
