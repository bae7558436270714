// userfaultfd(2): write tracking with UFFD_FEATURE_WP_ASYNC (the dedup scanner's use), plus the
// synchronous modes for callers that read the descriptor themselves.
//
// DANGER — blocking faults. A synchronous userfaultfd parks the faulting thread until someone
// reads the fd and resolves the fault. memdedup does not read it, so:
//   - MISSING or MINOR registration + any access to a not-yet-resolved page blocks the thread
//     forever (in Node: the whole event loop). register() refuses these modes unless the caller
//     passes { allowBlockingFaults: true } and promises to serve faults (e.g. from a worker or
//     another process that owns the fd).
//   - WP registration on a uffd *without* 'wpAsync': a write to a page protected with
//     writeProtect(…, true) blocks the same way. This is allowed without the option (protecting
//     and never writing is a valid use, e.g. ksm_functional_tests' test_unmerge_uffd_wp), but
//     writing needs writeProtect(…, false) first. With 'wpAsync' writes never block: the kernel
//     just clears the WP bit, and PAGEMAP_SCAN reports the page as written.
//   - Event features (eventFork, eventRemap, eventRemove, eventUnmap) make fork/mremap/
//     madvise(DONTNEED)/munmap wait for the event to be read; open() refuses them unless
//     { allowBlockingFaults: true }.
import { native, pageSize } from './native.ts'
import { check, codedError, errno, FeatureUnavailableError, SyscallError } from './errors.ts'
import { assertInternal, guardReceivers, internal, type Internal } from './internal.ts'
import { Region, resolveSpan, type Range, type Span } from './region.ts'
import { PageRuns } from './runs.ts'
import { invalidArgType, invalidArgValue, readOptions, validateBoolean } from './validate.ts'

const U = native.uffdConstants

/** UFFD_FEATURE_* in camelCase → bit. Open set on the way in: numbers are accepted too. */
export const uffdFeatures = {
  pagefaultFlagWp: U.UFFD_FEATURE_PAGEFAULT_FLAG_WP,
  eventFork: U.UFFD_FEATURE_EVENT_FORK,
  eventRemap: U.UFFD_FEATURE_EVENT_REMAP,
  eventRemove: U.UFFD_FEATURE_EVENT_REMOVE,
  missingHugetlbfs: U.UFFD_FEATURE_MISSING_HUGETLBFS,
  missingShmem: U.UFFD_FEATURE_MISSING_SHMEM,
  eventUnmap: U.UFFD_FEATURE_EVENT_UNMAP,
  sigbus: U.UFFD_FEATURE_SIGBUS,
  threadId: U.UFFD_FEATURE_THREAD_ID,
  minorHugetlbfs: U.UFFD_FEATURE_MINOR_HUGETLBFS,
  minorShmem: U.UFFD_FEATURE_MINOR_SHMEM,
  exactAddress: U.UFFD_FEATURE_EXACT_ADDRESS,
  wpHugetlbfsShmem: U.UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
  wpUnpopulated: U.UFFD_FEATURE_WP_UNPOPULATED,
  poison: U.UFFD_FEATURE_POISON,
  wpAsync: U.UFFD_FEATURE_WP_ASYNC,
  move: U.UFFD_FEATURE_MOVE,
} as const
export type UffdFeature = keyof typeof uffdFeatures
const featureNames = Object.keys(uffdFeatures) as UffdFeature[]
const blockingEvents: UffdFeature[] = ['eventFork', 'eventRemap', 'eventRemove', 'eventUnmap']

/** Names of the known bits in `mask`; unknown bits are listed as numbers by the caller. */
function namesOf(mask: number): UffdFeature[] {
  return featureNames.filter((name) => (mask & uffdFeatures[name]) !== 0)
}

const MODE = { missing: U.UFFDIO_REGISTER_MODE_MISSING, writeProtect: U.UFFDIO_REGISTER_MODE_WP, minor: U.UFFDIO_REGISTER_MODE_MINOR } as const

interface Opened {
  fd: number
  method: number
}

