// Page content for the user-space deduplicator: page hashes, and the twin index that cooperating
// processes share ("the unstable tree in user space", native/content.cc).
import fs from 'node:fs'
import { native, constants as C, pageSize, type TwinIndexHandle } from './native.ts'
import { check, codedError, fsCall, SyscallError } from './errors.ts'
import { Region, type Range } from './region.ts'
import { assertInternal, guardReceivers, internal, type Internal } from './internal.ts'
import { invalidArgType, invalidArgValue, outOfRange, readOptions, validateInteger } from './validate.ts'

/** Content hashes (64-bit XXH64) of the Region's pages (or a range): equal content, equal hash. */
export function hashPages(region: Region, range?: Range): BigUint64Array {
  if (!Region.isRegion(region)) throw invalidArgType('region', 'an instance of Region', region)
  const span = region.readableSpan(range, 'hashPages')
  const pages = span.length / pageSize
  const indexes = new Uint32Array(pages).map((_, i) => i)
  const out = new BigUint64Array(pages)
  // A file's pages are copied through the kernel first: a truncated file is EFAULT, not SIGBUS.
  check(native.hashPages(span.address, indexes, pages, out, region.kind === 'file' ? 1 : 0), 'pread(/proc/self/mem)', 'hashPages')
  return out
}

const handles = new WeakMap<TwinIndex, TwinIndexHandle>()

/** The native handle of an open index (for lib/deduplicator.ts); ERR_TWIN_INDEX_CLOSED once closed. */
export function twinIndexHandle(index: TwinIndex, operation: string): TwinIndexHandle {
  const handle = handles.get(index)
  if (handle === undefined) throw invalidArgType('options.index', 'a TwinIndex', index)
  if (index.closed) throw codedError('ERR_TWIN_INDEX_CLOSED', `Cannot ${operation}: the TwinIndex is closed`)
  return handle
}

export interface TwinIndexOptions {
  /** Entries (a power of two, 64 … TwinIndex.maxSlots = 2^28; 8 bytes each). One per distinct
   *  content held; default 2^18. Only the pages of slots ever used take memory. */
  slots?: number
}

/** What a non-regular file is, for TwinIndex.open's refusal. */
function fileKind(stats: fs.Stats): string {
  if (stats.isFIFO()) return 'a FIFO'
  if (stats.isDirectory()) return 'a directory'
  if (stats.isSocket()) return 'a socket'
  if (stats.isCharacterDevice()) return 'a character device'
  if (stats.isBlockDevice()) return 'a block device'
  return 'not a regular file'
}

/**
 * Opens a would-be index for reading and writing without blocking, as Region.file opens its file
 * (lib/region.ts openRegularFile, which opens read-only): O_PATH first (opens nothing: a FIFO is not
 * opened, so neither waits for nor releases a peer; a device runs no open handler), fstat, and only
 * a regular file (a memfd is one) is reopened through /proc/self/fd (the same inode whatever the
 * path does since), O_NONBLOCK: a file another process holds a lease on is EAGAIN at once instead
 * of a wait of up to lease-break-time (45 s) on the event loop.
 */
function openIndexFile(path: string, pathOrFd: string | number): number {
  const pathFd = fsCall('open', path, () => fs.openSync(path, C.O_PATH))
  try {
    const stats = fsCall('fstat', path, () => fs.fstatSync(pathFd))
    if (!stats.isFile()) throw invalidArgValue('pathOrFd', `is ${fileKind(stats)}, not a memfd`, pathOrFd)
    return fsCall('open', path, () => fs.openSync(`/proc/self/fd/${pathFd}`, fs.constants.O_RDWR | C.O_NONBLOCK))
  } finally {
    fs.closeSync(pathFd)
  }
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
    const info = new Float64Array(2) // fd and slots only: counting used slots reads the index
    check(native.twinIndexInfo(handle, info), 'twinIndexInfo')
    this.#fd = info[0]
    this.#slots = info[1]
  }

  /** Creates a new, empty index in a sealed memfd (nothing but its header page is written). */
  static create(options?: TwinIndexOptions): TwinIndex {
    const opts = readOptions(options, 'options', ['slots'])
    const slots = validateInteger(opts.slots ?? 2 ** 18, 'options.slots', 64, TwinIndex.maxSlots)
    if ((slots & (slots - 1)) !== 0) throw outOfRange('options.slots', 'a power of two', slots)
    const handle = native.twinIndexCreate(slots)
    if (typeof handle === 'number') throw new SyscallError('memfd_create', -handle, `twin index of ${slots} slots`)
    return new TwinIndex(internal, handle)
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
    const fd = openIndexFile(path, pathOrFd)
    const handle = native.twinIndexOpen(fd)
    if (typeof handle !== 'number') return new TwinIndex(internal, handle)
    fs.closeSync(fd)
    if (handle === 1) throw invalidArgValue('pathOrFd', 'is not a memfd sealed against shrinking and growing', pathOrFd)
    if (handle === 2) throw invalidArgValue('pathOrFd', 'is not a memdedup twin index (size or header)', pathOrFd)
    throw new SyscallError('mmap', -handle, path)
  }

  /** A path another process of this user can TwinIndex.open() while this one keeps it open. */
  get path(): string {
    if (this.#closed) throw codedError('ERR_TWIN_INDEX_CLOSED', 'Cannot read path: the TwinIndex is closed')
    return `/proc/${process.pid}/fd/${this.#fd}`
  }
  get fd(): number {
    return this.#closed ? -1 : this.#fd
  }
  get slots(): number {
    return this.#slots
  }
  get closed(): boolean {
    return this.#closed
  }
  /** Entries with at least one holder now (read from the index's pages that hold entries only). */
  get usedSlots(): number {
    const info = new Float64Array(3)
    check(native.twinIndexInfo(twinIndexHandle(this, 'read usedSlots'), info), 'twinIndexInfo')
    return info[2]
  }

  /** Counts one more holder of each hash; returns the holders of each right after. */
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
    if (typeof word === 'number') check(word, 'twinIndexTakeTurn')
    return word === 0n ? null : (word as bigint)
  }
  /** Ends the turn tryMergeTurn() gave (nothing if it already expired and someone else took it). */
  endMergeTurn(turn: bigint): void {
    if (typeof turn !== 'bigint' || turn <= 0n || turn >= 2n ** 64n) throw invalidArgType('turn', 'a token from tryMergeTurn()', turn)
    check(native.twinIndexGiveTurn(twinIndexHandle(this, 'endMergeTurn'), turn), 'twinIndexGiveTurn')
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

  #update(hashes: BigUint64Array, delta: -1 | 0 | 1, operation: string): Uint32Array {
    const handle = twinIndexHandle(this, operation)
    if (!(hashes instanceof BigUint64Array)) throw invalidArgType('hashes', 'a BigUint64Array', hashes)
    const holders = new Uint32Array(hashes.length)
    const rc = native.twinIndexUpdate(handle, hashes, hashes.length, delta, holders)
    check(rc, 'twinIndexUpdate', () => `the index has no free slot near a hash (${this.#slots} slots)`)
    return holders
  }
}

