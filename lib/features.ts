// Run-time feature probes, cached: what this kernel offers, so callers (and tests) can skip
// with a reason instead of failing on an older or unpatched kernel.
import fs from 'node:fs'
import os from 'node:os'
import { native, pageSize } from './native.ts'
import { available as ksmAvailable } from './ksm.ts'
import { available as sksmAvailable } from './sksm.ts'
import { probeUserfaultfd } from './uffd.ts'
import { probePagemapScan, probeZeroPage, softDirtySupported } from './pagemap.ts'
import { available as mshareAvailable } from './mshare.ts'
import { probeRemoteMerge } from './remote.ts'
import { available as numaAvailable } from './numa.ts'

/** What the running kernel offers, as `features()` found it. */
export interface Features {
  kernelRelease: string
  pageSize: number
  /** /sys/kernel/mm/ksm exists (CONFIG_KSM). */
  ksm: boolean
  /** PR_GET_MEMORY_MERGE works (6.4+). */
  ksmProcess: boolean
  /** madvise(MADV_MERGE) works (SKSM patch). */
  sksm: boolean
  /** A userfaultfd can be opened here (syscall or /dev/userfaultfd). */
  userfaultfd: boolean
  /** UFFD_FEATURE_WP_ASYNC is offered. */
  uffdWpAsync: boolean
  /** The PAGEMAP_SCAN ioctl exists (6.7+). */
  pagemapScan: boolean
  /** A read fault of untouched private anonymous memory maps the shared zero page (pagemap.zeroPfn()
   *  is not null); false where the kernel maps a private zeroed page instead (mm_forbids_zeropage():
   *  an s390 process that runs a KVM guest; PVM with pvm_no_zero_page=1) or /proc/self/pagemap is missing. */
  zeroPage: boolean
  /** Transparent huge pages are configured. */
  thp: boolean
  /** msharefs (page tables shared across processes; the lab kernel's mshare series) is compiled in. */
  mshare: boolean
  /** process_madvise() accepts MADV_MERGE for another process (a kernel patch; TargetProcess.madvise(…, 'merge')). */
  remoteMerge: boolean
  /** The NUMA memory-policy syscalls mbind and move_pages exist (CONFIG_NUMA): numa.bind(), numa.nodeOf(). */
  numa: boolean
  /** The kernel tracks soft-dirty pages (CONFIG_MEM_SOFT_DIRTY): another process's writes (TargetProcess, Daemon). */
  softDirty: boolean
}

let cached: Features | undefined

/** What the running kernel offers (KSM, per-process KSM, SKSM, userfaultfd, WP_ASYNC, PAGEMAP_SCAN, mshare, NUMA, …), probed once and cached; `memdedup probe` prints it. */
export function features(): Features {
  if (cached === undefined) {
    const uffd = probeUserfaultfd()
    cached = Object.freeze({
      kernelRelease: os.release(),
      pageSize,
      ksm: ksmAvailable(),
      ksmProcess: native.prctlGetMemoryMerge() >= 0,
      sksm: sksmAvailable(),
      userfaultfd: uffd.available,
      uffdWpAsync: uffd.wpAsync,
      pagemapScan: probePagemapScan(),
      zeroPage: probeZeroPage(),
      thp: fs.existsSync('/sys/kernel/mm/transparent_hugepage/enabled'),
      mshare: mshareAvailable(),
      remoteMerge: probeRemoteMerge(),
      numa: numaAvailable(),
      softDirty: softDirtySupported(),
    })
  }
  return cached
}
