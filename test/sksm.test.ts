// Unit tests of lib/sksm.ts: argument checks (same on every kernel), the FeatureUnavailableError
// a kernel without SKSM gives, and the calls the kernel accepts but ignores. The behaviour of
// merging itself is in test/kselftest/sksm_basic.test.ts and test/sksm_ksm_coexist.test.ts.
import fs from 'node:fs'
import os from 'node:os'
import { describe, expect, it } from 'vitest'
import { Deduplicator, FeatureUnavailableError, InvalidStateError, Region, SyscallError, features, pagemap, pageSize, sksm } from '../lib/index.ts'
import { expectThrowsCode, thrown } from './helpers/errors.ts'
import { requires } from './helpers/env.mjs'

const hasSksm = sksm.available()
const withSksm = requires(features(), ['sksm'])
const withoutSksm = hasSksm ? ` [skipped: kernel ${os.release()} has SKSM]` : ''

const expectCode = expectThrowsCode

describe('sksm.available', () => {
  it('returns a boolean, probed once and cached', () => {
    const first = sksm.available()
    expect(typeof first).toBe('boolean')
    for (let i = 0; i < 3; i++) expect(sksm.available()).toBe(first)
  })

  it('agrees with features().sksm', () => {
    expect(features().sksm).toBe(sksm.available())
  })
})

describe('sksm.merge arguments (checked before any syscall, on every kernel)', () => {
  it('rejects anything but a Region with ERR_INVALID_ARG_TYPE', () => {
    for (const bad of [undefined, null, 0, 'region', {}, new Uint8Array(pageSize), { address: 0n, length: pageSize }]) {
      expectCode(() => sksm.merge(bad as unknown as Region), TypeError, 'ERR_INVALID_ARG_TYPE')
    }
  })

  it('rejects ranges that are not page-aligned sub-ranges of the Region', () => {
    using region = Region.anonymous(4 * pageSize)
    expectCode(() => sksm.merge(region, null as never), TypeError, 'ERR_INVALID_ARG_TYPE')
    expectCode(() => sksm.merge(region, 'all' as never), TypeError, 'ERR_INVALID_ARG_TYPE')
    expectCode(() => sksm.merge(region, { offset: '0', length: pageSize } as never), TypeError, 'ERR_INVALID_ARG_TYPE')
    expectCode(() => sksm.merge(region, { offset: 1, length: pageSize }), RangeError, 'ERR_OUT_OF_RANGE')
    expectCode(() => sksm.merge(region, { offset: -pageSize, length: pageSize }), RangeError, 'ERR_OUT_OF_RANGE')
    expectCode(() => sksm.merge(region, { offset: 0, length: 0 }), RangeError, 'ERR_OUT_OF_RANGE')
    expectCode(() => sksm.merge(region, { offset: 0, length: pageSize + 1 }), RangeError, 'ERR_OUT_OF_RANGE')
    expectCode(() => sksm.merge(region, { offset: 0, length: 5 * pageSize }), RangeError, 'ERR_OUT_OF_RANGE')
    expectCode(() => sksm.merge(region, { offset: 4 * pageSize, length: pageSize }), RangeError, 'ERR_OUT_OF_RANGE')
    expectCode(() => sksm.merge(region, { offset: 3 * pageSize, length: 2 * pageSize }), RangeError, 'ERR_OUT_OF_RANGE')
    expectCode(() => sksm.merge(region, { offset: 0.5, length: pageSize }), RangeError, 'ERR_OUT_OF_RANGE')
    expectCode(() => sksm.merge(region, { offset: Number.NaN, length: pageSize }), RangeError, 'ERR_OUT_OF_RANGE')
  })

  it('rejects a closed Region with ERR_REGION_CLOSED', () => {
    const region = Region.anonymous(pageSize)
    region.close()
    expectCode(() => sksm.merge(region), InvalidStateError, 'ERR_REGION_CLOSED')
    expectCode(() => sksm.merge(region, { offset: 0, length: pageSize }), InvalidStateError, 'ERR_REGION_CLOSED')
  })
})

describe('sksm.merge without SKSM', () => {
  it.skipIf(hasSksm)(`throws FeatureUnavailableError naming the feature and the kernel${withoutSksm}`, () => {
    using region = Region.anonymous(2 * pageSize)
    region.bytes.fill(7)
    const caught = thrown(() => sksm.merge(region))
    expect(caught).toBeInstanceOf(FeatureUnavailableError)
    expect(caught).toBeInstanceOf(Error)
    expect(caught).not.toBeInstanceOf(SyscallError)
    const error = caught as FeatureUnavailableError
    expect(error.name).toBe('FeatureUnavailableError')
    expect(Object.keys(error)).not.toContain('name') // on the prototype, like Node's errors
    expect(error.code).toBe('ERR_MEMDEDUP_FEATURE_UNAVAILABLE')
    expect(error.feature).toBe('sksm')
    expect(error.kernelRelease).toBe(os.release())
    expect(error.message).toContain('sksm')
    expect(error.message).toContain(os.release())
    expect(error.message).toContain('MADV_MERGE')
    // the failed call changed nothing
    expect(region.bytes.every((b) => b === 7)).toBe(true)
  })

  it.skipIf(hasSksm)(`throws the same for a sub-range and for a file Region${withoutSksm}`, () => {
    using region = Region.anonymous(4 * pageSize)
    expect(() => sksm.merge(region, { offset: pageSize, length: 2 * pageSize })).toThrow(FeatureUnavailableError)
    using file = Region.file('/proc/self/exe', { length: pageSize })
    expect(() => sksm.merge(file)).toThrow(FeatureUnavailableError)
  })
})

