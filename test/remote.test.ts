// lib/remote.ts: another process (a Node child that maps a Region with known content and writes
// pages when told to), opened as a TargetProcess.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import readline from 'node:readline'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { features, InvalidStateError, ksm, pagemap, pageSize, Region, SyscallError, TargetProcess } from '../lib/index.ts'
import { native } from '../lib/native.ts'
import { distEntry, ensureDist } from './helpers/dist.mjs'
import { pfnsOf } from './helpers/daemon-target.ts'
import { CAP_SYS_NICE, fdCount, hasCapability, noFdLeak } from './helpers/process.ts'

const pages = 16
/** The byte the child writes at offset i of its Region. */
const pattern = (i: number) => (i * 7 + 3) & 255

/** A child process holding a Region of `pages` pages of `pattern`; writes pages when told to. */
interface Child {
  process: ChildProcess
  pid: number
  address: bigint
  length: number
  /** Pages whose first byte the child flipped, in order (a page twice flips it back). */
  written: number[]
  /** The child flips the first byte of each of these pages, then answers. */
  write(pageIndexes: number[]): Promise<void>
  stop(): Promise<void>
}

const childScript = `
  import * as lib from ${JSON.stringify(distEntry)}
  import readline from 'node:readline'
  const r = lib.Region.anonymous(${pages} * lib.pageSize)
  r.advise('nohugepage')
  for (let i = 0; i < r.length; i++) r.bytes[i] = (i * 7 + 3) & 255
  console.log(JSON.stringify({ address: r.address.toString(), length: r.length }))
  for await (const line of readline.createInterface({ input: process.stdin })) {
    for (const page of JSON.parse(line).write) r.bytes[page * lib.pageSize] ^= 0xff
    console.log(JSON.stringify({ done: true }))
  }
`

async function startChild(options: { uid?: number; gid?: number } = {}): Promise<Child> {
  ensureDist()
  const child = spawn(process.execPath, ['--input-type=module', '-e', childScript], { stdio: ['pipe', 'pipe', 'inherit'], ...options })
  const lines = readline.createInterface({ input: child.stdout! })[Symbol.asyncIterator]()
  const next = async () => {
    const { value, done } = await lines.next()
    if (done) throw new Error(`the child exited early (status ${child.exitCode})`)
    return JSON.parse(value as string)
  }
  const hello = await next()
  const written: number[] = []
  return {
    process: child,
    pid: child.pid!,
    address: BigInt(hello.address),
    length: hello.length,
    written,
    async write(pageIndexes) {
      written.push(...pageIndexes)
      child.stdin!.write(JSON.stringify({ write: pageIndexes }) + '\n')
      await next()
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGKILL')
      await exited
    },
  }
}

/** What the child's Region holds: the pattern, with the first byte of each written page flipped. */
function expected(child: Child): Uint8Array {
  const bytes = Uint8Array.from({ length: pages * pageSize }, (_, i) => pattern(i))
  for (const page of child.written) bytes[page * pageSize] ^= 0xff
  return bytes
}

// Advice to another process needs CAP_SYS_NICE; without it (the suite run as a normal user) it is EPERM.
const maySetNice = hasCapability(CAP_SYS_NICE)
const niceWhy = maySetNice ? '' : ' [skipped: needs CAP_SYS_NICE (advice to another process); the EPERM case runs instead]'
const { EPERM, EINVAL } = os.constants.errno

