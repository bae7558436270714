// lib/twin_index.ts: page hashes and the TwinIndex, the content index cooperating processes share
// (a sealed shared memfd updated by single-word CAS), including participants killed mid-update.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { execFileSync, spawn } from 'node:child_process'
import { describe, expect, it } from 'vitest'
import { Region, TwinIndex, hashPages, pageSize as P, InvalidStateError, SyscallError } from '../lib/index.ts'
import { thrown } from './helpers/errors.ts'
import { hostRunOnly, inVm } from './helpers/env.mjs'
import { distEntry, ensureDist } from './helpers/dist.mjs'
import { noFdLeak, rssBytes } from './helpers/process.ts'
import { mergeTurnHolder } from './helpers/merge-turn.ts'
import { runChild } from './helpers/child.ts'
import { native, type TwinIndexHandle } from '../lib/native.ts'

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Hashes of `n` distinct page contents (real XXH64 values, as the deduplicator produces them). */
function distinctHashes(n: number, salt = 0): BigUint64Array {
  using r = Region.anonymous(n * P)
  for (let i = 0; i < n; i++) new DataView(r.bytes.buffer, r.bytes.byteOffset + i * P, 8).setUint32(0, i * 7919 + salt + 1)
  return hashPages(r)
}

type OpenOutcome = { timedOut: true } | { opened: true } | { name: string; code: string; message: string }

/**
 * TwinIndex.open(target) in a child process, killed after `timeoutMs`: a regression that blocks
 * in open(2) hangs the child, never this test process.
 */
async function openInChild(target: string, timeoutMs: number): Promise<OpenOutcome> {
  ensureDist()
  const script = `
    const { TwinIndex } = await import(${JSON.stringify(distEntry)})
    let outcome
    try {
      TwinIndex.open(process.env.TARGET).close()
      outcome = { opened: true }
    } catch (e) {
      outcome = { name: e.name, code: e.code, message: e.message }
    }
    process.stdout.write(JSON.stringify(outcome))
  `
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, TARGET: target }, stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout!.on('data', (chunk) => (out += chunk))
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
  const signal = await new Promise<NodeJS.Signals | null>((resolve) => child.once('close', (_code, sig) => resolve(sig)))
  clearTimeout(timer)
  return signal === 'SIGKILL' ? { timedOut: true } : (JSON.parse(out) as OpenOutcome)
}

/** The kernel function process `pid` sleeps in ('' once it is gone). */
function wchanOf(pid: number): string {
  return fs.existsSync(`/proc/${pid}/wchan`) ? fs.readFileSync(`/proc/${pid}/wchan`, 'utf8') : ''
}

describe('hashPages', () => {
  it('equal content gives equal hashes, different content different ones', () => {
    using r = Region.anonymous(4 * P)
    r.bytes.fill(1, 0, 2 * P)
    r.bytes.fill(2, 2 * P, 3 * P)
    const h = hashPages(r)
    expect(h.length).toBe(4)
    expect(h[0]).toBe(h[1])
    expect(h[2]).not.toBe(h[0])
    expect(h[3]).not.toBe(h[2]) // zero page
    r.bytes[P + 100] = 9
    expect(hashPages(r, { offset: P, length: P })[0]).not.toBe(h[0])
  })

  it('refuses unreadable pages and closed Regions instead of faulting', () => {
    const r = Region.anonymous(2 * P)
    r.protect('none', { offset: P, length: P })
    expect(() => hashPages(r)).toThrow(expect.objectContaining({ code: 'ERR_REGION_PROTECTION' }))
    expect(hashPages(r, { offset: 0, length: P }).length).toBe(1)
    r.close()
    expect(() => hashPages(r)).toThrow(expect.objectContaining({ code: 'ERR_REGION_CLOSED' }))
    expect(() => hashPages({} as never)).toThrow(TypeError)
  })

  it('reads only the Region\'s own memory and length: a prototype swapped on a real Region does not change what is hashed', () => {
    using r = Region.anonymous(2 * P)
    r.bytes.fill(7)
    using other = Region.anonymous(P)
    other.bytes.fill(9)
    const own = hashPages(r)
    // A real Region (it passes the brand check) whose methods and getters lie.
    const liar = (span: { address: number; length: number }) => Object.create(Region.prototype, {
      readableSpan: { value: () => span },
      kind: { get: () => 'anonymous' },
    })
    Object.setPrototypeOf(r, liar({ address: 0, length: 2 ** 53 }))
    expect([...hashPages(r)]).toEqual([...own])
    Object.setPrototypeOf(r, liar({ address: Number(other.address), length: P }))
    expect([...hashPages(r)]).toEqual([...own])
    Object.setPrototypeOf(r, Region.prototype)
  })
})

