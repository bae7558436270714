// Error classes shaped like Node core's (lib/internal/errors.js): the native side hands back
// only -errno; the Error with code, errno and syscall is built here. Every ERR_* code memdedup
// throws is in `codes` below (Node's E() registry): one place to read what a caller can catch.
// The rule: a SyscallError carries an errno the kernel returned, nothing else. A failure no
// syscall returned (a full TwinIndex, a kernel file that does not parse, a state the kernel
// would accept but memdedup refuses) is a coded Error from `codes`, never an invented errno.
import os from 'node:os'
import { constants as osConstants } from 'node:os'

/** Named errnos (positive): `errno.EINVAL` rather than 22. */
export const errno = osConstants.errno

const errnoNames = new Map<number, string>()
for (const [name, value] of Object.entries(errno)) {
  if (!errnoNames.has(value)) errnoNames.set(value, name)
}

/** Errno name for a positive errno, e.g. 22 → 'EINVAL'; unknown numbers stay readable. */
export function errnoName(value: number): string {
  return errnoNames.get(value) ?? `E${value}`
}

/**
 * A failure the kernel returned, shaped like Node's own system errors: `code` ('EINVAL'), a
 * negative `errno`, `syscall` ('madvise(MADV_MERGE)'), and the message `${syscall} ${code}` plus
 * context. memdedup never makes up an errno: anything else has a code of its own (see `codes`).
 */
export class SyscallError extends Error {
  /** 'EINVAL', 'ENOMEM', … */
  readonly code: string
  /** Negative, like Node's own errors (fs, net). */
  readonly errno: number
  /** The call with its operation, e.g. 'madvise(MADV_MERGE)'. */
  readonly syscall: string

  constructor(syscall: string, errno: number, context?: string) {
    const positive = Math.abs(errno)
    const code = errnoName(positive)
    super(`${syscall} ${code}${context ? ` (${context})` : ''}`)
    this.code = code
    this.errno = -positive
    this.syscall = syscall
  }
}
Object.defineProperty(SyscallError.prototype, 'name', { value: 'SyscallError', enumerable: false })

/**
 * The running kernel lacks a feature this call needs (SKSM's MADV_MERGE, msharefs, PAGEMAP_SCAN, …):
 * `feature` names it and `kernelRelease` says which kernel. Every entry point of the feature throws it.
 */
export class FeatureUnavailableError extends Error {
  /** Always 'ERR_MEMDEDUP_FEATURE_UNAVAILABLE'. */
  readonly code = 'ERR_MEMDEDUP_FEATURE_UNAVAILABLE'
  /** The missing feature, e.g. 'sksm', 'mshare'. */
  readonly feature: string
  /** `uname -r` of the running kernel. */
  readonly kernelRelease: string

  constructor(feature: string, detail: string) {
    const release = os.release()
    super(`${feature} is not available on kernel ${release}: ${detail}`)
    this.feature = feature
    this.kernelRelease = release
  }
}
Object.defineProperty(FeatureUnavailableError.prototype, 'name', { value: 'FeatureUnavailableError', enumerable: false })

/**
 * An operation on an object in the wrong state: a closed Region or Userfaultfd, or a view of
 * memory whose protection does not allow it. `code` says which (ERR_REGION_CLOSED, …).
 */
export class InvalidStateError extends Error {
  /** Which state: 'ERR_REGION_CLOSED', 'ERR_UFFD_NOT_REGISTERED', … (see `codes`). */
  readonly code: string

  constructor(code: StateCode, message: string) {
    super(message)
    this.code = code
  }
}
Object.defineProperty(InvalidStateError.prototype, 'name', { value: 'InvalidStateError', enumerable: false })

type ErrorKind = 'TypeError' | 'RangeError' | 'Error' | 'InvalidStateError' | 'FeatureUnavailableError'
interface Entry<Kind extends ErrorKind, Args extends unknown[]> {
  kind: Kind
  message: (...args: Args) => string
}
/** One entry of the registry (Node's internal E()): the class that carries the code, and its message template. */
function E<Kind extends ErrorKind, Args extends unknown[]>(kind: Kind, message: (...args: Args) => string): Entry<Kind, Args> {
  return { kind, message }
}
/**
 * The message as built by the module that throws it (its own builder is the template: validate.ts
 * for the argument codes, the native boundary for the internal ones, features.ts and cli.ts for theirs).
 */
const built = (message: string) => message

/**
 * Every code memdedup throws or the CLI reports, other than an errno the kernel returned: the
 * class that carries it and its message template. Read through `codes` (code -> class) and
 * codedError(code, ...template arguments).
 */