describe('TargetProcess on a child process', () => {
  let child: Child
  let target: TargetProcess
  beforeAll(async () => {
    child = await startChild()
    target = TargetProcess.open(child.pid)
  })
  afterAll(async () => {
    target?.close()
    await child?.stop()
  })

  it('open(): pid, alive(); mappings() finds the child\'s Region', () => {
    expect(target.pid).toBe(child.pid)
    expect(target.closed).toBe(false)
    expect(target.alive()).toBe(true)
    const region = target.mappings().find((m) => m.start === child.address)
    expect(region).toMatchObject({ start: child.address, end: child.address + BigInt(child.length), perms: 'rw-p', offset: 0n, inode: 0 })
    expect(region!.vmFlags).toBeUndefined()
    const withFlags = target.mappings({ vmFlags: true }).find((m) => m.start === child.address)!
    expect(withFlags.vmFlags).toEqual(expect.arrayContaining(['rd', 'wr', 'nh'])) // nh: the child's advise('nohugepage')
    expect(withFlags.vmFlags).not.toContain('mg')
  })

  it('read() copies the child\'s bytes byte for byte; an unmapped address is EIO', () => {
    const into = new Uint8Array(child.length)
    expect(target.read(child.address, into)).toBe(child.length)
    expect(Buffer.compare(into, expected(child))).toBe(0)
    // Part of a page, at an unaligned address.
    const part = new Uint8Array(100)
    expect(target.read(child.address + 4097n, part)).toBe(100)
    expect([...part]).toEqual(Array.from({ length: 100 }, (_, i) => pattern(4097 + i)))
    expect(() => target.read(0n, new Uint8Array(8))).toThrow(expect.objectContaining({ name: 'SyscallError', code: 'EIO', syscall: 'pread' }))
  })

  it('scan(): PAGEMAP_SCAN of the child\'s pagemap finds its present pages', () => {
    const res = target.scan({ start: child.address, length: child.length, require: ['present'] })
    expect(res.pages).toBe(pages)
    expect([...res.starts]).toEqual([child.address])
    expect([...res.ends]).toEqual([child.address + BigInt(child.length)])
    // Batches: one region per ioctl.
    const batches = [...target.scanAll({ start: child.address, length: child.length, require: ['present'], maxPages: pages, vectorLength: 1 })]
    expect(batches.reduce((n, b) => n + b.pages, 0)).toBe(pages)
  })

  it('entries(): the child\'s pagemap entries, the PFNs its /proc/<pid>/pagemap gives (root), present and exclusive flags', () => {
    const e = target.entries(child.address, pages)
    expect(e.address).toBe(child.address)
    expect(e.length).toBe(pages)
    for (let i = 0; i < pages; i++) expect(e.present(i), `page ${i} present`).toBe(true)
    const theirs = pfnsOf(child.pid, child.address, pages)
    if (process.getuid?.() === 0) expect([...e.pfns]).toEqual(theirs)
    else expect([...e.pfns].every((pfn) => pfn === 0n), 'PFNs hidden without CAP_SYS_ADMIN').toBe(true)
    // An unmapped page reads as absent, not as an error.
    expect(target.entries(0n, 1).present(0)).toBe(false)
  })

  it('clearSoftDirty(), then the child writes: the softDirty category finds exactly those pages', async (ctx) => {
    if (!pagemap.softDirtySupported()) ctx.skip(`soft-dirty is not tracked by this kernel (${os.release()}: no "sd" VmFlag, CONFIG_MEM_SOFT_DIRTY off)`)
    target.clearSoftDirty()
    const before = target.scan({ start: child.address, length: child.length, require: ['softDirty'] })
    expect(before.pages).toBe(0)
    await child.write([2, 5, 6])
    const after = target.scan({ start: child.address, length: child.length, require: ['softDirty'], report: ['softDirty'] })
    const page = (a: bigint) => Number((a - child.address) / BigInt(pageSize))
    expect([...after.starts].map(page)).toEqual([2, 5])
    expect([...after.ends].map(page)).toEqual([3, 7])
  })

  it.skipIf(maySetNice)(`madvise() without CAP_SYS_NICE: SyscallError EPERM naming the advice, the child's content unchanged${maySetNice ? ' [skipped: this process holds CAP_SYS_NICE, the advice is taken: the next case]' : ''}`, () => {
    const range = { start: child.address, length: child.length }
    for (const advice of ['cold', 'pageout', 'willneed'] as const) {
      expect(() => target.madvise([range], advice)).toThrow(expect.objectContaining({ name: 'SyscallError', code: 'EPERM', syscall: `process_madvise(MADV_${advice.toUpperCase()})` }))
    }
    const into = new Uint8Array(child.length)
    target.read(child.address, into)
    expect(Buffer.compare(into, expected(child))).toBe(0)
  })

  it.skipIf(!maySetNice)(`madvise(): cold, pageout, willneed on the child's Region return the bytes advised; its content is unchanged${niceWhy}`, () => {
    const range = { start: child.address, length: child.length }
    expect(target.madvise([range], 'cold')).toBe(child.length)
    // Without swap the anonymous pages stay where they are; the advice still succeeds.
    expect(target.madvise([range], 'pageout')).toBe(child.length)
    expect(target.madvise([{ start: child.address, length: pageSize }, { start: child.address + BigInt(2 * pageSize), length: pageSize }], 'willneed')).toBe(2 * pageSize)
    const into = new Uint8Array(child.length)
    target.read(child.address, into)
    expect(Buffer.compare(into, expected(child))).toBe(0)
    // Memory the child does not map: ENOMEM.
    expect(() => target.madvise([{ start: BigInt(pageSize), length: pageSize }], 'cold')).toThrow(expect.objectContaining({ name: 'SyscallError', code: 'ENOMEM', syscall: 'process_madvise(MADV_COLD)' }))
  })

  it(`madvise('merge'): EINVAL where process_madvise() does not accept MADV_MERGE for another process (features().remoteMerge ${features().remoteMerge})`, () => {
    const range = { start: child.address, length: child.length }
    if (features().remoteMerge) {
      // The kernel patch that adds remote MADV_MERGE: the advice is taken.
      expect(target.madvise([range], 'merge')).toBe(child.length)
    } else {
      // Today's kernels (the patch is pending): refused, as features() said.
      expect(() => target.madvise([range], 'merge')).toThrow(expect.objectContaining({ name: 'SyscallError', code: 'EINVAL', syscall: 'process_madvise(MADV_MERGE)' }))
    }
  })

  it('the remoteMerge probe tells the advice check apart: an empty process_madvise is accepted for MADV_COLD, its answer for MADV_MERGE matches features()', () => {
    const pidfd = native.remotePidfdOpen(child.pid)
    expect(pidfd).toBeGreaterThanOrEqual(0)
    try {
      // The advice is checked first (EINVAL), CAP_SYS_NICE after it (EPERM): either answer but EINVAL means taken.
      expect(native.remoteMadvise(pidfd, new BigUint64Array(0), 0, native.constants.MADV_COLD)).toBe(maySetNice ? 0 : -EPERM)
      const merge = native.remoteMadvise(pidfd, new BigUint64Array(0), 0, native.constants.MADV_MERGE)
      expect(merge).toBe(!features().remoteMerge ? -EINVAL : maySetNice ? 0 : -EPERM)
    } finally {
      native.closeFd(pidfd)
    }
  })

  it('hostile arguments: TypeError/RangeError with Node codes, no syscall, no crash', () => {
    const detached = new Uint8Array(16)
    structuredClone(detached.buffer, { transfer: [detached.buffer] })
    const cases: [() => unknown, string][] = [
      [() => target.read(Number(child.address) as never, new Uint8Array(1)), 'ERR_INVALID_ARG_TYPE'],
      [() => target.read(-1n, new Uint8Array(1)), 'ERR_OUT_OF_RANGE'],
      [() => target.read(2n ** 53n, new Uint8Array(1)), 'ERR_OUT_OF_RANGE'],
      [() => target.read(child.address, new Uint8Array(0)), 'ERR_OUT_OF_RANGE'],
      [() => target.read(child.address, detached), 'ERR_OUT_OF_RANGE'],
      [() => target.read(child.address, new Uint16Array(4) as never), 'ERR_INVALID_ARG_TYPE'],
      [() => target.read(child.address, { length: 4096 } as never), 'ERR_INVALID_ARG_TYPE'],
      [() => target.madvise([], 'cold'), 'ERR_OUT_OF_RANGE'],
      [() => target.madvise(Array(1025).fill({ start: child.address, length: pageSize }), 'cold'), 'ERR_OUT_OF_RANGE'],
      [() => target.madvise({ length: 1 } as never, 'cold'), 'ERR_INVALID_ARG_TYPE'],
      [() => target.madvise([null as never], 'cold'), 'ERR_INVALID_ARG_TYPE'],
      [() => target.madvise([{ start: child.address + 1n, length: pageSize }], 'cold'), 'ERR_OUT_OF_RANGE'],
      [() => target.madvise([{ start: child.address, length: 100 }], 'cold'), 'ERR_OUT_OF_RANGE'],
      [() => target.madvise([{ start: child.address, length: NaN }], 'cold'), 'ERR_OUT_OF_RANGE'],
      [() => target.madvise([{ start: child.address, length: pageSize }], 'dontneed' as never), 'ERR_INVALID_ARG_VALUE'],
      [() => target.madvise([{ start: child.address, length: pageSize }], { toString: () => 'cold' } as never), 'ERR_INVALID_ARG_TYPE'],
      [() => target.scan(undefined as never), 'ERR_INVALID_ARG_TYPE'],
      [() => target.entries(child.address + 1n, 1), 'ERR_OUT_OF_RANGE'],
      [() => target.entries(child.address, 0), 'ERR_OUT_OF_RANGE'],
      [() => target.entries(Number(child.address) as never, 1), 'ERR_INVALID_ARG_TYPE'],
      [() => target.scan({ start: child.address + 1n, length: pageSize }), 'ERR_OUT_OF_RANGE'],
      [() => target.scan({ start: child.address, length: 0 }), 'ERR_OUT_OF_RANGE'],
      [() => target.scan({ start: child.address, length: pageSize, range: { offset: 0, length: pageSize } } as never), 'ERR_INVALID_ARG_VALUE'],
      [() => target.scan({ start: child.address, length: pageSize, writeProtect: true }), 'ERR_INVALID_ARG_VALUE'],
      [() => target.scan({ start: child.address, length: pageSize, require: ['nope' as never] }), 'ERR_INVALID_ARG_VALUE'],
      [() => target.mappings({ vmFlags: 1 as never }), 'ERR_INVALID_ARG_TYPE'],
      [() => TargetProcess.open(-1), 'ERR_OUT_OF_RANGE'],
      [() => TargetProcess.open(0), 'ERR_OUT_OF_RANGE'],
      [() => TargetProcess.open(NaN), 'ERR_OUT_OF_RANGE'],
      [() => TargetProcess.open(1.5), 'ERR_OUT_OF_RANGE'],
      [() => TargetProcess.open(2 ** 31), 'ERR_OUT_OF_RANGE'],
      [() => TargetProcess.open(String(child.pid) as never), 'ERR_INVALID_ARG_TYPE'],
      [() => Reflect.construct(TargetProcess as never, [Symbol('internal'), child.pid, {}]), 'ERR_ILLEGAL_CONSTRUCTOR'],
      [() => TargetProcess.prototype.alive.call({}), 'ERR_INVALID_THIS'],
      [() => Object.getOwnPropertyDescriptor(TargetProcess.prototype, 'pid')!.get!.call(new Proxy({}, {})), 'ERR_INVALID_THIS'],
    ]
    noFdLeak(() => {
      for (const [call, code] of cases) expect(call, String(call)).toThrow(expect.objectContaining({ code }))
    })
    // Native code re-checks what lib/ checked: an empty array, a path outside /proc/<pid>, too few iovec slots.
    expect(() => native.remoteRead(0, Number(child.address), new Uint8Array(0))).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }))
    expect(() => native.remoteOpenAt(0, '../self/mem', 0)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }))
    expect(() => native.remoteOpenAt(0, '..', 0)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }))
    expect(() => native.remoteMadvise(0, new BigUint64Array(1), 1, native.constants.MADV_COLD)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }))
    expect(() => native.remoteMadvise(0, new BigUint64Array(4096), 1025, native.constants.MADV_COLD)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }))
    // Advice that drops or zeroes pages never reaches the kernel (a pidfd of this process would advise its own memory).
    for (const advice of [native.constants.MADV_DONTNEED, native.constants.MADV_FREE, native.constants.MADV_REMOVE, native.constants.MADV_NORMAL, -1]) {
      expect(() => native.remoteMadvise(0, new BigUint64Array(2), 1, advice)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }))
    }
  })

  it('a getter or Proxy in the arguments is read once; one that closes the target gets ERR_TARGET_CLOSED, never a stale fd', async () => {
    // Taken with CAP_SYS_NICE, EPERM without: either way the arguments are read once, before the call.
    const advise = (ranges: Parameters<TargetProcess['madvise']>[0]) => {
      if (maySetNice) expect(target.madvise(ranges, 'cold')).toBe(pageSize)
      else expect(() => target.madvise(ranges, 'cold')).toThrow(expect.objectContaining({ code: 'EPERM' }))
    }
    let reads = 0
    const range = { get start() { reads++; return reads === 1 ? child.address : 1n }, length: pageSize }
    advise([range])
    expect(reads).toBe(1)
    advise(new Proxy([{ start: child.address, length: pageSize }], {}))

    const other = await startChild()
    try {
      const closing = TargetProcess.open(other.pid)
      const options = { get start() { closing.close(); return other.address }, length: pageSize }
      expect(() => closing.scan(options)).toThrow(expect.objectContaining({ name: 'InvalidStateError', code: 'ERR_TARGET_CLOSED' }))
      const gen = TargetProcess.open(other.pid)
      // Validated at the call, the fd taken at each batch: the first batch runs after close().
      const batches = gen.scanAll({ start: other.address, length: other.length, vectorLength: 1 })
      gen.close()
      expect(() => batches.next()).toThrow(expect.objectContaining({ code: 'ERR_TARGET_CLOSED' }))
    } finally {
      await other.stop()
    }
  })
})

