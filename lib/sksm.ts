/**
 * SKSM: madvise(MADV_MERGE) merges identical pages of a range now, synchronously, with no
 * daemon and no ongoing tracking: a later write simply COWs the page back to a private copy.
 * Present only on kernels carrying the SKSM patch (kernel-patches/); absent kernels say EINVAL.
 *
 * @module
 */
import fs from 'node:fs'
import { native, constants as C } from './native.ts'
import { check, errno, FeatureUnavailableError } from './errors.ts'
import { Region, resolveSpan, type Range } from './region.ts'

/**
 * Merges every present anonymous page of the range with identical pages merged before it, in
 * this process or any other, and with the shared zero page: `madvise(MADV_MERGE)` (SKSM).
 *
 * **What happens.** Synchronously, before it returns, each page is write-protected,
 * checksummed (xxhash) and looked up in one system-wide table of merged pages; a page whose
 * content is already there is replaced by that page (the duplicate is freed), otherwise it
 * becomes the table's copy. There is no background scan and nothing is remembered about the
 * range afterwards: a write to a merged page takes a copy-on-write fault and gets a private
 * page again ("unmerging" is just writing). Merge again once the content is invariant again.
 *
 * **When to use it.** For memory you know will stay the same for a long time and that other
 * processes (or other ranges) likely hold too: code or tables patched at start-up (the SKSM
 * use case: a library constructor patches text, COWing it, then merges it so every process
 * shares one copy again), JIT output that is final, read-mostly data loaded identically by
 * many workers. Merging memory that is written soon after only costs a fault and a copy.
 *
 * **Never for secrets.** Whether a merge happened is observable: a write to a merged page is
 * slower (COW) than to a private one, so a process can learn that some other process holds a
 * page with content it guessed. Do not merge keys, tokens, passwords or user data.
 *
 * **How it differs from KSM** (`ksm.enable`, MADV_MERGEABLE): KSM registers the range once and
 * ksmd keeps scanning it in the background at the rate set in /sys/kernel/mm/ksm (pages_to_scan,
 * sleep_millisecs), merging a page only after it saw it unchanged across two scans; savings
 * arrive seconds to hours later and cost CPU continuously, and `run` must be 1. SKSM needs no
 * tuning and no daemon: the caller decides when, the savings are there when the call returns,
 * and the CPU is spent once, in the caller. KSM suits memory nobody can point at (VM guests);
 * SKSM suits memory the program knows is invariant. Both may be used on one kernel.
 *
 * **What is ignored** (as the kernel ignores it, without an error): pages not present (never
 * touched), file pages not yet COWed (a private file mapping is merged only where it was
 * written), and shared mappings (memfd Regions). Transparent huge pages are split first.
 * Merging is best-effort per page: a page someone else holds a reference to at that moment
 * (O_DIRECT I/O, a pin, ksmd looking at it) is skipped, as KSM skips it; call again to retry.
 *
 * The call holds the mmap lock for writing and does O(pages) hashing and comparing: merge in
 * batches (ranges) if other threads of the process must keep faulting meanwhile.
 *
 * @throws {TypeError|RangeError} `region` is not a Region, or `range` is not a page-aligned
 *   range inside it.
 * @throws {InvalidStateError} the Region is closed (code ERR_REGION_CLOSED).
 * @throws {FeatureUnavailableError} the kernel has no SKSM (feature 'sksm'); see available().
 * @throws {SyscallError} EPERM: the administrator switched MADV_MERGE off
 *   (/sys/kernel/mm/ksm/sksm_enabled = 0; see enabled()); any other kernel failure (e.g.
 *   ENOMEM), code and errno set.
 */
export function merge(region: Region, range?: Range): void {
  const span = resolveSpan(region, range, 'sksm.merge')
  const rc = native.madvise(span.address, span.length, C.MADV_MERGE)
  if (rc >= 0) return
  if (-rc === errno.EINVAL && !available()) {
    throw new FeatureUnavailableError('sksm', 'madvise(MADV_MERGE) is not supported (kernel without the SKSM patch)')
  }
  check(rc, 'madvise(MADV_MERGE)', -rc === errno.EPERM ? `switched off by the administrator (${enabledKnob} is 0)` : undefined)
}

/** The administrator's switch (kernel-patches/0040): 0 makes MADV_MERGE fail with EPERM. */
export const enabledKnob = '/sys/kernel/mm/ksm/sksm_enabled'

/**
 * Whether MADV_MERGE may be used now: available() and the administrator's switch
 * (/sys/kernel/mm/ksm/sksm_enabled) is 1. Read on every call (root may flip it at any time);
 * a kernel with SKSM but without the switch counts as enabled.
 */
export function enabled(): boolean {
  if (!available()) return false
  let value: string
  try {
    value = fs.readFileSync(enabledKnob, 'utf8')
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return true // SKSM before the switch
    throw error
  }
  return value.trim() !== '0'
}

let probed: boolean | undefined
/**
 * Whether this kernel implements MADV_MERGE: probed once, on a scratch anonymous page (an
 * unpatched kernel rejects the unknown advice with EINVAL; one whose administrator switched it
 * off says EPERM: implemented, see enabled()), then cached. Tests skip with a reason when it is
 * false; features().sksm reports the same.
 */
export function available(): boolean {
  if (probed === undefined) {
    const scratch = Region.anonymous(C.pageSize)
    try {
      const span = resolveSpan(scratch, undefined, 'sksm.available')
      const rc = native.madvise(span.address, span.length, C.MADV_MERGE)
      probed = rc === 0 || -rc === errno.EPERM
    } finally {
      scratch.close()
    }
  }
  return probed
}
