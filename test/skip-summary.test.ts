// test/helpers/skip-summary-reporter.mjs and the skip rules of test/helpers/env.mjs: how a skip's
// reason is found, which reasons the lab VM refuses, and the probe for ksmd's settings.
import fs from 'node:fs'
import { describe, expect, it } from 'vitest'
import { ksmSettingsDenied, labFeatures, noReason, refusedInVm, titleSkipReason } from './helpers/env.mjs'
import { collectSkips, skipReason, summarize } from './helpers/skip-summary-reporter.mjs'

describe('titleSkipReason', () => {
  it.each([
    ['Deduplicator with MADV_MERGE — skipped: this kernel (6.18.44) lacks sksm', 'this kernel (6.18.44) lacks sksm'],
    ['KSM and SKSM in one boot [skipped: kernel 6.18 has no SKSM (madvise(MADV_MERGE) is EINVAL); run in the lab VM]', 'kernel 6.18 has no SKSM (madvise(MADV_MERGE) is EINVAL); run in the lab VM'],
    ['forked_target_vma (skipped: needs fork(2) of a process; a Node process cannot fork)', 'needs fork(2) of a process; a Node process cannot fork'],
    ['colours only on a terminal — skipped in the VM: terminal handling does not depend on the kernel', 'in the VM: terminal handling does not depend on the kernel'],
    ['Basic COW ... with memfd hugetlb (2048 kB) — skipped: needs a private mapping (Region.memfd({ hugetlb: true }))', 'needs a private mapping (Region.memfd({ hugetlb: true }))'],
  ])('%s', (title, reason) => {
    expect(titleSkipReason(title)).toBe(reason)
  })

  it('is undefined for a title that gives no reason', () => {
    for (const title of ['ksm absent', 'a test (skipped pages are counted)', 'processes that exit while top reads them are skipped (a shell forking)']) expect(titleSkipReason(title), title).toBeUndefined()
  })
})