describe('TwinIndex', () => {
  it('counts holders per content, shared through index.path with a second mapping', () => {
    using index = TwinIndex.create({ slots: 1024 })
    const h = distinctHashes(3)
    expect([...index.add(h)]).toEqual([1, 1, 1])
    expect([...index.add(h.subarray(0, 1))]).toEqual([2])
    expect(index.path).toBe(`/proc/${process.pid}/fd/${index.fd}`)
    using other = TwinIndex.open(index.path)
    expect(other.slots).toBe(1024)
    expect([...other.holders(h)]).toEqual([2, 1, 1])
    expect([...other.release(h)]).toEqual([1, 0, 0])
    expect([...index.holders(h)]).toEqual([1, 0, 0])
    expect(index.usedSlots).toBe(1)
    // A release of a content nobody holds changes nothing (no underflow).
    expect([...index.release(h.subarray(1, 2))]).toEqual([0])
    using byFd = TwinIndex.open(index.fd)
    expect([...byFd.holders(h.subarray(0, 1))]).toEqual([1])
  })

  it('a full probe window is ERR_TWIN_INDEX_FULL (no syscall failed: not a SyscallError), and freed slots are reused', () => {
    using index = TwinIndex.create({ slots: 64 })
    const many = distinctHashes(200)
    let added = 0
    let error: unknown
    for (let i = 0; i < many.length && error === undefined; i++) {
      try {
        index.add(many.subarray(i, i + 1))
        added++
      } catch (e) {
        error = e
      }
    }
    expect(error).not.toBeInstanceOf(SyscallError)
    expect(error).toMatchObject({ name: 'Error', code: 'ERR_TWIN_INDEX_FULL', message: expect.stringMatching(/64 slots/) })
    expect(error).not.toHaveProperty('errno')
    expect(added).toBeLessThanOrEqual(64)
    index.release(many.subarray(0, added))
    expect(index.usedSlots).toBe(0)
    expect([...index.add(many.subarray(added, added + 1))]).toEqual([1])
  })

  it('hashes whose length lies (a subclass, a forged or array-like object) are coded errors, never V8\'s, and change nothing', () => {
    using index = TwinIndex.create({ slots: 64 })
    const h = distinctHashes(2)
    const lying = (length: unknown) =>
      new (class extends BigUint64Array {
        get length() {
          return length as number
        }
      })(h)
    // Objects that say they are long: a Proxy of a BigUint64Array (instanceof passes) or of an array.
    const longProxy = (target: object) => new Proxy(target, { get: (t, key) => (key === 'length' ? 2 ** 53 : Reflect.get(t, key)) })
    const forged = Object.create(BigUint64Array.prototype)
    const relabeled = Object.setPrototypeOf([1n, 2n], BigUint64Array.prototype)
    const arrayLike = { length: 2 ** 53, 0: 1n, 1: 2n }
    for (const method of ['add', 'release', 'holders'] as const) {
      const call = (hashes: unknown) => thrown(() => index[method](hashes as BigUint64Array))
      for (const length of [2 ** 53, 3, 1, 0, -1, 1.5, Number.NaN, Infinity]) {
        expect(call(lying(length)), `${method}, length ${length}`).toMatchObject({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE', message: expect.stringContaining('"hashes.length"') })
      }
      expect(call(lying('2')), method).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message: expect.stringContaining('"hashes.length"') })
      for (const bad of [longProxy(new BigUint64Array(h)), longProxy([1n, 2n]), forged, relabeled, arrayLike, [1n, 2n]]) {
        expect(call(bad), method).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message: expect.stringContaining('"hashes"') })
      }
    }
    // Node's wording for an object without a class name: the object itself, not "an instance of " and nothing.
    expect(thrown(() => index.add(Object.create(null)))).toMatchObject({ code: 'ERR_INVALID_ARG_TYPE', message: expect.stringMatching(/Received \[Object: null prototype\] \{\}$/) })
    expect(thrown(() => index.add(new (class extends Array {})() as never))).toMatchObject({ code: 'ERR_INVALID_ARG_TYPE', message: expect.stringMatching(/Received \[\]$/) })
    expect(index.usedSlots).toBe(0)
    // A subclass that tells its length truthfully is a BigUint64Array like any other.
    expect([...index.add(lying(2))]).toEqual([1, 1])
    expect([...index.holders(h)]).toEqual([1, 1])
  })

  it('refuses what is not a sealed twin index, without leaking descriptors', () => {
    const plain = `/tmp/memdedup-twin-${process.pid}`
    fs.writeFileSync(plain, Buffer.alloc(64 + 64 * 8))
    try {
      noFdLeak(() => {
        expect(() => TwinIndex.open(plain)).toThrow(expect.objectContaining({ name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' }))
        using memfd = Region.memfd(P) // sealed against shrinking only
        expect(() => TwinIndex.open(`/proc/self/fd/${memfd.fd}`)).toThrow(expect.objectContaining({ message: expect.stringMatching(/sealed/) }))
        expect(() => TwinIndex.open('/nonexistent/index')).toThrow(expect.objectContaining({ name: 'SyscallError', code: 'ENOENT' }))
      })
    } finally {
      fs.rmSync(plain)
    }
    expect(() => TwinIndex.open('')).toThrow(TypeError)
    expect(() => TwinIndex.open('a\0b')).toThrow(TypeError)
    expect(() => TwinIndex.open({} as never)).toThrow(TypeError)
    expect(() => TwinIndex.open(-1)).toThrow(RangeError)
    expect(() => TwinIndex.create({ slots: 100 })).toThrow(RangeError)
    expect(() => TwinIndex.create({ slots: 32 })).toThrow(RangeError)
    expect(() => TwinIndex.create({ slots: 2 ** 29 })).toThrow(RangeError)
    expect(() => TwinIndex.create({ slots: '64' } as never)).toThrow(TypeError)
    expect(() => TwinIndex.create({ slot: 64 } as never)).toThrow(TypeError)
    const index = TwinIndex.create({ slots: 64 })
    expect(() => index.add([1n] as never)).toThrow(TypeError)
    index.close()
    index.close()
    expect(index.fd).toBe(-1)
    expect(() => index.add(new BigUint64Array(1))).toThrow(InvalidStateError)
    expect(() => index.path).toThrow(expect.objectContaining({ code: 'ERR_TWIN_INDEX_CLOSED' }))
  })

  it('creating the largest index commits nothing: free slots are the zeros a fresh memfd reads as', () => {
    const rssBefore = rssBytes()
    using index = TwinIndex.create({ slots: 2 ** 28 })
    const committed = () => fs.fstatSync(index.fd).blocks * 512
    // 2 GiB of slots; only the header page is written (a 2 MiB page where shmem uses THP).
    expect(index.slots).toBe(2 ** 28)
    expect(committed()).toBeLessThanOrEqual(2 * 1024 * 1024)
    // Counting used slots reads only the pages that hold entries, and another process's open
    // commits nothing either.
    expect(index.usedSlots).toBe(0)
    using other = TwinIndex.open(index.path)
    expect(other.usedSlots).toBe(0)
    expect(committed()).toBeLessThanOrEqual(2 * 1024 * 1024)
    const h = distinctHashes(64)
    expect([...index.add(h)]).toEqual(new Array(64).fill(1))
    expect(other.usedSlots).toBe(64)
    // 64 entries touch at most 64 more pages.
    expect(committed()).toBeLessThanOrEqual(65 * 2 * 1024 * 1024)
    expect(rssBytes() - rssBefore).toBeLessThan(256 * 1024 * 1024)
    // The documented maximum, and a RangeError above it.
    expect(TwinIndex.maxSlots).toBe(2 ** 28)
    expect(() => TwinIndex.create({ slots: TwinIndex.maxSlots * 2 })).toThrow(expect.objectContaining({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }))
  })

  it('open() of a FIFO is a clear error and never opens it (a writer waiting for a reader stays waiting)', async (ctx) => {
    const fifo = path.join(os.tmpdir(), `memdedup-twin-fifo-${process.pid}`)
    execFileSync('mkfifo', [fifo])
    // A writer blocks in open(2) until someone opens the FIFO for reading; an open for reading
    // and writing would release it, and its data would be lost when that descriptor closes.
    const writer = spawn('sh', ['-c', 'echo written > "$0"', fifo], { stdio: 'ignore' })
    try {
      const deadline = Date.now() + 20_000
      while (wchanOf(writer.pid!) !== 'wait_for_partner' && Date.now() < deadline) await sleep(10)
      const wchan = wchanOf(writer.pid!)
      if (wchan !== 'wait_for_partner') ctx.skip(`cannot see the FIFO writer wait for a reader (/proc/${writer.pid}/wchan: '${wchan}')`)
      const outcome = await openInChild(fifo, inVm ? 300_000 : 30_000)
      expect(outcome).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE', message: expect.stringMatching(/FIFO/) })
      await sleep(100)
      expect(wchanOf(writer.pid!)).toBe('wait_for_partner')
      expect(writer.exitCode).toBeNull()
      // Here too (the child showed it does not block), and without leaking a descriptor.
      noFdLeak(() => {
        expect(() => TwinIndex.open(fifo)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE', message: expect.stringMatching(/FIFO/) }))
        expect(() => TwinIndex.open(os.tmpdir())).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE', message: expect.stringMatching(/directory/) }))
      })
      expect(wchanOf(writer.pid!)).toBe('wait_for_partner')
    } finally {
      writer.kill('SIGKILL')
      fs.rmSync(fifo)
    }
  })

  it.skipIf(hostRunOnly('a file lease'))('open() of a file another process holds a lease on is EAGAIN at once, not a wait for the lease break' + hostRunOnly('a file lease'), async (ctx) => {
    const file = path.join(os.tmpdir(), `memdedup-twin-lease-${process.pid}`)
    fs.writeFileSync(file, Buffer.alloc(64 + 64 * 8))
    // A read lease (F_SETLEASE F_RDLCK = 1024, 0); SIGIO, the lease-break signal, ignored: the holder
    // never gives the lease back, so an open for writing waits the whole lease-break-time (45 s).
    const holderScript = [
      'import fcntl, os, signal, sys',
      'signal.signal(signal.SIGIO, signal.SIG_IGN)',
      'fd = os.open(sys.argv[1], os.O_RDONLY)',
      'try:',
      '    fcntl.fcntl(fd, 1024, 0)',
      'except OSError as e:',
      "    print('refused', e.strerror, flush=True)",
      '    sys.exit(0)',
      "print('leased', flush=True)",
      'sys.stdin.read()',
    ].join('\n')
    const holder = spawn('python3', ['-c', holderScript, file], { stdio: ['pipe', 'pipe', 'inherit'] })
    try {
      const first = await new Promise<string>((resolve, reject) => {
        holder.once('error', (error: NodeJS.ErrnoException) => (error.code === 'ENOENT' ? resolve('no python3') : reject(error)))
        holder.stdout!.once('data', (chunk) => resolve(String(chunk).trim()))
        holder.once('exit', (code) => resolve(`exited with ${code}`))
      })
      if (first === 'no python3') ctx.skip('python3 is needed to hold a lease (fcntl F_SETLEASE) in another process')
      if (first.startsWith('refused')) ctx.skip(`the file system of ${os.tmpdir()} refuses leases: ${first}`)
      expect(first).toBe('leased')
      const started = Date.now()
      const outcome = await openInChild(file, inVm ? 300_000 : 30_000)
      expect(outcome).toMatchObject({ name: 'SyscallError', code: 'EAGAIN' })
      expect(Date.now() - started).toBeLessThan(45_000)
    } finally {
      holder.kill('SIGKILL')
      fs.rmSync(file)
    }
  }, inVm ? 600_000 : 60_000)

  it('survives participants SIGKILLed mid-update: no lock left, no lost or torn update', async () => {
    ensureDist()
    using index = TwinIndex.create({ slots: 4096 })
    const hashes = distinctHashes(16)
    const list = JSON.stringify([...hashes].map(String))
    // Each child holds each content at most once at any moment: add all, release all, forever.
    const script = `
      const { TwinIndex } = await import(${JSON.stringify(distEntry)})
      const index = TwinIndex.open(process.env.INDEX)
      const h = BigUint64Array.from(${list}, BigInt)
      process.stdout.write('ready\\n')
      for (;;) { index.add(h); index.release(h) }
    `
    // Under TCG the children's start-up dominates (busy siblings starve it): fewer, smaller rounds.
    const rounds = inVm ? 2 : 8
    let kills = 0
    for (let round = 0; round < rounds; round++) {
      const children = Array.from({ length: inVm ? 2 : 3 }, () => spawn(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, INDEX: index.path }, stdio: ['ignore', 'pipe', 'inherit'] }))
      await Promise.all(children.map((c) => new Promise((resolve) => c.stdout!.once('data', resolve))))
      await sleep(5 + (round % 7) * 3)
      for (const c of children) {
        c.kill('SIGKILL')
        await new Promise((resolve) => c.once('exit', resolve))
        kills++
      }
    }
    const left = index.holders(hashes)
    // A killed child can leave at most its own one holder per content behind; a lost update
    // (non-atomic read-modify-write) would leave more, or wrap below zero.
    for (const n of left) expect(n).toBeLessThanOrEqual(kills)
    // The index still works for everyone: a new content pairs up at once.
    const fresh = distinctHashes(1, 99_999)
    expect([...index.add(fresh)]).toEqual([1])
    expect([...index.add(fresh)]).toEqual([2])
  }, inVm ? 600_000 : 180_000)
})