const registry = {
  /** An argument of the wrong type (Node's code). */
  ERR_INVALID_ARG_TYPE: E('TypeError', built),
  /** An argument of the right type with a value not allowed, or an unknown option key (Node's code). */
  ERR_INVALID_ARG_VALUE: E('TypeError', built),
  /** A number or size out of range (Node's code). */
  ERR_OUT_OF_RANGE: E('RangeError', built),
  /**
   * `new Region(…)`, `new Userfaultfd(…)`, … from outside (a subclass and Reflect.construct
   * included): these objects come from their factories, Region.anonymous(), Userfaultfd.open(), …
   * (Node's code).
   */
  ERR_ILLEGAL_CONSTRUCTOR: E('TypeError', (factories: string) => `Illegal constructor: use ${factories}`),
  /** A method or accessor of a memdedup class called on something else: `Region.prototype.close.call({})` (Node's code). */
  ERR_INVALID_THIS: E('TypeError', (type: string) => `Value of "this" must be of type ${type}`),
  /** A closed Region, Reservation, MshareRegion or MshareAttachment (`what`: which, 'the Region' and so on). */
  ERR_REGION_CLOSED: E('InvalidStateError', (operation: string, what: string) => `Cannot ${operation}: ${what} is closed`),
  /** Region.bytes on pages not read+write, or a native read of a PROT_NONE page. */
  ERR_REGION_PROTECTION: E('InvalidStateError', (operation: string, why: string) => `Cannot ${operation}: ${why}`),
  /**
   * remap(n, { mayMove: false }) of a Region placed in a Reservation that has no free room right
   * after it (taken, its end, or closed): nothing was changed, no syscall was made.
   */
  ERR_RESERVATION_NO_ROOM: E('InvalidStateError', (length: number, reason: string) => `Cannot grow the Region in place to ${length} bytes (mayMove: false): ${reason}`),
  ERR_UFFD_CLOSED: E('InvalidStateError', (operation: string) => `Cannot ${operation}: the Userfaultfd is closed`),
  ERR_UFFD_ALREADY_REGISTERED: E('InvalidStateError', (page: number) => `Cannot register: page ${page} of the Region is already registered with this userfaultfd (unregister it first)`),
  ERR_UFFD_NOT_REGISTERED: E('InvalidStateError', (page: number) => `Cannot writeProtect: page ${page} of the Region is not registered with { writeProtect: true } on this userfaultfd`),
  ERR_DEDUP_CLOSED: E('InvalidStateError', (operation: string) => `Cannot ${operation}: the Deduplicator is closed`),
  ERR_DEDUP_ALREADY_TRACKED: E('InvalidStateError', () => 'The Region is already tracked by this Deduplicator'),
  /** Deduplicator.run() while it already runs (stop() first). */
  ERR_DEDUP_RUNNING: E('InvalidStateError', () => 'The Deduplicator is already running (stop() it first)'),
  /** An operation on a closed TargetProcess (remote.ts). */
  ERR_TARGET_CLOSED: E('InvalidStateError', (operation: string) => `Cannot ${operation}: the TargetProcess is closed`),
  /**
   * TargetProcess.open() of a process that has exited (a zombie not yet reaped, or one that exited
   * while being opened, when /proc/<pid> may already name a new process): nothing was kept open.
   */
  ERR_TARGET_EXITED: E('InvalidStateError', (pid: number) => `Cannot open process ${pid}: it has exited`),
  /** An operation on a closed Daemon (daemon.ts). */
  ERR_DAEMON_CLOSED: E('InvalidStateError', (operation: string) => `Cannot ${operation}: the Daemon is closed`),
  /** Daemon.run() while it already runs (stop() first). */
  ERR_DAEMON_RUNNING: E('InvalidStateError', () => 'The Daemon is already running (stop() it first)'),
  /** An operation on a closed TwinIndex. */
  ERR_TWIN_INDEX_CLOSED: E('InvalidStateError', (operation: string) => `Cannot ${operation}: the TwinIndex is closed`),
  /**
   * TwinIndex.add(): a hash found no free slot in its probe window (no syscall failed: the index
   * is full near that hash). Release contents, or create a larger index.
   */
  ERR_TWIN_INDEX_FULL: E('Error', (slots: number, counted: number, count: number) =>
    `The TwinIndex is full near a hash: no free slot in its probe window (${slots} slots; ${counted} of ${count} hashes counted); release contents or create a larger index`),
  /** A native result outside its contract (a -errno with no failure stage naming the call): a memdedup bug, never an errno passed off as a syscall's (Node's code). */
  ERR_INTERNAL_ASSERTION: E('Error', built),
  /** The addon could not allocate memory (std::bad_alloc at the N-API boundary, NoAbort in native/addon.h): nothing was changed. Node's own code. */
  ERR_MEMORY_ALLOCATION_FAILED: E('Error', built),
  /** MshareRegion.open() of a region whose creator has not sized it yet (the msharefs file's size is 0). */
  ERR_MSHARE_REGION_UNSIZED: E('InvalidStateError', (path: string) => `Cannot open ${path}: its creator has not sized the region yet (its size is 0)`),
  /**
   * A file of the kernel (/proc, /sys) read without error but saying something memdedup cannot
   * parse (e.g. /sys/fs/mshare/mshare_info not a positive multiple of the page size).
   */
  ERR_PARSE_KERNEL_FILE: E('Error', (file: string, text: string, expected: string) => {
    const shown = JSON.stringify(text.length > 64 ? text.slice(0, 61) + '...' : text)
    return `Cannot parse ${file}: expected ${expected}, read ${shown}`
  }),
  /** ksm.waitForFullScans() ran out of time (an errno-style code, kept from the first release). */
  ETIMEDOUT: E('Error', (scans: number, timeoutMs: number) =>
    `ksmd did not complete ${scans} full scans within ${timeoutMs} ms (is /sys/kernel/mm/ksm/run 1, and is any memory MADV_MERGEABLE?)`),
  /** FeatureUnavailableError's code (built by its constructor: feature, detail). */
  ERR_MEMDEDUP_FEATURE_UNAVAILABLE: E('FeatureUnavailableError', built),
  /** The CLI: a command that failed for a reason no other code names (its message says which). */
  ERR_MEMDEDUP_CLI: E('Error', built),
  /** The CLI: `memdedup run` found no program of that name (PATH searched, or the path names no file); exit 127 like a shell. */
  ERR_CLI_COMMAND_NOT_FOUND: E('Error', (file: string, why: string) => `${file}: ${why}`),
} as const