describe('refusedInVm: what the lab VM does not let a test skip for', () => {
  // Reasons the suite gives on hosts that lack the feature: in the lab, which has it, they fail the run.
  it.each([
    ['root', "needs root: /sys/kernel/mm/ksm/run is not writable here (EACCES), so ksmd's settings cannot be changed"],
    ['root', '/proc/self/pagemap hides PFNs (needs CAP_SYS_ADMIN): range_maps_duplicates() could not fail'],
    ['root', 'PFNs in /proc/self/pagemap need root'],
    ['KSM', 'Config KSM not enabled (no /sys/kernel/mm/ksm on 6.1.0)'],
    ['KSM', "other processes use KSM, so the global counters are not this test's alone: pid 12 (qemu)"],
    ['KSM', 'KSM memory merging not supported (PR_SET_MEMORY_MERGE: EINVAL)'],
    ['KSM', 'PR_SET_MEMORY_MERGE not supported'],
    ['KSM', 'kernel 6.1.0 lacks PR_SET_MEMORY_MERGE'],
    ['KSM', 'kernel 6.1.0 lacks KSM or /proc/<pid>/ksm_stat'],
    ['KSM', 'no /proc/self/ksm_stat'],
    ['KSM', 'open("/proc/self/ksm_stat") failed'],
    ['KSM', 'no KSM on 6.1.0'],
    ['KSM', 'this kernel (6.1.0) lacks ksm, ksmProcess'],
    ['KSM', 'no /sys/kernel/mm/ksm/run: this kernel (6.1.0) has no KSM (CONFIG_KSM off)'],
    ['KSM', 'ksmd did not merge the twins within 4 full scans while pid 12 (40000 rmap items) also use it'],
    ['SKSM', 'this kernel (6.18.44-fc-v1272) lacks sksm'],
    ['SKSM', 'kernel 6.18.44 has no SKSM (madvise(MADV_MERGE) is EINVAL); run in the lab VM'],
    ['THP', 'Transparent Hugepages not available'],
    ['THP', 'no THP could be allocated (Number of huge pages: 0 of 8): nothing to split'],
    ['THP', 'Did not get THPs populated'],
    ['THP', 'Huge zeropage not enabled'],
    ['msharefs', 'msharefs is not in /proc/filesystems (kernel without the mshare series)'],
    ['userfaultfd', '__NR_userfaultfd failed'],
    ['userfaultfd', 'init_uffd() failed: ENOSYS'],
    ['uffd WP_ASYNC', 'this kernel (6.1.0) lacks uffdWpAsync'],
    ['uffd WP_ASYNC', 'UFFD_FEATURE_PAGEFAULT_FLAG_WP not available'],
    ['uffd WP_ASYNC', 'UFFD_FEATURE_WP_ASYNC is not offered'],
    ['soft-dirty', 'soft-dirty is not support (softdirty_supported(): no "sd" VmFlag, CONFIG_MEM_SOFT_DIRTY off)'],
    ['soft-dirty', 'this kernel has no CONFIG_MEM_SOFT_DIRTY'],
    ['userfaultfd', 'cannot open userfaultfd handle (errno 1)'],
    ['swap', 'MADV_PAGEOUT did not work, is swap enabled?'],
    ['swap', 'needs swap (/proc/swaps is empty): the lab VM has a swap disk'],
    ['PAGEMAP_SCAN', 'PAGEMAP_SCAN is not available on 6.1.0'],
    ['zero page', 'this kernel maps no shared zero page on read faults: pagemap.zeroPfn() is null'],
    ['NUMA', 'At least 2 NUMA nodes with memory must be available (this machine has 1: node 0)'],
    ['NUMA', 'this kernel (6.1.0) has no NUMA syscalls (CONFIG_NUMA off): mbind and move_pages are ENOSYS'],
    ['memcg', 'no cgroup v2 memory controller for child groups at /sys/fs/cgroup'],
    ['no reason', noReason],
    // Two reasons in one title: the allowed second does not excuse the first.
    ['SKSM', 'kernel 6.18 has no SKSM (madvise(MADV_MERGE) is EINVAL)] [skipped: run once, without ksmd, to bound the VM time'],
  ])('[%s] %s', (feature, reason) => {
    expect(refusedInVm(reason)).toBe(feature)
  })

  // True on every kernel, the lab's too.
  it.each([
    "the C's mTHP runs rewrite the global transparent_hugepage/hugepages-*kB/enabled knobs; ported at the PMD size only",
    'needs reading uffd events (UFFD_EVENT_FORK/REMAP/REMOVE) and UFFDIO_COPY, which memdedup does not bind',
    'needs /sys/kernel/debug/gup_test (PIN_LONGTERM_TEST_*), a test driver memdedup does not bind',
    'needs a MAP_PRIVATE hugetlb mapping, which memdedup does not map',
    'not ported yet (a shared hugetlb memfd Region exists; the cases need huge-page-granular ranges)',
    'needs fork(2) of a process that then maps next to an inherited VMA; a Node process cannot fork',
    'this kernel has KSM',
    'kernel 6.12.118-memdedup has SKSM',
    'this kernel (6.12.118-memdedup) does not report ksm_mergeable in /proc/self/ksm_stat',
    'this kernel lacks the VMA merge behaviour this case tests (upstream after 6.12); probe: mprotect() making a faulted VMA match its unfaulted neighbour did not merge them',
    'this kernel has msharefs',
    'this kernel maps a shared zero page on read faults (the classifier is checked on private pages below)',
    'the lab runs the SKSM case instead',
    'run once, without ksmd, to bound the VM time',
    'in the VM: terminal handling does not depend on the kernel, the host run tests it',
    'no free hugetlb pages (HugePages_Free 0 < 1); tests reserve them only in the VM (vm.nr_hugepages)',
    'kernel 6.12.118-memdedup lacks seccomp filters (CONFIG_SECCOMP_FILTER)',
  ])('allowed: %s', (reason) => {
    expect(refusedInVm(reason)).toBe('')
  })

  it('names each lab feature once', () => {
    const names = labFeatures.map((f) => f.feature)
    expect(new Set(names).size).toBe(names.length)
  })
})

