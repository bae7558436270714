// Page content for the user-space deduplicator: page hashes, and the twin index that cooperating
// processes share ("the unstable tree in user space", native/twin_index.cc and twin_index.h).
import fs from 'node:fs'
import { types } from 'node:util'
import { checkHandle, native, pageSize, type TwinIndexHandle } from './native.ts'
import { check, codedError } from './errors.ts'
import { openRegularFile, Region, type Range } from './region.ts'
import { assertInternal, guardReceivers, internal, type Internal } from './internal.ts'
import { invalidArgType, invalidArgValue, outOfRange, readOptions, validateInteger } from './validate.ts'

// A caller's Region is a real one (the brand check), but its prototype is the caller's to swap:
// its span and kind are read through Region's own methods, taken here before any caller code ran.
/** The call each twinIndexCreate failure stage names. */
const createSyscalls = new Map(Object.entries({
  memfdCreate: 'memfd_create', ftruncate: 'ftruncate', addSeals: 'fcntl(F_ADD_SEALS)', mmap: 'mmap',
} satisfies Record<keyof typeof native.twinIndexCreateStage, string>).map(([stage, syscall]) => [native.twinIndexCreateStage[stage as keyof typeof native.twinIndexCreateStage], syscall]))

const isRegion = Region.isRegion
const readableSpan = Region.prototype.readableSpan
const regionKind = Object.getOwnPropertyDescriptor(Region.prototype, 'kind')!.get!
/** %TypedArray%.prototype.length: a typed array's own length, whatever a subclass says. */
const typedArrayLength = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(Uint8Array.prototype), 'length')!.get!

/** Content hashes (64-bit XXH64) of the Region's pages (or a range): equal content, equal hash. */
export function hashPages(region: Region, range?: Range): BigUint64Array {
  if (!isRegion(region)) throw invalidArgType('region', 'an instance of Region', region)
  const span = readableSpan.call(region, range, 'hashPages')
  const pages = span.length / pageSize
  const indexes = new Uint32Array(pages).map((_, i) => i)
  const out = new BigUint64Array(pages)
  // A file's pages are copied through the kernel first: a truncated file is EFAULT, not SIGBUS.
  check(native.hashPages(span.address, indexes, pages, out, regionKind.call(region) === 'file' ? 1 : 0), 'pread(/proc/self/mem)', 'hashPages')
  return out
}

/**
 * The hashes a TwinIndex method was given, and how many: a real BigUint64Array (util.types, not
 * instanceof, which an object made from BigUint64Array.prototype passes), whose `length` (a
 * subclass may define its own) is read once and must be its own length.
 */
function readHashes(hashes: unknown): { hashes: BigUint64Array; count: number } {
  if (!types.isBigUint64Array(hashes)) throw invalidArgType('hashes', 'a BigUint64Array', hashes)
  const own = typedArrayLength.call(hashes) as number
  const count = hashes.length
  if (typeof count !== 'number') throw invalidArgType('hashes.length', 'of type number', count)
  if (count !== own) throw outOfRange('hashes.length', `${own} (the BigUint64Array's own length)`, count)
  return { hashes, count }
}

const handles = new WeakMap<TwinIndex, TwinIndexHandle>()

/**
 * The native handle of an open index; ERR_TWIN_INDEX_CLOSED once closed. Taken right before each
 * native call (no JS runs in between): native code refuses a closed handle as a bypass of lib/.
 */
export function twinIndexHandle(index: TwinIndex, operation: string): TwinIndexHandle {
  const handle = handles.get(index)
  if (handle === undefined) throw invalidArgType('options.index', 'a TwinIndex', index)
  if (index.closed) throw codedError('ERR_TWIN_INDEX_CLOSED', operation)
  return handle
}

/** Options of `TwinIndex.create()`. */
export interface TwinIndexOptions {
  /** Entries (a power of two, 64 … TwinIndex.maxSlots = 2^28; 8 bytes each). One per distinct
   *  content held; default 2^18. Only the pages of slots ever used take memory. */
  slots?: number
}

