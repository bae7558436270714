// Region: a mapping memdedup created and owns. Every other module acts only on memory a live
// Region owns (resolveSpan), which is what keeps bad arguments from crashing the process.
import fs from 'node:fs'
import { native, constants as C, pageSize } from './native.ts'
import { check, InvalidStateError, SyscallError } from './errors.ts'
import {
  invalidArgType,
  outOfRange,
  validateBoolean,
  validateInteger,
  validateObject,
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

/** Called with the Region when it closes or moves, before its memory goes away (internal). */
export type CloseHook = (region: Region) => void

interface Mapping {
  address: number
  length: number
  fd: number
}

let warnedUnclosed = false
const finalizer = new FinalizationRegistry<Mapping>((mapping) => {
  native.munmap(mapping.address, mapping.length)
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

function mapOrThrow(length: number, prot: number, flags: number, fd: number, offset: number, what: string): number {
  return check(native.mmap(0, length, prot, flags, fd, offset), 'mmap', what)
}

export class Region {
  #address: number
  #length: number
  #kind: RegionKind
  #fd: number
  #path: string | undefined
  /** PROT_* bits per page: views are only handed out while every page is read+write. */
  #pageProt: Uint8Array
  #buffer: ArrayBuffer | null = null
  #bytes: Uint8Array | null = null
  #closed = false
  #hooks = new Set<CloseHook>()
  #token = {}

  private constructor(address: number, length: number, prot: number, kind: RegionKind, fd: number, path?: string) {
    this.#address = address
    this.#length = length
    this.#kind = kind
    this.#fd = fd
    this.#path = path
    this.#pageProt = new Uint8Array(length / pageSize).fill(prot)
    finalizer.register(this, { address, length, fd }, this.#token)
  }

  /** A private anonymous mapping (MAP_PRIVATE | MAP_ANONYMOUS), zero-filled. */
  static anonymous(length: number, options?: { prot?: Protection }): Region {
    const size = validatePageLength(length, 'length')
    const opts = validateObject(options, 'options')
    const prot = protBits[validateOneOf(opts.prot ?? 'rw', 'options.prot', protections)]
    const address = mapOrThrow(size, prot, C.MAP_PRIVATE | C.MAP_ANONYMOUS, -1, 0, `anonymous ${size} bytes`)
    // "[anon:memdedup]" in /proc/pid/maps tells our mappings from V8's; best effort
    // (kernels without CONFIG_ANON_VMA_NAME say EINVAL, which changes nothing else).
    native.prctlSetVmaAnonName(address, size, 'memdedup')
    return new Region(address, size, prot, 'anonymous', -1)
  }

  /**
   * A private (copy-on-write) mapping of a file, like the text of a shared library. The length
   * defaults to the rest of the file; it may not reach past the file's last page (that would
   * SIGBUS on access).
   */
  static file(path: string, options?: { offset?: number; length?: number; prot?: Protection }): Region {
    if (typeof path !== 'string' || path.length === 0) throw invalidArgType('path', 'a non-empty string', path)
    if (path.includes('\0')) throw invalidArgType('path', 'a string without null bytes', path)
    const opts = validateObject(options, 'options')
    const offset = validatePageOffset(opts.offset ?? 0, 'options.offset')
    const prot = protBits[validateOneOf(opts.prot ?? 'r', 'options.prot', protections)]
    let fd: number
    try {
      fd = fs.openSync(path, 'r')
    } catch (error) {
      const e = error as NodeJS.ErrnoException
      throw new SyscallError('open', e.errno ?? 0, path)
    }
    try {
      const size = fs.fstatSync(fd).size
      const mappable = Math.ceil(size / pageSize) * pageSize
      if (offset >= mappable && fs.fstatSync(fd).isFile()) throw outOfRange('options.offset', `< ${mappable} (the file's mappable size)`, offset)
      const length = opts.length === undefined ? mappable - offset : validatePageLength(opts.length, 'options.length')
      if (fs.fstatSync(fd).isFile() && offset + length > mappable) {
        throw outOfRange('options.length', `<= ${mappable - offset} (pages past the end of the file would SIGBUS)`, length)
      }
      const address = mapOrThrow(length, prot, C.MAP_PRIVATE, fd, offset, path)
      return new Region(address, length, prot, 'file', -1, path)
    } finally {
      fs.closeSync(fd)
    }
  }

  /**
   * A shared mapping of a new memfd. `fd` stays open while the Region lives, so another
   * process can map the same pages through /proc/<pid>/fd/<fd>.
   */
  static memfd(length: number, options?: { name?: string }): Region {
    const size = validatePageLength(length, 'length')
    const opts = validateObject(options, 'options')
    const name = opts.name ?? 'memdedup'
    if (typeof name !== 'string' || name.includes('\0')) throw invalidArgType('options.name', 'a string without null bytes', name)
    const fd = check(native.memfdCreate(name, C.MFD_CLOEXEC), 'memfd_create', name)
    try {
      check(native.ftruncate(fd, size), 'ftruncate', `memfd ${size} bytes`)
      const prot = protBits.rw
      const address = mapOrThrow(size, prot, C.MAP_SHARED, fd, 0, `memfd ${size} bytes`)
      return new Region(address, size, prot, 'memfd', fd)
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
      if (!this.#pageProt.every((p) => (p & protBits.rw) === protBits.rw)) {
        throw new InvalidStateError(
          'ERR_REGION_PROTECTION',
          'Region.bytes needs every page readable and writable; protect(\'rw\') it first or use read()',
        )
      }
      this.#buffer = native.wrap(this.#address, this.#length)
      viewOwners.set(this.#buffer, this)
      this.#bytes = new Uint8Array(this.#buffer)
    }
    return this.#bytes
  }

  /** Copies bytes out; works on read-only pages too (never on PROT_NONE ones). */
  read(range?: Range): Buffer {
    const span = this.readableSpan(range, 'read')
    const out = Buffer.allocUnsafe(span.length)
    native.copyOut(span.address, span.length, out)
    return out
  }

  /** mprotect(2) the Region or a page-aligned part of it. */
  protect(prot: Protection, range?: Range): void {
    const bits = protBits[validateOneOf(prot, 'prot', protections)]
    const span = this.#span(range, `mprotect(${prot})`)
    check(native.mprotect(span.address, span.length, bits), 'mprotect', `${prot} on ${span.length} bytes`)
    const first = (span.address - this.#address) / pageSize
    this.#pageProt.fill(bits, first, first + span.length / pageSize)
    if (bits !== protBits.rw && bits !== protBits.rwx) this.#detach()
  }

  /** Current protection of the page at `offset` (as last set through this Region). */
  protection(offset = 0): Protection {
    this.#assertOpen('protection')
    const page = validateInteger(offset, 'offset', 0, this.#length - 1)
    return protectionOf(this.#pageProt[Math.floor(page / pageSize)])
  }

  /** madvise(2) with non-merging advice; see ksm.ts and sksm.ts for merging. */
  advise(advice: Advice, range?: Range): void {
    if (!Object.hasOwn(adviceValues, advice)) validateOneOf(advice, 'advice', adviceNames)
    const span = this.#span(range, 'advise')
    const rc = native.madvise(span.address, span.length, adviceValues[advice])
    if (rc < 0) throw new SyscallError(adviceSyscalls[advice], -rc)
  }

  /**
   * mremap(2) to `newLength`. Returns the Region that owns the memory now; this one is closed
   * (its views detached), unless `dontUnmap` kept the old range mapped (then both are live).
   */
  remap(newLength: number, options?: { mayMove?: boolean; dontUnmap?: boolean }): Region {
    const length = validatePageLength(newLength, 'newLength')
    const opts = validateObject(options, 'options')
    const mayMove = validateBoolean(opts.mayMove ?? true, 'options.mayMove')
    const dontUnmap = validateBoolean(opts.dontUnmap ?? false, 'options.dontUnmap')
    this.#assertOpen('remap')
    if (dontUnmap && (!mayMove || length !== this.#length || this.#kind !== 'anonymous')) {
      throw outOfRange('options.dontUnmap', 'used with mayMove, the same length and an anonymous Region (MREMAP_DONTUNMAP)', true)
    }
    const flags = (mayMove ? C.MREMAP_MAYMOVE : 0) | (dontUnmap ? C.MREMAP_DONTUNMAP : 0)
    const address = check(native.mremap(this.#address, this.#length, length, flags, 0), 'mremap', `${this.#length} -> ${length} bytes`)
    const pageProt = new Uint8Array(length / pageSize).fill(this.#pageProt[this.#pageProt.length - 1])
    pageProt.set(this.#pageProt.subarray(0, Math.min(this.#pageProt.length, pageProt.length)))
    if (dontUnmap) {
      const moved = new Region(address, length, 0, this.#kind, -1, this.#path)
      moved.#pageProt = pageProt
      return moved
    }
    // The old range no longer exists: retire this object without unmapping anything.
    const fd = this.#fd
    this.#retire()
    const moved = new Region(address, length, 0, this.#kind, fd, this.#path)
    moved.#pageProt = pageProt
    return moved
  }

  /** Unmaps the Region. Idempotent; views become length 0; never throws for a closed Region. */
  close(): void {
    if (this.#closed) return
    const { address, length } = { address: this.#address, length: this.#length }
    const fd = this.#fd
    this.#retire()
    native.munmap(address, length)
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
    for (let page = first; page < first + span.length / pageSize; page++) {
      if ((this.#pageProt[page] & C.PROT_READ) === 0) {
        throw new InvalidStateError('ERR_REGION_PROTECTION', `Cannot ${operation}: page ${page} of the Region is not readable`)
      }
    }
    return span
  }

  /** @internal Validated absolute span of `range` (the whole Region when omitted). */
  span(range: Range | undefined, operation: string): Span {
    return this.#span(range, operation)
  }

  #span(range: Range | undefined, operation: string): Span {
    this.#assertOpen(operation)
    if (range === undefined) return { address: this.#address, length: this.#length }
    if (range === null || typeof range !== 'object') throw invalidArgType('range', 'an object like { offset, length }', range)
    const offset = validatePageOffset(range.offset, 'range.offset')
    const length = validatePageLength(range.length, 'range.length')
    if (offset + length > this.#length) {
      throw outOfRange('range', `inside the Region (offset + length <= ${this.#length})`, `offset ${offset} + length ${length}`)
    }
    return { address: this.#address + offset, length }
  }

  #assertOpen(operation: string): void {
    if (this.#closed) throw new InvalidStateError('ERR_REGION_CLOSED', `Cannot ${operation}: the Region is closed`)
  }

  #detach(): void {
    if (this.#buffer !== null) native.detach(this.#buffer)
    this.#buffer = null
    this.#bytes = null
  }

  /** Marks closed, runs hooks, detaches views; the caller decides what happens to the memory. */
  #retire(): void {
    for (const hook of this.#hooks) {
      try {
        hook(this)
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

/** @internal Validated span of a live Region, for the other modules. */
export function resolveSpan(region: unknown, range: Range | undefined, operation: string): Span {
  if (!(region instanceof Region)) throw invalidArgType('region', 'an instance of Region', region)
  return region.span(range, operation)
}
