// Merge scopes (SKSM v3, issue 19 finding 10; kernel patch 0048). A synchronous merge answers
// "does a page with this content exist?" at once, and pages_sharing (world-readable) tells the
// answer: another uid could recover a secret page by page. The attacker here is the review's:
// an unprivileged process that MADV_MERGEs 1000 guesses of a PIN root holds, one page at a time.
// With sksm_scope=uid (the default) it learns nothing and shares no frame with root; with
// sksm_scope=global (asked for) the same attacker finds the PIN, which proves it can. The kernel's
// truth is the PFN from /proc/PID/pagemap, read by this (root) process for both sides.
import fs from 'node:fs'
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { createInterface } from 'node:readline'
import path from 'node:path'
import { beforeEach, describe, expect, it } from 'vitest'
import { Region, ksm, pagemap, pageSize, sksm } from '../lib/index.ts'
import { pinPage } from './fixtures/sksm-common.mjs'
import { ensureDist, fastKsmd, fixturesDir, holdKsmLock } from './helpers/ksm.ts'

const guesses = 1000
const secret = 1 + Math.floor(Math.random() * (guesses - 1))
const otherUid = 65534 // nobody: any uid but root's will do

/** Why this kernel or process cannot run the scope tests, or ''. */
function scopeSkipReason(): string {
  if (!sksm.available()) return 'kernel has no SKSM (madvise(MADV_MERGE) is EINVAL): run in the lab VM'
  if (!fs.existsSync('/sys/kernel/mm/ksm/sksm_scope')) return 'SKSM without merge scopes: no /sys/kernel/mm/ksm/sksm_scope'
  if (process.getuid?.() !== 0) return 'needs root: runs the attacker as another uid and reads its pagemap'
  return ''
}

interface Report {
  pid: number
  address: string
  /** pages_sharing's change at each guess's MADV_MERGE (merge mode). */
  deltas: number[]
  /** Guesses whose page the attacker's own pagemap says is mapped elsewhere (PM_MMAP_EXCLUSIVE clear). */
  shared: number[]
  /** µs each guess's MADV_MERGE took (merge mode). */
  micros: number[]
}

/** PFN of `address` in process `pid` (0 when not present): bits 0-54 of /proc/PID/pagemap. */
function pfnOf(pid: number, address: bigint): bigint {
  const entry = Buffer.alloc(8)
  const fd = fs.openSync(`/proc/${pid}/pagemap`, 'r')
  try {
    fs.readSync(fd, entry, 0, 8, Number((address / BigInt(pageSize)) * 8n))
  } finally {
    fs.closeSync(fd)
  }
  const bits = entry.readBigUInt64LE()
  return bits >> 63n ? bits & ((1n << 55n) - 1n) : 0n
}

/**
 * The timing channel, for the record (not asserted: a timed test would flake): the right guess's
 * MADV_MERGE time against its 40 nearest guesses (every guess grows the attacker's own part of the
 * stable tree, so later guesses are slower: neighbours, not all 999, are the fair comparison).
 */
function logTiming(uid: number, micros: number[]): void {
  const neighbours = micros.filter((_, guess) => guess !== secret && Math.abs(guess - secret) <= 20).sort((a, b) => a - b)
  const slower = neighbours.filter((us) => us > micros[secret]).length
  const scope = ksm.stats().sksmScope
  console.log(`sksm_scope=${scope} uid ${uid}: right guess (${secret}) ${micros[secret].toFixed(1)} µs, neighbours' median ${neighbours[neighbours.length >> 1].toFixed(1)} µs, ${slower} of ${neighbours.length} slower`)
}

/** test/fixtures/sksm-guess.mjs running as `uid`: one guess page per PIN below `count`. */
class Attacker {
  readonly #child: ChildProcessWithoutNullStreams
  readonly #lines: AsyncIterator<string>
  readonly #stderr: Buffer[] = []
  readonly #exited: Promise<number | null>

  constructor(readonly uid: number, mode: 'merge' | 'advise', count: number) {
    this.#child = spawn(process.execPath, [path.join(fixturesDir, 'sksm-guess.mjs'), String(count), mode], { uid, gid: uid })
    this.#child.stderr.on('data', (chunk: Buffer) => this.#stderr.push(chunk))
    this.#exited = new Promise((resolve) => this.#child.on('close', resolve))
    this.#lines = createInterface({ input: this.#child.stdout })[Symbol.asyncIterator]()
  }

  /** The next report: the first comes once every guess is merged or advised. */
  async report(): Promise<Report> {
    const line = await this.#lines.next()
    if (line.done) throw new Error(`the attacker (uid ${this.uid}) reported nothing: exit ${await this.#exited}, ${Buffer.concat(this.#stderr).toString()}`)
    return JSON.parse(line.value) as Report
  }

  /** A fresh report (pagemap read again), after ksmd had time. */
  async again(): Promise<Report> {
    this.#child.stdin.write('report\n')
    return this.report()
  }