/** Every `code` memdedup's own errors carry (the keys of `codes`); a SyscallError's code is the errno's name instead. */
export type ErrorCode = keyof typeof registry
type Registry = typeof registry
/** The arguments of `code`'s message template. */
export type MessageArgs<C extends ErrorCode> = Parameters<Registry[C]['message']>

/** Every code memdedup throws or the CLI reports, with the class that carries it (`error.code` is one of these, or an errno name from a SyscallError). */
export const codes: { readonly [C in ErrorCode]: Registry[C]['kind'] } = Object.freeze(
  Object.fromEntries(Object.entries(registry).map(([code, entry]) => [code, entry.kind])),
) as { readonly [C in ErrorCode]: Registry[C]['kind'] }

type StateCode = { [K in ErrorCode]: Registry[K]['kind'] extends 'InvalidStateError' ? K : never }[ErrorCode]
const classes = { TypeError, RangeError, Error } as const

/** The message of `code`, from its template. */
export function message<C extends ErrorCode>(code: C, ...args: MessageArgs<C>): string {
  return (registry[code].message as (...a: MessageArgs<C>) => string)(...args)
}

/** The error the registry says carries `code`, its message built from the template. */
export function codedError<C extends Exclude<ErrorCode, 'ERR_MEMDEDUP_FEATURE_UNAVAILABLE'>>(code: C, ...args: MessageArgs<C>): Error {
  const kind = registry[code].kind
  const text = message(code, ...args)
  if (kind === 'InvalidStateError') return new InvalidStateError(code as StateCode, text)
  const error = new classes[kind as 'TypeError' | 'RangeError' | 'Error'](text)
  ;(error as NodeJS.ErrnoException).code = code
  return error
}

/** ERR_PARSE_KERNEL_FILE: `file` read as `text`, which is not `expected`. */
export function parseError(file: string, text: string, expected: string): Error {
  return codedError('ERR_PARSE_KERNEL_FILE', file, text, expected)
}

/**
 * The one path for raw native results: returns rc when >= 0, else throws a SyscallError.
 * `context` may be a function, called only on failure, so hot paths build no strings.
 */
export function check(rc: number, syscall: string, context?: string | (() => string)): number {
  if (rc < 0) throw new SyscallError(syscall, -rc, typeof context === 'function' ? context() : context)
  return rc
}

/**
 * Runs a node:fs call and turns its error into a SyscallError (same code and errno, our syscall
 * name and the path as context), so callers see one error shape for kernel failures.
 */
export function fsCall<T>(syscall: string, path: string, body: () => T): T {
  try {
    return body()
  } catch (error) {
    const e = error as NodeJS.ErrnoException
    if (typeof e?.errno !== 'number') throw error
    throw new SyscallError(syscall, e.errno, path)
  }
}
