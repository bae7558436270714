/**
 * mshare (msharefs, the page-table sharing series; not in mainline): processes that mmap one
 * msharefs file share the page tables of its region, so N processes mapping S bytes cost one
 * set of PTEs (S / 4 KiB * 8 bytes) instead of N. An msharefs file is a control file: its size
 * (ftruncate, once, a multiple of mshare_info's alignment) is the region; memory is placed in
 * the region with MSHAREFS_CREATE_MAPPING and removed with MSHAREFS_UNMAP; processes attach by
 * mmap()ing the whole file. Semantics of the v3 series (Aug 2025) that shape this API:
 *  - an attachment is one VMA the kernel will not split: mprotect() on it, or a munmap() or
 *    MAP_FIXED over part of it, is EINVAL (protection is chosen per mapping, in the region);
 *  - the process that created the file owns the region: when it exits, everything mapped in
 *    the region is unmapped for every attacher (an attacher exiting changes nothing);
 *  - touching a part of the region where nothing is mapped is SIGSEGV, so views are handed out
 *    only over ranges known to be mapped (mapped through this handle, or declared at open()).
 *
 * @module
 */
import fs from 'node:fs'
import path from 'node:path'
import { native, constants as C, pageSize } from './native.ts'
import { check, codedError, FeatureUnavailableError, fsCall, parseError } from './errors.ts'
import { assertInternal, guardReceivers, internal, type Internal } from './internal.ts'
import { maxRegionLength, protBits, protections, Region, type Protection, type Range } from './region.ts'
import { invalidArgType, invalidArgValue, outOfRange, readOptions, readRange, validateBoolean, validateInteger, validateOneOf, validatePageLength, validatePageOffset } from './validate.ts'

/** Where msharefs is mounted (the series' documented mount point). */
export const mountPoint = '/sys/fs/mshare'
const infoFile = path.join(mountPoint, 'mshare_info')
const M = native.mshareConstants
const hugePageSize = 2 * 1024 * 1024
// A memfd Region handed to mapMemfd() is a real one (the brand check), but its prototype is the
// caller's to swap: its length and descriptor are read through Region's own getters, taken here
// before any caller code ran (a length that lied would map past the memfd's end: SIGBUS).
const isRegion = Region.isRegion
const regionGetter = <T>(key: string) => Object.getOwnPropertyDescriptor(Region.prototype, key)!.get! as (this: Region) => T
const memfdOf = {
  closed: regionGetter<boolean>('closed'),
  kind: regionGetter<string>('kind'),
  length: regionGetter<number>('length'),
  fd: regionGetter<number>('fd'),
}

/** msharefs is compiled into this kernel (listed in /proc/filesystems). */
export function available(): boolean {
  return probe() === ''
}

/** Why mshare cannot be used here ('' when it can): for skip reasons and FeatureUnavailableError. */
export function probe(): string {
  let filesystems = ''
  try {
    filesystems = fs.readFileSync('/proc/filesystems', 'utf8')
  } catch {
    return '/proc/filesystems is not readable'
  }
  if (!/\tmsharefs$/m.test(filesystems)) return 'msharefs is not in /proc/filesystems (kernel without the mshare series)'
  return ''
}

/** Whether msharefs is mounted at mountPoint (/proc/self/mounts). */
export function mounted(): boolean {
  const mounts = fsCall('open', '/proc/self/mounts', () => fs.readFileSync('/proc/self/mounts', 'utf8'))
  return mounts.split('\n').some((line) => {
    const [, target, type] = line.split(' ')
    return target === mountPoint && type === 'msharefs'
  })
}

/**
 * Mounts msharefs at /sys/fs/mshare unless it already is (needs CAP_SYS_ADMIN: SyscallError
 * EPERM otherwise). FeatureUnavailableError on a kernel without msharefs.
 */
export function mount(): void {
  const why = probe()
  if (why) throw new FeatureUnavailableError('mshare', why)
  if (mounted()) return
  check(native.mountMsharefs(mountPoint), 'mount(msharefs)', mountPoint)
}

/**
 * msharefs made ready for use: mounted first (mount()) when `doMount`, else only checked to be in
 * this kernel. FeatureUnavailableError on a kernel without msharefs, before any other syscall.
 */
