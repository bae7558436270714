// Loads the addon (build/Release, else the prebuilt one in prebuilds/) and types the raw binding.
// Nothing else lives here: validation, defaults and error messages belong to the modules that call it.
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import path from 'node:path'
import { SyscallError } from './errors.ts'

/** Raw result convention: >= 0 success, negative value = -errno. Decoded by errors.ts check(). */
export type Rc = number

/**
 * The decoder of the other native return shape, a handle or -errno (twinIndexCreate, twinIndexOpen):
 * the handle, or the SyscallError of the errno `syscall` returned (twinIndexCreate says which). Native code returns no sentinel
 * beside these: a refusal that is no errno has a shape of its own (twinIndexOpen's string).
 */
export function checkHandle<H extends object>(result: H | Rc, syscall: string, context?: string): H {
  if (typeof result === 'number') throw new SyscallError(syscall, result, context)
  return result
}

// The constants the native side exports, by name. These lists are the one place lib/ spells a
// native constant: the types below come from them (a typo does not compile) and load() checks
// that the addon exports every one (a stale build fails at load, not with NaN flags later).
const mmConstantNames = [
  'pageSize', 'PROT_NONE', 'PROT_READ', 'PROT_WRITE', 'PROT_EXEC', 'MAP_SHARED', 'MAP_PRIVATE', 'MAP_ANONYMOUS',
  'MAP_NORESERVE', 'MAP_POPULATE', 'MAP_HUGETLB', 'MAP_FIXED', 'MAP_FIXED_NOREPLACE', 'MREMAP_MAYMOVE', 'MREMAP_FIXED',
  'MREMAP_DONTUNMAP', 'MFD_CLOEXEC', 'MFD_ALLOW_SEALING', 'MFD_HUGETLB', 'F_SEAL_SHRINK', 'F_SEAL_GROW', 'O_PATH', 'O_NONBLOCK',
  'MADV_NORMAL', 'MADV_RANDOM', 'MADV_SEQUENTIAL', 'MADV_WILLNEED', 'MADV_DONTNEED', 'MADV_FREE', 'MADV_REMOVE',
  'MADV_DONTFORK', 'MADV_DOFORK', 'MADV_MERGEABLE', 'MADV_UNMERGEABLE', 'MADV_HUGEPAGE', 'MADV_NOHUGEPAGE',
  'MADV_DONTDUMP', 'MADV_DODUMP', 'MADV_WIPEONFORK', 'MADV_KEEPONFORK', 'MADV_COLD', 'MADV_PAGEOUT',
  'MADV_POPULATE_READ', 'MADV_POPULATE_WRITE', 'MADV_COLLAPSE', 'MADV_MERGE',
] as const
const pagemapConstantNames = [
  'PAGE_IS_WPALLOWED', 'PAGE_IS_WRITTEN', 'PAGE_IS_FILE', 'PAGE_IS_PRESENT', 'PAGE_IS_SWAPPED', 'PAGE_IS_PFNZERO',
  'PAGE_IS_HUGE', 'PAGE_IS_SOFT_DIRTY', 'PAGE_IS_GUARD', 'PM_SCAN_WP_MATCHING', 'PM_SCAN_CHECK_WPASYNC', 'ENTRY_PRESENT', 'ENTRY_SWAPPED', 'ENTRY_FILE', 'ENTRY_EXCLUSIVE', 'ENTRY_SOFT_DIRTY', 'ENTRY_UFFD_WP',
] as const
const uffdConstantNames = [
  'OPEN_SYSCALL', 'OPEN_SYSCALL_USER_MODE_ONLY', 'OPEN_DEVICE', 'UFFD_FEATURE_PAGEFAULT_FLAG_WP', 'UFFD_FEATURE_EVENT_FORK',
  'UFFD_FEATURE_EVENT_REMAP', 'UFFD_FEATURE_EVENT_REMOVE', 'UFFD_FEATURE_MISSING_HUGETLBFS', 'UFFD_FEATURE_MISSING_SHMEM',
  'UFFD_FEATURE_EVENT_UNMAP', 'UFFD_FEATURE_SIGBUS', 'UFFD_FEATURE_THREAD_ID', 'UFFD_FEATURE_MINOR_HUGETLBFS',
  'UFFD_FEATURE_MINOR_SHMEM', 'UFFD_FEATURE_EXACT_ADDRESS', 'UFFD_FEATURE_WP_HUGETLBFS_SHMEM', 'UFFD_FEATURE_WP_UNPOPULATED',
  'UFFD_FEATURE_POISON', 'UFFD_FEATURE_WP_ASYNC', 'UFFD_FEATURE_MOVE', 'UFFDIO_REGISTER_MODE_MISSING',
  'UFFDIO_REGISTER_MODE_WP', 'UFFDIO_REGISTER_MODE_MINOR', 'UFFDIO_WRITEPROTECT_MODE_WP', 'UFFDIO_WRITEPROTECT_MODE_DONTWAKE',
  '_UFFDIO_REGISTER', '_UFFDIO_UNREGISTER', '_UFFDIO_WAKE', '_UFFDIO_COPY', '_UFFDIO_ZEROPAGE', '_UFFDIO_WRITEPROTECT',
  '_UFFDIO_CONTINUE', '_UFFDIO_API',
] as const
const mshareConstantNames = ['MSHAREFS_CREATE_MAPPING', 'MSHAREFS_UNMAP', 'MAP_SHARED_VALIDATE', 'MAP_HUGE_SHIFT'] as const
const remoteConstantNames = ['MAX_RANGES'] as const
const numaConstantNames = ['maxNodes', 'MPOL_DEFAULT', 'MPOL_BIND', 'MPOL_MF_STRICT', 'MPOL_MF_MOVE'] as const
export type MmConstants = Readonly<Record<(typeof mmConstantNames)[number], number>>
export type PagemapConstants = Readonly<Record<(typeof pagemapConstantNames)[number], number>>
export type UffdConstants = Readonly<Record<(typeof uffdConstantNames)[number], number>>
export type MshareConstants = Readonly<Record<(typeof mshareConstantNames)[number], number>>
export type RemoteConstants = Readonly<Record<(typeof remoteConstantNames)[number], number>>
export type NumaConstants = Readonly<Record<(typeof numaConstantNames)[number], number>>