  /** PFN of the attacker's page holding the right guess. */
  secretPfn(report: Report): bigint {
    return pfnOf(report.pid, BigInt(report.address) + BigInt(secret * pageSize))
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.#child.stdin.end('exit\n')
    expect(await this.#exited, Buffer.concat(this.#stderr).toString()).toBe(0)
  }
}

/** MADV_MERGEs `guesses` guesses as `uid`, one at a time; returns the report and the right guess's PFN. */
async function attack(uid: number): Promise<Report & { secretPfn: bigint }> {
  await using attacker = new Attacker(uid, 'merge', guesses)
  const report = await attacker.report()
  logTiming(uid, report.micros)
  return { ...report, secretPfn: attacker.secretPfn(report) }
}

/** Root's secret page, merged (so in the stable tree, in root's scope). */
function victim(): Region {
  const region = Region.anonymous(pageSize)
  pinPage(region.bytes, secret)
  sksm.merge(region)
  return region
}

const rootPfn = (region: Region) => pagemap.entries(region).pfns[0]
const found = (deltas: number[]) => deltas.flatMap((delta, guess) => (delta !== 0 ? [guess] : []))

describe('merge scopes: MADV_MERGE across uids', () => {
  const reason = scopeSkipReason()
  // ksmd stopped: pages_sharing moves only with the attacker's merges
  const state = holdKsmLock({ run: 0 }, () => reason === '')
  beforeEach((ctx) => {
    if (reason) ctx.skip(reason)
    ensureDist()
  })

  it('the kernel scopes MADV_MERGE by uid unless told otherwise, ksmd stays global', () => {
    const stats = ksm.stats()
    expect(stats.sksmScope).toBe('uid')
    expect(stats.ksmdScope).toBe('global')
  })

  it('sksm_scope=uid: 1000 guesses from another uid learn nothing and share no frame with root', async () => {
    state.set({ sksmScope: 'uid' })
    using secretPage = victim()
    const result = await attack(otherUid)
    expect(found(result.deltas), 'guesses whose merge moved pages_sharing').toEqual([])
    expect(result.shared, 'guesses mapped elsewhere, says the attacker\'s pagemap').toEqual([])
    expect(result.secretPfn).not.toBe(0n)
    expect(result.secretPfn).not.toBe(rootPfn(secretPage))
  }, 600_000)

  it('sksm_scope=uid: root\'s own guesses still merge with root\'s page (one scope per uid)', async () => {
    state.set({ sksmScope: 'uid' })
    using secretPage = victim()
    const result = await attack(0)
    expect(found(result.deltas)).toEqual([secret])
    expect(result.shared).toEqual([secret])
    expect(result.secretPfn).toBe(rootPfn(secretPage))
  }, 600_000)

  it('sksm_scope=global: the same attacker finds the PIN (the oracle uid scopes close)', async () => {
    state.set({ sksmScope: 'global' })
    using secretPage = victim()
    const result = await attack(otherUid)
    expect(found(result.deltas)).toEqual([secret])
    expect(result.shared).toEqual([secret])
    expect(result.secretPfn).toBe(rootPfn(secretPage))
  }, 600_000)

  it('ksmd_scope=uid: ksmd merges a page only with the same uid\'s (16 guesses, one the PIN)', async () => {
    const count = 16
    state.set({ ksmdScope: 'uid', run: 0 })
    using secretPage = Region.anonymous(pageSize)
    pinPage(secretPage.bytes, secret % count)
    ksm.enable(secretPage)
    await using stranger = new Attacker(otherUid, 'advise', count)
    await using friend = new Attacker(0, 'advise', count)
    await stranger.report()
    await friend.report()
    state.set({ ...fastKsmd, run: 1 })
    // root's page merges with the root attacker's copy; nobody's copy must stay apart
    const merged = await state.until(() => pagemap.entries(secretPage).pfns[0] !== 0n && ksm.stats().pagesSharing >= 1, 4)
    expect(merged, 'ksmd merged root\'s page with root\'s copy').toBe(true)
    await state.scans(2)
    const fromFriend = await friend.again()
    const fromStranger = await stranger.again()
    const at = (report: Report) => pfnOf(report.pid, BigInt(report.address) + BigInt((secret % count) * pageSize))
    expect(at(fromFriend)).toBe(rootPfn(secretPage))
    expect(fromFriend.shared).toEqual([secret % count])
    expect(at(fromStranger)).not.toBe(rootPfn(secretPage))
    expect(fromStranger.shared).toEqual([])
    state.set({ run: 0 })
  }, 600_000)

  it('rejects a scope the kernel does not know, leaving the knob as it was', () => {
    state.set({ sksmScope: 'uid' })
    expect(() => ksm.configure({ sksmScope: 'memcg' as never })).toThrow(expect.objectContaining({ code: 'EINVAL' }))
    expect(ksm.stats().sksmScope).toBe('uid')
  })
})
