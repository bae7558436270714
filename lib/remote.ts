/**
 * Another process, unmodified and uncooperative, seen the way ksmd sees it: its mappings
 * (/proc/<pid>/maps, smaps' VmFlags), its writes (soft-dirty: /proc/<pid>/clear_refs, then
 * PAGEMAP_SCAN on /proc/<pid>/pagemap), its content (/proc/<pid>/mem: a copy, no page pinned) and
 * advice on its memory (process_madvise through a pidfd). What a deduplicator of other processes
 * (the daemon) builds on. `TargetProcess.open(pid)` holds a pidfd and the /proc/<pid> directory,
 * and opens every file relative to that directory, so a pid recycled after the target exits can
 * never point these calls at another process.
 *
 * @module
 */
import fs from 'node:fs'
import { native, constants as C, pageSize } from './native.ts'
import { check, codedError, errno, fsCall, parseError } from './errors.ts'
import { assertInternal, guardReceivers, internal, type Internal } from './internal.ts'
import { readEntries, readScanRequest, scanAllPagemap, scanPagemap, scanRequestKeys, type PagemapEntries, type ScanOptions, type ScanResult } from './pagemap.ts'
import { adviceValues } from './region.ts'
import { invalidArgType, invalidArgValue, outOfRange, readOptions, validateBoolean, validateInteger, validateOneOf, validatePageLength } from './validate.ts'

const R = native.remoteConstants

/** Highest address + 1 these calls take: addresses travel to native code as exact doubles. */
const addressLimit = 2n ** 53n

/**
 * Advice `TargetProcess.madvise()` gives another process's memory: none of it changes what the
 * memory reads. 'cold', 'pageout', 'willneed' and 'collapse' are what process_madvise() accepts
 * for another process (5.10+, 'collapse' 6.1+); 'merge' (MADV_MERGE) and 'unmergeable' are
 * refused with EINVAL until the kernel accepts them remotely (features().remoteMerge).
 */
export const targetAdviceValues = {
  cold: adviceValues.cold,
  pageout: adviceValues.pageout,
  willneed: adviceValues.willneed,
  collapse: adviceValues.collapse,
  merge: C.MADV_MERGE,
  unmergeable: C.MADV_UNMERGEABLE,
} as const
/** The advice `TargetProcess.madvise()` takes (keys of targetAdviceValues). */
export type TargetAdvice = keyof typeof targetAdviceValues
const targetAdviceNames = Object.keys(targetAdviceValues) as TargetAdvice[]
const targetAdviceSyscalls = Object.fromEntries(
  targetAdviceNames.map((a) => [a, `process_madvise(MADV_${a.toUpperCase()})`]),
) as Record<TargetAdvice, string>

/** A range of another process's address space: `start` page-aligned, `length` a multiple of the page size. */
export interface TargetRange {
  start: bigint
  length: number
}

/** One line of /proc/<pid>/maps (with `mappings({ vmFlags: true })`, its smaps VmFlags too). */
export interface Mapping {
  /** First address. */
  start: bigint
  /** Address after the last byte. */
  end: bigint
  /** 'rw-p': read, write, execute, then p(rivate) or s(hared). */
  perms: string
  /** Offset in the file mapped (0 for anonymous memory). */
  offset: bigint
  /** Device of the file, 'major:minor' in hex ('00:00' for anonymous memory). */
  device: string
  /** Inode of the file (0 for anonymous memory). */
  inode: number
  /** The file, '[heap]', '[stack]', '[anon:name]', or '' for anonymous memory. */
  path: string
  /** smaps' VmFlags ('rd', 'wr', 'mg' = VM_MERGEABLE, 'sd' = soft-dirty tracked, …), when asked for. */
  vmFlags?: readonly string[]
}

/** Options of `TargetProcess.mappings()`. */
export interface MappingsOptions {
  /** Read /proc/<pid>/smaps instead of maps, for each mapping's VmFlags (slower: smaps walks the page tables). */
  vmFlags?: boolean
}

