// Region: a mapping memdedup created and owns. Every other module acts only on memory a live
// Region owns (resolveSpan), which is what keeps bad arguments from crashing the process.
import { constants as bufferConstants } from 'node:buffer'
import fs from 'node:fs'
import { native, constants as C, pageSize } from './native.ts'
import { check, codedError, errno, fsCall, SyscallError } from './errors.ts'
import { PageRuns } from './runs.ts'
import {
  invalidArgType,
  outOfRange,
  readOptions,
  readRange,
  validateBoolean,
  validateInteger,
  validateOneOf,
  validatePageLength,
  validatePageOffset,
} from './validate.ts'

export type Protection = 'none' | 'r' | 'rw' | 'rx' | 'rwx'
export type RegionKind = 'anonymous' | 'file' | 'memfd'
/** A page-aligned sub-range of a Region, relative to its start. */
export interface Range {
  offset: number
  length: number
}

/** Largest `bytes` view: Node's typed array limit. */
const maxViewLength = Math.floor(bufferConstants.MAX_LENGTH / pageSize) * pageSize
const protections: readonly Protection[] = ['none', 'r', 'rw', 'rx', 'rwx']
const protBits: Record<Protection, number> = {
  none: C.PROT_NONE,
  r: C.PROT_READ,
  rw: C.PROT_READ | C.PROT_WRITE,
  rx: C.PROT_READ | C.PROT_EXEC,
  rwx: C.PROT_READ | C.PROT_WRITE | C.PROT_EXEC,
}

/** madvise(2) advice a Region may take. Merging advice lives in ksm.ts and sksm.ts. */
export const adviceValues = {
  normal: C.MADV_NORMAL,
  random: C.MADV_RANDOM,
  sequential: C.MADV_SEQUENTIAL,
  willneed: C.MADV_WILLNEED,
  dontneed: C.MADV_DONTNEED,
  free: C.MADV_FREE,
  remove: C.MADV_REMOVE,
  dontfork: C.MADV_DONTFORK,
  dofork: C.MADV_DOFORK,
  hugepage: C.MADV_HUGEPAGE,
  nohugepage: C.MADV_NOHUGEPAGE,
  dontdump: C.MADV_DONTDUMP,
  dodump: C.MADV_DODUMP,
  wipeonfork: C.MADV_WIPEONFORK,
  keeponfork: C.MADV_KEEPONFORK,
  cold: C.MADV_COLD,
  pageout: C.MADV_PAGEOUT,
  populateRead: C.MADV_POPULATE_READ,
  populateWrite: C.MADV_POPULATE_WRITE,
  collapse: C.MADV_COLLAPSE,
} as const
export type Advice = keyof typeof adviceValues
const adviceNames = Object.keys(adviceValues) as Advice[]
// Precomputed so the hot path does no string work: 'populateWrite' → 'madvise(MADV_POPULATE_WRITE)'.
const adviceSyscalls = Object.fromEntries(
  adviceNames.map((a) => [a, `madvise(MADV_${a.replace(/[A-Z]/g, (c) => '_' + c).toUpperCase()})`]),
) as Record<Advice, string>

/** Address + length in bytes of a validated span of a live Region (internal). */
export interface Span {
  address: number
  length: number
}

/**
 * Called with the Region when it closes or moves, before its views are detached and it is
 * marked closed (internal). `next` is where the memory is now after remap()
 * (undefined on close): with next.address === region.address it grew or shrank in place.
 */
export type CloseHook = (region: Region, next?: Span) => void

/** Longest Region: the x86_64 user address space (47 bits). */
export const maxRegionLength = 2 ** 47
// Module-private: only the factories below can construct a Region (`private` is TypeScript-only).
const internal = Symbol('Region.internal')

// ---------------------------------------------------------------------------------------------
// Late native users of a view. Detaching an ArrayBuffer does not stop native code that took its
// pointer earlier (zlib.deflate, crypto.randomFill, fs.write run in the thread pool). So when a
// Region's memory goes away while one of its views may still be reachable, the range is not
// unmapped: mmap(MAP_FIXED) atomically replaces it with private, zero-filled, MAP_NORESERVE
// anonymous memory (no RSS until touched), where late reads see zeros and late writes land
// harmlessly. The range is unmapped once every such view has been garbage-collected (Node keeps
// a buffer reachable while its thread-pool work runs, as it must for its own Buffers).

