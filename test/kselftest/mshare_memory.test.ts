// Port of tools/testing/selftests/mshare/memory.c (Yongting Lin's selftests for mshare v3):
// FIXTURE(memory) maps one alignment unit of anonymous memory in an mshare region and attaches
// it; TEST_F(memory, swap) fills 2 MiB and pushes it out with MADV_PAGEOUT, then checks the
// swapped bytes (the C reads its memcg's memory.stat; here the system's SwapTotal - SwapFree,
// as nothing else in the lab guest swaps); TEST_F(memory, thp) fills 2 MiB with shmem THP set to
// 'always' and expects a huge page (the C reads memcg shmem_thp; here ShmemHugePages).
// Runs in the lab VM on the msharefs kernel; skips elsewhere with the probe's reason.
import fs from 'node:fs'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { MshareAttachment, MshareRegion, mshare, stats } from '../../lib/index.ts'
import { native, constants as C } from '../../lib/native.ts'

const why = mshare.probe()
const reason = why ? ` — skipped: ${why}` : ''
const MB = 2 ** 20
const shmemEnabled = '/sys/kernel/mm/transparent_hugepage/shmem_enabled'

const swapUsed = () => {
  const m = stats.meminfo()
  return m.SwapTotal - m.SwapFree
}
const noSwap = !why && stats.meminfo().SwapTotal < 4 * MB ? ' — skipped: no swap space (the lab guest swaps on /dev/vda)' : ''
const noThp = !why && !fs.existsSync(shmemEnabled) ? ' — skipped: no transparent huge pages for shmem' : ''

describe.skipIf(why)(`memory.c FIXTURE(memory)${reason}`, () => {
  let region: MshareRegion
  let attachment: MshareAttachment
  const name = `mshare-memory-${process.pid}`
  const size = 4 * MB // the C maps one alignment unit (512 GiB); 4 MiB is what the tests touch and more

  beforeEach(() => {
    region = MshareRegion.create(name, mshare.alignment())
    region.mapAnonymous({ offset: 0, length: size })
    attachment = region.attach()
  })

  afterEach(() => {
    region.close()
    expect(attachment.closed).toBe(true)
    region.unlink()
  })

  it.skipIf(noSwap)(`swap: MADV_PAGEOUT pushes the 2 MiB out to swap${noSwap}`, () => {
    const view = attachment.view({ offset: 0, length: 2 * MB })
    view.fill(0x01)
    const before = swapUsed()
    expect(native.madvise(Number(attachment.address), 2 * MB, C.MADV_PAGEOUT)).toBe(0)
    const swapped = swapUsed() - before
    // allow an error of 10%
    expect(swapped).toBeGreaterThan((2 * MB * 9) / 10)
    // Not in the C: every byte comes back from swap intact, through this process's own faults
    // (a kernel-side read would be a GUP fault, which the lab's port refuses on mshare: EFAULT).
    expect(view.every((b) => b === 0x01)).toBe(true)
  })

  it.skipIf(noThp)(`thp: with shmem_enabled 'always', 2 MiB filled is backed by a huge page${noThp}`, () => {
    const saved = /\[(\w+)\]/.exec(fs.readFileSync(shmemEnabled, 'utf8'))?.[1] ?? 'never'
    fs.writeFileSync(shmemEnabled, 'always')
    try {
      const before = stats.meminfo().ShmemHugePages ?? 0
      // A fresh 2 MiB-aligned mapping at offset 2 MiB, faulted after the setting changed.
      region.mapAnonymous({ offset: 2 * MB, length: 2 * MB })
      const view = attachment.view({ offset: 2 * MB, length: 2 * MB })
      view.fill(0x01)
      const huge = (stats.meminfo().ShmemHugePages ?? 0) - before
      expect(huge).toBeGreaterThanOrEqual(2 * MB)
      // Not in the C: the content is what was written, read back through the kernel.
      expect(attachment.read({ offset: 2 * MB, length: 2 * MB }).every((b) => b === 0x01)).toBe(true)
    } finally {
      fs.writeFileSync(shmemEnabled, saved)
    }
  })
})