function prepare(doMount: boolean): void {
  if (doMount) return mount()
  const why = probe()
  if (why) throw new FeatureUnavailableError('mshare', why)
}

/** mshare_info: a positive multiple of the page size, or ERR_PARSE_KERNEL_FILE (no syscall failed). */
function readAlignment(): number {
  const text = fsCall('open', infoFile, () => fs.readFileSync(infoFile, 'utf8'))
  const digits = text.trim()
  const value = /^[1-9][0-9]*$/.test(digits) ? Number(digits) : Number.NaN
  if (!Number.isSafeInteger(value) || value % pageSize !== 0) throw parseError(infoFile, text, `a positive multiple of the page size (${pageSize}) in decimal`)
  return value
}

/**
 * The alignment (and size granule) of mshare regions: /sys/fs/mshare/mshare_info, in bytes.
 * Mounts msharefs first unless `mount: false`, as create() and open() do (the file exists only
 * where msharefs is mounted). FeatureUnavailableError on a kernel without msharefs.
 */
export function alignment(options?: { mount?: boolean }): number {
  const opts = readOptions(options, 'options', ['mount'])
  prepare(validateBoolean(opts.mount ?? true, 'options.mount'))
  return readAlignment()
}

/**
 * `options.mapped` of MshareRegion.open(), read once into plain ranges before any syscall: an
 * array whose length is checked before it is used (a subclass or Proxy may say anything), and
 * page-aligned { offset, length } objects. Whether each lies inside the region is checked once
 * its size is known.
 */
function readMapped(value: unknown, name: string): Array<{ offset: number; length: number }> {
  if (!Array.isArray(value)) throw invalidArgType(name, 'an array of { offset, length }', value)
  const count = validateInteger(value.length, `${name}.length`, 0, 2 ** 32 - 1)
  const out: Array<{ offset: number; length: number }> = []
  for (let i = 0; i < count; i++) {
    const item: unknown = value[i]
    const r = readRange(item, `${name}[${i}]`)
    if (r === undefined) throw invalidArgType(`${name}[${i}]`, 'an object { offset, length }', item)
    out.push({ offset: validatePageOffset(r.offset, `${name}[${i}].offset`), length: validatePageLength(r.length, `${name}[${i}].length`) })
  }
  return out
}

function validateName(value: unknown): string {
  if (typeof value !== 'string') throw invalidArgType('name', 'of type string', value)
  if (value.length === 0 || value.length > 255 || /[/\0]/.test(value) || value === '.' || value === '..' || value === 'mshare_info') {
    throw invalidArgValue('name', "must be a file name (1-255 characters, no '/' or null byte, not '.', '..' or 'mshare_info')", value)
  }
  return value
}

/** Sorted, non-overlapping [start, end) byte ranges of the region known to hold memory. */
class RangeSet {
  #ranges: Array<[number, number]> = []

  add(start: number, end: number): void {
    this.remove(start, end)
    this.#ranges.push([start, end])
    this.#ranges.sort((a, b) => a[0] - b[0])
    const merged: Array<[number, number]> = []
    for (const r of this.#ranges) {
      const last = merged[merged.length - 1]
      if (last && last[1] >= r[0]) last[1] = Math.max(last[1], r[1])
      else merged.push([r[0], r[1]])
    }
    this.#ranges = merged
  }

  remove(start: number, end: number): void {
    const out: Array<[number, number]> = []
    for (const [s, e] of this.#ranges) {
      if (e <= start || s >= end) out.push([s, e])
      else {
        if (s < start) out.push([s, start])
        if (e > end) out.push([end, e])
      }
    }
    this.#ranges = out
  }

  covers(start: number, end: number): boolean {
    return this.#ranges.some(([s, e]) => s <= start && end <= e)
  }

  list(): Range[] {
    return this.#ranges.map(([s, e]) => ({ offset: s, length: e - s }))
  }
}