/**
 * The views of one piece of memory, shared by a Region and its in-place remap() successors.
 * `pending` are ranges that went away while views were live: reserved, unmapped at zero views.
 * Counted through a FinalizationRegistry, not WeakRefs: a WeakRef keeps its target alive until
 * the current job ends, which would hold every reservation of a synchronous loop.
 */
interface Views {
  live: number
  pending: Span[]
}
let pendingBytes = 0
const viewCollected = new FinalizationRegistry<Views>((views) => {
  if (--views.live > 0) return
  for (const range of views.pending) {
    native.munmap(range.address, range.length)
    pendingBytes -= range.length
  }
  views.pending = []
})

/**
 * The memory of [address, address + length) goes away: unmapped at once without live views;
 * otherwise atomically replaced (mmap MAP_FIXED) by the reservation, unmapped at zero views.
 */
function vacate(address: number, length: number, views: Views): void {
  if (views.live === 0) {
    native.munmap(address, length)
    return
  }
  const flags = C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_NORESERVE | C.MAP_FIXED
  // Failing (ENOMEM) leaves the old mapping in place: it serves as the reservation.
  native.mmap(address, length, C.PROT_READ | C.PROT_WRITE, flags, -1, 0)
  views.pending.push({ address, length })
  pendingBytes += length
}

/** Bytes of address space held for views not yet garbage-collected (tests, bench). */
export function reservedBytes(): number {
  return pendingBytes
}

interface Mapping {
  address: number
  length: number
  fd: number
  views: Views
}

let warnedUnclosed = false
const finalizer = new FinalizationRegistry<Mapping>((mapping) => {
  vacate(mapping.address, mapping.length, mapping.views)
  if (mapping.fd >= 0) native.closeFd(mapping.fd)
  if (!warnedUnclosed) {
    warnedUnclosed = true
    process.emitWarning(
      'A memdedup Region was garbage-collected without close(); the finalizer unmapped it. ' +
        'Call region.close() or declare it with `using`.',
      { code: 'MEMDEDUP_UNCLOSED_REGION' },
    )
  }
})
// Each ArrayBuffer handed out keeps its Region alive (WeakMap values live as long as their key),
// so the finalizer can never unmap memory a reachable view still points at.
const viewOwners = new WeakMap<ArrayBuffer, Region>()

function protectionOf(bits: number): Protection {
  return (Object.keys(protBits) as Protection[]).find((p) => protBits[p] === bits) ?? 'none'
}

function validateRegionLength(value: unknown, name: string): number {
  const length = validatePageLength(value, name)
  if (length > maxRegionLength) throw outOfRange(name, `<= ${maxRegionLength} (the 47-bit user address space)`, value)
  return length
}

function mapOrThrow(length: number, prot: number, flags: number, fd: number, offset: number, what: string): number {
  return check(native.mmap(0, length, prot, flags, fd, offset), 'mmap', what)
}

interface RegionInit {
  address: number
  length: number
  kind: RegionKind
  prot: PageRuns
  fd?: number
  path?: string
  /** file: the longest the mapping may grow (to the file's last page); memfd: the memfd's size. */
  limit?: number
  views?: Views
}

export class Region {
  #address: number
  #length: number
  #kind: RegionKind
  #fd: number
  #path: string | undefined
  #limit: number
  /** PROT_* bits per page: views are only handed out while every page is read+write. */
  #prot: PageRuns
  #buffer: ArrayBuffer | null = null
  #bytes: Uint8Array | null = null
  /** The ArrayBuffers handed out over this memory and not yet collected: see vacate(). */
  #views: Views
  #closed = false
  #hooks = new Set<CloseHook>()
  #token = {}

