// Port of tools/testing/selftests/mm/uffd-unit-tests.c (6.12.117): the API negotiation, the
// register/unregister ioctls check and every write-protect case, on the C's memory types
// ("Testing <test> on <mem>"): anon = Region.anonymous, shmem = Region.memfd (MAP_SHARED),
// shmem-private = a MAP_PRIVATE Region.file of that memfd through /proc/self/fd.
//
// wp-fork and wp-fork-with-event need fork(2) (the child's page table is the subject): Node
// cannot fork, so test/fixtures/mm-fork.c runs uffd_wp_fork_test_common() and reports the uffd-wp
// bit at each step; the assertions are here. Not in the C: the write after unprotecting lands,
// the zap really zapped (shmem), the read of a pte marker leaves the zeropage mapped, and WP_ASYNC
// (6.12's unit tests have no WP_ASYNC case: pagemap_ioctl.c has them, see pagemap_ioctl.test.ts)
// negotiates wpUnpopulated with it and never blocks a write.
//
// Skipped, with the missing binding in the title: zeropage (UFFDIO_ZEROPAGE), move* (UFFDIO_MOVE),
// minor* (UFFDIO_CONTINUE + fault handling), sigbus* (a SIGBUS handler), events* (reading uffd
// messages), poison (UFFDIO_POISON), wp-fork-pin* (/sys/kernel/debug/gup_test), and the hugetlb
// memory types: 'hugetlb' (shared) is mappable now (Region.memfd({ hugetlb: true })) but its cases
// are not ported yet (they need huge-page-granular ranges); 'hugetlb-private' needs a MAP_PRIVATE
// hugetlb mapping, which memdedup does not map.
// test_uffd_api deviations: memdedup's binding always sends UFFD_API, so the "wrong api" probe is
// not sent; the "wrong feature" probe uses bit 31 (a 32-bit feature word) instead of bit 63.
import { afterEach, describe, expect, it } from 'vitest'
import { FeatureUnavailableError, Region, SyscallError, Userfaultfd, features, pagemap, pageSize } from '../../lib/index.ts'
import { native } from '../../lib/native.ts'
import type { UffdFeature } from '../../lib/uffd.ts'
import { requires } from '../helpers/env.mjs'
import { expectThrowsCode } from '../helpers/errors.ts'
import { mmFork } from '../helpers/mm-fork.ts'

const U = native.uffdConstants
const f = features()
const noUffd = requires(f, ['userfaultfd'])
/** The unit test doesn't need a large or random size, make it 32MB for now */
const UFFD_TEST_MEM_SIZE = 32 * 1024 * 1024
const isRoot = process.getuid?.() === 0

type MemType = 'anon' | 'shmem' | 'shmem-private' | 'hugetlb' | 'hugetlb-private'
const MEM_ALL: MemType[] = ['anon', 'shmem', 'shmem-private', 'hugetlb', 'hugetlb-private']
const hugetlbSkipFor = (mem: MemType) =>
  mem === 'hugetlb'
    ? ' — skipped: not ported yet (a shared hugetlb memfd Region exists; the cases need huge-page-granular ranges)'
    : ' — skipped: needs a MAP_PRIVATE hugetlb mapping, which memdedup does not map'

const regions: Region[] = []
const uffds: Userfaultfd[] = []
afterEach(() => {
  for (const uffd of uffds.splice(0)) uffd.close()
  for (const region of regions.splice(0).reverse()) region.close()
})
const track = (region: Region) => (regions.push(region), region)

/** area_dst of uffd_test_ctx_init() for a memory type. */
function areaDst(mem: MemType): Region {
  if (mem === 'anon') return track(Region.anonymous(UFFD_TEST_MEM_SIZE))
  const shmem = track(Region.memfd(UFFD_TEST_MEM_SIZE, { name: 'uffd-test' }))
  if (mem === 'shmem') return shmem
  return track(Region.file(`/proc/self/fd/${shmem.fd}`, { prot: 'rw' }))
}