describe('TwinIndex merge turn', () => {
  it('one thread at a time; given back, expired or held by a dead thread, it is free', async () => {
    using index = TwinIndex.create({ slots: 64 })
    // The same thread may take it again (a refresh); ending the newest token frees it.
    const mine = index.tryMergeTurn()
    expect(typeof mine).toBe('bigint')
    const again = index.tryMergeTurn()
    expect(again).not.toBeNull()
    index.endMergeTurn(again!)
    // Another process holds it: we cannot have it until it ends its turn.
    const holder = mergeTurnHolder(index, 60_000)
    try {
      expect(await holder.took).toBe('true')
      expect(index.tryMergeTurn()).toBeNull()
      expect(await holder.ended()).toBe('ended')
      const ours = index.tryMergeTurn()
      expect(ours).not.toBeNull()
      // While we hold it, a child cannot take it.
      const refused = mergeTurnHolder(index, 60_000)
      expect(await refused.took).toBe('false')
      await refused.ended()
      index.endMergeTurn(ours!)
      // An old token does not end a newer turn.
      index.endMergeTurn(mine!)
    } finally {
      holder.child.kill('SIGKILL')
    }
    // A holder killed during its turn: free at once (its thread is gone), not after the lease.
    const killed = mergeTurnHolder(index, 60_000)
    expect(await killed.took).toBe('true')
    expect(index.tryMergeTurn()).toBeNull()
    killed.child.kill('SIGKILL')
    await new Promise((resolve) => killed.child.once('exit', resolve))
    const afterKill = index.tryMergeTurn()
    expect(afterKill).not.toBeNull()
    index.endMergeTurn(afterKill!)
    // A live holder whose lease ran out: free after leaseMs.
    const slow = mergeTurnHolder(index, 50)
    try {
      expect(await slow.took).toBe('true')
      await sleep(120)
      const late = index.tryMergeTurn()
      expect(late).not.toBeNull()
      index.endMergeTurn(late!)
    } finally {
      slow.child.kill('SIGKILL')
    }
  })

  it('a create that fails names the call that failed: memfd_create (no descriptor left), mmap (no address space left)', () => {
    // Each in a child whose limits leave exactly that call without what it needs.
    const { result } = runChild(`
      const { TwinIndex } = lib
      const { execFileSync } = await import('node:child_process')
      const fs = await import('node:fs')
      const outcome = (fn) => { try { fn(); return 'ok' } catch (error) { return { name: error.name, code: error.code, syscall: error.syscall } } }
      // Every descriptor below the limit taken: memfd_create has none left.
      execFileSync('prlimit', ['--pid', String(process.pid), '--nofile=64:64'])
      const held = []
      for (;;) { try { held.push(fs.openSync('/dev/null', 'r')) } catch (error) { if (error.code !== 'EMFILE') throw error; break } }
      const memfd = outcome(() => TwinIndex.create({ slots: 64 }))
      for (const fd of held) fs.closeSync(fd)
      // Address space just above what the process maps: the memfd and its size are fine, the 2 GiB
      // mapping is not. Last: a process spawned under the cap could not run.
      const mapped = Number(/VmSize:\\s+(\\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]) * 1024
      execFileSync('prlimit', ['--pid', String(process.pid), '--as=' + (mapped + 256 * 2 ** 20)])
      const mmap = outcome(() => TwinIndex.create({ slots: 2 ** 28 }))
      console.log(JSON.stringify({ mmap, memfd }))
    `)
    expect(result).toEqual({
      mmap: { name: 'SyscallError', code: 'ENOMEM', syscall: 'mmap' },
      memfd: { name: 'SyscallError', code: 'EMFILE', syscall: 'memfd_create' },
    })
  })

  it('native index calls return no sentinels: a closed handle is a TypeError (lib/ bypassed), a full window a short count', () => {
    const handle = native.twinIndexCreate(64, new Uint32Array(1))
    expect(typeof handle).toBe('object')
    const index = handle as TwinIndexHandle
    const many = distinctHashes(200)
    const holders = new Uint32Array(many.length)
    const counted = native.twinIndexUpdate(index, many, many.length, 1, holders)
    expect(counted).toBeGreaterThan(0) // the hashes before the first full window
    expect(counted).toBeLessThan(many.length)
    expect([...holders.subarray(0, counted)].every((h) => h >= 1)).toBe(true)
    expect(native.twinIndexClose(index)).toBe(0)
    expect(native.twinIndexClose(index)).toBe(0) // idempotent
    for (const call of [
      () => native.twinIndexUpdate(index, many, 1, 0, holders),
      () => native.twinIndexTakeTurn(index, 1000),
      () => native.twinIndexGiveTurn(index, 1n),
      () => native.twinIndexInfo(index, new Float64Array(3)),
      () => native.dedupRelease(index, 0, new Uint32Array(0), new BigUint64Array(0)),
    ]) {
      expect(thrown(call)).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message: expect.stringMatching(/an open twin index handle/) })
    }
  })

  it('rejects bad tokens and options, and a closed index, clearly', () => {
    const index = TwinIndex.create({ slots: 64 })
    expect(() => index.tryMergeTurn({ leaseMs: 0 })).toThrow(RangeError)
    expect(() => index.tryMergeTurn({ leaseMs: '5' as never })).toThrow(TypeError)
    expect(() => index.endMergeTurn(5 as never)).toThrow(TypeError)
    expect(() => index.endMergeTurn(-1n)).toThrow(TypeError)
    expect(() => index.endMergeTurn(2n ** 64n)).toThrow(TypeError)
    index.close()
    expect(() => index.tryMergeTurn()).toThrow(expect.objectContaining({ code: 'ERR_TWIN_INDEX_CLOSED' }))
    expect(() => index.endMergeTurn(1n)).toThrow(expect.objectContaining({ code: 'ERR_TWIN_INDEX_CLOSED' }))
  })
})