// The layouts of the typed arrays native code reads and writes by slot, each slot by name. The
// addon exports each as { slot: index, …, length } (native/addon.h ExportLayout); load() checks
// that it names exactly these slots, each at its own index, covering 0 … length - 1 (checkContract):
// a slot inserted, removed or renamed on either side fails the load instead of shifting reads.
const layoutSlots = {
  /** pm_scan_arg's fields in struct order, then `covered` (bytes in the returned regions). */
  pagemapScanArg: ['size', 'flags', 'start', 'end', 'walkEnd', 'vec', 'vecLen', 'maxPages', 'categoryInverted', 'categoryMask', 'categoryAnyofMask', 'returnMask', 'covered'],
  /** dedupScan / dedupMerge's config (native/dedup.cc ConfigField). */
  dedupConfig: ['mode', 'stablePasses', 'backoffPasses', 'budgetNs', 'runAllowance'],
  /** A region's pass report (native/dedup.cc ReportField). */
  dedupReport: [
    'written', 'candidates', 'hashed', 'duplicates', 'merged', 'cow', 'mergedTotal', 'unmarked', 'deferred', 'indexFull', 'wpLost',
    'cpuNs', 'failedStage', 'scanNs', 'hashNs', 'mergeNs', 'mergeDeferred', 'coarsened', 'markedRuns', 'marked', 'markedTotal',
  ],
} as const
// Named values lib/ reads (native/addon.h ExportTable): exactly these names, distinct integers.
const tableNames = {
  /** What failed when twinIndexCreate returned -errno (its failedStage[0]); never 0. */
  twinIndexCreateStage: ['memfdCreate', 'ftruncate', 'addSeals', 'mmap'],
  /** What failed when dedupScan / dedupMerge returned -errno (report.failedStage); never 0. */
  dedupFailedStage: ['pagemapScan', 'madviseMerge', 'madviseMergeable', 'madviseUnmergeable', 'pagemapRead'],
  /** config.mode values. */
  dedupMode: ['none', 'sksm', 'ksm'],
  /** Bits of the per-page state lib/ reads. */
  dedupStateBit: ['marked'],
} as const
type LayoutName = keyof typeof layoutSlots
type TableName = keyof typeof tableNames
/** Slot index by name, and `length`: the typed array's length. */
export type Layout<L extends LayoutName> = Readonly<Record<(typeof layoutSlots)[L][number] | 'length', number>>
export type Table<T extends TableName> = Readonly<Record<(typeof tableNames)[T][number], number>>
export type Layouts = { readonly [L in LayoutName]: Layout<L> }
export type Tables = { readonly [T in TableName]: Table<T> }