/**
 * What `TargetProcess.scan()` asks PAGEMAP_SCAN for: the same as pagemap.scan() (categories,
 * report, maxPages, vector, output), over an address range of the target instead of a Region.
 * `writeProtect` must stay false: PM_SCAN_WP_MATCHING re-arms userfaultfd write tracking, which
 * needs a userfaultfd registered inside that process; another process's writes are tracked with
 * soft-dirty (clearSoftDirty(), then the 'softDirty' category).
 */
export interface TargetScanOptions extends Omit<ScanOptions, 'range'> {
  /** Page-aligned first address. */
  start: bigint
  /** Bytes, a positive multiple of the page size. */
  length: number
}

const targetScanKeys = ['start', 'length', ...scanRequestKeys] as const

/** A page-aligned bigint address below 2^53 (`end`: the range after it must fit too). */
function readAddress(value: unknown, name: string, length: number, aligned: boolean): number {
  if (typeof value !== 'bigint') throw invalidArgType(name, 'of type bigint', value)
  if (value < 0n || value + BigInt(length) > addressLimit) throw outOfRange(name, `>= 0 and, with the length after it, <= 2^53`, value)
  if (aligned && value % BigInt(pageSize) !== 0n) throw outOfRange(name, `a multiple of the page size (${pageSize})`, value)
  return Number(value)
}

/** A TargetRange read once: { start, length } as numbers for native code. */
function readTargetRange(value: unknown, name: string): { start: number; length: number } {
  if (value === null || typeof value !== 'object') throw invalidArgType(name, 'an object like { start, length }', value)
  const { start, length } = value as { start: unknown; length: unknown }
  const bytes = validatePageLength(length, `${name}.length`)
  return { start: readAddress(start, `${name}.start`, bytes, true), length: bytes }
}

const mapsLine = /^([0-9a-f]+)-([0-9a-f]+) ([-r][-w][-x][ps]) ([0-9a-f]+) ([0-9a-f]+:[0-9a-f]+) (\d+) *(.*)$/

/** /proc/<pid>/maps, or smaps with each mapping's VmFlags, as Mappings (`file` names it in errors). */
function parseMaps(text: string, file: string, vmFlags: boolean): Mapping[] {
  const mappings: Mapping[] = []
  for (const line of text.split('\n')) {
    if (line === '') continue
    const m = mapsLine.exec(line)
    if (m) {
      const [, start, end, perms, offset, device, inode, path] = m
      mappings.push({ start: BigInt('0x' + start), end: BigInt('0x' + end), perms, offset: BigInt('0x' + offset), device, inode: Number(inode), path })
      continue
    }
    // smaps: "Key:  value" lines after their mapping's line; only VmFlags is kept.
    const last = mappings[mappings.length - 1]
    if (!vmFlags || last === undefined || !/^[A-Za-z_]+:/.test(line)) throw parseError(file, line, 'lines like "start-end perms offset dev inode path"')
    if (line.startsWith('VmFlags:')) last.vmFlags = line.slice('VmFlags:'.length).trim().split(/\s+/).filter(Boolean)
  }
  return mappings
}

interface Descriptors {
  pidfd: number
  /** /proc/<pid>, O_PATH: every file of the target is opened relative to it. */
  dir: number
  pagemap: number
  mem: number
}

function closeAll(fds: Descriptors): void {
  native.closeFd(fds.mem)
  native.closeFd(fds.pagemap)
  native.closeFd(fds.dir)
  native.closeFd(fds.pidfd)
}

const leaked = new FinalizationRegistry<Descriptors>(closeAll)

/**
 * Another process, opened by pid: `TargetProcess.open(pid)`. Holds a pidfd, /proc/<pid> (every
 * file is opened relative to it), its pagemap and its mem, until `close()`. Needs what the kernel
 * asks of a debugger for pagemap and mem (ptrace read and attach access: the same uid and not
 * undumpable, or CAP_SYS_PTRACE; the Yama LSM may ask more), and CAP_SYS_NICE for madvise() of
 * another process. Nothing here writes the target's memory: read() copies it out, madvise() takes
 * only advice that keeps what the memory reads, and scan() never write-protects.
 */
export class TargetProcess {
  #pid: number
  #fds: Descriptors | null
  #token = {}