describe('sksm.merge calls the kernel accepts and ignores', () => {
  it.skipIf(!hasSksm)(`pages never touched: nothing to merge, nothing becomes present${withSksm}`, () => {
    using region = Region.anonymous(8 * pageSize)
    expect(sksm.merge(region)).toBeUndefined()
    expect(pagemap.entries(region).count(pagemap.PageFlag.present)).toBe(0)
  })

  it.skipIf(!hasSksm)(`file pages not COWed stay file pages${withSksm}`, () => {
    using file = Region.file('/proc/self/exe', { length: 4 * pageSize })
    const before = file.read()
    sksm.merge(file)
    expect(file.read().equals(before)).toBe(true)
    const e = pagemap.entries(file)
    for (let i = 0; i < e.length; i++) if (e.present(i)) expect(e.file(i)).toBe(true)
  })

  it.skipIf(!hasSksm)(`a shared mapping (memfd Region) is left alone and stays writable in place${withSksm}`, () => {
    using shared = Region.memfd(2 * pageSize)
    shared.bytes.fill(0x5a)
    const pfnsBefore = pagemap.entries(shared).pfns.slice()
    sksm.merge(shared)
    expect(pagemap.entries(shared).pfns).toEqual(pfnsBefore)
    shared.bytes[0] = 1 // no COW: the same page
    expect(pagemap.entries(shared).pfns).toEqual(pfnsBefore)
  })

  it.skipIf(!hasSksm)(`read-only and PROT_NONE ranges are accepted${withSksm}`, () => {
    using region = Region.anonymous(2 * pageSize)
    region.bytes.fill(3)
    region.protect('r', { offset: 0, length: pageSize })
    region.protect('none', { offset: pageSize, length: pageSize })
    expect(() => sksm.merge(region)).not.toThrow()
    expect(region.read({ offset: 0, length: pageSize }).every((b) => b === 3)).toBe(true)
  })
})

describe("the administrator's switch: /sys/kernel/mm/ksm/sksm_enabled (kernel-patches/0040)", () => {
  const isRoot = process.getuid?.() === 0
  const knob = fs.existsSync(sksm.enabledKnob)

  it('sksm.enabled() is false wherever sksm.available() is, and read live otherwise', () => {
    if (!sksm.available()) expect(sksm.enabled()).toBe(false)
    else if (!knob) expect(sksm.enabled()).toBe(true)
    else expect(sksm.enabled()).toBe(fs.readFileSync(sksm.enabledKnob, 'utf8').trim() !== '0')
  })

  it.skipIf(!hasSksm || !isRoot)(`0: MADV_MERGE is EPERM and merges nothing, the Deduplicator's 'auto' picks ksmd; 1 again: it merges${withSksm}${isRoot ? '' : ' [skipped: writing sksm_enabled needs root]'}`, () => {
    expect(knob, `${sksm.enabledKnob} exists on a kernel with SKSM from this lab`).toBe(true)
    const before = fs.readFileSync(sksm.enabledKnob, 'utf8').trim()
    using twins = Region.anonymous(2 * pageSize)
    twins.bytes.fill(0x6b)
    const pfnsOf = () => pagemap.entries(twins).pfns.slice()
    try {
      fs.writeFileSync(sksm.enabledKnob, '0')
      expect(sksm.available()).toBe(true)
      expect(sksm.enabled()).toBe(false)
      const error = thrown(() => sksm.merge(twins))
      expect(error).toBeInstanceOf(SyscallError)
      expect(error).toMatchObject({ code: 'EPERM', syscall: 'madvise(MADV_MERGE)' })
      expect(String((error as Error).message)).toContain('sksm_enabled is 0')
      const [a, b] = pfnsOf()
      expect(a, 'the twins still have frames of their own').not.toBe(b)
      {
        using dedup = new Deduplicator({ merge: 'auto' })
        expect(dedup.merge).toBe('ksm')
      }
      expect(() => new Deduplicator({ merge: 'sksm' })).toThrow(FeatureUnavailableError)
      fs.writeFileSync(sksm.enabledKnob, '1')
      expect(sksm.enabled()).toBe(true)
      sksm.merge(twins)
      const [c, d] = pfnsOf()
      expect(c, 'merged once the switch is back on').toBe(d)
      expect(twins.read().every((byte) => byte === 0x6b)).toBe(true)
    } finally {
      fs.writeFileSync(sksm.enabledKnob, before)
    }
  })
})
