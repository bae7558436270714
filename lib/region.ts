// Region: a mapping memdedup created and owns. Every other module acts only on memory a live
// Region owns (resolveSpan), which is what keeps bad arguments from crashing the process.
import { constants as bufferConstants } from 'node:buffer'
import fs from 'node:fs'
import { native, constants as C, pageSize } from './native.ts'
import { check, codedError, errno, fsCall } from './errors.ts'
import { assertInternal, guardReceivers, internal, type Internal } from './internal.ts'
import { PageRuns } from './runs.ts'
import { hugetlbfsPageSize, hugetlbPageSize, openRegularFile } from './region/files.ts'
import { addView, newViews, revokeViews, vacate, type Span, type Views } from './region/views.ts'
import {
  checkFree,
  claim,
  giveBack,
  nameReserved,
  overlapping,
  releaseFree,
  removeSlot,
  repairHole,
  reservationFinalizer,
  reservedFlags,
  type Home,
  type ReservationState,
  type Target,
} from './region/reservation.ts'
import {
  invalidArgType,
  invalidArgValue,
  outOfRange,
  readOptions,
  readRange,
  validateBoolean,
  validateInteger,
  validateOneOf,
  validatePageLength,
  validatePageOffset,
} from './validate.ts'

/** Page protection for `protect()` and `Region.file()`: mprotect's PROT_READ, PROT_WRITE, PROT_EXEC, or none. */
export type Protection = 'none' | 'r' | 'rw' | 'rx' | 'rwx'
/** How a Region's memory was mapped: `Region.anonymous()`, `Region.file()` or `Region.memfd()`. */
export type RegionKind = 'anonymous' | 'file' | 'memfd'
export type { Span }
export { reservedBytes } from './region/views.ts'
/** @internal For TwinIndex.open (twin_index.ts). */
export { openRegularFile } from './region/files.ts'
/** A page-aligned sub-range of a Region, relative to its start. */
export interface Range {
  offset: number
  length: number
}