describe('TargetProcess.madvise(…, \'merge\') stopped by a signal', () => {
  // Kernel patch 0056: process_madvise(MADV_MERGE) stops at a pending signal once it merged
  // something and returns the bytes it got through, as read() returns a short count; a daemon
  // asked to stop (SIGTERM) stops within a batch. Here the target is this process, the signal one
  // Node handles, sent by another process 0.1 s into a merge of 64 MiB (seconds in the lab).
  it('returns the bytes merged, fewer than asked: exactly those pages merged (ksm_stat), the rest merge on the next call, every byte kept', async (ctx) => {
    if (!features().remoteMerge) ctx.skip(`this kernel (${os.release()}) lacks remoteMerge: process_madvise() refuses MADV_MERGE`)
    const count = 16384
    const contents = 64
    const region = Region.anonymous(count * pageSize)
    const target = TargetProcess.open(process.pid)
    let signals = 0
    const onSignal = () => signals++
    process.on('SIGUSR2', onSignal)
    try {
      region.advise('nohugepage')
      // 64 contents, 256 copies each: every page has twins.
      for (let c = 0; c < contents; c++) region.bytes.fill(c + 1, c * pageSize, (c + 1) * pageSize)
      for (let i = 1; i < count / contents; i++) region.bytes.copyWithin(i * contents * pageSize, 0, contents * pageSize)
      const merging0 = ksm.processStats().ksmMergingPages
      const sender = spawn('sh', ['-c', `sleep 0.1; kill -USR2 ${process.pid}`], { stdio: 'ignore' })
      const sent = new Promise((resolve) => sender.once('exit', resolve))
      const merged = target.madvise([{ start: region.address, length: region.length }], 'merge')
      await sent
      await new Promise((resolve) => setImmediate(resolve))
      expect(signals, 'the handler ran').toBe(1)
      expect(merged, 'bytes merged before the signal stopped it (the whole range: it went on to the end)').toBeLessThan(region.length)
      expect(merged).toBeGreaterThan(0)
      expect(merged % pageSize).toBe(0)
      expect(ksm.processStats().ksmMergingPages - merging0, 'pages merged, from ksm_stat').toBe(merged / pageSize)
      expect(target.madvise([{ start: region.address + BigInt(merged), length: region.length - merged }], 'merge')).toBe(region.length - merged)
      expect(ksm.processStats().ksmMergingPages - merging0).toBe(count)
      for (let i = 0; i < count; i += 97) expect(region.bytes[i * pageSize + 5]).toBe((i % contents) + 1)
    } finally {
      process.off('SIGUSR2', onSignal)
      target.close()
      region.close()
    }
  }, 120_000)
})