// Views of attachments: counted until garbage-collected (see Region's vacate(): a view's pointer
// may still be used by native code after it is detached, so the memory stays until then).
interface Views {
  live: number
  /** Set when the attachment closed while views were live: unmapped at zero views. */
  pending: { address: number; length: number } | null
}
const viewCollected = new FinalizationRegistry<Views>((views) => {
  if (--views.live > 0 || views.pending === null) return
  native.munmap(views.pending.address, views.pending.length)
  views.pending = null
})
const attachmentFinalizer = new FinalizationRegistry<{ address: number; length: number; views: Views }>((held) => {
  if (held.views.live === 0) native.munmap(held.address, held.length)
  else held.views.pending = { address: held.address, length: held.length }
})

/**
 * Every live attachment of this process, by region (the file's inode): unmapping or replacing
 * memory through one handle detaches the views of all of them, whichever handle made them.
 */
const attachmentsByRegion = new Map<string, Set<WeakRef<MshareAttachment>>>()
/** Every open handle of this process, by region: memory gone through one is gone for all. */
const handlesByRegion = new Map<string, Set<WeakRef<MshareRegion>>>()
function forgetEverywhere(key: string, offset: number, length: number): void {
  const all = handlesByRegion.get(key)
  for (const ref of all ?? []) {
    const handle = ref.deref()
    if (handle) handle.forget(offset, length)
    else all!.delete(ref)
  }
}
function detachEverywhere(key: string, offset: number, length: number): void {
  const all = attachmentsByRegion.get(key)
  for (const ref of all ?? []) {
    const attachment = ref.deref()
    if (attachment) attachment.detachViews(offset, length)
    else all!.delete(ref) // collected without close(): its finalizer unmapped it
  }
}
const fdFinalizer = new FinalizationRegistry<number>((fd) => native.closeFd(fd))

/**
 * An msharefs file opened by this process: the region (its size), the memory in it, and the
 * attachments of this process. Created with MshareRegion.create() (this process owns the
 * region) or MshareRegion.open() (another process created it). close() closes the attachments
 * and the file; the region itself lives until unlink() and the last close and unmap.
 */
export class MshareRegion {
  #fd: number
  #name: string
  #size: number
  #owner: boolean
  #mapped = new RangeSet()
  #attachments = new Set<MshareAttachment>()
  /** dev:ino of the file, the key of attachmentsByRegion and handlesByRegion. */
  #key: string
  #ref: WeakRef<MshareRegion>
  #closed = false

