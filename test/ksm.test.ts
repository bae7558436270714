// lib/ksm.ts: MADV_MERGEABLE/UNMERGEABLE, PR_SET/GET_MEMORY_MERGE, sysfs stats and settings.
// The merging behaviour itself is proven by the kselftest ports in test/kselftest/.
import fs from 'node:fs'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { Region, ksm, features, FeatureUnavailableError, pageSize } from '../lib/index.ts'
import { acquireKsmLock, ksmSettingsDenied, skipUnlessKsmSettings } from './helpers/ksm.ts'
import { vmFlagsIn } from './helpers/vma.ts'

const hasKsm = fs.existsSync(ksm.sysfsDir)

/**
 * VmFlags of the VMA containing `address` ("mg" = VM_MERGEABLE). Containing, not starting at: the
 * kernel joins a Region's VMA with a compatible neighbour (a tester run found one starting below it).
 */
function vmFlags(address: bigint): string[] {
  const [vma] = vmFlagsIn(address, 1)
  if (!vma) throw new Error(`no VMA at 0x${address.toString(16)}`)
  return vma.flags
}

describe.skipIf(!hasKsm)(`ksm (CONFIG_KSM)${hasKsm ? '' : ` — skipped: no ${ksm.sysfsDir} (CONFIG_KSM off)`}`, () => {
  it('enable/disable set and clear VM_MERGEABLE on exactly the range', () => {
    using r = Region.anonymous(4 * pageSize)
    expect(vmFlags(r.address)).not.toContain('mg')
    ksm.enable(r, { offset: 0, length: 2 * pageSize })
    expect(vmFlags(r.address)).toContain('mg')
    // The VMA was split: the second half is not mergeable.
    expect(vmFlags(r.address + BigInt(2 * pageSize))).not.toContain('mg')
    // ksm_stat's ksm_mergeable line is 6.13+; where it exists it must agree.
    const stat = ksm.processStats()
    if ('ksmMergeable' in stat) expect(stat.ksmMergeable).toBe(true)
    ksm.disable(r)
    expect(vmFlags(r.address)).not.toContain('mg')
  })

  it('stats() reads every sysfs file, typed and camelCased', () => {
    const s = ksm.stats()
    const files = fs.readdirSync(ksm.sysfsDir)
    expect(Object.keys(s).length).toBe(files.length)
    for (const key of ['run', 'pagesToScan', 'sleepMillisecs', 'fullScans', 'pagesShared', 'pagesSharing', 'pagesUnshared', 'pagesVolatile']) {
      expect(typeof s[key], key).toBe('number')
    }
    // Other processes may be merging meanwhile (ksmd is not ours alone): compare a stats() read
    // between two equal reads of the file.
    const file = () => Number(fs.readFileSync(`${ksm.sysfsDir}/pages_sharing`, 'utf8'))
    let agreed: [number, number] | undefined
    for (let i = 0; i < 100 && !agreed; i++) {
      const before = file()
      const read = ksm.stats().pagesSharing as number
      if (file() === before) agreed = [read, before]
    }
    expect(agreed, 'pages_sharing held still across a stats() read within 100 tries').toBeDefined()
    expect(agreed![0]).toBe(agreed![1])
    if (files.includes('advisor_mode')) expect(['none', 'scan-time']).toContain(s.advisorMode)
  })

  it('processStats() parses /proc/self/ksm_stat', () => {
    const p = ksm.processStats()
    for (const key of ['ksmRmapItems', 'ksmMergingPages']) expect(typeof p[key]).toBe('number')
    expect(ksm.processStats(process.pid).ksmMergingPages).toBe(p.ksmMergingPages)
  })

  describe('configure', () => {
    let saved: ksm.KsmSettings | undefined
    let release: (() => void) | undefined
    beforeAll(async () => {
      if (ksmSettingsDenied()) return // each test skips, saying why
      // Other test files and the bench drive ksmd too: one at a time.
      release = await acquireKsmLock()
      saved = ksm.configure({ run: ksm.stats().run as 0 | 1 | 2, pagesToScan: ksm.stats().pagesToScan, sleepMillisecs: ksm.stats().sleepMillisecs })
    })
    beforeEach(skipUnlessKsmSettings)
    afterAll(() => {
      try {
        if (saved) ksm.configure(saved)
      } finally {
        release?.()
      }
    })

    it('writes settings and returns exactly the previous values', () => {
      const before = ksm.stats()
      const previous = ksm.configure({ pagesToScan: 1234, sleepMillisecs: 7 })
      expect(previous).toEqual({ pagesToScan: before.pagesToScan, sleepMillisecs: before.sleepMillisecs })
      expect(ksm.stats().pagesToScan).toBe(1234)
      expect(ksm.stats().sleepMillisecs).toBe(7)
      expect(ksm.configure(previous)).toEqual({ pagesToScan: 1234, sleepMillisecs: 7 })
      expect(ksm.stats().pagesToScan).toBe(before.pagesToScan)
    })

    it('waitForFullScans resolves after ksmd completes scans', async () => {
      // ksmd counts full scans only while something is mergeable.
      using r = Region.anonymous(16 * pageSize)
      r.bytes.fill(1)
      ksm.enable(r)
      const previous = ksm.configure({ run: 1, sleepMillisecs: 0, pagesToScan: 10000 })
      try {
        const before = ksm.stats().fullScans
        await ksm.waitForFullScans(2, { timeoutMs: 60_000 })
        expect(ksm.stats().fullScans).toBeGreaterThanOrEqual(before + 2)
      } finally {
        ksm.configure(previous)
        ksm.disable(r)
      }
    })

    it('waitForFullScans times out with ETIMEDOUT while ksmd is stopped', async () => {
      const previous = ksm.configure({ run: 0 })
      try {
        await expect(ksm.waitForFullScans(1, { timeoutMs: 50 })).rejects.toThrow(expect.objectContaining({ code: 'ETIMEDOUT' }))
      } finally {
        ksm.configure(previous)
      }
    })
  })
})

describe('ksm.process (PR_SET_MEMORY_MERGE)', () => {
  it.skipIf(!features().ksmProcess)(`get/set round-trips and is restored${features().ksmProcess ? '' : ' — skipped: no PR_SET_MEMORY_MERGE (Linux < 6.4 or CONFIG_KSM off)'}`, () => {
    const before = ksm.process.get()
    try {
      ksm.process.set(true)
      expect(ksm.process.get()).toBe(true)
      const stat = ksm.processStats()
      if ('ksmMergeAny' in stat) expect(stat.ksmMergeAny).toBe(true) // 6.13+
      ksm.process.set(false)
      expect(ksm.process.get()).toBe(false)
    } finally {
      ksm.process.set(before)
    }
  })
})

describe.skipIf(hasKsm)(`ksm absent${hasKsm ? ' — skipped: this kernel has KSM' : ''}`, () => {
  it('stats() says FeatureUnavailableError', () => {
    expect(() => ksm.stats()).toThrow(FeatureUnavailableError)
  })
})