// Every native function re-checks its arguments (type, range, and for typed arrays the element
// type and length of the exact object): a failed check throws TypeError ERR_INVALID_ARG_TYPE or
// RangeError ERR_OUT_OF_RANGE before any syscall. Addresses and lengths are integer Numbers.
export interface MmBinding {
  mmap(hint: number, length: number, prot: number, flags: number, fd: number, offset: number): Rc
  munmap(address: number, length: number): Rc
  mprotect(address: number, length: number, prot: number): Rc
  madvise(address: number, length: number, advice: number): Rc
  mremap(oldAddress: number, oldLength: number, newLength: number, flags: number, newAddress: number): Rc
  /** mmap with MAP_FIXED (added natively) at a range re-checked to lie inside [within, within + withinLength). */
  mmapFixed(within: number, withinLength: number, address: number, length: number, prot: number, flags: number, fd: number, offset: number): Rc
  /** mremap with MREMAP_MAYMOVE | MREMAP_FIXED (added natively) into a range re-checked to lie inside [within, within + withinLength). */
  mremapFixed(oldAddress: number, oldLength: number, newLength: number, flags: number, newAddress: number, within: number, withinLength: number): Rc
  wrap(address: number, length: number): ArrayBuffer
  detach(buffer: ArrayBuffer): void
  /** Copies through the kernel (/proc/self/mem, which never unshares a KSM page): an unreadable page is -EFAULT, never a signal. */
  readMemory(address: number, length: number, into: Uint8Array): Rc
  memfdCreate(name: string, flags: number): Rc
  ftruncate(fd: number, length: number): Rc
  /** fcntl(F_ADD_SEALS). */
  addSeals(fd: number, seals: number): Rc
  closeFd(fd: number): Rc
  constants: MmConstants
}

export interface PrctlBinding {
  prctlGetMemoryMerge(): Rc
  prctlSetMemoryMerge(value: number): Rc
  prctlSetVmaAnonName(address: number, length: number, name: string): Rc
}

export interface PagemapBinding {
  pagemapEntries(fd: number, address: number, pages: number, pfns: BigUint64Array, flags: Uint8Array): Rc
  /**
   * PAGEMAP_SCAN on `fd` (/proc/self/pagemap) → number of regions | -errno. `arg` holds the 12
   * pm_scan_arg fields in struct order (size and vec are set natively) plus one output slot:
   * afterwards arg[4] = walk_end and arg[12] = bytes in the returned regions. Regions are split
   * into starts/ends/categories (each re-checked natively for room for vec_len); with all three
   * null the kernel gets vec = 0.
   */
  pagemapScan(fd: number, arg: BigUint64Array, starts: BigUint64Array | null, ends: BigUint64Array | null, categories: Uint32Array | null): Rc
  /** PAGEMAP_SCAN with an invalid vec on purpose: -EFAULT means the ioctl exists. */
  pagemapScanProbe(fd: number, address: number): Rc
  pagemapConstants: PagemapConstants
}

export interface UserfaultfdBinding {
  /** method: uffdConstants.OPEN_SYSCALL | OPEN_SYSCALL_USER_MODE_ONLY | OPEN_DEVICE → fd | -errno */
  uffdOpen(method: number): Rc
  /** UFFDIO_API (once per fd) → 0 | -errno; out[0] = offered features, out[1] = ioctls. */
  uffdApi(fd: number, features: number, out: BigUint64Array): Rc
  /** UFFDIO_REGISTER → 0 | -errno; out[0] = ioctls usable on the range. */
  uffdRegister(fd: number, address: number, length: number, mode: number, out: BigUint64Array): Rc
  uffdUnregister(fd: number, address: number, length: number): Rc
  /** UFFDIO_WRITEPROTECT; mode UFFDIO_WRITEPROTECT_MODE_WP protects, 0 unprotects. */
  uffdWriteProtect(fd: number, address: number, length: number, mode: number): Rc
  uffdConstants: UffdConstants
}