/**
 * A content index shared by cooperating processes: for each page content (by hash), how many
 * pages hold it anywhere. A Deduplicator merges a page only when the index says another page has
 * the same content; the kernel's own byte compare in the merge is the proof (a hash collision
 * only fails to share).
 *
 * It lives in a memfd sealed against shrinking and growing (F_SEAL_SHRINK | F_SEAL_GROW |
 * F_SEAL_SEAL), mapped shared by each process; every update is a single compare-and-swap of one
 * 64-bit entry, so a participant killed at any point leaves no lock and no torn entry behind
 * (only its pages stay counted as holders). Create it in one process, pass `index.path` (or the
 * inherited descriptor) to the others, and TwinIndex.open() it there.
 */
export class TwinIndex {
  /**
   * The most slots an index may have (2^28: a 2 GiB memfd, for up to 2^28 distinct page contents,
   * 1 TiB of 4 KiB pages); create() throws a RangeError (ERR_OUT_OF_RANGE) above it, and open()
   * refuses a larger one. Creating it commits no memory: a free slot is a zero word, which is what
   * a fresh memfd reads as, so only the header page is written; a slot's page is committed when an
   * entry first lands in it.
   */
  static readonly maxSlots: number = 2 ** 28

  #fd: number
  #slots: number
  #closed = false

