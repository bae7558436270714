// Port of tools/testing/selftests/mm/ksm_functional_tests.c (Debian linux-source-6.12).
// Same tests, same names, same checks; where the C only checks that nothing is merged any more,
// this port also proves the merge happened first (same PFN mapped twice, ksm_merging_pages > 0)
// and compares the memory byte for byte after merging and after unmerging.
import { fork } from 'node:child_process'
import path from 'node:path'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, type TestContext } from 'vitest'
import { FeatureUnavailableError, Region, Userfaultfd, ksm, pagemap, pageSize, SyscallError } from '../../lib/index.ts'
import { mmFork } from '../helpers/mm-fork.ts'
import {
  KsmState,
  acquireKsmLock,
  collect,
  duplicatePfns,
  ensureDist,
  fastKsmd,
  ksmLockTimeoutMs,
  firstMismatch,
  fixturesDir,
  ksmdTimeoutMs,
  myKsmZeroPages,
  myMergingPages,
  probe,
  procMemWrite,
  rangeMapsDuplicates,
  repoRoot,
  spawnNode,
  ksmSettingsDenied,
  skipUnlessKsmSettings,
  skipUnlessOnlyKsmUser,
  type ChildResult,
} from '../helpers/ksm.ts'

const MiB = 1024 * 1024
const FORK_EXEC_CHILD_PRG_NAME = 'ksm_fork_exec_child'
const childScript = path.join(fixturesDir, 'ksm-child.mjs')

type Protection = 'rw' | 'none'
enum KsmMergeMode {
  PRCTL,
  MADVISE,
  /** PR_SET_MEMORY_MERGE already set */
  NONE,
}

const state = new KsmState()
let releaseLock: (() => void) | undefined
const regions: Region[] = []
const track = (region: Region) => (regions.push(region), region)

beforeAll(async () => {
  // Without write access to ksmd's settings every test skips: nothing to lock.
  if (!ksmSettingsDenied()) releaseLock = await acquireKsmLock()
}, ksmLockTimeoutMs + 10_000)

afterAll(() => {
  releaseLock?.()
})

beforeEach((ctx) => {
  const p = probe()
  // init_global_file_handles(): no /sys/kernel/mm/ksm/run → ksft_exit_skip.
  if (!p.ksm) ctx.skip(`open("/sys/kernel/mm/ksm/run") failed: CONFIG_KSM is off on ${p.kernelRelease}`)
  // …and opens it O_RDWR, as root.
  skipUnlessKsmSettings(ctx)
  if (!p.pfnsVisible) ctx.skip('/proc/self/pagemap hides PFNs (needs CAP_SYS_ADMIN): range_maps_duplicates() could not fail')
  state.saveProcessMerge()
  // The fork/exec children write run=2 and run=1 themselves, as test_child_ksm() does.
  state.remember('run')
  state.set(fastKsmd)
})

afterEach(() => {
  for (const region of regions.splice(0)) region.close()
  state.restore()
})

/** __mmap_and_merge_range(): a merged region, or why merging failed / was skipped. */
async function mmapAndMergeRange(
  val: number,
  size: number,
  prot: Protection,
  mode: KsmMergeMode,
): Promise<Region | { fail: string } | { skip: string }> {
  // Stabilize accounting by disabling KSM completely.
  state.unmerge()
  if (myMergingPages() > 0) return { fail: 'Still pages merged' }

  const map = track(Region.anonymous(size))
  // Don't use THP. Ignore if THP are not around on a kernel.
  try {
    map.advise('nohugepage')
  } catch (error) {
    if (!(error instanceof SyscallError && error.code === 'EINVAL')) return { fail: `MADV_NOHUGEPAGE failed: ${error}` }
  }
  // Make sure each page contains the same values to merge them.
  map.bytes.fill(val)
  if (prot !== 'rw') {
    try {
      map.protect(prot)
    } catch (error) {
      return { skip: `mprotect() failed: ${error}` }
    }
  }

  switch (mode) {
    case KsmMergeMode.PRCTL:
      try {
        ksm.process.set(true)
      } catch (error) {
        if (error instanceof SyscallError && error.code === 'EINVAL') return { skip: 'PR_SET_MEMORY_MERGE not supported' }
        return { fail: `PR_SET_MEMORY_MERGE=1 failed: ${error}` }
      }
      break
    case KsmMergeMode.MADVISE:
      ksm.enable(map)
      break
    case KsmMergeMode.NONE:
      break
  }

  // Run KSM to trigger merging and wait.
  await state.merge()

  // Check if anything was merged at all. Ignore the zero page that is accounted differently
  // (depending on kernel support).
  if (val && !myMergingPages()) return { fail: 'No pages got merged' }
  // Not in the C: the kernel's page tables must agree (same PFN mapped at two addresses).
  if (val && !rangeMapsDuplicates(map)) return { fail: 'ksm_merging_pages > 0 but the range maps no PFN twice' }
  const mismatch = firstMismatch(map, () => val)
  if (mismatch >= 0) return { fail: `byte ${mismatch} changed while merging` }
  return map
}

