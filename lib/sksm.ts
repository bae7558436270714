// SKSM: madvise(MADV_MERGE) merges identical pages of a range now, synchronously, with no
// daemon and no ongoing tracking: a later write simply COWs the page back to a private copy.
// Present only on kernels carrying the SKSM patch (kernel-patches/); absent kernels say EINVAL.
import { native, constants as C } from './native.ts'
import { FeatureUnavailableError, SyscallError } from './errors.ts'
import { resolveSpan, type Range, type Region } from './region.ts'

/**
 * Merges every page of the range with identical pages already merged anywhere in the system
 * (and with each other). Use it for memory whose content stays invariant for a long time
 * (patched code, read-mostly tables); never for secrets (merging is observable by timing).
 */
export function merge(region: Region, range?: Range): void {
  const span = resolveSpan(region, range, 'sksm.merge')
  const rc = native.madvise(span.address, span.length, C.MADV_MERGE)
  if (rc >= 0) return
  if (-rc === 22 && !available()) {
    throw new FeatureUnavailableError('sksm', 'madvise(MADV_MERGE) is not supported (kernel without the SKSM patch)')
  }
  throw new SyscallError('madvise(MADV_MERGE)', -rc)
}

let probed: boolean | undefined
/** Whether this kernel implements MADV_MERGE: probed once on a scratch anonymous page. */
export function available(): boolean {
  if (probed === undefined) {
    const length = C.pageSize
    const address = native.mmap(0, length, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS, -1, 0)
    if (address < 0) throw new SyscallError('mmap', -address, 'sksm probe')
    probed = native.madvise(address, length, C.MADV_MERGE) === 0
    native.munmap(address, length)
  }
  return probed
}