/** Largest `bytes` view: Node's typed array limit. */
const maxViewLength = Math.floor(bufferConstants.MAX_LENGTH / pageSize) * pageSize
export const protections: readonly Protection[] = ['none', 'r', 'rw', 'rx', 'rwx']
export const protBits: Readonly<Record<Protection, number>> = {
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
/** The madvise() advice `advise()` takes, camelCased: 'dontneed' is MADV_DONTNEED, 'populateWrite' MADV_POPULATE_WRITE. */
export type Advice = keyof typeof adviceValues
const adviceNames = Object.keys(adviceValues) as Advice[]
// Precomputed so the hot path does no string work: 'populateWrite' → 'madvise(MADV_POPULATE_WRITE)'.
const adviceSyscalls = Object.fromEntries(
  adviceNames.map((a) => [a, `madvise(MADV_${a.replace(/[A-Z]/g, (c) => '_' + c).toUpperCase()})`]),
) as Record<Advice, string>

/**
 * Called with the Region when it closes or moves, before it is marked closed (internal). `next` is where the memory is now after remap()
 * (undefined on close): with next.address === region.address it grew or shrank in place.
 */
export type CloseHook = (region: Region, next?: Span) => void

/**
 * Called with the Region right before remap() calls mremap (internal); returns what puts things
 * back if the Region stays where it is (the move failed, or MREMAP_DONTUNMAP kept the old range).
 */
export type MoveHook = (region: Region) => () => void

/** Longest Region: the x86_64 user address space (47 bits). */
export const maxRegionLength = 2 ** 47

/**
 * The memory of [address, address + length) leaves the Region: back to its Reservation slot, or
 * unmapped; either way held as zeros while views of it are live (region/views.ts).
 */
function release(address: number, length: number, views: Views, home: Home | null): void {
  if (home) giveBack(home, address, length, views)
  else vacate(address, length, views)
}

interface Mapping {
  address: number
  length: number
  fd: number
  views: Views
  home: Home | null
}

let warnedUnclosed = false
const finalizer = new FinalizationRegistry<Mapping>((mapping) => {
  release(mapping.address, mapping.length, mapping.views, mapping.home)
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
  /** Where the memory lies inside a Reservation, if it does. */
  home?: Home | null
  /** hugetlb Region: its huge page size (every mapping change must be a multiple of it). */
  hugePageSize?: number
}

let makeRegion: (init: RegionInit) => Region

/**
 * Memory memdedup mapped and owns: the only memory it ever unmaps, remaps, protects or advises.
 * Made by `Region.anonymous()` (private anonymous), `Region.file()` (a private, copy-on-write
 * mapping of a regular file) or `Region.memfd()` (a shared memfd, optionally hugetlb), or placed in
 * a Reservation. `bytes` is a zero-copy Uint8Array over it; `close()` unmaps it (idempotent), and a
 * Region collected without `close()` is unmapped by a finalizer, with a warning.
 */
export class Region {
  #address: number
  #length: number
  #kind: RegionKind
  #fd: number
  #path: string | undefined
  #limit: number
  #hugePageSize: number
  /** PROT_* bits per page: views are only handed out while every page is read+write. */
  #prot: PageRuns
  #bytes: Uint8Array | null = null
  /** The views handed out over this memory and not yet collected: see region/views.ts. */
  #views: Views
  #closed = false
  /** The Reservation slot this memory occupies (null: the kernel chose the address). */
  #home: Home | null
  #hooks = new Set<CloseHook>()
  #moveHooks = new Set<MoveHook>()
  #token = {}

  /** Not callable from outside: use Region.anonymous(), Region.file() or Region.memfd(). */
  private constructor(token: Internal, init: RegionInit) {
    assertInternal(token, new.target, Region, 'Region.anonymous(), Region.file() or Region.memfd()')
    this.#address = init.address
    this.#length = init.length
    this.#kind = init.kind
    this.#fd = init.fd ?? -1
    this.#path = init.path
    this.#limit = init.limit ?? Infinity
    this.#hugePageSize = init.hugePageSize ?? 0
    this.#prot = init.prot
    this.#views = init.views ?? newViews()
    this.#home = init.home ?? null
    if (this.#home) this.#home.slot.owner = new WeakRef(this)
    finalizer.register(this, { address: init.address, length: init.length, fd: this.#fd, views: this.#views, home: this.#home }, this.#token)
  }

  static {
    makeRegion = (init) => new Region(internal, init)
    guardReceivers(Region, (value) => #address in value)
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
   * refused (TypeError ERR_INVALID_ARG_VALUE) without being opened, so nothing blocks. A file on hugetlbfs
   * (a hugetlb memfd through /proc/self/fd/N) is mapped in whole huge pages: `offset` and
   * `length` must be multiples of its `hugePageSize`, as must later protect/advise ranges.
   */
  static file(path: string, options?: { offset?: number; length?: number; prot?: Protection }): Region {
    if (typeof path !== 'string' || path.length === 0) throw invalidArgType('path', 'a non-empty string', path)
    if (path.includes('\0')) throw invalidArgType('path', 'a string without null bytes', path)
    const opts = readOptions(options, 'options', ['offset', 'length', 'prot'])
    const offset = validatePageOffset(opts.offset ?? 0, 'options.offset')
    const wanted = opts.length === undefined ? undefined : validateRegionLength(opts.length, 'options.length')
    const prot = protBits[validateOneOf(opts.prot ?? 'r', 'options.prot', protections)]
    const fd = openRegularFile(path, fs.constants.O_RDONLY, 'path', path, 'a regular file')
    try {
      const size = fsCall('fstat', path, () => fs.fstatSync(fd).size)
      if (size === 0) throw outOfRange('path', 'a file of at least one byte (an empty file has nothing to map)', path)
      const mappable = Math.ceil(size / pageSize) * pageSize
      if (offset >= mappable) throw outOfRange('options.offset', `< ${mappable} (the file's mappable size)`, offset)
      const length = wanted ?? mappable - offset
      if (offset + length > mappable) {
        throw outOfRange('options.length', `<= ${mappable - offset} (pages past the end of the file would SIGBUS)`, length)
      }
      // mmap would round a hugetlbfs length up to whole huge pages, and munmap of the Region's
      // own length would then fail: the mapping would outlive close().
      const hugePageSize = hugetlbfsPageSize(fd, path)
      if (hugePageSize > 0 && (offset % hugePageSize !== 0 || length % hugePageSize !== 0)) {
        throw outOfRange('options', `offset and length multiples of the huge page size (${hugePageSize}) for a file on hugetlbfs`, `offset ${offset} + length ${length}`)
      }
      const address = mapOrThrow(length, prot, C.MAP_PRIVATE, fd, offset, path)
      return new Region(internal, { address, length, kind: 'file', prot: new PageRuns(length / pageSize, prot), path, limit: mappable - offset, hugePageSize })
    } finally {
      fs.closeSync(fd)
    }
  }

  /**
   * A shared mapping of a new memfd. `fd` stays open while the Region lives, so another
   * process can map the same pages through /proc/<pid>/fd/<fd>. The memfd is sealed against
   * shrinking (F_SEAL_SHRINK): nobody can cut pages from under the mapping; remap() grows it.
   *
   * `hugetlb: true` backs it with hugetlb pages of the default size (MFD_HUGETLB; `hugePageSize`
   * says which): `length` must be a multiple of it, the pages are reserved at mmap (ENOMEM when
   * too few are free, never a SIGBUS later). The kernel changes hugetlb mappings only in whole
   * huge pages, so protect() and advise() ranges must be multiples too, and remap() can only
   * shrink it in place (mremap neither grows hugetlb nor moves it with MREMAP_DONTUNMAP).
   */
  static memfd(length: number, options?: { name?: string; hugetlb?: boolean }): Region {
    const size = validateRegionLength(length, 'length')
    const opts = readOptions(options, 'options', ['name', 'hugetlb'])
    const name = opts.name ?? 'memdedup'
    if (typeof name !== 'string' || name.includes('\0')) throw invalidArgType('options.name', 'a string without null bytes', name)
    const hugePageSize = validateBoolean(opts.hugetlb ?? false, 'options.hugetlb') ? hugetlbPageSize() : 0
    if (hugePageSize > 0 && size % hugePageSize !== 0) throw outOfRange('length', `a multiple of the huge page size (${hugePageSize})`, length)
    const fd = check(native.memfdCreate(name, C.MFD_CLOEXEC | C.MFD_ALLOW_SEALING | (hugePageSize > 0 ? C.MFD_HUGETLB : 0)), 'memfd_create', name)
    try {
      check(native.ftruncate(fd, size), 'ftruncate', `memfd ${size} bytes`)
      check(native.addSeals(fd, C.F_SEAL_SHRINK), 'fcntl(F_ADD_SEALS)', 'F_SEAL_SHRINK')
      const prot = protBits.rw
      const what = hugePageSize > 0 ? `hugetlb memfd ${size} bytes (${size / hugePageSize} huge pages)` : `memfd ${size} bytes`
      const address = mapOrThrow(size, prot, C.MAP_SHARED, fd, 0, what)
      return new Region(internal, { address, length: size, kind: 'memfd', prot: new PageRuns(size / pageSize, prot), fd, limit: size, hugePageSize })
    } catch (error) {
      native.closeFd(fd)
      throw error
    }
  }

  /** Start address of the mapping. */
  get address(): bigint {
    return BigInt(this.#address)
  }
  /** Length of the mapping in bytes, a multiple of the page size. */
  get length(): number {
    return this.#length
  }
  /** The base page size (4096 on x86_64); see hugePageSize for hugetlb Regions. */
  get pageSize(): number {
    return pageSize
  }
  /** The huge page size of a hugetlb Region (memfd, or a file on hugetlbfs): protect/advise ranges align to it; else 0. */
  get hugePageSize(): number {
    return this.#hugePageSize
  }
  /** Number of base pages: length / pageSize. */
  get pages(): number {
    return this.#length / pageSize
  }
  /** 'anonymous', 'file' or 'memfd': which constructor made it. */
  get kind(): RegionKind {
    return this.#kind
  }
  /** The mapped file's path (Region.file), undefined for other kinds. */
  get path(): string | undefined {
    return this.#path
  }
  /** The memfd of a memfd Region, -1 otherwise. */
  get fd(): number {
    return this.#fd
  }
  /** True once close() ran (or remap() or split() replaced this Region). */
  get closed(): boolean {
    return this.#closed
  }

  /**
   * Zero-copy view of the whole mapping. Handed out only while every page is readable and
   * writable (use read() otherwise). A view keeps its length until it is collected: after
   * close() or a move it reads zeros, after an in-place remap() or split() it still shows the
   * memory. protect() without write access detaches it (length 0). Empty once closed.
   */
  get bytes(): Uint8Array {
    if (this.#closed) return new Uint8Array(0)
    if (this.#bytes === null) {
      if (this.#prot.findFailing((p) => (p & protBits.rw) === protBits.rw) >= 0) {
        throw codedError('ERR_REGION_PROTECTION', 'get Region.bytes', "it needs every page readable and writable; protect('rw') it first or use read()")
      }
      if (this.#length > maxViewLength) {
        throw outOfRange('Region.length', `<= ${maxViewLength} for a view (the largest typed array); use read() on ranges`, this.#length)
      }
      const buffer = native.wrap(this.#address, this.#length)
      viewOwners.set(buffer, this)
      addView(this.#views, { address: this.#address, length: this.#length }, buffer)
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
    check(native.readMemory(span.address, span.length, out), 'pread(/proc/self/mem)', () => `read ${span.length} bytes of a ${this.#kind} Region`)
    return out
  }

  /** mprotect(2) the Region or a page-aligned part of it. */
  protect(prot: Protection, range?: Range): void {
    const bits = protBits[validateOneOf(prot, 'prot', protections)]
    const span = this.#hugeAligned(this.#span(range, `mprotect(${prot})`), 'range')
    check(native.mprotect(span.address, span.length, bits), 'mprotect', () => `${prot} on ${span.length} bytes`)
    const first = (span.address - this.#address) / pageSize
    this.#prot.fill(bits, first, first + span.length / pageSize)
    if (bits !== protBits.rw && bits !== protBits.rwx) {
      // A JS write through a view to a page without PROT_WRITE would SIGSEGV: every view over
      // the range is detached (length 0), this Region's and those an earlier Region over the same
      // memory handed out. Unlike close(), this can fail a Node API still using such a view.
      revokeViews(this.#views, span)
      this.#bytes = null
    }
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
    const span = this.#hugeAligned(this.#span(range, 'advise'), 'range')
    check(native.madvise(span.address, span.length, adviceValues[advice]), adviceSyscalls[advice])
  }

  /**
   * mremap(2) to `newLength`. Returns the Region that owns the memory now; this one is closed
   * (its views keep their length: see `bytes`), unless `dontUnmap` kept the old range mapped (then both are live).
   * A memfd Region grows its memfd first; a file Region cannot grow past the file's last page
   * (RangeError). On any error nothing changed (a memfd may be left larger: it is sealed against
   * shrinking, and the extra size costs nothing until mapped).
   *
   * `fixed: { into, offset }` moves the memory to `into.address + offset` (MREMAP_FIXED), a free
   * range of a live Reservation; the Region may span several VMAs where the kernel allows moving
   * them at once (6.17+; older kernels say EFAULT and nothing changed). A Region placed in a
   * Reservation grows in place when the reservation is free after it, else moves out
   * (`mayMove`); what it leaves behind goes back to the reservation, never to a hole.
   */
  remap(newLength: number, options?: { mayMove?: boolean; dontUnmap?: boolean; fixed?: { into: Reservation; offset: number } }): Region {
    const length = validateRegionLength(newLength, 'newLength')
    const opts = readOptions(options, 'options', ['mayMove', 'dontUnmap', 'fixed'])
    const mayMove = validateBoolean(opts.mayMove ?? true, 'options.mayMove')
    const dontUnmap = validateBoolean(opts.dontUnmap ?? false, 'options.dontUnmap')
    const target = opts.fixed === undefined ? undefined : readTarget(opts.fixed, length)
    this.#assertOpen('remap')
    if (this.#hugePageSize > 0) this.#checkHugetlbRemap(length, dontUnmap, target !== undefined)
    if (target && !mayMove) throw invalidArgValue('options.mayMove', 'true with options.fixed (MREMAP_FIXED implies MREMAP_MAYMOVE)', false)
    // MREMAP_DONTUNMAP: any kind since Linux 5.13 (a shared or file source keeps showing the file).
    if (dontUnmap && (!mayMove || length !== this.#length)) {
      throw outOfRange('options.dontUnmap', 'used with mayMove and the same length (MREMAP_DONTUNMAP)', true)
    }
    if (this.#kind === 'file' && length > this.#limit) {
      throw outOfRange('newLength', `<= ${this.#limit} (pages past the end of the file would SIGBUS)`, length)
    }
    if (this.#home && !mayMove && !dontUnmap && length > this.#length) {
      const reason = this.#noRoomInReservation(length)
      if (reason) throw codedError('ERR_RESERVATION_NO_ROOM', length, reason)
    }
    if (this.#kind === 'memfd' && length > this.#limit) {
      check(native.ftruncate(this.#fd, length), 'ftruncate', () => `memfd ${this.#limit} -> ${length} bytes`)
      this.#limit = length
    }
    const prot = this.#prot.resized(length / pageSize, this.#prot.get(this.#prot.pages - 1))
    const oldAddress = this.#address
    const oldLength = this.#length
    const stay = this.#beforeMove()
    let address: number
    try {
      if (target) address = this.#moveInto(target, length, dontUnmap)
      else if (dontUnmap || (this.#views.live.size === 0 && this.#home === null)) {
        address = check(native.mremap(oldAddress, oldLength, length, (mayMove ? C.MREMAP_MAYMOVE : 0) | (dontUnmap ? C.MREMAP_DONTUNMAP : 0), 0), 'mremap', () => `${oldLength} -> ${length} bytes`)
      } else address = this.#resizeKeepingOldRange(length, mayMove)
    } catch (error) {
      stay()
      throw error
    }
    // From here on nothing can fail: the memory has moved.
    if (dontUnmap) stay()
    const home = target ? { reservation: target.state, slot: claim(target.state, target.offset, length, 'region') } : null
    const init: RegionInit = { address, length, kind: this.#kind, prot, path: this.#path, limit: this.#limit, fd: this.#fd, home, hugePageSize: this.#hugePageSize }
    if (dontUnmap) return new Region(internal, { ...init, fd: -1 })
    // Same memory, grown or shrunk in place: old views still point into it, so it shares their
    // count, and its reservation slot (already resized).
    if (address === oldAddress) {
      init.views = this.#views
      init.home = this.#home
    }
    this.#retire({ address, length })
    // Old views keep only the old Region object alive; if the successor is dropped while one of
    // them is still reachable, its finalizer sees the shared view count and reserves instead.
    return new Region(internal, init)
  }

  /**
   * remap() when the old range must stay mapped until the pages are elsewhere: a view may still
   * be in use by native code (no address it covers is ever unmapped, not even for a moment, see
   * region/views.ts), or the range belongs to a Reservation (a hole there could be taken by anyone's
   * mmap). Shrinking hands the cut tail back; growing tries in place (inside the reservation),
   * else moves with MREMAP_DONTUNMAP, grows the moved mapping, and only then hands the old range
   * back.
   */
  #resizeKeepingOldRange(length: number, mayMove: boolean): number {
    const oldAddress = this.#address
    const oldLength = this.#length
    const context = () => `${oldLength} -> ${length} bytes`
    if (length <= oldLength) {
      if (length < oldLength) release(oldAddress + length, oldLength - length, this.#views, this.#home)
      return oldAddress
    }
    if (this.#home) {
      // remap() refused mayMove: false without room before anything changed.
      if (this.#noRoomInReservation(length) === undefined) {
        const rc = this.#growInReservation(length)
        if (rc === 0) return oldAddress
        if (!mayMove) check(rc, 'mmap(MAP_FIXED)', context)
      }
    } else {
      const inPlace = native.mremap(oldAddress, oldLength, length, 0, 0)
      if (inPlace >= 0 || !mayMove || inPlace !== -errno.ENOMEM) return check(inPlace, 'mremap', context)
    }
    const grown = this.#moveAndGrow(length, context)
    release(oldAddress, oldLength, this.#views, this.#home)
    return grown
  }

  /** MREMAP_DONTUNMAP to where the kernel likes, then grow there; undone on failure. */
  #moveAndGrow(length: number, context: () => string): number {
    const oldAddress = this.#address
    const oldLength = this.#length
    const moved = check(native.mremap(oldAddress, oldLength, oldLength, C.MREMAP_MAYMOVE | C.MREMAP_DONTUNMAP, 0), 'mremap(MREMAP_DONTUNMAP)', context)
    const grown = native.mremap(moved, oldLength, length, C.MREMAP_MAYMOVE, 0)
    if (grown < 0) {
      // Undo: the pages go back over the old range (one mremap, atomic for faults).
      native.mremap(moved, oldLength, oldLength, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, oldAddress)
      check(grown, 'mremap', context)
    }
    return grown
  }

  /** Why the Region cannot grow in place to `length` inside its Reservation, or undefined if it can. */
  #noRoomInReservation(length: number): string | undefined {
    const { reservation: state, slot } = this.#home!
    const extra = length - this.#length
    const end = slot.offset + slot.length
    if (state.closed) return 'its Reservation is closed'
    if (this.#kind === 'file') return 'a file Region grows in a Reservation only by moving'
    if (end + extra > state.length) return `it would reach past the end of its Reservation (offset ${end} + ${extra} > ${state.length})`
    const taken = overlapping(state, end, extra)
    if (taken) return `the Reservation is taken after it (offset ${taken.offset}, length ${taken.length})`
    return undefined
  }

  /** Grows over the free reservation right after the Region (mmap MAP_FIXED): 0, or the -errno of mmap. */
  #growInReservation(length: number): number {
    const { reservation: state, slot } = this.#home!
    const extra = length - this.#length
    const end = slot.offset + slot.length
    const flags = this.#kind === 'memfd' ? C.MAP_SHARED : C.MAP_PRIVATE | C.MAP_ANONYMOUS
    const prot = this.#prot.get(this.#prot.pages - 1)
    const fileOffset = this.#kind === 'memfd' ? this.#length : 0
    const rc = native.mmapFixed(state.address, state.length, this.#address + this.#length, extra, prot, flags, this.#kind === 'memfd' ? this.#fd : -1, fileOffset)
    if (rc < 0) {
      repairHole(state, end, extra)
      return rc
    }
    slot.length += extra
    return 0
  }

  /**
   * MREMAP_FIXED into a free range of a Reservation. The old range is unmapped by the move itself
   * only when nothing needs it (no view out, not in a reservation); otherwise the pages move with
   * MREMAP_DONTUNMAP and the old range is handed back afterwards. A failed move leaves the target
   * reserved again (repairHole), so the reservation never ends with a hole it does not know of.
   */
  #moveInto(target: Target, length: number, dontUnmap: boolean): number {
    const { state, offset } = target
    const to = state.address + offset
    const oldAddress = this.#address
    const oldLength = this.#length
    const context = () => `${oldLength} -> ${length} bytes into a reservation at offset ${offset}`
    const into = (from: number, fromLength: number, flags: number): number => {
      const rc = native.mremapFixed(from, fromLength, length, flags, to, state.address, state.length)
      if (rc < 0) repairHole(state, offset, length)
      return rc
    }
    if (dontUnmap) return check(into(oldAddress, oldLength, C.MREMAP_DONTUNMAP), 'mremap(MREMAP_FIXED)', context)
    if (this.#views.live.size === 0 && this.#home === null) return check(into(oldAddress, oldLength, 0), 'mremap(MREMAP_FIXED)', context)
    let moved: number
    if (length <= oldLength) {
      moved = check(into(oldAddress, length, C.MREMAP_DONTUNMAP), 'mremap(MREMAP_FIXED)', context)
    } else {
      const grown = this.#moveAndGrow(length, context)
      moved = into(grown, length, 0)
      if (moved < 0) {
        native.mremap(grown, length, oldLength, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, oldAddress)
        check(moved, 'mremap(MREMAP_FIXED)', context)
      }
    }
    release(oldAddress, oldLength, this.#views, this.#home)
    return moved
  }

  /**
   * Splits the Region at `offset` into two Regions over the same memory (no syscall; the kernel
   * splits VMAs only when the halves are treated differently). This Region is closed (its
   * views still show both parts), as by remap(); a partial move is `split()` then `remap()` of one part.
   * Anonymous and file Regions only (a memfd Region owns one fd).
   */
  split(offset: number): [Region, Region] {
    const at = validatePageOffset(offset, 'offset')
    this.#assertOpen('split')
    if (at === 0 || at >= this.#length) throw outOfRange('offset', `> 0 and < ${this.#length} (both parts non-empty)`, offset)
    if (this.#kind === 'memfd') throw invalidArgValue('region', 'an anonymous or file Region (a memfd Region owns one fd)', 'memfd')
    // Each part unmaps itself on close: a hugetlb part must be whole huge pages to unmap.
    if (this.#hugePageSize > 0 && at % this.#hugePageSize !== 0) throw outOfRange('offset', `a multiple of the huge page size (${this.#hugePageSize})`, offset)
    const pages = at / pageSize
    const headProt = this.#prot.resized(pages, 0)
    const tailProt = new PageRuns(this.pages - pages, 0)
    for (const [start, end, value] of this.#prot.runs(pages)) tailProt.fill(value, start - pages, end - pages)
    let headHome: Home | null = null
    let tailHome: Home | null = null
    if (this.#home) {
      const { reservation: state, slot } = this.#home
      removeSlot(state, slot)
      headHome = { reservation: state, slot: claim(state, slot.offset, at, 'region') }
      tailHome = { reservation: state, slot: claim(state, slot.offset + at, slot.length - at, 'region') }
    }
    const common = { kind: this.#kind, path: this.#path, views: this.#views, hugePageSize: this.#hugePageSize }
    const address = this.#address
    const length = this.#length
    const limit = this.#limit
    this.#retire()
    return [
      new Region(internal, { ...common, address, length: at, prot: headProt, limit, home: headHome }),
      new Region(internal, { ...common, address: address + at, length: length - at, prot: tailProt, limit: limit - at, home: tailHome }),
    ]
  }

  /**
   * Reserves `length` bytes of address space (PROT_NONE, MAP_NORESERVE: no memory, no commit)
   * that only memdedup maps into: `reservation.mapAnonymous(range)` and
   * `region.remap(n, { fixed: { into: reservation, offset } })` place memory at exact addresses
   * inside it. `alignment` (a power of two, a page multiple) aligns its start.
   */
  static reserve(length: number, options?: { alignment?: number }): Reservation {
    const size = validateRegionLength(length, 'length')
    const opts = readOptions(options, 'options', ['alignment'])
    const alignment = validateInteger(opts.alignment ?? pageSize, 'options.alignment', pageSize, 2 ** 40)
    if (!Number.isInteger(Math.log2(alignment))) throw outOfRange('options.alignment', 'a power of two >= the page size', alignment)
    const span = size + alignment - pageSize
    if (span > maxRegionLength) throw outOfRange('length', `<= ${maxRegionLength - alignment + pageSize} with this alignment`, length)
    const base = mapOrThrow(span, C.PROT_NONE, reservedFlags, -1, 0, `reserve ${size} bytes`)
    const address = Math.ceil(base / alignment) * alignment
    if (address > base) native.munmap(base, address - base)
    if (base + span > address + size) native.munmap(address + size, base + span - address - size)
    nameReserved(address, size)
    return newReservation({ address, length: size, closed: false, slots: [] })
  }

  /**
   * Unmaps the Region. Idempotent; never throws for a closed Region. If a view was handed out
   * and may still be reachable, the range is replaced by zero-filled memory (the view keeps its
   * length) and unmapped when those views are garbage-collected (see region/views.ts).
   */
  close(): void {
    if (this.#closed) return
    const address = this.#address
    const length = this.#length
    const fd = this.#fd
    const views = this.#views
    const home = this.#home
    this.#retire()
    release(address, length, views, home)
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

  /** @internal Registers a hook run right before remap() moves or resizes the memory. */
  onMove(hook: MoveHook): () => void {
    this.#assertOpen('onMove')
    this.#moveHooks.add(hook)
    return () => this.#moveHooks.delete(hook)
  }

  /** @internal Like span(), and every page in it is readable (native code may read it). */
  readableSpan(range: Range | undefined, operation: string): Span {
    const span = this.#span(range, operation)
    const first = (span.address - this.#address) / pageSize
    const page = this.#prot.findFailing((p) => (p & C.PROT_READ) !== 0, first, first + span.length / pageSize)
    if (page >= 0) throw codedError('ERR_REGION_PROTECTION', operation, `page ${page} of the Region is not readable`)
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

  /** A span of a hugetlb Region must cover whole huge pages: the kernel splits hugetlb VMAs only there. */
  #hugeAligned(span: Span, name: string): Span {
    const huge = this.#hugePageSize
    if (huge > 0 && ((span.address - this.#address) % huge !== 0 || span.length % huge !== 0)) {
      throw outOfRange(name, `whole huge pages of this hugetlb Region (offset and length multiples of ${huge})`, `offset ${span.address - this.#address} + length ${span.length}`)
    }
    return span
  }

  /** What mremap does to hugetlb: shrinks in place, never grows, never MREMAP_DONTUNMAP. */
  #checkHugetlbRemap(length: number, dontUnmap: boolean, fixed: boolean): void {
    const huge = this.#hugePageSize
    if (length % huge !== 0 || length > this.#length) {
      throw outOfRange('newLength', `a multiple of the huge page size (${huge}) <= ${this.#length} (mremap cannot grow a hugetlb mapping)`, length)
    }
    if (dontUnmap) throw invalidArgValue('options.dontUnmap', 'must be false for a hugetlb Region (mremap refuses MREMAP_DONTUNMAP on hugetlb)', true)
    if (fixed) throw invalidArgValue('options.fixed', 'is not supported for a hugetlb Region (it can only shrink in place)', 'a Reservation target')
  }

  #assertOpen(operation: string): void {
    if (this.#closed) throw codedError('ERR_REGION_CLOSED', operation, 'the Region')
  }

  /** Runs the move hooks; returns what undoes them all (for a Region that stays where it is). */
  #beforeMove(): () => void {
    const undo = [...this.#moveHooks].map((hook) => hook(this))
    return () => {
      for (const stay of undo) stay()
    }
  }

  /**
   * Runs hooks, marks closed; the caller decides what happens to the memory. Views handed out
   * stay attached with their length (see "Late users of a view").
   */
  #retire(next?: Span): void {
    for (const hook of this.#hooks) {
      try {
        hook(this, next)
      } catch {
        // A hook (e.g. uffd unregister) failing must not keep the memory alive.
      }
    }
    this.#hooks.clear()
    this.#moveHooks.clear()
    this.#bytes = null
    this.#closed = true
    this.#fd = -1
    finalizer.unregister(this.#token)
  }
}

// Region's own span(), taken once: a real Region whose prototype was swapped for one with another
// span() must not point ksm.enable, sksm.merge or pagemap at memory it does not own.
const regionSpan = Region.prototype.span

/** @internal Validated span of a live Region, for the other modules. */
export function resolveSpan(region: unknown, range: Range | undefined, operation: string): Span {
  if (!Region.isRegion(region)) throw invalidArgType('region', 'an instance of Region', region)
  return regionSpan.call(region, range, operation)
}

// ---------------------------------------------------------------------------------------------
// Reservation: the class. Its slots (what occupies which range) live in region/reservation.ts.

function readTarget(value: unknown, length: number): Target {
  const fixed = readOptions(value, 'options.fixed', ['into', 'offset'])
  if (!isReservation(fixed.into)) throw invalidArgType('options.fixed.into', 'an instance of Reservation', fixed.into)
  const state = stateOf(fixed.into)
  const offset = validatePageOffset(fixed.offset, 'options.fixed.offset')
  if (state.closed) throw codedError('ERR_REGION_CLOSED', 'remap into it', 'the Reservation')
  checkFree(state, offset, length, 'options.fixed')
  return { state, offset }
}

let stateOf: (reservation: Reservation) => ReservationState
let isReservation: (value: unknown) => value is Reservation
let newReservation: (state: ReservationState) => Reservation

/**
 * Address space memdedup owns (`Region.reserve()`): PROT_NONE until memory is placed in it with
 * `mapAnonymous()` or `region.remap(n, { fixed: { into, offset } })`. Nothing else is ever
 * mapped with MAP_FIXED. `close()` closes the Regions placed in it and unmaps the rest.
 */
export class Reservation {
  #state: ReservationState

  static {
    stateOf = (reservation) => reservation.#state
    isReservation = (value): value is Reservation => typeof value === 'object' && value !== null && #state in value
    newReservation = (state) => new Reservation(internal, state)
    guardReceivers(Reservation, (value) => #state in value)
  }

  /** Not callable from outside: use Region.reserve(). */
  private constructor(token: Internal, state: ReservationState) {
    assertInternal(token, new.target, Reservation, 'Region.reserve()')
    this.#state = state
    reservationFinalizer.register(this, state, state)
  }

  /** Start address of the reserved range. */
  get address(): bigint {
    return BigInt(this.#state.address)
  }
  /** Length of the reserved range in bytes. */
  get length(): number {
    return this.#state.length
  }
  /** True once close() ran. */
  get closed(): boolean {
    return this.#state.closed
  }

  /** Whether `range` (page-aligned, inside) is free: nothing placed or held there. */
  isFree(range: Range): boolean {
    const { offset, length } = this.#range(range, 'isFree')
    return overlapping(this.#state, offset, length) === undefined
  }

  /**
   * A private anonymous Region at exactly `address + range.offset` (mmap MAP_FIXED over the
   * reservation). `noReserve` adds MAP_NORESERVE (no commit charge, and no VM_ACCOUNT: VMAs
   * merge only with VMAs alike).
   */
  mapAnonymous(range: Range, options?: { prot?: Protection; noReserve?: boolean }): Region {
    const opts = readOptions(options, 'options', ['prot', 'noReserve'])
    const prot = protBits[validateOneOf(opts.prot ?? 'rw', 'options.prot', protections)]
    const noReserve = validateBoolean(opts.noReserve ?? false, 'options.noReserve')
    const { offset, length } = this.#range(range, 'mapAnonymous')
    const state = this.#state
    checkFree(state, offset, length, 'range')
    const flags = C.MAP_PRIVATE | C.MAP_ANONYMOUS | (noReserve ? C.MAP_NORESERVE : 0)
    const rc = native.mmapFixed(state.address, state.length, state.address + offset, length, prot, flags, -1, 0)
    if (rc < 0) repairHole(state, offset, length)
    const address = check(rc, 'mmap(MAP_FIXED)', () => `anonymous ${length} bytes at offset ${offset} of a reservation`)
    return makeRegion({ address, length, kind: 'anonymous', prot: new PageRuns(length / pageSize, prot), home: { reservation: state, slot: claim(state, offset, length, 'region') } })
  }

  /** Closes every Region placed here, then unmaps the reservation. Idempotent. */
  close(): void {
    const state = this.#state
    if (state.closed) return
    for (const slot of [...state.slots]) if (slot.kind === 'region') slot.owner?.deref()?.close()
    releaseFree(state)
    state.closed = true
    reservationFinalizer.unregister(state)
  }

  [Symbol.dispose](): void {
    this.close()
  }

  #range(range: Range, operation: string): { offset: number; length: number } {
    if (this.#state.closed) throw codedError('ERR_REGION_CLOSED', operation, 'the Reservation')
    const r = readRange(range)
    if (r === undefined) throw invalidArgType('range', 'an object { offset, length }', range)
    const offset = validatePageOffset(r.offset, 'range.offset')
    const length = validatePageLength(r.length, 'range.length')
    if (offset + length > this.#state.length) {
      throw outOfRange('range', `inside the Reservation (offset + length <= ${this.#state.length})`, `offset ${offset} + length ${length}`)
    }
    return { offset, length }
  }
}