/** mmap_and_merge_range(): fails or skips the test like the C's ksft_test_result_fail/skip. */
async function merged(ctx: TestContext, val: number, size: number, prot: Protection, mode: KsmMergeMode): Promise<Region> {
  const result = await mmapAndMergeRange(val, size, prot, mode)
  if ('skip' in result) ctx.skip(`Merging memory skipped: ${result.skip}`)
  if ('fail' in result) expect.fail(`Merging memory failed: ${result.fail}`)
  return result as Region
}

/** The C's final ksft_test_result(!range_maps_duplicates(map, size), "Pages were unmerged"). */
function expectUnmerged(map: Region, what = 'Pages were unmerged'): void {
  const duplicates = duplicatePfns(map)
  const detail = [...duplicates].slice(0, 3).map(([pfn, pages]) => `PFN ${pfn} at pages ${pages.slice(0, 8).join(',')}`)
  expect(detail, what).toEqual([])
}

/**
 * Not in the C: unmerging breaks COW at once, but ksm_merging_pages counts rmap items still in the
 * stable tree, which ksmd drops when it next walks this mm: within two full scans (the first may
 * end before ksmd reaches this mm again; it can be anywhere in its list of mms when we start).
 */
async function expectNoMergingPagesAfterScan(): Promise<void> {
  const dropped = await state.until(() => myMergingPages() === 0, 2)
  expect(dropped, `ksm_merging_pages ${myMergingPages()} after unmerging and two more full scans`).toBe(true)
}

const size = 2 * MiB
const pages = size / pageSize