/**
 * Opens a fresh userfaultfd: the userfaultfd(2) syscall; if that is refused (EPERM with
 * vm.unprivileged_userfaultfd = 0 and no CAP_SYS_PTRACE), /dev/userfaultfd (full capability
 * when its permissions let us open it); last, the syscall with UFFD_USER_MODE_ONLY, which an
 * unprivileged process may always use (faults from inside the kernel then fail instead of
 * being reported; WP_ASYNC is unaffected since it never reports).
 */
function openFresh(): Opened {
  const methods = [U.OPEN_SYSCALL, U.OPEN_DEVICE, U.OPEN_SYSCALL_USER_MODE_ONLY]
  let first = 0
  for (const method of methods) {
    const rc = native.uffdOpen(method)
    if (rc >= 0) return { fd: rc, method }
    if (first === 0) first = rc
  }
  throw new SyscallError('userfaultfd', -first, 'syscall, /dev/userfaultfd and UFFD_USER_MODE_ONLY all refused')
}

/** Opens, negotiates `features`, closes on error. */
function openWithApi(features: number): { opened: Opened; offered: number; ioctls: bigint } {
  const opened = openFresh()
  const out = new BigUint64Array(2)
  try {
    check(native.uffdApi(opened.fd, features, out), 'ioctl(UFFDIO_API)', () => `features 0x${features.toString(16)}`)
  } catch (error) {
    native.closeFd(opened.fd)
    throw error
  }
  return { opened, offered: Number(out[0]), ioctls: out[1] }
}

let probed: { available: boolean; wpAsync: boolean; offered: number } | undefined
function probe(): { available: boolean; wpAsync: boolean; offered: number } {
  if (probed === undefined) {
    try {
      const { opened, offered } = openWithApi(0)
      native.closeFd(opened.fd)
      probed = { available: true, wpAsync: (offered & U.UFFD_FEATURE_WP_ASYNC) !== 0, offered }
    } catch {
      probed = { available: false, wpAsync: false, offered: 0 }
    }
  }
  return probed
}

/** Feature probe for features(): can a userfaultfd be opened, and is WP_ASYNC offered? */
export function probeUserfaultfd(): { available: boolean; wpAsync: boolean } {
  const { available, wpAsync } = probe()
  return { available, wpAsync }
}

export interface UserfaultfdOptions {
  /** UFFD_FEATURE_* names in camelCase (or raw bits). Each must be offered by the kernel. */
  features?: (UffdFeature | number)[]
  /** Permit event features (and, in register(), MISSING/MINOR): see DANGER at the top. */
  allowBlockingFaults?: boolean
}

export interface RegisterOptions {
  /** UFFDIO_REGISTER_MODE_WP. */
  writeProtect?: boolean
  /** UFFDIO_REGISTER_MODE_MISSING: needs allowBlockingFaults. */
  missing?: boolean
  /** UFFDIO_REGISTER_MODE_MINOR (shmem/hugetlbfs): needs allowBlockingFaults. */
  minor?: boolean
  /** I serve faults by reading this uffd myself; without it MISSING/MINOR are refused. */
  allowBlockingFaults?: boolean
}

interface Registration {
  /** Register mode bits per page of the Region (0 = not registered by this uffd). */
  modes: PageRuns
  unsubscribe: () => void
}

const leaked = new FinalizationRegistry<number>((fd) => {
  native.closeFd(fd)
})

/**
 * A userfaultfd: write tracking for Regions. Open it with `Userfaultfd.open({ features: ['wpAsync'] })`,
 * `register()` a Region with `writeProtect: true`, `writeProtect()` it, and the kernel records every
 * later write itself (asynchronous write-protection, Linux 6.7+: no fault to handle); `pagemap.scan()`
 * reads which pages were written. Falls back to UFFD_USER_MODE_ONLY where userfaultfd is restricted.
 */
export class Userfaultfd {
  #fd: number
  #features: number
  #offered: number
  #ioctls: bigint
  #method: number
  #registrations = new Map<Region, Registration>()
  #token = {}