  /** Not callable from outside: use Region.anonymous(), Region.file() or Region.memfd(). */
  private constructor(token: symbol, init: RegionInit) {
    if (token !== internal) {
      throw codedError('ERR_ILLEGAL_CONSTRUCTOR', 'Illegal constructor: use Region.anonymous(), Region.file() or Region.memfd()')
    }
    this.#address = init.address
    this.#length = init.length
    this.#kind = init.kind
    this.#fd = init.fd ?? -1
    this.#path = init.path
    this.#limit = init.limit ?? Infinity
    this.#prot = init.prot
    this.#views = init.views ?? { live: 0, pending: [] }
    finalizer.register(this, { address: init.address, length: init.length, fd: this.#fd, views: this.#views }, this.#token)
  }

  /** @internal Whether `value` is a real Region (not an object made from Region.prototype). */
  static isRegion(value: unknown): value is Region {
    return typeof value === 'object' && value !== null && #address in value
  }

  /** A private anonymous mapping (MAP_PRIVATE | MAP_ANONYMOUS), zero-filled. */
  static anonymous(length: number, options?: { prot?: Protection }): Region {
    const size = validateRegionLength(length, 'length')
    const opts = readOptions(options, 'options', ['prot'])
    const prot = protBits[validateOneOf(opts.prot ?? 'rw', 'options.prot', protections)]
    const address = mapOrThrow(size, prot, C.MAP_PRIVATE | C.MAP_ANONYMOUS, -1, 0, `anonymous ${size} bytes`)
    // "[anon:memdedup]" in /proc/pid/maps tells our mappings from V8's; best effort
    // (kernels without CONFIG_ANON_VMA_NAME say EINVAL, which changes nothing else).
    native.prctlSetVmaAnonName(address, size, 'memdedup')
    return new Region(internal, { address, length: size, kind: 'anonymous', prot: new PageRuns(size / pageSize, prot) })
  }

  /**
   * A private (copy-on-write) mapping of a regular file, like the text of a shared library. The
   * length defaults to the rest of the file; it may not reach past the file's last page (that
   * would SIGBUS on access). Anything but a regular file (a FIFO, a device, a directory) is
   * refused with ENODEV without opening it for reading, so nothing blocks.
   */
  static file(path: string, options?: { offset?: number; length?: number; prot?: Protection }): Region {
    if (typeof path !== 'string' || path.length === 0) throw invalidArgType('path', 'a non-empty string', path)
    if (path.includes('\0')) throw invalidArgType('path', 'a string without null bytes', path)
    const opts = readOptions(options, 'options', ['offset', 'length', 'prot'])
    const offset = validatePageOffset(opts.offset ?? 0, 'options.offset')
    const wanted = opts.length === undefined ? undefined : validateRegionLength(opts.length, 'options.length')
    const prot = protBits[validateOneOf(opts.prot ?? 'r', 'options.prot', protections)]
    const fd = openRegularFile(path)
    try {
      const size = fsCall('fstat', path, () => fs.fstatSync(fd).size)
      if (size === 0) throw outOfRange('path', 'a file of at least one byte (an empty file has nothing to map)', path)
      const mappable = Math.ceil(size / pageSize) * pageSize
      if (offset >= mappable) throw outOfRange('options.offset', `< ${mappable} (the file's mappable size)`, offset)
      const length = wanted ?? mappable - offset
      if (offset + length > mappable) {
        throw outOfRange('options.length', `<= ${mappable - offset} (pages past the end of the file would SIGBUS)`, length)
      }
      const address = mapOrThrow(length, prot, C.MAP_PRIVATE, fd, offset, path)
      return new Region(internal, { address, length, kind: 'file', prot: new PageRuns(length / pageSize, prot), path, limit: mappable - offset })
    } finally {
      fs.closeSync(fd)
    }
  }

  /**
   * A shared mapping of a new memfd. `fd` stays open while the Region lives, so another
   * process can map the same pages through /proc/<pid>/fd/<fd>. The memfd is sealed against
   * shrinking (F_SEAL_SHRINK): nobody can cut pages from under the mapping; remap() grows it.
   */
  static memfd(length: number, options?: { name?: string }): Region {
    const size = validateRegionLength(length, 'length')
    const opts = readOptions(options, 'options', ['name'])
    const name = opts.name ?? 'memdedup'
    if (typeof name !== 'string' || name.includes('\0')) throw invalidArgType('options.name', 'a string without null bytes', name)
    const fd = check(native.memfdCreate(name, C.MFD_CLOEXEC | C.MFD_ALLOW_SEALING), 'memfd_create', name)
    try {
      check(native.ftruncate(fd, size), 'ftruncate', `memfd ${size} bytes`)
      check(native.addSeals(fd, C.F_SEAL_SHRINK), 'fcntl(F_ADD_SEALS)', 'F_SEAL_SHRINK')
      const prot = protBits.rw
      const address = mapOrThrow(size, prot, C.MAP_SHARED, fd, 0, `memfd ${size} bytes`)
      return new Region(internal, { address, length: size, kind: 'memfd', prot: new PageRuns(size / pageSize, prot), fd, limit: size })
    } catch (error) {
      native.closeFd(fd)
      throw error
    }
  }

  /** Start address of the mapping. */
  get address(): bigint {
    return BigInt(this.#address)
  }
  get length(): number {
    return this.#length
  }
  get pageSize(): number {
    return pageSize
  }
  get pages(): number {
    return this.#length / pageSize
  }
  get kind(): RegionKind {
    return this.#kind
  }
  get path(): string | undefined {
    return this.#path
  }
  /** The memfd of a memfd Region, -1 otherwise. */
  get fd(): number {
    return this.#fd
  }
  get closed(): boolean {
    return this.#closed
  }

  /**
   * Zero-copy view of the whole mapping. Handed out only while every page is readable and
   * writable (use read() otherwise); detached (length 0) when the Region closes or moves.
   */
  get bytes(): Uint8Array {
    if (this.#closed) return this.#bytes ?? new Uint8Array(0)
    if (this.#bytes === null) {
      if (this.#prot.findFailing((p) => (p & protBits.rw) === protBits.rw) >= 0) {
        throw codedError('ERR_REGION_PROTECTION', "Region.bytes needs every page readable and writable; protect('rw') it first or use read()")
      }
      if (this.#length > maxViewLength) {
        throw outOfRange('Region.length', `<= ${maxViewLength} for a view (the largest typed array); use read() on ranges`, this.#length)
      }
      const buffer = native.wrap(this.#address, this.#length)
      viewOwners.set(buffer, this)
      this.#views.live++
      viewCollected.register(buffer, this.#views)
      this.#buffer = buffer
      this.#bytes = new Uint8Array(buffer)
    }
    return this.#bytes
  }

  /**
   * Copies bytes out; works on read-only pages too (never on PROT_NONE ones). The copy goes
   * through the kernel: a page of a file truncated under the mapping is a SyscallError EFAULT,
   * not a SIGBUS.
   */
  read(range?: Range): Buffer {
    const span = this.readableSpan(range, 'read')
    const out = Buffer.allocUnsafe(span.length)
    check(native.readMemory(span.address, span.length, out), 'process_vm_readv', () => `read ${span.length} bytes of a ${this.#kind} Region`)
    return out
  }

  /** mprotect(2) the Region or a page-aligned part of it. */
  protect(prot: Protection, range?: Range): void {
    const bits = protBits[validateOneOf(prot, 'prot', protections)]
    const span = this.#span(range, `mprotect(${prot})`)
    check(native.mprotect(span.address, span.length, bits), 'mprotect', () => `${prot} on ${span.length} bytes`)
    const first = (span.address - this.#address) / pageSize
    this.#prot.fill(bits, first, first + span.length / pageSize)
    if (bits !== protBits.rw && bits !== protBits.rwx) this.#detach()
  }

  /** Current protection of the page at `offset` (as last set through this Region). */
  protection(offset = 0): Protection {
    this.#assertOpen('protection')
    const page = validateInteger(offset, 'offset', 0, this.#length - 1)
    return protectionOf(this.#prot.get(Math.floor(page / pageSize)))
  }

  /** madvise(2) with non-merging advice; see ksm.ts and sksm.ts for merging. */
  advise(advice: Advice, range?: Range): void {
    // typeof first: hasOwn() would coerce an object through its toString().
    if (typeof advice !== 'string' || !Object.hasOwn(adviceValues, advice)) validateOneOf(advice, 'advice', adviceNames)
    const span = this.#span(range, 'advise')
    check(native.madvise(span.address, span.length, adviceValues[advice]), adviceSyscalls[advice])
  }

  /**
   * mremap(2) to `newLength`. Returns the Region that owns the memory now; this one is closed
   * (its views detached), unless `dontUnmap` kept the old range mapped (then both are live).
   * A memfd Region grows its memfd first; a file Region cannot grow past the file's last page
   * (RangeError). On any error nothing changed (a memfd may be left larger: it is sealed against
   * shrinking, and the extra size costs nothing until mapped).
   */
  remap(newLength: number, options?: { mayMove?: boolean; dontUnmap?: boolean }): Region {
    const length = validateRegionLength(newLength, 'newLength')
    const opts = readOptions(options, 'options', ['mayMove', 'dontUnmap'])
    const mayMove = validateBoolean(opts.mayMove ?? true, 'options.mayMove')
    const dontUnmap = validateBoolean(opts.dontUnmap ?? false, 'options.dontUnmap')
    this.#assertOpen('remap')
    if (dontUnmap && (!mayMove || length !== this.#length || this.#kind !== 'anonymous')) {
      throw outOfRange('options.dontUnmap', 'used with mayMove, the same length and an anonymous Region (MREMAP_DONTUNMAP)', true)
    }
    if (this.#kind === 'file' && length > this.#limit) {
      throw outOfRange('newLength', `<= ${this.#limit} (pages past the end of the file would SIGBUS)`, length)
    }
    if (this.#kind === 'memfd' && length > this.#limit) {
      check(native.ftruncate(this.#fd, length), 'ftruncate', () => `memfd ${this.#limit} -> ${length} bytes`)
      this.#limit = length
    }
    const prot = this.#prot.resized(length / pageSize, this.#prot.get(this.#prot.pages - 1))
    const oldAddress = this.#address
    const oldLength = this.#length
    const address = dontUnmap || this.#views.live === 0
      ? check(native.mremap(oldAddress, oldLength, length, (mayMove ? C.MREMAP_MAYMOVE : 0) | (dontUnmap ? C.MREMAP_DONTUNMAP : 0), 0), 'mremap', () => `${oldLength} -> ${length} bytes`)
      : this.#resizeUnderViews(length, mayMove)
    // From here on nothing can fail: the memory has moved.
    const init: RegionInit = { address, length, kind: this.#kind, prot, path: this.#path, limit: this.#limit, fd: this.#fd }
    if (dontUnmap) return new Region(internal, { ...init, fd: -1 })
    // Same memory, grown or shrunk in place: old views still point into it, so it shares their count.
    if (address === oldAddress) init.views = this.#views
    this.#retire({ address, length })
    // Old views keep only the old Region object alive; if the successor is dropped while one of
    // them is still reachable, its finalizer sees the shared view count and reserves instead.
    return new Region(internal, init)
  }

  /**
   * remap() while a view may still be in use by native code: no address an old view covers is
   * ever unmapped, not even for a moment (see vacate()). Shrinking replaces the cut tail with a
   * reservation; growing tries in place, else moves with MREMAP_DONTUNMAP (the old range stays
   * mapped), grows the moved mapping, and only then replaces the old range with a reservation.
   */
  #resizeUnderViews(length: number, mayMove: boolean): number {
    const oldAddress = this.#address
    const oldLength = this.#length
    const context = () => `${oldLength} -> ${length} bytes`
    if (length <= oldLength) {
      if (length < oldLength) vacate(oldAddress + length, oldLength - length, this.#views)
      return oldAddress
    }
    const inPlace = native.mremap(oldAddress, oldLength, length, 0, 0)
    if (inPlace >= 0 || !mayMove || inPlace !== -errno.ENOMEM) return check(inPlace, 'mremap', context)
    const moved = check(native.mremap(oldAddress, oldLength, oldLength, C.MREMAP_MAYMOVE | C.MREMAP_DONTUNMAP, 0), 'mremap(MREMAP_DONTUNMAP)', context)
    const grown = native.mremap(moved, oldLength, length, C.MREMAP_MAYMOVE, 0)
    if (grown < 0) {
      // Undo: the pages go back over the old range (one mremap, atomic for faults).
      native.mremap(moved, oldLength, oldLength, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, oldAddress)
      check(grown, 'mremap', context)
    }
    vacate(oldAddress, oldLength, this.#views)
    return grown
  }

  /**
   * Unmaps the Region. Idempotent; views become length 0; never throws for a closed Region.
   * If a view was ever handed out and may still be reachable, the range is first replaced by
   * zero-filled memory and unmapped when those views are garbage-collected (see vacate()).
   */
  close(): void {
    if (this.#closed) return
    const address = this.#address
    const length = this.#length
    const fd = this.#fd
    const views = this.#views
    this.#retire()
    vacate(address, length, views)
    if (fd >= 0) native.closeFd(fd)
  }

  [Symbol.dispose](): void {
    this.close()
  }

  /** @internal Registers a hook run before the Region's memory goes away (close or remap). */
  onClose(hook: CloseHook): () => void {
    this.#assertOpen('onClose')
    this.#hooks.add(hook)
    return () => this.#hooks.delete(hook)
  }

  /** @internal Like span(), and every page in it is readable (native code may read it). */
  readableSpan(range: Range | undefined, operation: string): Span {
    const span = this.#span(range, operation)
    const first = (span.address - this.#address) / pageSize
    const page = this.#prot.findFailing((p) => (p & C.PROT_READ) !== 0, first, first + span.length / pageSize)
    if (page >= 0) throw codedError('ERR_REGION_PROTECTION', `Cannot ${operation}: page ${page} of the Region is not readable`)
    return span
  }

  /** @internal Validated absolute span of `range` (the whole Region when omitted). */
  span(range: Range | undefined, operation: string): Span {
    return this.#span(range, operation)
  }

  #span(range: Range | undefined, operation: string): Span {
    this.#assertOpen(operation)
    const r = readRange(range)
    if (r === undefined) return { address: this.#address, length: this.#length }
    const offset = validatePageOffset(r.offset, 'range.offset')
    const length = validatePageLength(r.length, 'range.length')
    if (offset + length > this.#length) {
      throw outOfRange('range', `inside the Region (offset + length <= ${this.#length})`, `offset ${offset} + length ${length}`)
    }
    return { address: this.#address + offset, length }
  }

  #assertOpen(operation: string): void {
    if (this.#closed) throw codedError('ERR_REGION_CLOSED', `Cannot ${operation}: the Region is closed`)
  }

  #detach(): void {
    if (this.#buffer !== null) native.detach(this.#buffer)
    this.#buffer = null
    this.#bytes = null
  }

  /** Runs hooks, detaches views, marks closed; the caller decides what happens to the memory. */
  #retire(next?: Span): void {
    for (const hook of this.#hooks) {
      try {
        hook(this, next)
      } catch {
        // A hook (e.g. uffd unregister) failing must not keep the memory alive.
      }
    }
    this.#hooks.clear()
    this.#detach()
    // `bytes` after close() is an empty view: harmless, never a crash.
    this.#bytes = new Uint8Array(0)
    this.#closed = true
    this.#fd = -1
    finalizer.unregister(this.#token)
  }
}

/**
 * Opens a regular file for reading without blocking: O_PATH first (opens nothing: a FIFO does
 * not wait for a writer, a device runs no open handler), fstat, and only a regular file is then
 * reopened for reading through /proc/self/fd, which is the same inode whatever the path does.
 */
function openRegularFile(path: string): number {
  const pathFd = fsCall('open', path, () => fs.openSync(path, C.O_PATH))
  try {
    if (!fs.fstatSync(pathFd).isFile()) throw new SyscallError('mmap', errno.ENODEV, `${path} is not a regular file`)
    return fsCall('open', path, () => fs.openSync(`/proc/self/fd/${pathFd}`, fs.constants.O_RDONLY | C.O_NONBLOCK))
  } finally {
    fs.closeSync(pathFd)
  }
}

/** @internal Validated span of a live Region, for the other modules. */
export function resolveSpan(region: unknown, range: Range | undefined, operation: string): Span {
  if (!Region.isRegion(region)) throw invalidArgType('region', 'an instance of Region', region)
  return region.span(range, operation)
}