describe('TargetProcess lifetime', () => {
  it('close() is idempotent, leaks no fd (open and close, and failed opens), and every method then throws ERR_TARGET_CLOSED', async () => {
    const child = await startChild()
    try {
      const before = fdCount()
      const target = TargetProcess.open(child.pid)
      expect(fdCount()).toBe(before + 4) // pidfd, /proc/<pid>, pagemap, mem
      target.close()
      target.close()
      expect(fdCount()).toBe(before)
      expect(target.closed).toBe(true)
      expect(target.pid).toBe(child.pid)
      const calls: (() => unknown)[] = [
        () => target.alive(),
        () => target.mappings(),
        () => target.clearSoftDirty(),
        () => target.read(child.address, new Uint8Array(1)),
        () => target.scan({ start: child.address, length: pageSize }),
        () => target.scanAll({ start: child.address, length: pageSize }),
        () => target.entries(child.address, 1),
        () => target.madvise([{ start: child.address, length: pageSize }], 'cold'),
      ]
      for (const call of calls) {
        expect(call).toThrow(InvalidStateError)
        expect(call).toThrow(expect.objectContaining({ code: 'ERR_TARGET_CLOSED' }))
      }
      // `using` closes it.
      {
        using scoped = TargetProcess.open(child.pid)
        expect(scoped.alive()).toBe(true)
      }
      expect(fdCount()).toBe(before)
    } finally {
      await child.stop()
    }
  })

  it('a child that exited: alive() false, read() 0 bytes, madvise() ESRCH; open() of its pid ESRCH (pidfd_open), nothing left open', async () => {
    const child = await startChild()
    const target = TargetProcess.open(child.pid)
    expect(target.alive()).toBe(true)
    await child.stop()
    expect(target.alive()).toBe(false)
    expect(target.read(child.address, new Uint8Array(8))).toBe(0)
    expect(() => target.madvise([{ start: child.address, length: pageSize }], 'cold')).toThrow(expect.objectContaining({ name: 'SyscallError', code: 'ESRCH' }))
    expect(() => target.mappings()).toThrow(SyscallError)
    target.close()
    noFdLeak(() => {
      expect(() => TargetProcess.open(child.pid)).toThrow(expect.objectContaining({ name: 'SyscallError', code: 'ESRCH', errno: -3, syscall: 'pidfd_open' }))
    })
  })

  it('a zombie (exited, not reaped) is ERR_TARGET_EXITED, nothing left open', async () => {
    // `sleep 0 &` exits at once; its parent exec()s a sleep that never reaps it.
    const shell = spawn('sh', ['-c', 'sleep 0 & echo $!; exec sleep 30'], { stdio: ['ignore', 'pipe', 'inherit'] })
    try {
      const [line] = await readline.createInterface({ input: shell.stdout! })[Symbol.asyncIterator]().next().then((r) => [r.value as string])
      const zombie = Number(line)
      const state = () => /^\d+ \(.*\) (\S)/.exec(fs.readFileSync(`/proc/${zombie}/stat`, 'utf8'))![1]
      for (let i = 0; i < 200 && state() !== 'Z'; i++) await new Promise((r) => setTimeout(r, 10))
      expect(state()).toBe('Z')
      noFdLeak(() => {
        expect(() => TargetProcess.open(zombie)).toThrow(expect.objectContaining({ name: 'InvalidStateError', code: 'ERR_TARGET_EXITED' }))
      })
    } finally {
      shell.kill('SIGKILL')
    }
  })

  it('a process of another uid: refused with SyscallError EACCES for a process without permission (run as nobody), opened by root', async (ctx) => {
    if (process.getuid!() !== 0) ctx.skip(`needs root to run the child as user tester and the opener as nobody (this is uid ${process.getuid!()})`)
    const ids = (user: string) => {
      const out = spawnSync('id', ['-u', user], { encoding: 'utf8' })
      const gid = spawnSync('id', ['-g', user], { encoding: 'utf8' })
      return out.status === 0 ? { uid: Number(out.stdout), gid: Number(gid.stdout) } : undefined
    }
    const tester = ids('tester')
    const nobody = ids('nobody')
    if (!tester || !nobody) ctx.skip('needs the users tester and nobody')
    const child = await startChild(tester)
    try {
      // Root (CAP_SYS_PTRACE) may.
      using target = TargetProcess.open(child.pid)
      expect(target.read(child.address, new Uint8Array(4))).toBe(4)
      // nobody may not: pidfd_open is allowed, /proc/<pid>/pagemap is not.
      const opener = `
        import { TargetProcess } from ${JSON.stringify(distEntry)}
        import fs from 'node:fs'
        const fds = () => fs.readdirSync('/proc/self/fd').length
        const before = fds()
        try { TargetProcess.open(${child.pid}); console.log(JSON.stringify({ opened: true })) }
        catch (e) { console.log(JSON.stringify({ name: e.name, code: e.code, errno: e.errno, syscall: e.syscall, message: e.message, leaked: fds() - before })) }
      `
      const run = spawnSync(process.execPath, ['--input-type=module', '-e', opener], { encoding: 'utf8', cwd: '/', ...nobody })
      expect(run.status, run.stderr).toBe(0)
      const result = JSON.parse(run.stdout.trim().split('\n').pop()!)
      expect(result).toMatchObject({ name: 'SyscallError', code: 'EACCES', errno: -13, syscall: 'open', leaked: 0 })
      expect(result.message).toContain(`/proc/${child.pid}/pagemap`)
    } finally {
      await child.stop()
    }
  })
})
