// lib/errors.ts: errors shaped like Node core's.
import fs from 'node:fs'
import { describe, expect, it, vi } from 'vitest'
import os from 'node:os'
import { SyscallError, FeatureUnavailableError, InvalidStateError, codes as publicCodes, ksm, stats } from '../lib/index.ts'
import { check, codedError, codes, fsCall, message } from '../lib/errors.ts'
import { native } from '../lib/native.ts'
import { PageFlag } from '../lib/pagemap.ts'
import { errorCode, thrown } from './helpers/errors.ts'
import { kernelThreadPid } from './helpers/process.ts'

describe('SyscallError', () => {
  it('looks like a Node system error', () => {
    const e = new SyscallError('madvise(MADV_MERGE)', 22)
    expect(e).toBeInstanceOf(Error)
    expect(e.name).toBe('SyscallError')
    expect(e.code).toBe('EINVAL')
    expect(e.errno).toBe(-22)
    expect(e.syscall).toBe('madvise(MADV_MERGE)')
    expect(e.message).toBe('madvise(MADV_MERGE) EINVAL')
    expect(Object.keys(e)).toEqual(expect.arrayContaining(['code', 'errno', 'syscall']))
    // Same code and errno as Node's own error for the same errno.
    let nodeError: NodeJS.ErrnoException | undefined
    try {
      fs.readFileSync('/nonexistent')
    } catch (error) {
      nodeError = error as NodeJS.ErrnoException
    }
    const ours = new SyscallError('open', -(nodeError!.errno as number), '/nonexistent')
    expect(ours.code).toBe(nodeError!.code)
    expect(ours.errno).toBe(nodeError!.errno)
    expect(ours.message).toBe('open ENOENT (/nonexistent)')
  })

  it('keeps an unknown errno readable', () => {
    const e = new SyscallError('ioctl(X)', 4095)
    expect(e.code).toBe('E4095')
    expect(e.errno).toBe(-4095)
  })
})

describe('FeatureUnavailableError / InvalidStateError', () => {
  it('name the feature, the kernel release and the state', () => {
    const f = new FeatureUnavailableError('sksm', 'no MADV_MERGE')
    expect(f.name).toBe('FeatureUnavailableError')
    expect(f.feature).toBe('sksm')
    expect(f.kernelRelease).toMatch(/^\d+\.\d+/)
    expect(f.message).toContain(f.kernelRelease)
    const s = new InvalidStateError('ERR_REGION_CLOSED', 'closed')
    expect(s.name).toBe('InvalidStateError')
    expect(s.code).toBe('ERR_REGION_CLOSED')
  })
})

describe('one error path', () => {
  it('check() builds its context only on failure', () => {
    let built = 0
    const context = () => `context ${++built}`
    expect(check(5, 'x', context)).toBe(5)
    expect(built).toBe(0)
    const e = thrown(() => check(-os.constants.errno.EBUSY, 'ioctl(X)', context)) as SyscallError
    expect(e).toBeInstanceOf(SyscallError)
    expect(e.message).toBe('ioctl(X) EBUSY (context 1)')
    expect(built).toBe(1)
  })

  it('every ERR_* code comes from one table, with its class', () => {
    for (const [code, kind] of Object.entries(codes)) {
      if (code === 'ERR_MEMDEDUP_FEATURE_UNAVAILABLE') continue
      // Each template takes its own arguments; 'm' and 1 fit every one of them.
      const e = (codedError as (code: string, ...args: unknown[]) => Error)(code, 'm', 'm', 'm')
      expect(e.constructor.name).toBe(kind)
      expect((e as { code?: string }).code).toBe(code)
    }
    expect(new FeatureUnavailableError('x', 'y').code).toBe('ERR_MEMDEDUP_FEATURE_UNAVAILABLE')
  })

  it('`codes` is exported from the package, frozen, one entry a code (Node\'s E(): the template lives with the code)', () => {
    expect(publicCodes).toBe(codes)
    expect(Object.isFrozen(publicCodes)).toBe(true)
    expect(publicCodes.ERR_RESERVATION_NO_ROOM).toBe('InvalidStateError')
    expect(publicCodes.ERR_MEMDEDUP_CLI).toBe('Error') // the CLI's codes are in the same registry
    // Messages come from the registry's templates, given the template's arguments.
    expect(codedError('ERR_INVALID_THIS', 'Region').message).toBe('Value of "this" must be of type Region')
    expect(codedError('ERR_UFFD_CLOSED', 'register').message).toBe('Cannot register: the Userfaultfd is closed')
    expect(codedError('ETIMEDOUT', 2, 50).message).toMatch(/^ksmd did not complete 2 full scans within 50 ms/)
    expect(message('ERR_RESERVATION_NO_ROOM', 8192, 'taken')).toBe('Cannot grow the Region in place to 8192 bytes (mayMove: false): taken')
  })

  it('a node:fs failure becomes a SyscallError with the same code and errno', () => {
    const e = thrown(() => fsCall('open', '/nonexistent/x', () => fs.readFileSync('/nonexistent/x'))) as SyscallError
    expect(e).toBeInstanceOf(SyscallError)
    expect(e.code).toBe('ENOENT')
    expect(e.errno).toBe(-os.constants.errno.ENOENT)
    expect(e.syscall).toBe('open')
    // Not an errno error: passed through as is.
    const plain = new Error('plain')
    expect(thrown(() => fsCall('open', 'x', () => { throw plain }))).toBe(plain)
  })

  it('the constants lib/ uses all come from the native side, checked at load', () => {
    const groups = [native.constants, native.pagemapConstants, native.uffdConstants]
    for (const group of groups) for (const value of Object.values(group)) expect(typeof value).toBe('number')
    expect(PageFlag.present).toBe(native.pagemapConstants.ENTRY_PRESENT)
    expect(native.constants.MADV_MERGE).toBe(26)
  })
})