export interface TwinIndexBinding {
  /** Hashes the pages at address + index * pageSize into out. throughKernel (1) copies each page
   *  through the kernel first, for file-backed memory (-EFAULT instead of SIGBUS past the file's end). */
  hashPages(address: number, pageIndexes: Uint32Array, count: number, out: BigUint64Array, throughKernel: 0 | 1): Rc
  /** A sealed shared memfd twin index of `slots` (power of two) words → handle | -errno, the call
   *  that failed in failedStage[0] (twinIndexCreateStage). */
  twinIndexCreate(slots: number, failedStage: Uint32Array): TwinIndexHandle | Rc
  /** Maps the twin index behind fd (ownership passes on success) → handle | -errno | why the file is
   *  refused (a string: not a sealed memfd, not a twin index). */
  twinIndexOpen(fd: number): TwinIndexHandle | Rc | string
  /** Unmaps and closes now → 0 (idempotent). Every other function refuses a closed handle with a
   *  TypeError: lib/ checks TwinIndex.closed right before each call. */
  twinIndexClose(index: TwinIndexHandle): Rc
  /** out = [fd, slots] or, with room for a third, [fd, slots, used slots] (counting reads the index's data pages). */
  twinIndexInfo(index: TwinIndexHandle, out: Float64Array): Rc
  /** delta 1 / -1 / 0: one holder more / fewer / look; holders[i] after each update → the hashes
   *  updated: count, or fewer when the next one's probe window is full. */
  twinIndexUpdate(index: TwinIndexHandle, hashes: BigUint64Array, count: number, delta: -1 | 0 | 1, holders: Uint32Array): Rc
  /** Takes the index's merge turn for leaseMs: its word (0n: another live thread has it). */
  twinIndexTakeTurn(index: TwinIndexHandle, leaseMs: number): bigint
  /** Gives back the turn `word` took (no-op if it expired and is someone else's) → 0. */
  twinIndexGiveTurn(index: TwinIndexHandle, word: bigint): Rc
}
/** An opaque native twin index (a type-tagged External; its finalizer unmaps and closes). */
export type TwinIndexHandle = { readonly __brand: 'TwinIndexHandle' }

export interface MshareBinding {
  /** MSHAREFS_CREATE_MAPPING on an msharefs file; mapFd -1 for MAP_ANONYMOUS. */
  mshareCreateMapping(fd: number, regionOffset: number, size: number, fileOffset: number, prot: number, flags: number, mapFd: number): Rc
  /** MSHAREFS_UNMAP on an msharefs file. */
  mshareUnmap(fd: number, regionOffset: number, size: number): Rc
  /** mount("msharefs", target, "msharefs", 0, NULL). */
  mountMsharefs(target: string): Rc
  mshareConstants: MshareConstants
}

export interface NumaBinding {
  /**
   * mbind(address, length, mode, nodemask, maxnode, flags) → 0 | -errno. The nodemask is built
   * natively from nodes[0 … count - 1] (each re-checked < numaConstants.maxNodes); count 0 passes
   * no mask (MPOL_DEFAULT).
   */
  mbind(address: number, length: number, mode: number, nodes: Uint32Array, count: number, flags: number): Rc
  /** move_pages(0, pages, [address + i * pageSize …], NULL, status, 0), chunked natively → 0 | -errno;
   *  status[i] = the node of page i or its -errno (-ENOENT: not present). */
  movePagesStatus(address: number, pages: number, status: Int32Array): Rc
  numaConstants: NumaConstants
}

export interface DedupBinding {
  /** A deduplicator pass over one region, steps 1-2 (writes, candidates, hashing); config and report
   *  laid out as dedupConfig and dedupReport say. -errno: report[dedupReport.failedStage] says what failed. */
  dedupScan(pagemapFd: number, index: TwinIndexHandle, address: number, pages: number, state: Uint32Array, hashes: BigUint64Array, config: Float64Array, report: Float64Array): Rc
  /** Step 3 (twins, merge runs), after every region's dedupScan. */
  dedupMerge(index: TwinIndexHandle, address: number, pages: number, state: Uint32Array, hashes: BigUint64Array, config: Float64Array, report: Float64Array): Rc
  /** Releases every hash the region's state holds in the index and clears the state. */
  dedupRelease(index: TwinIndexHandle, pages: number, state: Uint32Array, hashes: BigUint64Array): Rc
  /** CLOCK_THREAD_CPUTIME_ID in ns. */
  threadCpuNs(): number
}