/** uffd_test_ctx_init(features): a uffd with exactly these features, or the C's skip reason. */
function openUffd(names: UffdFeature[], skip: (why: string) => void): Userfaultfd {
  try {
    const uffd = Userfaultfd.open({ features: names, allowBlockingFaults: true })
    uffds.push(uffd)
    return uffd
  } catch (error) {
    if (error instanceof FeatureUnavailableError) skip(`feature missing: ${error.message}`)
    throw error
  }
}

const uffdWp = (region: Region) => pagemap.entries(region, { offset: 0, length: pageSize }).uffdWp(0)

describe.skipIf(Boolean(noUffd))(`uffd-unit-tests${noUffd}`, () => {
  // ---- test_uffd_api() ---------------------------------------------------------------------------
  for (const [via, method] of [
    ['syscall', U.OPEN_SYSCALL],
    ['/dev/userfaultfd', U.OPEN_DEVICE],
  ] as const) {
    it(`UFFDIO_API (with ${via})`, (ctx) => {
      const uffd = native.uffdOpen(method)
      if (uffd < 0) ctx.skip(`cannot open userfaultfd handle (errno ${-uffd})`)
      try {
        const out = new BigUint64Array(2)
        // Test wrong feature bit
        expect(native.uffdApi(uffd, 2 ** 31, out), 'UFFDIO_API should fail with wrong feature').toBe(-22)
        // Test normal UFFDIO_API
        expect(native.uffdApi(uffd, 0, out), 'UFFDIO_API should succeed').toBe(0)
        // Not in the C: what it answered: the ioctls of an API'd uffd, and WP among the features.
        expect(out[1] & (1n << BigInt(U._UFFDIO_REGISTER)), 'UFFDIO_REGISTER offered').not.toBe(0n)
        expect(Number(out[0]) & U.UFFD_FEATURE_PAGEFAULT_FLAG_WP, 'PAGEFAULT_FLAG_WP offered (x86_64)').not.toBe(0)
        // Test double requests of UFFDIO_API with a random feature set
        expect(native.uffdApi(uffd, 1, out), 'UFFDIO_API should reject initialized uffd').toBe(-22)
      } finally {
        native.closeFd(uffd)
      }
    })
  }
  it('Not in the C: Userfaultfd.open() refuses an unknown feature bit before the kernel (FeatureUnavailableError)', () => {
    expect(() => Userfaultfd.open({ features: [2 ** 31] })).toThrow(FeatureUnavailableError)
  })

  // ---- register-ioctls ---------------------------------------------------------------------------
  for (const mem of MEM_ALL) {
    const why = mem.startsWith('hugetlb') ? hugetlbSkipFor(mem) : ''
    it.skipIf(Boolean(why))(`register-ioctls on ${mem}${why}`, (ctx) => {
      const uffd = openUffd(['missingHugetlbfs', 'missingShmem', 'pagefaultFlagWp', 'wpHugetlbfsShmem', 'minorHugetlbfs', 'minorShmem'], ctx.skip)
      const area = areaDst(mem)
      const page = { offset: 0, length: pageSize }
      for (const missing of [false, true]) {
        for (const writeProtect of [false, true]) {
          for (const minor of [false, true]) {
            const label = `register (miss=${+missing}, wp=${+writeProtect}, minor=${+minor})`
            // Case 2: register with no mode selected. memdedup refuses it itself (ERR_INVALID_ARG_VALUE);
            // the kernel's EINVAL is checked through the binding.
            if (!missing && !writeProtect && !minor) {
              expectThrowsCode(() => uffd.register(area, {}, page), TypeError, 'ERR_INVALID_ARG_VALUE')
              expect(native.uffdRegister(uffd.fd, Number(area.address), pageSize, 0, new BigUint64Array(1)), label).toBe(-22)
              continue
            }
            const register = () => uffd.register(area, { missing, writeProtect, minor, allowBlockingFaults: true }, page)
            // Case 1: register MINOR on anon
            if (minor && mem === 'anon') {
              const error = expectThrowsCode(register, SyscallError, 'EINVAL')
              expect(error.syscall, label).toBe('ioctl(UFFDIO_REGISTER)')
              continue
            }
            const ioctls = register()
            let expected = 1n << BigInt(U._UFFDIO_WAKE)
            if (missing) expected |= 1n << BigInt(U._UFFDIO_COPY)
            if (writeProtect) expected |= 1n << BigInt(U._UFFDIO_WRITEPROTECT)
            if (minor) expected |= 1n << BigInt(U._UFFDIO_CONTINUE)
            expect(ioctls & expected, `unexpected uffdio_register.ioctls ${label}: returned 0x${ioctls.toString(16)}`).toBe(expected)
            uffd.unregister(area, page)
            // Not in the C: the unregister took (registering again works).
            expect(uffd.registrations(area), `${label}: unregistered`).toEqual([])
          }
        }
      }
    })
  }

  // ---- the tests memdedup has no binding for ----------------------------------------------------
  const unbound: Array<[string, MemType[], string]> = [
    ['zeropage', MEM_ALL, 'UFFDIO_ZEROPAGE'],
    ['move', ['anon'], 'UFFDIO_MOVE'],
    ['move-pmd', ['anon'], 'UFFDIO_MOVE'],
    ['move-pmd-split', ['anon'], 'UFFDIO_MOVE'],
    ['wp-fork-pin', MEM_ALL, '/sys/kernel/debug/gup_test (PIN_LONGTERM_TEST_START)'],
    ['wp-fork-pin-with-event', MEM_ALL, '/sys/kernel/debug/gup_test (PIN_LONGTERM_TEST_START)'],
    ['minor', ['shmem', 'hugetlb'], 'UFFDIO_CONTINUE and fault handling'],
    ['minor-wp', ['shmem', 'hugetlb'], 'UFFDIO_CONTINUE and fault handling'],
    ['minor-collapse', ['shmem'], 'UFFDIO_CONTINUE and fault handling'],
    ['sigbus', MEM_ALL, 'a SIGBUS handler and reading uffd events'],
    ['sigbus-wp', MEM_ALL, 'a SIGBUS handler and reading uffd events'],
    ['events', MEM_ALL, 'reading uffd events (UFFD_EVENT_FORK/REMAP/REMOVE) and UFFDIO_COPY'],
    ['events-wp', MEM_ALL, 'reading uffd events (UFFD_EVENT_FORK/REMAP/REMOVE) and UFFDIO_COPY'],
    ['poison', MEM_ALL, 'UFFDIO_POISON'],
  ]
  for (const [test, mems, binding] of unbound) {
    for (const mem of mems) it.skip(`${test} on ${mem} — skipped: needs ${binding}, which memdedup does not bind`, () => {})
  }

  // ---- wp-fork, wp-fork-with-event (mm-fork.c) ---------------------------------------------------
  for (const withEvent of [false, true]) {
    for (const mem of MEM_ALL) {
      const test = withEvent ? 'wp-fork-with-event' : 'wp-fork'
      const why = mem.startsWith('hugetlb') ? hugetlbSkipFor(mem) : !isRoot ? ' — skipped: the uffd-wp bit of pagemap needs root here' : ''
      it.skipIf(Boolean(why))(`${test} on ${mem}${why}`, (ctx) => {
        const r = mmFork(['wp-fork', mem, withEvent ? 1 : 0])
        if (r.skip) ctx.skip(String(r.skip))
        const inherited = withEvent ? 1 : 0
        const detected = withEvent ? 'missing' : 'stall'
        expect(r.wpProtected, 'pagemap uffd-wp bit after UFFDIO_WRITEPROTECT').toBe(1)
        expect(r.childPresent, `Detected ${detected} uffd-wp bit in child in present pte`).toBe(inherited)
        expect(r.wpZapped, 'Uffd-wp should persist even swapped out').toBe(1)
        expect(r.childZapped, `Detected ${detected} uffd-wp bit in child in zapped pte`).toBe(inherited)
        expect(r.wpUnprotected, 'uffd-wp bit after unprotect').toBe(0)
        expect(r.wpFaulted, 'uffd-wp bit after faulting the page in').toBe(0)
        // Not in the C: the write after unprotecting landed; MADV_DONTNEED zapped the shared page.
        expect(r.value).toBe(2)
        if (mem === 'shmem') expect(r.zapped, 'MADV_DONTNEED zapped the pte (a marker remains)').toBe(1)
      })
    }
  }

  // ---- wp-unpopulated (anon) ---------------------------------------------------------------------
  it('wp-unpopulated on anon', (ctx) => {
    const uffd = openUffd(['pagefaultFlagWp', 'wpUnpopulated'], ctx.skip)
    const area = areaDst('anon')
    const page = { offset: 0, length: pageSize }
    uffd.register(area, { writeProtect: true })
    // Test applying pte marker to anon unpopulated
    uffd.writeProtect(area, page, true)
    expect(uffdWp(area), 'pte marker on an unpopulated page').toBe(true)
    // Not in the C: a marker, not a page.
    expect(pagemap.entries(area, page).present(0)).toBe(false)
    // Test unprotect on anon pte marker
    uffd.writeProtect(area, page, false)
    expect(uffdWp(area), 'unprotect on anon pte marker').toBe(false)
    // Test zap on anon marker
    uffd.writeProtect(area, page, true)
    area.advise('dontneed', page)
    expect(uffdWp(area), 'zap on anon marker').toBe(false)
    // Test fault in after marker removed
    area.bytes[0] = 1
    expect(uffdWp(area), 'fault in after marker removed').toBe(false)
    expect(area.bytes[0]).toBe(1)
    // Drop it to make pte none again
    area.advise('dontneed', page)
    // Test read-zero-page upon pte marker
    uffd.writeProtect(area, page, true)
    expect(area.bytes[0]).toBe(0)
    // Not in the C: the read mapped the shared zeropage and kept it write-protected.
    const entries = pagemap.entries(area, page)
    if (f.zeroPage) {
      if (isRoot) expect(entries.pfns[0], 'the read mapped the zeropage').toBe(pagemap.zeroPfn())
      expect(entries.uffdWp(0), 'the zeropage mapping keeps uffd-wp').toBe(true)
    }
    // Drop it to make pte none again
    area.advise('dontneed', page)
    expect(pagemap.entries(area, page).present(0)).toBe(false)
    if (!f.zeroPage) ctx.skip('this kernel maps no shared zero page on read faults: the read-zero-page-upon-marker checks (not in the C) did not run')
  })

  it(`Not in the C: WP_ASYNC on anon: negotiates wpUnpopulated too; a write to a protected page clears uffd-wp, never blocks${requires(f, ['uffdWpAsync'])}`, (ctx) => {
    if (!f.uffdWpAsync) ctx.skip(requires(f, ['uffdWpAsync']))
    const uffd = openUffd(['wpAsync'], ctx.skip)
    expect(uffd.features).toEqual(expect.arrayContaining(['wpAsync', 'wpUnpopulated']))
    const area = areaDst('anon')
    uffd.register(area, { writeProtect: true })
    uffd.writeProtect(area, { offset: 0, length: 2 * pageSize }, true)
    area.bytes[0] = 7
    const entries = pagemap.entries(area, { offset: 0, length: 2 * pageSize })
    expect([entries.uffdWp(0), entries.uffdWp(1)], 'the written page lost uffd-wp, the unpopulated one kept its marker').toEqual([false, true])
    expect(area.bytes[0]).toBe(7)
  })
})