  static {
    guardReceivers(TwinIndex, (value) => #fd in value)
  }

  private constructor(token: Internal, handle: TwinIndexHandle) {
    assertInternal(token, new.target, TwinIndex, 'TwinIndex.create() or TwinIndex.open()')
    handles.set(this, handle)
    const info = new Float64Array(2) // fd and slots only (no syscall: it cannot fail); used slots would read the index
    native.twinIndexInfo(handle, info)
    this.#fd = info[0]
    this.#slots = info[1]
  }

  /** Creates a new, empty index in a sealed memfd (nothing but its header page is written). */
  static create(options?: TwinIndexOptions): TwinIndex {
    const opts = readOptions(options, 'options', ['slots'])
    const slots = validateInteger(opts.slots ?? 2 ** 18, 'options.slots', 64, TwinIndex.maxSlots)
    if ((slots & (slots - 1)) !== 0) throw outOfRange('options.slots', 'a power of two', slots)
    const failedStage = new Uint32Array(1)
    const handle = native.twinIndexCreate(slots, failedStage)
    const context = `twin index of ${slots} slots`
    const syscall = createSyscalls.get(failedStage[0]) ?? ''
    if (typeof handle === 'number' && syscall === '') {
      throw codedError('ERR_INTERNAL_ASSERTION', `${context}: twinIndexCreate returned ${handle} with failure stage ${failedStage[0]}, which names no call (native/twin_index.cc and lib/ disagree)`)
    }
    return new TwinIndex(internal, checkHandle(handle, syscall, context))
  }

  /**
   * Opens an index another process created: by path (its `index.path`, /proc/<pid>/fd/<n>) or
   * by a descriptor this process inherited. The file must be a memfd sealed against shrinking and
   * growing with a twin index inside: anything else is refused (a file someone could truncate
   * would make this process SIGBUS). It never blocks: a path that is not a regular file (a FIFO,
   * a directory, a device) is a TypeError (ERR_INVALID_ARG_VALUE) without being opened, and a file
   * another process holds a lease on (fcntl F_SETLEASE) is a SyscallError EAGAIN.
   */
  static open(pathOrFd: string | number): TwinIndex {
    let path: string
    if (typeof pathOrFd === 'number') path = `/proc/self/fd/${validateInteger(pathOrFd, 'pathOrFd', 0, 2 ** 31 - 1)}`
    else if (typeof pathOrFd === 'string' && pathOrFd.length > 0 && !pathOrFd.includes('\0')) path = pathOrFd
    else throw invalidArgType('pathOrFd', 'a path (string) or a file descriptor (number)', pathOrFd)
    const fd = openRegularFile(path, fs.constants.O_RDWR, 'pathOrFd', pathOrFd, 'a memfd')
    // The fd is the handle's on success only: a refusal (why, as a string) or an errno leaves it ours.
    const opened = native.twinIndexOpen(fd)
    if (typeof opened === 'string') {
      fs.closeSync(fd)
      throw invalidArgValue('pathOrFd', opened, pathOrFd)
    }
    if (typeof opened === 'number') fs.closeSync(fd)
    return new TwinIndex(internal, checkHandle(opened, 'mmap', path))
  }

  /** A path another process of this user can TwinIndex.open() while this one keeps it open. */
  get path(): string {
    if (this.#closed) throw codedError('ERR_TWIN_INDEX_CLOSED', 'read path')
    return `/proc/${process.pid}/fd/${this.#fd}`
  }
  /** The memfd holding the index, -1 once closed. */
  get fd(): number {
    return this.#closed ? -1 : this.#fd
  }
  /** Number of entries (a power of two). */
  get slots(): number {
    return this.#slots
  }
  /** True once close() ran. */
  get closed(): boolean {
    return this.#closed
  }
  /** Entries with at least one holder now (read from the index's pages that hold entries only). */
  get usedSlots(): number {
    const info = new Float64Array(3)
    check(native.twinIndexInfo(twinIndexHandle(this, 'read usedSlots'), info), 'lseek(SEEK_DATA)', 'read usedSlots')
    return info[2]
  }

  /**
   * Counts one more holder of each hash; returns the holders of each right after. A hash that
   * finds no free slot near it is an Error ERR_TWIN_INDEX_FULL; the hashes before it were counted.
   */
  add(hashes: BigUint64Array): Uint32Array {
    return this.#update(hashes, 1, 'add')
  }
  /** Counts one holder fewer of each hash; returns the holders left. */
  release(hashes: BigUint64Array): Uint32Array {
    return this.#update(hashes, -1, 'release')
  }
  /** Holders of each hash (no change). */
  holders(hashes: BigUint64Array): Uint32Array {
    return this.#update(hashes, 0, 'holders')
  }

  /**
   * Takes the merge turn of everyone sharing this index, for at most `leaseMs` (default 10000):
   * a token for endMergeTurn(), or null while another live thread has it. MADV_MERGE serialises
   * all callers on one kernel mutex whose waiters spin, so processes that merge at once only
   * burn CPU; Deduplicators with SKSM take turns through this, and code calling sksm.merge()
   * next to them can too. A turn ends early when its thread exits, so a crash blocks no one.
   */
  tryMergeTurn(options?: { leaseMs?: number }): bigint | null {
    const opts = readOptions(options, 'options', ['leaseMs'])
    const leaseMs = validateInteger(opts.leaseMs ?? 10_000, 'options.leaseMs', 1, 3_600_000)
    const word = native.twinIndexTakeTurn(twinIndexHandle(this, 'tryMergeTurn'), leaseMs)
    return word === 0n ? null : word
  }
  /** Ends the turn tryMergeTurn() gave (nothing if it already expired and someone else took it). */
  endMergeTurn(turn: bigint): void {
    if (typeof turn !== 'bigint' || turn <= 0n || turn >= 2n ** 64n) throw invalidArgType('turn', 'a token from tryMergeTurn()', turn)
    native.twinIndexGiveTurn(twinIndexHandle(this, 'endMergeTurn'), turn)
  }

  /** Unmaps the index and closes the descriptor (other processes keep theirs). Idempotent. */
  close(): void {
    if (this.#closed) return
    this.#closed = true
    native.twinIndexClose(handles.get(this)!)
  }
  [Symbol.dispose](): void {
    this.close()
  }

  #update(value: BigUint64Array, delta: -1 | 0 | 1, operation: string): Uint32Array {
    const { hashes, count } = readHashes(value)
    const holders = new Uint32Array(count)
    const updated = native.twinIndexUpdate(twinIndexHandle(this, operation), hashes, count, delta, holders)
    if (updated < count) {
      throw codedError('ERR_TWIN_INDEX_FULL', this.#slots, updated, count)
    }
    return holders
  }
}

