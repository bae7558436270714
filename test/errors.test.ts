// lib/errors.ts: errors shaped like Node core's.
import fs from 'node:fs'
import { describe, expect, it } from 'vitest'
import { SyscallError, FeatureUnavailableError, InvalidStateError } from '../lib/index.ts'

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