describe('SyscallError only for what the kernel returned; a coded Error from `codes` for everything else', () => {
  it('the registry has a code, with its class, for each failure no syscall returns', () => {
    expect(codes).toMatchObject({
      ERR_TWIN_INDEX_FULL: 'Error',
      ERR_PARSE_KERNEL_FILE: 'Error',
      ERR_MSHARE_REGION_UNSIZED: 'InvalidStateError',
    })
  })

  it('every code of the registry is documented in the README\'s Errors section (## Errors)', () => {
    const readme = fs.readFileSync(new URL('../README.md', import.meta.url), 'utf8')
    const start = readme.indexOf('\n## Errors\n')
    const section = readme.slice(start, readme.indexOf('\n## ', start + 1))
    expect(section.length).toBeGreaterThan(100)
    const undocumented = Object.keys(codes).filter((code) => !section.includes(`\`${code}\``))
    expect(undocumented).toEqual([])
  })

  it('ksm.waitForFullScans(): a full_scans that does not parse is ERR_PARSE_KERNEL_FILE, not an instant "done"', async () => {
    // KSM present, as node:fs tells lib/ksm.ts, with full_scans saying `text`.
    const file = `${ksm.sysfsDir}/full_scans`
    const existsSync = fs.existsSync
    const readFileSync = fs.readFileSync
    let text = ''
    const exists = vi.spyOn(fs, 'existsSync').mockImplementation((p) => p === ksm.sysfsDir || existsSync(p))
    const read = vi.spyOn(fs, 'readFileSync').mockImplementation(((p: fs.PathOrFileDescriptor, options?: unknown) =>
      p === file ? text : readFileSync(p, options as never)) as typeof fs.readFileSync)
    try {
      for (text of ['', 'x\n', '-1\n', '1e3\n']) {
        await expect(ksm.waitForFullScans(1, { timeoutMs: 50, pollMs: 1 }), JSON.stringify(text)).rejects.toMatchObject({ name: 'Error', code: 'ERR_PARSE_KERNEL_FILE', message: expect.stringContaining(file) })
      }
      // A count that parses and never moves: the timeout, as before.
      text = '7\n'
      await expect(ksm.waitForFullScans(1, { timeoutMs: 50, pollMs: 1 })).rejects.toMatchObject({ code: 'ETIMEDOUT' })
    } finally {
      exists.mockRestore()
      read.mockRestore()
    }
  })

  it('a kernel thread is ESRCH because the kernel says so (its smaps_rollup), not because memdedup makes it up', (ctx) => {
    const kthread = kernelThreadPid()
    if (kthread === undefined) ctx.skip('no kernel thread visible in /proc (a PID namespace without them)')
    const error = thrown(() => stats.process(kthread))
    expect(error).toBeInstanceOf(SyscallError)
    expect(error).toMatchObject({ code: 'ESRCH', errno: -os.constants.errno.ESRCH, message: expect.stringContaining(`/proc/${kthread}/smaps_rollup`) })
  })
})