  static {
    guardReceivers(Userfaultfd, (value) => #fd in value)
  }

  /** Not callable from outside: use Userfaultfd.open(). */
  private constructor(token: Internal, fd: number, features: number, offered: number, ioctls: bigint, method: number) {
    assertInternal(token, new.target, Userfaultfd, 'Userfaultfd.open()')
    this.#fd = fd
    this.#features = features
    this.#offered = offered
    this.#ioctls = ioctls
    this.#method = method
    leaked.register(this, fd, this.#token)
  }

  /**
   * Opens a userfaultfd with `features`. Every feature is checked against what the kernel
   * offers first (UFFDIO_API with features = 0 on a throwaway fd: the kernel allows one
   * UFFDIO_API per fd), so a missing one is a FeatureUnavailableError naming it. 'wpAsync'
   * also enables 'wpUnpopulated' when offered (the kernel does so itself since 6.8; anonymous
   * memory needs it for PAGEMAP_SCAN's PM_SCAN_WP_MATCHING).
   */
  static open(options?: UserfaultfdOptions): Userfaultfd {
    const opts = readOptions(options, 'options', ['features', 'allowBlockingFaults'])
    const allowBlocking = validateBoolean(opts.allowBlockingFaults ?? false, 'options.allowBlockingFaults')
    const list = opts.features ?? []
    if (!Array.isArray(list)) throw invalidArgType('options.features', 'an array of feature names', list)
    let requested = 0
    for (const [i, item] of list.entries()) {
      if (typeof item === 'number') {
        if (!Number.isInteger(item) || item < 0 || item > 0xffffffff) {
          throw invalidArgValue(`options.features[${i}]`, 'must be a UFFD_FEATURE_* bit mask', item)
        }
        requested |= item
      } else if (typeof item === 'string' && (featureNames as string[]).includes(item)) {
        requested |= uffdFeatures[item as UffdFeature]
      } else if (typeof item === 'string') {
        throw invalidArgValue(`options.features[${i}]`, `must be one of: ${featureNames.map((n) => `'${n}'`).join(', ')}`, item)
      } else {
        throw invalidArgType(`options.features[${i}]`, 'a feature name (string) or bit (number)', item)
      }
    }
    requested >>>= 0
    if (!allowBlocking) {
      const events = blockingEvents.filter((name) => requested & uffdFeatures[name])
      if (events.length > 0) {
        throw invalidArgValue('options.features', `contains ${events.join(', ')}: with nobody reading the uffd these block the process (pass allowBlockingFaults: true if you read it)`, events)
      }
    }
    const info = probe()
    if (!info.available) {
      // Reproduce the real error for the caller.
      const { opened } = openWithApi(0)
      native.closeFd(opened.fd)
    }
    const missing = requested & ~info.offered
    if (missing !== 0) {
      const names = namesOf(missing)
      const unknown = missing & ~namesOf(missing).reduce((m, n) => m | uffdFeatures[n], 0)
      const label = [...names, ...(unknown ? [`0x${unknown.toString(16)}`] : [])].join(', ')
      throw new FeatureUnavailableError(`userfaultfd feature ${label}`, `the kernel offers ${namesOf(info.offered).join(', ') || 'none'}`)
    }
    if (requested & U.UFFD_FEATURE_WP_ASYNC && info.offered & U.UFFD_FEATURE_WP_UNPOPULATED) {
      requested |= U.UFFD_FEATURE_WP_UNPOPULATED
    }
    const { opened, ioctls } = openWithApi(requested)
    return new Userfaultfd(internal, opened.fd, requested, info.offered, ioctls, opened.method)
  }

  /** Granted feature names. */
  get features(): UffdFeature[] {
    return namesOf(this.#features)
  }
  /** Granted feature bits (including bits memdedup has no name for). */
  get featureMask(): number {
    return this.#features
  }
  /** Everything the kernel offers (a superset of features). */
  get offeredFeatures(): UffdFeature[] {
    return namesOf(this.#offered)
  }
  /** The ioctls UFFDIO_API reported, as a bit mask of _UFFDIO_* numbers. */
  get ioctls(): bigint {
    return this.#ioctls
  }
  /** The descriptor (-1 once closed). */
  get fd(): number {
    return this.#fd
  }
  /** True when opened with UFFD_USER_MODE_ONLY (faults from inside the kernel are not reported). */
  get userModeOnly(): boolean {
    return this.#method === U.OPEN_SYSCALL_USER_MODE_ONLY
  }
  /** True once close() ran. */
  get closed(): boolean {
    return this.#fd < 0
  }

  /**
   * UFFDIO_REGISTER the Region (or a page-aligned range of it). Registering pages this uffd
   * already registered is an InvalidStateError ERR_UFFD_ALREADY_REGISTERED (unregister first);
   * pages registered by another uffd give the kernel's EBUSY. Returns the ioctls usable on the
   * range (bit mask of _UFFDIO_* numbers). The Region unregisters itself before it closes or
   * moves.
   */
  register(region: Region, options?: RegisterOptions, range?: Range): bigint {
    const opts = readOptions(options, 'options', ['writeProtect', 'missing', 'minor', 'allowBlockingFaults'])
    const wp = validateBoolean(opts.writeProtect ?? false, 'options.writeProtect')
    const missing = validateBoolean(opts.missing ?? false, 'options.missing')
    const minor = validateBoolean(opts.minor ?? false, 'options.minor')
    const allowBlocking = validateBoolean(opts.allowBlockingFaults ?? false, 'options.allowBlockingFaults')
    const fd = this.#assertOpen('register')
    const span = resolveSpan(region, range, 'userfaultfd.register')
    const mode = (missing ? MODE.missing : 0) | (wp ? MODE.writeProtect : 0) | (minor ? MODE.minor : 0)
    if (mode === 0) throw invalidArgValue('options', 'must enable at least one of writeProtect, missing, minor', options)
    if ((missing || minor) && !allowBlocking) {
      throw invalidArgValue('options', `${missing ? 'missing' : 'minor'} mode blocks any thread touching the memory until the uffd is read; pass allowBlockingFaults: true if you serve faults`, options)
    }
    const first = (span.address - Number(region.address)) / pageSize
    const count = span.length / pageSize
    const existing = this.#registrations.get(region)
    const taken = existing?.modes.findFailing((m) => m === 0, first, first + count) ?? -1
    if (taken >= 0) {
      throw codedError('ERR_UFFD_ALREADY_REGISTERED', taken)
    }
    const out = new BigUint64Array(1)
    check(native.uffdRegister(fd, span.address, span.length, mode, out), 'ioctl(UFFDIO_REGISTER)', () => `${describeMode(mode)} on ${span.length} bytes of a ${region.kind} Region`)
    let registration = existing
    if (registration === undefined) {
      const closing = region.onClose((closed, next) => this.#forget(closed, next))
      const moving = region.onMove((moved) => this.#beforeMove(moved))
      registration = { modes: new PageRuns(region.pages, 0), unsubscribe: () => (closing(), moving()) }
      this.#registrations.set(region, registration)
    }
    registration.modes.fill(mode, first, first + count)
    return out[0]
  }

  /** UFFDIO_UNREGISTER the Region (or a range). Pages not registered here are left alone. */
  unregister(region: Region, range?: Range): void {
    const fd = this.#assertOpen('unregister')
    const span = resolveSpan(region, range, 'userfaultfd.unregister')
    const registration = this.#registrations.get(region)
    if (registration === undefined) return
    const first = (span.address - Number(region.address)) / pageSize
    const count = span.length / pageSize
    // Only the runs we registered: a range of the Region that is not uffd-capable would
    // otherwise make the kernel refuse the whole call.
    for (const [page, end, mode] of registration.modes.runs(first, first + count)) {
      if (mode !== 0) check(native.uffdUnregister(fd, Number(region.address) + page * pageSize, (end - page) * pageSize), 'ioctl(UFFDIO_UNREGISTER)')
    }
    registration.modes.fill(0, first, first + count)
    if (registration.modes.findFailing((m) => m === 0) < 0) {
      registration.unsubscribe()
      this.#registrations.delete(region)
    }
  }

  /**
   * UFFDIO_WRITEPROTECT `range` on (true) or off (false). Every page must be registered with
   * writeProtect by this uffd: otherwise an InvalidStateError ERR_UFFD_NOT_REGISTERED (the
   * kernel would say ENOENT). Without 'wpAsync', writing a protected page blocks: see DANGER.
   */
  writeProtect(region: Region, range: Range | undefined, on: boolean): void {
    const protect = validateBoolean(on, 'on')
    const fd = this.#assertOpen('writeProtect')
    const span = resolveSpan(region, range, 'userfaultfd.writeProtect')
    const first = (span.address - Number(region.address)) / pageSize
    const count = span.length / pageSize
    const modes = this.#registrations.get(region)?.modes
    const page = modes === undefined ? first : modes.findFailing((m) => (m & MODE.writeProtect) !== 0, first, first + count)
    if (page >= 0) {
      throw codedError('ERR_UFFD_NOT_REGISTERED', page)
    }
    const mode = protect ? U.UFFDIO_WRITEPROTECT_MODE_WP : 0
    let rc: number
    // EAGAIN: the mm is changing under us (e.g. a concurrent fork event); the kernel asks to retry.
    for (let attempt = 0; ; attempt++) {
      rc = native.uffdWriteProtect(fd, span.address, span.length, mode)
      if (rc !== -errno.EAGAIN || attempt >= 100) break
    }
    check(rc, 'ioctl(UFFDIO_WRITEPROTECT)', () => `${protect ? 'protect' : 'unprotect'} ${span.length} bytes`)
  }

  /** Registered pages of `region` as [offset, length, modes] runs (for inspection/tests). */
  registrations(region: Region): { offset: number; length: number; writeProtect: boolean; missing: boolean; minor: boolean }[] {
    const modes = this.#registrations.get(region)?.modes
    if (modes === undefined) return []
    const out = []
    for (const [start, end, m] of modes.runs()) {
      if (m !== 0) {
        out.push({ offset: start * pageSize, length: (end - start) * pageSize, writeProtect: (m & MODE.writeProtect) !== 0, missing: (m & MODE.missing) !== 0, minor: (m & MODE.minor) !== 0 })
      }
    }
    return out
  }

  /**
   * Closes the descriptor; the kernel drops every registration with it. Regions stay usable.
   * Idempotent.
   */
  close(): void {
    if (this.#fd < 0) return
    for (const registration of this.#registrations.values()) registration.unsubscribe()
    this.#registrations.clear()
    const fd = this.#fd
    this.#fd = -1
    leaked.unregister(this.#token)
    native.closeFd(fd)
  }

  [Symbol.dispose](): void {
    this.close()
  }

  /**
   * Region hook, run when the Region closes (next undefined: unregister what is still registered,
   * errors ignored, the memory is going) or after remap() (#beforeMove unregistered it already).
   */
  #forget(region: Region, next: Span | undefined): void {
    const registration = this.#registrations.get(region)
    if (registration === undefined) return
    if (this.#fd >= 0 && next === undefined) this.#unregisterRuns(region, registration)
    this.#registrations.delete(region)
  }

  /**
   * Region hook, run right before remap() calls mremap: unregisters the Region first. mremap moves
   * a VMA with copy_vma(), which on some kernels (6.18.44 seen) merges it into a neighbour
   * registered with this same uffd, then drops the uffd context of the merged VMA: the neighbour
   * silently loses its registration (Debian's 6.12.118 refuses that merge in copy_vma()). An
   * unregistered VMA cannot merge into a registered one. Returns what registers it again if it stays (same modes; its pages then read
   * as written until write-protected again); a run that cannot be registered again is dropped.
   */
  #beforeMove(region: Region): () => void {
    const registration = this.#registrations.get(region)
    if (registration === undefined || this.#fd < 0) return () => {}
    const runs = this.#unregisterRuns(region, registration)
    return () => {
      const address = Number(region.address)
      const out = new BigUint64Array(1)
      for (const [page, end, mode] of runs) {
        if (this.#fd < 0 || native.uffdRegister(this.#fd, address + page * pageSize, (end - page) * pageSize, mode, out) < 0) registration.modes.fill(0, page, end)
      }
    }
  }

  /** UFFDIO_UNREGISTER every registered run of the Region in the kernel (errors ignored); returns the runs. */
  #unregisterRuns(region: Region, registration: Registration): [number, number, number][] {
    const address = Number(region.address)
    const runs = [...registration.modes.runs(0, registration.modes.pages)].filter(([, , mode]) => mode !== 0)
    for (const [page, end] of runs) native.uffdUnregister(this.#fd, address + page * pageSize, (end - page) * pageSize)
    return runs
  }

  #assertOpen(operation: string): number {
    if (this.#fd < 0) throw codedError('ERR_UFFD_CLOSED', operation)
    return this.#fd
  }
}

function describeMode(mode: number): string {
  return Object.entries(MODE).filter(([, bit]) => mode & bit).map(([name]) => name).join('+')
}