  static {
    guardReceivers(MshareRegion, (value) => #fd in value)
  }

  /** Not callable from outside: use MshareRegion.create() or MshareRegion.open(). */
  private constructor(token: Internal, fd: number, name: string, size: number, owner: boolean) {
    assertInternal(token, new.target, MshareRegion, 'MshareRegion.create() or MshareRegion.open()')
    this.#fd = fd
    this.#name = name
    this.#size = size
    this.#owner = owner
    const stat = fsCall('fstat', `${mountPoint}/${name}`, () => fs.fstatSync(fd))
    this.#key = `${stat.dev}:${stat.ino}`
    fdFinalizer.register(this, fd, this)
    let handles = handlesByRegion.get(this.#key)
    if (!handles) handlesByRegion.set(this.#key, (handles = new Set()))
    this.#ref = new WeakRef(this)
    handles.add(this.#ref)
  }

  /**
   * Creates /sys/fs/mshare/<name> (O_EXCL: EEXIST if it exists) and sizes its region to `size`
   * bytes, a positive multiple of alignment(). Mounts msharefs first unless `mount: false`.
   * The calling process becomes the region's owner (its exit unmaps the region's memory).
   */
  static create(name: string, size: number, options?: { mount?: boolean }): MshareRegion {
    const file = validateName(name)
    const opts = readOptions(options, 'options', ['mount'])
    const doMount = validateBoolean(opts.mount ?? true, 'options.mount')
    const bytes = validateInteger(size, 'size', 1, maxRegionLength)
    prepare(doMount)
    const align = readAlignment()
    if (bytes % align !== 0) throw outOfRange('size', `a multiple of the mshare alignment (${align}, /sys/fs/mshare/mshare_info)`, size)
    const filePath = path.join(mountPoint, file)
    const fd = fsCall('open', filePath, () => fs.openSync(filePath, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600))
    try {
      check(native.ftruncate(fd, bytes), 'ftruncate', `${filePath} to ${bytes} bytes`)
    } catch (error) {
      fs.closeSync(fd)
      fs.rmSync(filePath, { force: true })
      throw error
    }
    return new MshareRegion(internal, fd, file, bytes, true)
  }

  /**
   * Opens an existing region. `mapped` declares the ranges the owner has mapped read-write
   * memory into (views are handed out only there: touching an empty part of a region, or
   * writing a read-only one, is SIGSEGV).
   */
  static open(name: string, options?: { mapped?: Range[]; mount?: boolean }): MshareRegion {
    const file = validateName(name)
    const opts = readOptions(options, 'options', ['mapped', 'mount'])
    const doMount = validateBoolean(opts.mount ?? true, 'options.mount')
    const mapped = readMapped(opts.mapped ?? [], 'options.mapped')
    prepare(doMount)
    const filePath = path.join(mountPoint, file)
    const fd = fsCall('open', filePath, () => fs.openSync(filePath, fs.constants.O_RDWR))
    try {
      const size = fsCall('fstat', filePath, () => fs.fstatSync(fd).size)
      // The kernel would open and even mmap it (EINVAL then): the region is not ready yet.
      if (size === 0) throw codedError('ERR_MSHARE_REGION_UNSIZED', filePath)
      for (const [i, { offset, length }] of mapped.entries()) {
        if (offset + length > size) throw outOfRange(`options.mapped[${i}]`, `inside the region (offset + length <= ${size})`, `offset ${offset} + length ${length}`)
      }
      const region = new MshareRegion(internal, fd, file, size, false)
      for (const { offset, length } of mapped) region.#mapped.add(offset, offset + length)
      return region
    } catch (error) {
      fs.closeSync(fd)
      throw error
    }
  }

  /** The region's name: its file name under the msharefs mount. */
  get name(): string {
    return this.#name
  }
  /** The msharefs file's path (`/sys/fs/mshare/<name>`). */
  get path(): string {
    return path.join(mountPoint, this.#name)
  }
  /** The region's size in bytes (the file's size). */
  get size(): number {
    return this.#size
  }
  /** The msharefs file descriptor (-1 once closed). */
  get fd(): number {
    return this.#fd
  }
  /** Whether this handle created the region (this process owns it). */
  get owner(): boolean {
    return this.#owner
  }
  /** True once close() ran. */
  get closed(): boolean {
    return this.#closed
  }
  /** Ranges known to hold read-write memory (views are handed out there): mapped through this handle or declared at open(). */
  get mapped(): Range[] {
    return this.#mapped.list()
  }

  /**
   * Places shared anonymous memory at `range` of the region (MSHAREFS_CREATE_MAPPING with
   * MAP_SHARED | MAP_FIXED | MAP_ANONYMOUS, replacing what was there). `hugetlb` uses 2 MiB
   * hugetlb pages (range 2 MiB-aligned; needs reserved huge pages).
   */
  mapAnonymous(range: Range, options?: { prot?: Protection; hugetlb?: boolean }): void {
    const opts = readOptions(options, 'options', ['prot', 'hugetlb'])
    const prot = protBits[validateOneOf(opts.prot ?? 'rw', 'options.prot', protections)]
    const hugetlb = validateBoolean(opts.hugetlb ?? false, 'options.hugetlb')
    this.#assertOpen('mapAnonymous')
    const { offset, length } = this.#range(range, 'range')
    if (hugetlb && (offset % hugePageSize !== 0 || length % hugePageSize !== 0)) {
      throw outOfRange('range', `2 MiB-aligned for hugetlb (offset and length multiples of ${hugePageSize})`, `offset ${offset} + length ${length}`)
    }
    // MAP_HUGE_2MB: log2(2 MiB) in the MAP_HUGE bits.
    const flags = C.MAP_SHARED | C.MAP_FIXED | C.MAP_ANONYMOUS | (hugetlb ? C.MAP_HUGETLB | (21 << M.MAP_HUGE_SHIFT) : 0)
    check(native.mshareCreateMapping(this.#fd, offset, length, 0, prot, flags, -1), 'ioctl(MSHAREFS_CREATE_MAPPING)', () => `anonymous ${length} bytes at offset ${offset} of ${this.path}`)
    this.#placed(offset, length, prot)
  }

  /**
   * Places the pages of a memfd Region at `range` of the region (MAP_SHARED | MAP_FIXED of its
   * fd from `fileOffset`): the memfd's memory, mapped once in the region for every attacher.
   * The Region must stay open while the region maps it only if the caller wants to use it too;
   * the mapping holds its own reference to the file.
   */
  mapMemfd(memfd: Region, range: Range, options?: { fileOffset?: number; prot?: Protection }): void {
    if (!isRegion(memfd)) throw invalidArgType('memfd', 'an instance of Region', memfd)
    const opts = readOptions(options, 'options', ['fileOffset', 'prot'])
    const fileOffset = validatePageOffset(opts.fileOffset ?? 0, 'options.fileOffset')
    const prot = protBits[validateOneOf(opts.prot ?? 'rw', 'options.prot', protections)]
    this.#assertOpen('mapMemfd')
    if (memfdOf.closed.call(memfd)) throw codedError('ERR_REGION_CLOSED', 'mapMemfd', 'the memfd Region')
    const kind = memfdOf.kind.call(memfd)
    if (kind !== 'memfd') throw invalidArgValue('memfd', 'must be a memfd Region (Region.memfd())', kind)
    const { offset, length } = this.#range(range, 'range')
    // Past the memfd's end the pages would SIGBUS; the memfd is sealed against shrinking.
    const memfdLength = memfdOf.length.call(memfd)
    if (fileOffset + length > memfdLength) {
      throw outOfRange('options.fileOffset', `<= ${memfdLength - length} (the memfd Region holds ${memfdLength} bytes)`, fileOffset)
    }
    const memfdFd = memfdOf.fd.call(memfd)
    check(native.mshareCreateMapping(this.#fd, offset, length, fileOffset, prot, C.MAP_SHARED | C.MAP_FIXED, memfdFd), 'ioctl(MSHAREFS_CREATE_MAPPING)', () => `memfd ${length} bytes at offset ${offset} of ${this.path}`)
    this.#placed(offset, length, prot)
  }

  /**
   * Removes the memory at `range` of the region (MSHAREFS_UNMAP) for every attacher. Views over
   * that range of every attachment of this process (through any handle) are detached first.
   */
  unmap(range: Range): void {
    this.#assertOpen('unmap')
    const { offset, length } = this.#range(range, 'range')
    detachEverywhere(this.#key, offset, length)
    forgetEverywhere(this.#key, offset, length)
    check(native.mshareUnmap(this.#fd, offset, length), 'ioctl(MSHAREFS_UNMAP)', () => `${length} bytes at offset ${offset} of ${this.path}`)
    this.#mapped.remove(offset, offset + length)
  }

  /**
   * Maps the whole region into this process (mmap MAP_SHARED of the file; the kernel aligns it
   * to the mshare alignment). `prot` 'r' maps it read-only in this process.
   */
  attach(options?: { prot?: 'r' | 'rw' }): MshareAttachment {
    const opts = readOptions(options, 'options', ['prot'])
    const prot = validateOneOf(opts.prot ?? 'rw', 'options.prot', ['r', 'rw'] as const)
    this.#assertOpen('attach')
    const address = check(native.mmap(0, this.#size, protBits[prot], C.MAP_SHARED, this.#fd, 0), 'mmap', () => `${this.path}, ${this.#size} bytes`)
    let all = attachmentsByRegion.get(this.#key)
    if (!all) attachmentsByRegion.set(this.#key, (all = new Set()))
    let ref: WeakRef<MshareAttachment>
    const attachment = makeAttachment(this, address, this.#size, prot, (a) => {
      this.#attachments.delete(a)
      all.delete(ref)
      if (all.size === 0 && attachmentsByRegion.get(this.#key) === all) attachmentsByRegion.delete(this.#key)
    })
    ref = new WeakRef(attachment)
    this.#attachments.add(attachment)
    all.add(ref)
    return attachment
  }

  /** Removes the file (the region goes when the last attachment and descriptor go). */
  unlink(): void {
    fsCall('unlink', this.path, () => fs.unlinkSync(this.path))
  }

  /** Closes every attachment of this handle, then the file descriptor. Idempotent. */
  close(): void {
    if (this.#closed) return
    for (const attachment of [...this.#attachments]) attachment.close()
    fdFinalizer.unregister(this)
    const handles = handlesByRegion.get(this.#key)
    handles?.delete(this.#ref)
    if (handles?.size === 0) handlesByRegion.delete(this.#key)
    native.closeFd(this.#fd)
    this.#fd = -1
    this.#closed = true
  }

  [Symbol.dispose](): void {
    this.close()
  }

  /** @internal [offset, offset + length) lost its memory (through any handle of this process). */
  forget(offset: number, length: number): void {
    this.#mapped.remove(offset, offset + length)
  }

  /** @internal Whether [offset, offset + length) holds memory known to this handle. */
  covers(offset: number, length: number): boolean {
    return this.#mapped.covers(offset, offset + length)
  }

  #range(range: unknown, name: string): { offset: number; length: number } {
    const r = readRange(range, name)
    if (r === undefined) throw invalidArgType(name, 'an object { offset, length }', range)
    const offset = validatePageOffset(r.offset, `${name}.offset`)
    const length = validatePageLength(r.length, `${name}.length`)
    if (offset + length > this.#size) throw outOfRange(name, `inside the region (offset + length <= ${this.#size})`, `offset ${offset} + length ${length}`)
    return { offset, length }
  }

  /** A mapping replaced [offset, offset + length): views only where every attacher may read and write. */
  #placed(offset: number, length: number, prot: number): void {
    const rw = C.PROT_READ | C.PROT_WRITE
    detachEverywhere(this.#key, offset, length)
    forgetEverywhere(this.#key, offset, length)
    if ((prot & rw) === rw) this.#mapped.add(offset, offset + length)
  }

  #assertOpen(operation: string): void {
    if (this.#closed) throw codedError('ERR_REGION_CLOSED', operation, 'the MshareRegion')
  }
}

let makeAttachment: (region: MshareRegion, address: number, length: number, prot: 'r' | 'rw', onClose: (a: MshareAttachment) => void) => MshareAttachment

/** The region mapped into this process (MshareRegion.attach()). */
export class MshareAttachment {
  #region: MshareRegion
  #address: number
  #length: number
  #prot: 'r' | 'rw'
  #views: Views = { live: 0, pending: null }
  /** Views handed out, by region offset, so unmap() and close() can detach them. */
  #buffers = new Set<{ ref: WeakRef<ArrayBuffer>; offset: number; length: number }>()
  #onClose: (a: MshareAttachment) => void
  #closed = false
  #token = {}

  static {
    makeAttachment = (region, address, length, prot, onClose) => new MshareAttachment(internal, region, address, length, prot, onClose)
    guardReceivers(MshareAttachment, (value) => #address in value)
  }

  /** Not callable from outside: use MshareRegion.attach(). */
  private constructor(token: Internal, region: MshareRegion, address: number, length: number, prot: 'r' | 'rw', onClose: (a: MshareAttachment) => void) {
    assertInternal(token, new.target, MshareAttachment, 'MshareRegion.attach()')
    this.#region = region
    this.#address = address
    this.#length = length
    this.#prot = prot
    this.#onClose = onClose
    attachmentFinalizer.register(this, { address, length, views: this.#views }, this.#token)
  }

  /** Where the region is mapped in this process (aligned to the region's size). */
  get address(): bigint {
    return BigInt(this.#address)
  }
  /** The attachment's length: the region's whole size. */
  get length(): number {
    return this.#length
  }
  /** True once close() ran (or the MshareRegion was closed). */
  get closed(): boolean {
    return this.#closed
  }

  /**
   * A zero-copy view of `range` of the region. Only over memory known to be mapped (else a
   * RangeError: an empty part of a region is SIGSEGV), and only on a read-write attachment.
   * Detached (length 0) when that memory is unmapped or replaced through this process (touching
   * it then would be SIGSEGV: await async consumers first); after close() it reads zeros.
   */
  view(range: Range): Uint8Array {
    this.#assertOpen('view')
    const r = readRange(range)
    if (r === undefined) throw invalidArgType('range', 'an object { offset, length }', range)
    const offset = validatePageOffset(r.offset, 'range.offset')
    const length = validatePageLength(validateInteger(r.length, 'range.length', 1, 2 ** 32), 'range.length')
    if (offset + length > this.#length) throw outOfRange('range', `inside the region (offset + length <= ${this.#length})`, `offset ${offset} + length ${length}`)
    if (!this.#region.covers(offset, length)) throw outOfRange('range', 'a part of the region with memory mapped in it (see MshareRegion.mapped)', `offset ${offset} + length ${length}`)
    if (this.#prot !== 'rw') throw codedError('ERR_REGION_PROTECTION', 'get MshareAttachment.view', 'it needs a read-write attachment; use read()')
    const buffer = native.wrap(this.#address + offset, length)
    this.#views.live++
    viewCollected.register(buffer, this.#views)
    this.#buffers.add({ ref: new WeakRef(buffer), offset, length })
    return new Uint8Array(buffer)
  }

  /**
   * Copies `range` out through the kernel (/proc/self/mem): an empty part of the region is a
   * SyscallError EFAULT, not a signal. The kernel reads only what this process's page
   * tables already reach: an attachment this process has not touched yet (through a view) is
   * EFAULT too, because v3 does not fault mshare memory in for GUP (its fault handler redirects
   * only real accesses to the region).
   */
  read(range: Range): Buffer {
    this.#assertOpen('read')
    const r = readRange(range)
    if (r === undefined) throw invalidArgType('range', 'an object { offset, length }', range)
    const offset = validateInteger(r.offset, 'range.offset')
    const length = validateInteger(r.length, 'range.length', 1, 2 ** 31)
    if (offset + length > this.#length) throw outOfRange('range', `inside the region (offset + length <= ${this.#length})`, `offset ${offset} + length ${length}`)
    const out = Buffer.allocUnsafe(length)
    check(native.readMemory(this.#address + offset, length, out), 'pread(/proc/self/mem)', () => `${length} bytes at offset ${offset} of an mshare attachment (nothing mapped there, or not yet touched by this process)`)
    return out
  }

  /**
   * mprotect(2) of the whole attachment. The v3 series refuses it (EINVAL: protection belongs
   * to the region's mappings, shared by all); kept so callers get the kernel's own answer.
   */
  protect(prot: Protection): void {
    const bits = protBits[validateOneOf(prot, 'prot', protections)]
    this.#assertOpen('protect')
    check(native.mprotect(this.#address, this.#length, bits), 'mprotect', () => `${prot} on an mshare attachment`)
  }

  /**
   * Unmaps the attachment. Views keep their length and read zeros (private zero pages stand in)
   * until they are collected: a Node API still using one (zlib, dgram) finishes, as with Region.
   * Idempotent.
   */
  close(): void {
    if (this.#closed) return
    this.#closed = true
    this.#buffers.clear()
    attachmentFinalizer.unregister(this.#token)
    this.#onClose(this)
    if (this.#views.live === 0) {
      native.munmap(this.#address, this.#length)
      return
    }
    // A view may still be in use (JS or native code): private zero pages stand in (MAP_FIXED over
    // the whole VMA, which the kernel allows) until the views are collected.
    const flags = C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_NORESERVE | C.MAP_FIXED
    if (native.mmap(this.#address, this.#length, C.PROT_READ | C.PROT_WRITE, flags, -1, 0) < 0) native.munmap(this.#address, this.#length)
    else this.#views.pending = { address: this.#address, length: this.#length }
  }

  [Symbol.dispose](): void {
    this.close()
  }

  /** @internal Detaches the views overlapping [offset, offset + length). */
  detachViews(offset: number, length: number): void {
    for (const entry of this.#buffers) {
      const buffer = entry.ref.deref()
      if (buffer === undefined) {
        this.#buffers.delete(entry)
        continue
      }
      if (entry.offset < offset + length && offset < entry.offset + entry.length) {
        native.detach(buffer)
        this.#buffers.delete(entry)
      }
    }
  }

  #assertOpen(operation: string): void {
    if (this.#closed) throw codedError('ERR_REGION_CLOSED', operation, 'the MshareAttachment')
  }
}