describe('ksm_functional_tests', () => {
  it('test_unmerge', async (ctx) => {
    const map = await merged(ctx, 0xcf, size, 'rw', KsmMergeMode.MADVISE)
    ksm.disable(map) // MADV_UNMERGEABLE
    expectUnmerged(map)
    await expectNoMergingPagesAfterScan()
    expect(firstMismatch(map, () => 0xcf), 'content after unmerging').toBe(-1)
  })

  it('test_unmerge_zero_pages', async (ctx) => {
    const p = probe()
    if (!p.ksmStat) ctx.skip('open("/proc/self/ksm_stat") failed')
    try {
      state.set({ useZeroPages: true })
    } catch (error) {
      ctx.skip(`write "/sys/kernel/mm/ksm/use_zero_pages" failed: ${(error as Error).message}`)
    }

    // Let KSM deduplicate zero pages.
    const map = await merged(ctx, 0x00, size, 'rw', KsmMergeMode.MADVISE)

    // Check if ksm_zero_pages is updated correctly after KSM merging.
    let pagesExpected = pages
    expect(myKsmZeroPages(), "'ksm_zero_pages' updated after merging").toBe(pagesExpected)
    // Not in the C: every page now maps the shared zero page (its PFN is known where read faults map it).
    const zero = pagemap.zeroPfn()
    if (zero !== null) expect(pagemap.entries(map).pfns.every((pfn) => pfn === zero), 'every page maps the zero page after merging').toBe(true)

    // Try to unmerge half of the region.
    ksm.disable(map, { offset: 0, length: size / 2 })

    // Check if ksm_zero_pages is updated correctly after unmerging.
    pagesExpected /= 2
    expect(myKsmZeroPages(), "'ksm_zero_pages' updated after unmerging").toBe(pagesExpected)

    // Trigger unmerging of the other half by writing to the pages.
    const words = new DataView(map.bytes.buffer, map.bytes.byteOffset, map.bytes.byteLength)
    for (let offs = size / 2; offs < size; offs += pageSize) words.setUint32(offs, offs, true)

    // Now we should have no zeropages remaining.
    expect(myKsmZeroPages(), "'ksm_zero_pages' updated after write fault").toBe(0)

    // Check if ksm zero pages are really unmerged.
    expectUnmerged(map, 'KSM zero pages were unmerged')
    const expected = (offset: number) => {
      const inPage = offset % pageSize
      const page = offset - inPage
      return page >= size / 2 && inPage < 4 ? (page >>> (8 * inPage)) & 0xff : 0
    }
    expect(firstMismatch(map, expected), 'content after unmerging').toBe(-1)
    // The C's checks all ran; only the PFN check (not in the C) needed the zero page's PFN.
    if (zero === null) ctx.skip('this kernel maps no shared zero page on read faults: pagemap.zeroPfn() is null, so which frame KSM merged with was not checked')
  })

  it('test_unmerge_discarded', async (ctx) => {
    const map = await merged(ctx, 0xcf, size, 'rw', KsmMergeMode.MADVISE)

    // Discard half of all mapped pages so we have pte_none() entries.
    map.advise('dontneed', { offset: 0, length: size / 2 })
    ksm.disable(map)

    expectUnmerged(map)
    const entries = pagemap.entries(map)
    expect(entries.count(1 /* present */), 'only the kept half is mapped').toBe(pages / 2)
    // After the PFN check: reading the discarded half maps the zero page there.
    expect(firstMismatch(map, (offset) => (offset < size / 2 ? 0 : 0xcf)), 'content after unmerging').toBe(-1)
  })

  it('test_unmerge_uffd_wp', async (ctx) => {
    // See if UFFD is around.
    if (!probe().userfaultfd) ctx.skip('__NR_userfaultfd failed')

    const map = await merged(ctx, 0xcf, size, 'rw', KsmMergeMode.MADVISE)

    // See if UFFD-WP is around: the C asks for UFFD_FEATURE_PAGEFAULT_FLAG_WP (synchronous WP).
    let uffd: Userfaultfd
    try {
      uffd = Userfaultfd.open({ features: ['pagefaultFlagWp'] })
    } catch (error) {
      if (error instanceof FeatureUnavailableError) ctx.skip('UFFD_FEATURE_PAGEFAULT_FLAG_WP not available')
      throw error
    }
    try {
      // Register UFFD-WP, no need for an actual handler.
      uffd.register(map, { writeProtect: true })
      // Write-protect the range using UFFD-WP.
      uffd.writeProtect(map, { offset: 0, length: size }, true)
      expect(pagemap.entries(map).count(32 /* uffdWp */), 'UFFDIO_WRITEPROTECT marked every page').toBe(pages)

      // Unmerging must not get stuck on (or be refused by) the write-protected PTEs.
      ksm.disable(map)
      expectUnmerged(map)
    } finally {
      uffd.close()
    }
    expect(firstMismatch(map, () => 0xcf), 'content after unmerging').toBe(-1)
  })

  it('test_prot_none', async (ctx) => {
    const map = await merged(ctx, 0x11, size, 'none', KsmMergeMode.MADVISE)

    // Store a unique value in each page on one half using ptrace (a /proc/self/mem write).
    const value = Buffer.alloc(4)
    for (let i = 0; i < size / 2; i += pageSize) {
      value.writeInt32LE(i)
      procMemWrite(map.address + BigInt(i), value)
    }

    // Trigger unsharing on the other half.
    ksm.disable(map, { offset: size / 2, length: size / 2 })

    expectUnmerged(map)
    const expected = (offset: number) => {
      const inPage = offset % pageSize
      const page = offset - inPage
      return page < size / 2 && inPage < 4 ? (page >>> (8 * inPage)) & 0xff : 0x11
    }
    expect(map.protection(), 'still PROT_NONE').toBe('none')
    expect(firstMismatch(map, expected), 'content after unmerging (read through /proc/self/mem)').toBe(-1)
  })

  // Verify that KSM can be enabled / queried with prctl.
  it('test_prctl', (ctx) => {
    try {
      ksm.process.set(true)
    } catch (error) {
      if (error instanceof SyscallError && error.code === 'EINVAL') ctx.skip('PR_SET_MEMORY_MERGE not supported')
      expect.fail(`PR_SET_MEMORY_MERGE=1 failed: ${error}`)
    }
    expect(ksm.process.get(), 'PR_SET_MEMORY_MERGE=1 not effective').toBe(true)
    expectMergeAnyInKsmStat(true)

    ksm.process.set(false)
    expect(ksm.process.get(), 'PR_SET_MEMORY_MERGE=0 not effective').toBe(false)
    expectMergeAnyInKsmStat(false)
  })

  /** Not in the C: the kernel's own view, /proc/<pid>/ksm_stat ksm_merge_any (6.13+; absent on 6.12). */
  function expectMergeAnyInKsmStat(expected: boolean, stat: Record<string, unknown> = ksm.processStats()): void {
    if ('ksmMergeAny' in stat) expect(stat.ksmMergeAny, `/proc/<pid>/ksm_stat ksm_merge_any`).toBe(expected)
  }

  /** test_child_ksm_err(): the child's exit status as the C maps it. */
  function expectChildOk(ctx: TestContext, child: ChildResult): void {
    const detail = `exit ${child.code}${child.signal ? ` signal ${child.signal}` : ''}\nstdout: ${child.stdout}\nstderr: ${child.stderr}`
    expect(child.signal, `program didn't terminate normally\n${detail}`).toBeNull()
    if (child.code === 3) ctx.skip('Merge in child skipped')
    expect(child.code !== 1, `unexpected PR_GET_MEMORY_MERGE result in child\n${detail}`).toBe(true)
    expect(child.code !== 2, `Merge in child failed\n${detail}`).toBe(true)
    expect(child.code, detail).toBe(0)
  }

  function setMemoryMerge(ctx: TestContext): void {
    try {
      ksm.process.set(true)
    } catch (error) {
      if (error instanceof SyscallError && error.code === 'EINVAL') ctx.skip('PR_SET_MEMORY_MERGE not supported')
      expect.fail(`PR_SET_MEMORY_MERGE=1 failed: ${error}`)
    }
  }

  const childArgs = ['--size', String(size), '--timeout', String(ksmdTimeoutMs)]

  // Verify that prctl ksm flag is inherited.
  //
  // Node cannot fork() without exec: every child_process API is fork (or vfork/clone) + execve
  // inside libuv. PR_SET_MEMORY_MERGE (MMF_VM_MERGE_ANY) survives both steps: fork copies
  // mm->flags (MMF_INIT_MASK) and execve gives the new mm the flag again (ksm_execve(); in 6.12 and 6.18).
  // So this test checks inheritance through Node's own `fork()` (a node child with an IPC
  // channel, reporting over it) and test_prctl_fork_exec below through a plain spawn + exit
  // status, as the C re-executes its own binary. What neither can check is fork() alone.
  it('test_prctl_fork', async (ctx) => {
    ensureDist()
    setMemoryMerge(ctx)

    const child = fork(childScript, ['ksm_fork_child', ...childArgs], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] })
    const result = await collect(child)
    expectChildOk(ctx, result)
    expect(result.messages, 'the child reports over the IPC channel').toHaveLength(1)
    const report = result.messages[0] as { memoryMerge: boolean; ksmStat: Record<string, unknown> }
    expect(report.memoryMerge, 'PR_GET_MEMORY_MERGE in the child').toBe(true)
    expectMergeAnyInKsmStat(true, report.ksmStat)

    ksm.process.set(false)
    expect(ksm.process.get(), 'PR_SET_MEMORY_MERGE=0 failed').toBe(false)
  })

  it('test_prctl_fork_exec', async (ctx) => {
    ensureDist()
    setMemoryMerge(ctx)

    const result = await spawnNode(childScript, [FORK_EXEC_CHILD_PRG_NAME, ...childArgs])
    expectChildOk(ctx, result)
    const report = JSON.parse(result.stdout.trim().split('\n').at(-1)!)
    expect(report).toMatchObject({ mode: FORK_EXEC_CHILD_PRG_NAME, memoryMerge: true })
    expectMergeAnyInKsmStat(true, report.ksmStat)
    expect(report.distinctPfns, 'the child region maps the same PFN for several pages').toBeLessThan(report.pages)

    ksm.process.set(false)
    expect(ksm.process.get(), 'PR_SET_MEMORY_MERGE=0 failed').toBe(false)
  })

  // Not in the C: the control that shows the two tests above can fail. Without the flag in the
  // parent, the child must see PR_GET_MEMORY_MERGE == 0 and exit 1.
  it('test_prctl_fork_exec (control: flag cleared, not inherited)', async (ctx) => {
    if (!probe().ksmProcess) ctx.skip('PR_SET_MEMORY_MERGE not supported')
    ensureDist()
    ksm.process.set(false)
    const result = await spawnNode(childScript, [FORK_EXEC_CHILD_PRG_NAME, ...childArgs])
    expect(result.code, result.stdout + result.stderr).toBe(1)
    expect(JSON.parse(result.stdout.trim())).toMatchObject({ memoryMerge: false })
  })

  // From 6.18's C (kernel-patches/0009 carries it to the lab's 6.12 C): ksm_merging_pages is not
  // inherited by fork(). Node cannot fork without exec, so test/fixtures/mm-fork.c merges and forks.
  it('test_fork_ksm_merging_page_count', (ctx) => {
    state.set({ run: 1 })
    const r = mmFork(['ksm-fork', size, 0xcf, Math.ceil(ksmdTimeoutMs / 1000)], ksmdTimeoutMs + 30_000)
    if (r.skip) ctx.skip(String(r.skip))
    // Not in the C: the merge happened in the parent, so the child had something to inherit.
    expect(r.parentMerging, 'ksm_merging_pages in the parent before fork').toBeGreaterThan(0)
    expect(r.childMerging, 'ksm_merging_page in child').toBe(0)
    // Not in the C: the rmap items stay the parent's too (the same fix resets ksm_rmap_items).
    expect(r.childRmapItems, 'ksm_rmap_items in child').toBe(0)
    expect(r.childStatus, 'child exit status').toBe(0)
    expect(r.mismatches, 'bytes changed').toBe(0)
  })

  // Not in the C: upstream's v2 of the same series had test_fork_global_ksm_zero_pages_count; v3
  // dropped it because other processes merging zero pages at the same time make it fail. Here
  // the KSM lock keeps other tests out; the check is exact: the child inherits the parent's KSM
  // zero pages, the global ksm_zero_pages counts them twice, and the child's run=2 (which
  // unmerges every process) brings it back to 0 — not below, not above.
  it('test_fork_global_ksm_zero_pages_count (upstream v2; not in the C)', async (ctx) => {
    if (!probe().ksmStat) ctx.skip('open("/proc/self/ksm_stat") failed')
    // The global counter is exact only while this test is KSM's only user (true in CI and the VM).
    await skipUnlessOnlyKsmUser(ctx)
    try {
      state.set({ useZeroPages: true })
    } catch (error) {
      ctx.skip(`write "/sys/kernel/mm/ksm/use_zero_pages" failed: ${(error as Error).message}`)
    }
    state.set({ run: 1 })
    const r = mmFork(['ksm-fork', size, 0, Math.ceil(ksmdTimeoutMs / 1000)], ksmdTimeoutMs + 30_000)
    if (r.skip) ctx.skip(String(r.skip))
    expect(r.parentZero, "the parent's ksm_zero_pages after merging").toBe(pages)
    expect(Number(r.globalZeroMerged) - Number(r.globalZeroBefore), 'global ksm_zero_pages grew by the merged pages').toBe(pages)
    expect(r.childZero, "the child's ksm_zero_pages (its PTEs map the same zero pages)").toBe(pages)
    expect(Number(r.globalZeroInChild) - Number(r.globalZeroMerged), 'global ksm_zero_pages counts the inherited ones too').toBe(pages)
    expect(r.childStatus, 'child exit status').toBe(0)
    expect(r.globalZeroAfter, 'Incorrect global ksm zero page count after fork (run=2 unmerged everything)').toBe(0)
    expect(r.mismatches, 'bytes changed').toBe(0)
  })

  it('test_prctl_unmerge', async (ctx) => {
    const map = await merged(ctx, 0xcf, size, 'rw', KsmMergeMode.PRCTL)
    ksm.process.set(false)
    expectUnmerged(map)
    await expectNoMergingPagesAfterScan()
    expect(firstMismatch(map, () => 0xcf), 'content after unmerging').toBe(-1)
  })
})