/** A stand-in for vitest's TestCase / TestSuite / TestModule, as far as the reporter reads them. */
function fakeTest(name: string, options: { note?: string; mode?: string; suite?: string; suiteErrors?: number; state?: string } = {}) {
  const module = { type: 'module', relativeModuleId: 'test/x.test.ts', errors: () => [] }
  const suite = options.suite === undefined ? module : { type: 'suite', name: options.suite, parent: module, errors: () => Array(options.suiteErrors ?? 0).fill({}) }
  const test = {
    type: 'test',
    name,
    fullName: options.suite ? `${options.suite} > ${name}` : name,
    parent: suite,
    options: { mode: options.mode ?? 'run' },
    result: () => ({ state: options.state ?? 'skipped', note: options.note }),
  }
  return { test, module: { ...module, children: { *allTests() { yield test } } } }
}

describe('skipReason / collectSkips / summarize', () => {
  const reasonOf = (...args: Parameters<typeof fakeTest>) => skipReason(fakeTest(...args).test as never)

  it('takes ctx.skip()’s note first, then the title, then a suite’s title', () => {
    expect(reasonOf('t — skipped: from the title', { note: 'from ctx.skip' })).toBe('from ctx.skip')
    expect(reasonOf('t — skipped: from the title')).toBe('from the title')
    expect(reasonOf('t', { suite: 'suite — skipped: from the suite' })).toBe('from the suite')
  })

  it('says when a hook failed, a -t filter left the test out, or nothing says why', () => {
    expect(reasonOf('t', { suite: 'configure', suiteErrors: 1 })).toMatch(/^not run: a hook of "configure" failed/)
    expect(skipReason(fakeTest('other').test as never, /^wanted$/)).toBe('not selected by -t /^wanted$/')
    expect(reasonOf('t', { mode: 'todo' })).toBe('todo')
    expect(reasonOf('t')).toBe(noReason)
  })

  it('groups by reason; on the host it lists, in the VM a refused skip fails the run', () => {
    const modules = [fakeTest('a — skipped: this kernel (6.1) lacks sksm'), fakeTest('b', { note: 'a Region has no holes' }), fakeTest('c', { state: 'passed' })].map((f) => f.module)
    const { groups, total } = collectSkips(modules as never)
    expect(total).toBe(3)
    expect([...groups]).toEqual([
      ['this kernel (6.1) lacks sksm', ['x.test.ts: a']],
      ['a Region has no holes', ['x.test.ts: b']],
    ])
    const host = summarize(groups, total, { vm: false })
    expect(host.failed).toBe(false)
    expect(host.lines.join('\n')).toContain('Skipped: 2 of 3 tests, 2 reasons')
    const vm = summarize(groups, total, { vm: true })
    expect(vm.failed).toBe(true)
    expect(vm.lines.join('\n')).toMatch(/FAIL: 1 skips .*\n {2}\[SKSM\] 1 {2}this kernel \(6\.1\) lacks sksm\n {9}x\.test\.ts: a/)
    const fine = summarize(new Map([['a Region has no holes', ['x.test.ts: b']]]), 1, { vm: true })
    expect(fine.failed).toBe(false)
  })
})

describe('ksmSettingsDenied (the probe for writing /sys/kernel/mm/ksm)', () => {
  it('agrees with opening /sys/kernel/mm/ksm/run for writing, as ksm_functional_tests.c does', (ctx) => {
    if (!fs.existsSync('/sys/kernel/mm/ksm/run')) {
      expect(ksmSettingsDenied()).toMatch(/has no KSM/)
      ctx.skip('this kernel has no KSM: nothing to open')
    }
    let code = ''
    try {
      fs.closeSync(fs.openSync('/sys/kernel/mm/ksm/run', 'r+'))
    } catch (error) {
      code = (error as NodeJS.ErrnoException).code ?? String(error)
    }
    if (code === '') expect(ksmSettingsDenied()).toBe('')
    else expect(ksmSettingsDenied()).toContain(`(${code})`)
  })
})
