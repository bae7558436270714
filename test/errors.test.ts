// lib/errors.ts: errors shaped like Node core's.
import fs from 'node:fs'
import { describe, expect, it } from 'vitest'
import os from 'node:os'
import { SyscallError, FeatureUnavailableError, InvalidStateError } from '../lib/index.ts'
import { check, codedError, codes, fsCall, type ErrorCode } from '../lib/errors.ts'
import { native } from '../lib/native.ts'
import { PageFlag } from '../lib/pagemap.ts'
import { thrown } from './helpers/errors.ts'

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
      const e = codedError(code as Exclude<ErrorCode, 'ERR_MEMDEDUP_FEATURE_UNAVAILABLE'>, 'm')
      expect(e.constructor.name).toBe(kind)
      expect((e as { code?: string }).code).toBe(code)
    }
    expect(new FeatureUnavailableError('x', 'y').code).toBe('ERR_MEMDEDUP_FEATURE_UNAVAILABLE')
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