  static {
    guardReceivers(TargetProcess, (value) => #pid in value)
  }

  /** Not callable from outside: use TargetProcess.open(). */
  private constructor(token: Internal, pid: number, fds: Descriptors) {
    assertInternal(token, new.target, TargetProcess, 'TargetProcess.open()')
    this.#pid = pid
    this.#fds = fds
    leaked.register(this, fds, this.#token)
  }

  /**
   * Opens process `pid`: pidfd_open(pid), then /proc/<pid>, its pagemap and its mem (read-only).
   * A pid with no process is SyscallError ESRCH (syscall 'pidfd_open'); a process this one may
   * not inspect is EACCES or EPERM (syscall 'open', the file in the message); a process that
   * exited (a zombie, or one that exited while being opened) is InvalidStateError
   * ERR_TARGET_EXITED. Nothing stays open when it throws.
   */
  static open(pid: number): TargetProcess {
    const id = validateInteger(pid, 'pid', 1, 2 ** 31 - 1)
    const opened: number[] = []
    const keep = (fd: number) => (opened.push(fd), fd)
    try {
      const pidfd = keep(check(native.remotePidfdOpen(id), 'pidfd_open', `pid ${id}`))
      const dir = keep(check(native.remoteOpenProcDir(id), 'open', `/proc/${id}`))
      // Exited after pidfd_open: /proc/<pid> may already be a new process's; a zombie has no memory.
      if (check(native.remotePidfdExited(pidfd), 'poll', `pidfd of ${id}`) === 1) throw codedError('ERR_TARGET_EXITED', id)
      const pagemap = keep(check(native.remoteOpenAt(dir, 'pagemap', 0), 'open', `/proc/${id}/pagemap`))
      const mem = keep(check(native.remoteOpenAt(dir, 'mem', 0), 'open', `/proc/${id}/mem`))
      return new TargetProcess(internal, id, { pidfd, dir, pagemap, mem })
    } catch (error) {
      for (const fd of opened) native.closeFd(fd)
      throw error
    }
  }

  /** The target's pid (also after close()). */
  get pid(): number {
    return this.#pid
  }

  /** Whether close() was called. */
  get closed(): boolean {
    return this.#fds === null
  }

  /**
   * Whether the target still runs: its pidfd is not readable yet (it becomes readable when the
   * process exits). A false here stays false; the files stay open until close().
   */
  alive(): boolean {
    const fds = this.#open('alive')
    return check(native.remotePidfdExited(fds.pidfd), 'poll', `pidfd of ${this.#pid}`) === 0
  }

  /**
   * The target's mappings, from /proc/<pid>/maps; with `{ vmFlags: true }` from smaps, with each
   * mapping's VmFlags ('mg': VM_MERGEABLE, what KSM may merge). A snapshot: the target keeps
   * mapping and unmapping. An exited target is SyscallError ESRCH.
   */
  mappings(options?: MappingsOptions): Mapping[] {
    const opts = readOptions(options, 'options', ['vmFlags'])
    const vmFlags = validateBoolean(opts.vmFlags ?? false, 'options.vmFlags')
    const name = vmFlags ? 'smaps' : 'maps'
    const text = this.#readFile(name, 'mappings')
    return parseMaps(text, `/proc/${this.#pid}/${name}`, vmFlags)
  }

  /**
   * Clears the soft-dirty bit of every page of the target: writes "4" to /proc/<pid>/clear_refs
   * (the kernel offers it per process only). Afterwards scan()'s 'softDirty' category marks the
   * pages written since, and mappings created since. Each page's next write takes a fault in the
   * target. Needs CONFIG_MEM_SOFT_DIRTY to mean anything (pagemap.softDirtySupported()).
   */
  clearSoftDirty(): void {
    const fds = this.#open('clearSoftDirty')
    const path = `/proc/${this.#pid}/clear_refs`
    const fd = check(native.remoteOpenAt(fds.dir, 'clear_refs', 1), 'open', path)
    try {
      fsCall('write', path, () => fs.writeSync(fd, '4'))
    } finally {
      fs.closeSync(fd)
    }
  }

  /**
   * One PAGEMAP_SCAN of [start, start + length) of the target's pagemap: pagemap.scan()'s options
   * and result, over the target's addresses (unmapped holes are skipped, as in pagemap.scan()).
   * `writeProtect: true` is refused (ERR_INVALID_ARG_VALUE): see TargetScanOptions.
   */
  scan(options: TargetScanOptions): ScanResult {
    const { request, start, end } = this.#scanPlan(options)
    return scanPagemap(this.#open('scan').pagemap, request, start, end)
  }

  /**
   * pagemap.scanAll() on the target: PAGEMAP_SCAN from each walkEnd until the range is done (or
   * maxPages is reached), one ScanResult per ioctl. Closing the target mid-iteration throws
   * ERR_TARGET_CLOSED at the next batch.
   */
  scanAll(options: TargetScanOptions): Generator<ScanResult, void, undefined> {
    const { request, start, end } = this.#scanPlan(options)
    this.#open('scanAll')
    return scanAllPagemap(() => this.#open('scanAll').pagemap, request, start, end)
  }

  /**
   * Copies the target's memory at `address` into `into` (all of it): pread of /proc/<pid>/mem,
   * which copies through the kernel without pinning or unsharing any page (a KSM page stays
   * merged). Returns the bytes read: fewer than into.length when an unmapped or unreadable page
   * follows the first ones; SyscallError EIO when the first byte is unreadable. An exited target
   * reads 0 bytes.
   */
  read(address: bigint, into: Uint8Array): number {
    if (!(into instanceof Uint8Array)) throw invalidArgType('into', 'an instance of Uint8Array', into)
    // A detached or empty view has nothing to read into: a RangeError, not a silent 0.
    if (into.length === 0) throw outOfRange('into', 'a Uint8Array of at least 1 byte (not detached)', 0)
    const start = readAddress(address, 'address', into.length, false)
    const fds = this.#open('read')
    return check(native.remoteRead(fds.mem, start, into), 'pread', () => `/proc/${this.#pid}/mem at 0x${start.toString(16)}`)
  }

  /**
   * The XXH64 hash of each of `pages` pages of the target from `start` (page-aligned), the hash
   * the Deduplicator and TwinIndex use: the pages are copied through /proc/<pid>/mem in batches,
   * nothing pinned or unshared. SyscallError EIO when a page cannot be read (unmapped, or the
   * target exited).
   */
  hashPages(start: bigint, pages: number): BigUint64Array {
    const count = validateInteger(pages, 'pages', 1, 2 ** 30)
    const address = readAddress(start, 'start', count * pageSize, true)
    const out = new BigUint64Array(count)
    const fds = this.#open('hashPages')
    check(native.remoteHashPages(fds.mem, address, count, out), 'pread', () => `/proc/${this.#pid}/mem at 0x${address.toString(16)}`)
    return out
  }

  /**
   * The target's /proc/<pid>/pagemap entries of `pages` pages from `start` (page-aligned): a PFN and
   * flag bits per page, as pagemap.entries() reads them for this process. Without CAP_SYS_ADMIN the
   * kernel reads every PFN as 0. A KSM page keeps its PFN until a write copies it away (or the
   * kernel migrates it): the Daemon tells a merged page still merged by it.
   */
  entries(start: bigint, pages: number): PagemapEntries {
    const count = validateInteger(pages, 'pages', 1, 2 ** 30)
    const address = readAddress(start, 'start', count * pageSize, true)
    return readEntries(this.#open('entries').pagemap, `/proc/${this.#pid}/pagemap`, address, count, new BigUint64Array(count), new Uint8Array(count))
  }

  /**
   * process_madvise(pidfd, ranges, advice): `advice` on up to 1024 ranges (the kernel's
   * UIO_MAXIOV) of the target at once. Returns the bytes advised (the kernel stops at the first range it fails
   * on: fewer than the total when a later range failed). A 'merge' also stops at a signal to this
   * process (a SIGINT or SIGTERM Node handles) once it merged something, and returns the bytes it got
   * through, the part of a range included (lab kernel patch 0056, as read() returns a short count):
   * the ranges' first that many bytes are merged, the rest untouched. Ranges of memory the target does not
   * map are ENOMEM. Another process's memory needs CAP_SYS_NICE (EPERM without). 'merge' and
   * 'unmergeable' are EINVAL where the kernel does not accept them for another process
   * (features().remoteMerge).
   */
  madvise(ranges: readonly TargetRange[], advice: TargetAdvice): number {
    if (!Array.isArray(ranges)) throw invalidArgType('ranges', 'an array of { start, length }', ranges)
    const count = ranges.length
    if (count < 1 || count > R.MAX_RANGES) throw outOfRange('ranges.length', `>= 1 and <= ${R.MAX_RANGES}`, count)
    if (typeof advice !== 'string' || !Object.hasOwn(targetAdviceValues, advice)) validateOneOf(advice, 'advice', targetAdviceNames)
    const iov = new BigUint64Array(2 * count)
    for (let i = 0; i < count; i++) {
      const range = readTargetRange(ranges[i], `ranges[${i}]`)
      iov[2 * i] = BigInt(range.start)
      iov[2 * i + 1] = BigInt(range.length)
    }
    const fds = this.#open('madvise')
    return check(native.remoteMadvise(fds.pidfd, iov, count, targetAdviceValues[advice]), targetAdviceSyscalls[advice], `pid ${this.#pid}`)
  }

  /** Closes the pidfd and the target's files. Idempotent; every other method then throws ERR_TARGET_CLOSED. */
  close(): void {
    const fds = this.#fds
    if (fds === null) return
    this.#fds = null
    leaked.unregister(this.#token)
    closeAll(fds)
  }

  /** close(), for `using target = TargetProcess.open(pid)`. */
  [Symbol.dispose](): void {
    this.close()
  }

  #open(operation: string): Descriptors {
    if (this.#fds === null) throw codedError('ERR_TARGET_CLOSED', operation)
    return this.#fds
  }

  #scanPlan(options: TargetScanOptions): { request: ReturnType<typeof readScanRequest>; start: number; end: number } {
    if (options === undefined) throw invalidArgType('options', 'an object like { start, length }', options)
    const opts = readOptions(options, 'options', targetScanKeys)
    const length = validatePageLength(opts.length, 'options.length')
    const start = readAddress(opts.start, 'options.start', length, true)
    const request = readScanRequest(opts)
    if ((request.flags & native.pagemapConstants.PM_SCAN_WP_MATCHING) !== 0) {
      throw invalidArgValue('options.writeProtect', 'must be false for another process (PM_SCAN_WP_MATCHING needs a userfaultfd registered in its memory; track its writes with clearSoftDirty() and the softDirty category)', true)
    }
    return { request, start, end: start + length }
  }

  #readFile(name: string, operation: string): string {
    const fds = this.#open(operation)
    const path = `/proc/${this.#pid}/${name}`
    const fd = check(native.remoteOpenAt(fds.dir, name, 0), 'open', path)
    try {
      return fsCall('read', path, () => fs.readFileSync(fd, 'utf8'))
    } finally {
      fs.closeSync(fd)
    }
  }
}

let remoteMerge: boolean | undefined
/**
 * Whether this kernel accepts MADV_MERGE from process_madvise() on another process (features().remoteMerge).
 * Probed once with an empty range list on the parent process (else pid 1): the kernel checks the
 * advice before it looks at any range, so EINVAL means refused, while success, or EPERM (the
 * CAP_SYS_NICE check that follows the advice check), means accepted. False too when no other
 * process could be probed (this one may not inspect either).
 */
export function probeRemoteMerge(): boolean {
  if (remoteMerge === undefined) {
    remoteMerge = false
    const none = new BigUint64Array(0)
    for (const pid of new Set([process.ppid, 1])) {
      if (pid < 1 || pid === process.pid) continue
      const pidfd = native.remotePidfdOpen(pid)
      if (pidfd < 0) continue
      try {
        const rc = native.remoteMadvise(pidfd, none, 0, C.MADV_MERGE)
        if (rc >= 0 || -rc === errno.EPERM) remoteMerge = true
        // EACCES, ESRCH: this process may not inspect that one (or it is gone): ask the next.
        if (rc >= 0 || -rc === errno.EPERM || -rc === errno.EINVAL) break
      } finally {
        native.closeFd(pidfd)
      }
    }
  }
  return remoteMerge
}