export interface RemoteBinding {
  /** pidfd_open(pid, 0) → pidfd | -errno. */
  remotePidfdOpen(pid: number): Rc
  /** open("/proc/<pid>", O_PATH | O_DIRECTORY) → fd | -errno. */
  remoteOpenProcDir(pid: number): Rc
  /** openat(dirfd, name, O_RDONLY or, write 1, O_WRONLY); `name` is one file name (no '/'), re-checked natively. */
  remoteOpenAt(dirfd: number, name: string, write: 0 | 1): Rc
  /** poll(pidfd, POLLIN) without waiting → 1 exited | 0 running | -errno. */
  remotePidfdExited(pidfd: number): Rc
  /** pread of /proc/<pid>/mem at `address` into all of `into` → bytes read (short at the first unreadable byte) | -errno. */
  remoteRead(memFd: number, address: number, into: Uint8Array): Rc
  /** XXH64 of `count` pages from `address` read through /proc/<pid>/mem into out → count | -errno. */
  remoteHashPages(memFd: number, address: number, count: number, out: BigUint64Array): Rc
  /** process_madvise(pidfd, iov, count, advice, 0), iov from `count` (start, length) pairs of `ranges` → bytes advised | -errno.
   *  Only advice that keeps what memory reads (cold, pageout, willneed, collapse, merge, unmergeable); anything else is a TypeError. */
  remoteMadvise(pidfd: number, ranges: BigUint64Array, count: number, advice: number): Rc
  remoteConstants: RemoteConstants
}

export type Binding = MmBinding & PrctlBinding & PagemapBinding & UserfaultfdBinding & TwinIndexBinding & DedupBinding & MshareBinding & RemoteBinding & NumaBinding & Layouts & Tables

const isIndex = (value: unknown, below: number) => typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < below

/**
 * @internal What of the contract with native code `exports` breaks (empty: none): every constant
 * by name; every layout names exactly its slots, each at a distinct index, together 0 … length - 1;
 * every table names exactly its values, distinct integers. load() throws on any problem; exported
 * for the test that a shifted or missing slot fails it.
 */
export function contractProblems(exports: unknown): string[] {
  const problems: string[] = []
  const binding = (typeof exports === 'object' && exports !== null ? exports : {}) as Record<string, unknown>
  const group = (name: string) => {
    const value = binding[name]
    if (typeof value === 'object' && value !== null) return value as Record<string, unknown>
    problems.push(`${name} (not exported)`)
    return undefined
  }
  const constantGroups = [['constants', mmConstantNames], ['pagemapConstants', pagemapConstantNames], ['uffdConstants', uffdConstantNames], ['mshareConstants', mshareConstantNames], ['remoteConstants', remoteConstantNames], ['numaConstants', numaConstantNames]] as const
  for (const [name, names] of constantGroups) {
    const values = group(name)
    if (values) for (const constant of names) if (typeof values[constant] !== 'number') problems.push(`${name}.${constant} (missing)`)
  }
  const namesOf = (values: Record<string, unknown>, expected: readonly string[], name: string, extra: string[] = []) => {
    for (const key of expected) if (!(key in values)) problems.push(`${name}.${key} (missing)`)
    for (const key of Object.keys(values)) if (!expected.includes(key) && !extra.includes(key)) problems.push(`${name}.${key} (unknown to lib/)`)
  }
  for (const [name, slots] of Object.entries(layoutSlots) as [LayoutName, readonly string[]][]) {
    const layout = group(name)
    if (!layout) continue
    namesOf(layout, slots, name, ['length'])
    const length = layout.length
    if (length !== slots.length) problems.push(`${name}.length (${String(length)}, lib/ knows ${slots.length} slots)`)
    const taken = new Map<unknown, string>()
    for (const slot of slots) {
      if (!(slot in layout)) continue
      const index = layout[slot]
      if (!isIndex(index, slots.length)) problems.push(`${name}.${slot} (slot ${String(index)}, not in 0 … ${slots.length - 1})`)
      else if (taken.has(index)) problems.push(`${name}.${slot} (slot ${index}, also ${name}.${taken.get(index)})`)
      taken.set(index, slot)
    }
  }
  for (const [name, names] of Object.entries(tableNames) as [TableName, readonly string[]][]) {
    const table = group(name)
    if (!table) continue
    namesOf(table, names, name)
    const taken = new Map<unknown, string>()
    for (const key of names) {
      if (!(key in table)) continue
      const value = table[key]
      if (typeof value !== 'number' || !Number.isSafeInteger(value)) problems.push(`${name}.${key} (${String(value)}, not an integer)`)
      else if (taken.has(value)) problems.push(`${name}.${key} (${value}, also ${name}.${taken.get(value)})`)
      taken.set(value, key)
    }
  }
  return problems
}

