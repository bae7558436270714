// Port of tools/testing/selftests/mm/mkdirty.c (6.12.117; ksft plan 2 + 3 with THP + 1 with uffd).
// Each case ends in do_test_write_sigsegv(): a CPU write to a read-only page must fault and change
// nothing, however the kernel set the PTE/PMD dirty. Node cannot survive that SIGSEGV, so
// test/fixtures/mm-fork.c runs the setup and the faulting write and reports; the assertions are
// here. Not in the C: the same FOLL_FORCE write through /proc/self/mem, on a read-only memdedup
// Region in this process, unshares the zeropage into a private frame of its own and never makes
// the Region writable for memdedup (Region.bytes stays refused).
// Not ported: test_uffdio_copy (UFFDIO_COPY: memdedup does not bind it).
import { afterEach, describe, expect, it } from 'vitest'
import { Region, pagemap, pageSize } from '../../lib/index.ts'
import { procMemWrite } from '../helpers/ksm.ts'
import { mmFork, pmdSize, thpUnavailable } from '../helpers/mm-fork.ts'
import { thrown } from '../helpers/errors.ts'

const thpsize = pmdSize()
/** The C runs the THP cases `if (thpsize)`; '' when they run here, else why not. */
const noThp = thpUnavailable()

const cases: Array<[string, string, boolean]> = [
  ['PTRACE write access', 'ptrace-write', false],
  ['PTRACE write access to THP', 'ptrace-write-thp', true],
  ['Page migration', 'page-migration', false],
  ['Page migration of THP', 'page-migration-thp', true],
  ['PTE-mapping a THP', 'pte-mapped-thp', true],
]

describe('mkdirty', () => {
  for (const [info, test, needsThp] of cases) {
    it(`[INFO] ${info}: SIGSEGV generated, page not modified`, (ctx) => {
      if (needsThp && noThp) ctx.skip(noThp)
      const result = mmFork(['mkdirty', test, thpsize])
      if (result.skip) ctx.skip(String(result.skip))
      expect(result.sigsegv, 'the write to the read-only page raised SIGSEGV').toBe(1)
      expect(result.unchanged, 'page not modified').toBe(1)
    })
  }
  it.skip('[INFO] UFFDIO_COPY: SIGSEGV generated, page not modified — skipped: needs UFFDIO_COPY, which memdedup does not bind', () => {})

  describe('Not in the C', () => {
    const regions: Region[] = []
    afterEach(() => {
      for (const region of regions.splice(0)) region.close()
    })
    it('a FOLL_FORCE write to a read-only Region unshares the zeropage into a private frame; the Region stays read-only', (ctx) => {
      const mem = Region.anonymous(pageSize, { prot: 'r' })
      regions.push(mem)
      // Fault in the shared zeropage.
      expect(mem.read()[0]).toBe(0)
      const zero = pagemap.zeroPfn()
      if (zero !== null) expect(pagemap.entries(mem).pfns[0]).toBe(zero)
      procMemWrite(mem.address, Uint8Array.of(1))
      const entries = pagemap.entries(mem)
      expect(mem.read()[0], 'the ptrace write landed').toBe(1)
      if (zero !== null && zero !== 0n) expect(entries.pfns[0], 'a private frame, not the zeropage').not.toBe(zero)
      expect(entries.exclusive(0), 'mapped exclusively').toBe(true)
      expect((thrown(() => mem.bytes) as { code?: string })?.code, 'no writable view of a read-only Region').toBe('ERR_REGION_PROTECTION')
      if (zero === null) ctx.skip('this kernel maps no shared zero page on read faults: the read mapped a private frame, so no zeropage was unshared')
    })
  })
})
