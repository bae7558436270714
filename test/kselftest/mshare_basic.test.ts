// Port of tools/testing/selftests/mshare/basic.c (Yongting Lin's selftests for the mshare v3
// series): FIXTURE(basic) sizes an mshare file to one alignment unit and maps a small chunk in
// it (variants ANON_4k, HUGETLB_2m, ANON_8k, HUGETLB_4m); TEST_F(basic, shared_mem) has a child
// write a string that the parent then reads; TEST_F_SIGNAL(basic, ioctl_unmap, SIGSEGV) touches
// the memory after MSHAREFS_UNMAP. Runs in the lab VM on the msharefs kernel; skips elsewhere.
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest'
import { MshareRegion, SyscallError, mshare } from '../../lib/index.ts'
import { expectThrowsCode } from '../helpers/errors.ts'
import { runChild, runRawChild } from '../helpers/child.ts'
import { reserveHugePages, restoreHugePages } from '../helpers/hugetlb.ts'

afterAll(() => restoreHugePages())

const why = mshare.probe()
const reason = why ? ` — skipped: ${why}` : ''
const STRING = 'I am Msharefs'
const KB = 1024
const MB = 1024 * KB

const variants = [
  { name: 'ANON_4k', allocateSize: 4 * KB, hugetlb: false },
  { name: 'HUGETLB_2m', allocateSize: 2 * MB, hugetlb: true },
  { name: 'ANON_8k', allocateSize: 8 * KB, hugetlb: false },
  { name: 'HUGETLB_4m', allocateSize: 4 * MB, hugetlb: true },
]

for (const variant of variants) {
  const needed = variant.hugetlb ? variant.allocateSize / (2 * MB) : 0
  // In the VM reserveHugePages() raises vm.nr_hugepages (restored in afterAll); the host's is left alone.
  const hugeWhy = !why && variant.hugetlb ? reserveHugePages(needed) : undefined
  const noHuge = hugeWhy ? ` — skipped: ${hugeWhy}` : ''

  describe.skipIf(why || noHuge)(`basic.c FIXTURE(basic) variant ${variant.name}${reason}${noHuge}`, () => {
    let region: MshareRegion
    const name = `mshare-test-${process.pid}-${variant.name}`

    beforeEach(() => {
      region = MshareRegion.create(name, mshare.alignment())
      region.mapAnonymous({ offset: 0, length: variant.allocateSize }, { hugetlb: variant.hugetlb })
    })

    afterEach(() => {
      region.close()
      region.unlink()
    })

    it('shared_mem: a child writes the string, the parent reads it', () => {
      runChild(`
        const region = lib.MshareRegion.open(${JSON.stringify(name)}, { mapped: [{ offset: 0, length: ${variant.allocateSize} }] })
        const attachment = region.attach()
        const view = attachment.view({ offset: 0, length: ${variant.allocateSize} })
        Buffer.from(view.buffer, view.byteOffset, view.byteLength).write(${JSON.stringify(STRING)})
        // Not in the C: the last byte of the chunk too (the whole mapping is shared, not its first page).
        view[view.length - 1] = 0x5a
        region.close()
      `)
      using attachment = region.attach()
      const view = attachment.view({ offset: 0, length: variant.allocateSize })
      expect(Buffer.from(view.buffer, view.byteOffset, STRING.length).toString()).toBe(STRING)
      expect(view[variant.allocateSize - 1]).toBe(0x5a)
      // Not in the C: the child (an attacher) has exited and the memory is intact and writable here.
      view[1] = 0x41
      expect(attachment.read({ offset: 0, length: 2 }).toString()).toBe('IA')
    })

    it('ioctl_unmap: touching the memory after MSHAREFS_UNMAP is SIGSEGV', () => {
      // Not in the C: this process is attached too, and has touched the memory.
      using attachment = region.attach()
      attachment.view({ offset: 0, length: variant.allocateSize })[0] = 1
      expect(attachment.read({ offset: 0, length: 1 })[0]).toBe(1)
      const child = runRawChild(`
        const region = lib.MshareRegion.open(${JSON.stringify(name)})
        const attachment = region.attach()
        const raw = new Uint8Array(native.wrap(Number(attachment.address), ${variant.allocateSize}))
        raw[0] = 77
        if (native.mshareUnmap(region.fd, 0, ${variant.allocateSize}) !== 0) process.exit(3)
        console.log('unmapped')
        raw[0] = 68
        process.exit(4)
      `)
      expect(child.signal, `child exited ${child.status}; stderr:\n${child.stderr}`).toBe('SIGSEGV')
      expect(child.stdout).toBe('unmapped\n')
      // Not in the C: the unmap was for every attacher, this process included (the kernel's
      // copy finds nothing there now: an error, where a raw access would be SIGSEGV).
      expectThrowsCode(() => attachment.read({ offset: 0, length: 1 }), SyscallError, 'EFAULT')
    })
  })
}