/** Throws unless `exports` keeps the contract (contractProblems): a stale or mismatched addon fails at load. */
export function checkContract(exports: unknown): void {
  const problems = contractProblems(exports)
  if (problems.length > 0) {
    throw new Error(`memdedup native addon does not match lib/ (a stale build? rebuild it: ${buildFromSource}): ${problems.join(', ')}`)
  }
}

/** @internal What the addon is loaded on: process.platform, process.arch and, on Linux, the C library. */
export interface Host {
  platform: string
  arch: string
  libc?: 'glibc' | 'musl'
}

/** How to build the addon from source, where the prebuilt one does not fit or does not load. */
const buildFromSource =
  '`npm explore memdedup -- npm run build:addon` where memdedup is installed, `npm run build` in a checkout (both need python3, make and a C++20 g++)'

/**
 * @internal The prebuilt addon that fits `host` (a path relative to the package root), or the one
 * error to throw when none does and no addon was built from source either. Pure: the test gives it
 * other hosts.
 */
export function prebuiltAddonFor(host: Host): { file: string } | { error: string } {
  const name = `${host.platform}-${host.arch}${host.libc ? ` (${host.libc})` : ''}`
  if (host.platform !== 'linux') {
    return { error: `memdedup runs on Linux only (it binds Linux syscalls: madvise, KSM, userfaultfd, PAGEMAP_SCAN); this is ${name}` }
  }
  // The one prebuilt addon the package ships (scripts/prebuild.mjs writes it).
  if (host.arch === 'x64' && host.libc === 'glibc') return { file: path.join('prebuilds', 'linux-x64', 'memdedup.glibc.node') }
  return {
    error: `memdedup ships a prebuilt addon for linux-x64 (glibc) only; this is ${name}. To use it here, build the addon from source: ${buildFromSource} (npm installs memdedup here only with --force: package.json's cpu and libc say linux-x64 glibc)`,
  }
}

// process.report's header names the glibc Node runs on; musl has no such field.
const libcFamily = (): 'glibc' | 'musl' => {
  const { header } = process.report.getReport() as { header: { glibcVersionRuntime?: string } }
  return header.glibcVersionRuntime ? 'glibc' : 'musl'
}

function load(): Binding {
  if (process.platform !== 'linux') {
    const unsupported = prebuiltAddonFor({ platform: process.platform, arch: process.arch })
    if ('error' in unsupported) throw new Error(unsupported.error)
  }
  const require = createRequire(import.meta.url)
  const here = path.dirname(fileURLToPath(import.meta.url))
  // lib/ when run from source, dist/lib/ when compiled.
  const roots = [path.resolve(here, '..'), path.resolve(here, '..', '..')]
  const tried: string[] = []
  const loaded = (file: string): Binding | undefined => {
    tried.push(file)
    try {
      const binding = require(file) as Binding
      checkContract(binding)
      return binding
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw error
      return undefined
    }
  }
  // An addon built here (a checkout, or built from source where installed) before the prebuilt one.
  for (const root of roots) {
    for (const flavour of ['Release', 'Debug']) {
      const binding = loaded(path.join(root, 'build', flavour, 'memdedup.node'))
      if (binding) return binding
    }
  }
  const prebuilt = prebuiltAddonFor({ platform: process.platform, arch: process.arch, libc: libcFamily() })
  if ('error' in prebuilt) throw new Error(`${prebuilt.error}; tried:\n  ${tried.join('\n  ')}`)
  for (const root of roots) {
    const file = path.join(root, prebuilt.file)
    try {
      const binding = loaded(file)
      if (binding) return binding
    } catch (error) {
      // An older glibc than the one it was built against, most likely (dlopen names the symbol version).
      throw new Error(`memdedup's prebuilt addon ${file} does not load here (${(error as Error).message.trim()}); build the addon from source: ${buildFromSource}`, { cause: error })
    }
  }
  throw new Error(`memdedup native addon not found; build it from source: ${buildFromSource}; tried:\n  ${tried.join('\n  ')}`)
}

// A spread copy: the addon's exports object is in V8 dictionary mode, a plain object literal is
// fast (every call site reads a property of it).
export const native: Binding = { ...load() }
export const constants = native.constants
/** The base page size of this machine in bytes (4096 on x86_64): lengths and ranges are multiples of it. */
export const pageSize: number = native.constants.pageSize
