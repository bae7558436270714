/**
 * NUMA memory policy of a Region's pages: `bind()` places them on nodes (mbind(MPOL_BIND)) and
 * `nodeOf()` says which node holds each page (move_pages() in its query form); `nodes()` lists
 * the nodes that have memory. Raw syscalls, no libnuma. A kernel without CONFIG_NUMA has neither
 * syscall (ENOSYS): bind() and nodeOf() throw FeatureUnavailableError 'numa' there, and nodes()
 * says [0].
 *
 * @module
 */
import fs from 'node:fs'
import { native, pageSize } from './native.ts'
import { check, errno, FeatureUnavailableError, fsCall, parseError, SyscallError } from './errors.ts'
import { invalidArgType, outOfRange, readOptions, validateBoolean, validateInteger } from './validate.ts'
import { Region, resolveSpan, type Range } from './region.ts'

const N = native.numaConstants

/** The nodes with memory, as the kernel lists them (e.g. "0-1,3"). */
const hasMemoryFile = '/sys/devices/system/node/has_memory'

/** The most pages one nodeOf() call reports: 2^27 pages (512 GiB of 4 KiB pages, a 512 MiB result). */
const maxStatusPages = 2 ** 27

/**
 * @internal Parses a kernel node list ("0", "0-1,3", "0,2-5\n") into node ids, ascending as
 * written; anything else (a range backwards, an id >= 1024, stray text) is ERR_PARSE_KERNEL_FILE
 * naming `file`. Exported for the test of odd lists.
 */
export function parseNodeList(text: string, file: string): number[] {
  const expected = 'a node list like "0" or "0-1,3"'
  const trimmed = text.trim()
  if (trimmed === '') throw parseError(file, text, expected)
  const ids: number[] = []
  for (const part of trimmed.split(',')) {
    const match = /^(\d+)(?:-(\d+))?$/.exec(part)
    if (!match) throw parseError(file, text, expected)
    const from = Number(match[1])
    const to = match[2] === undefined ? from : Number(match[2])
    if (from > to || to >= N.maxNodes) throw parseError(file, text, expected)
    for (let id = from; id <= to; id++) ids.push(id)
  }
  return ids
}

/**
 * The ids of the NUMA nodes that have memory (/sys/devices/system/node/has_memory), ascending:
 * the nodes `bind()` can place pages on. A kernel without CONFIG_NUMA has no such file and one
 * node: [0]. Read on every call (memory can be hot-plugged).
 *
 * @throws {SyscallError} the file exists but cannot be read (code and errno set).
 * @throws {Error} ERR_PARSE_KERNEL_FILE: it says something that is not a node list.
 */
export function nodes(): number[] {
  let text: string
  try {
    text = fsCall('read', hasMemoryFile, () => fs.readFileSync(hasMemoryFile, 'utf8'))
  } catch (error) {
    if (error instanceof SyscallError && error.code === 'ENOENT') return [0]
    throw error
  }
  return parseNodeList(text, hasMemoryFile)
}

/**
 * The node ids of `bind()`'s `nodes` argument, read once each (a Proxy or a getter is asked for
 * `length` and each element exactly once), validated and de-duplicated, ascending.
 */
function readNodes(value: unknown): Uint32Array {
  const name = 'nodes'
  const ids = new Set<number>()
  if (typeof value === 'number') {
    ids.add(validateInteger(value, name, 0, N.maxNodes - 1))
  } else if (Array.isArray(value)) {
    const length: unknown = value.length
    const count = validateInteger(length, `${name}.length`, 1, N.maxNodes)
    for (let i = 0; i < count; i++) ids.add(validateInteger(value[i], `${name}[${i}]`, 0, N.maxNodes - 1))
  } else {
    throw invalidArgType(name, 'a node id (number) or a non-empty array of node ids', value)
  }
  return Uint32Array.from([...ids].sort((a, b) => a - b))
}

function numaUnavailable(syscall: string): FeatureUnavailableError {
  return new FeatureUnavailableError('numa', `${syscall}() is not implemented (kernel without CONFIG_NUMA)`)
}

/** Options of `bind()`. */
export interface BindOptions {
  /** A page-aligned part of the Region (default: all of it). */
  range?: Range
  /**
   * Also move the pages already present to the nodes (MPOL_MF_MOVE | MPOL_MF_STRICT): bind()
   * then fails with EIO if a page could not be moved (e.g. pinned, or shared with another
   * process: MPOL_MF_MOVE moves only pages this process maps alone). Default false: only pages
   * faulted from now on follow the policy; present pages stay where they are.
   */
  move?: boolean
}

/**
 * Binds the Region (or a page-aligned range of it) to `nodes`: `mbind(MPOL_BIND)`. Pages faulted
 * from now on are allocated on those nodes only (and the fault fails with SIGBUS/OOM rather than
 * fall back to another node); with `{ move: true }` the pages already present are moved there too.
 *
 * `nodes` is one node id or an array of them (at most 1024 entries; a node named twice counts
 * once: the kernel's nodemask is a set). Ids are integers 0 … 1023; an id the kernel has no
 * memory on is the kernel's EINVAL (see `nodes()` for the ones it has).
 *
 * @throws {TypeError|RangeError} `region` is not a Region, `range` is not a page-aligned range
 *   inside it, `nodes` is not a node id or a non-empty array of them, an option is unknown or of
 *   the wrong type (Node-style codes).
 * @throws {InvalidStateError} the Region is closed (code ERR_REGION_CLOSED).
 * @throws {FeatureUnavailableError} the kernel has no NUMA support (feature 'numa').
 * @throws {SyscallError} syscall 'mbind': EINVAL (no node of `nodes` has memory, or is allowed by
 *   this process's cpuset), EIO (`move`: a page could not be moved), EPERM, ENOMEM.
 */
export function bind(region: Region, nodes: number | readonly number[], options?: BindOptions): void {
  const opts = readOptions(options, 'options', ['range', 'move'])
  const span = resolveSpan(region, opts.range as Range | undefined, 'numa.bind')
  const ids = readNodes(nodes)
  const move = validateBoolean(opts.move ?? false, 'options.move')
  const flags = move ? N.MPOL_MF_MOVE | N.MPOL_MF_STRICT : 0
  const rc = native.mbind(span.address, span.length, N.MPOL_BIND, ids, ids.length, flags)
  if (rc >= 0) return
  if (-rc === errno.ENOSYS) throw numaUnavailable('mbind')
  check(rc, 'mbind', () => `MPOL_BIND to node${ids.length > 1 ? 's' : ''} ${ids.join(', ')}${move ? ', MPOL_MF_MOVE | MPOL_MF_STRICT' : ''}`)
}

/**
 * Which node holds each page of the Region (or a page-aligned range of it): `move_pages()` asked
 * for the status only (no page moves). One entry per page: the node id (>= 0), or a negative
 * errno: -ENOENT (-2) for a page not present (never touched, or swapped out), -EFAULT (-14) for
 * a page the kernel will not report (e.g. the shared zero page of a read-only fault).
 *
 * @throws {TypeError|RangeError} `region` is not a Region, or `range` is not a page-aligned range
 *   inside it, or covers more than 2^27 pages.
 * @throws {InvalidStateError} the Region is closed (code ERR_REGION_CLOSED).
 * @throws {FeatureUnavailableError} the kernel has no NUMA support (feature 'numa').
 * @throws {SyscallError} syscall 'move_pages' failed (e.g. EPERM), code and errno set.
 */
export function nodeOf(region: Region, range?: Range): Int32Array {
  const span = resolveSpan(region, range, 'numa.nodeOf')
  const pages = span.length / pageSize
  if (pages > maxStatusPages) throw outOfRange('range.length', `at most ${maxStatusPages} pages (${maxStatusPages * pageSize} bytes) per call`, span.length)
  const status = new Int32Array(pages)
  const rc = native.movePagesStatus(span.address, pages, status)
  if (-rc === errno.ENOSYS) throw numaUnavailable('move_pages')
  check(rc, 'move_pages')
  return status
}

let probed: boolean | undefined
/**
 * Whether this kernel has the NUMA memory-policy syscalls (CONFIG_NUMA): probed once with
 * mbind(MPOL_DEFAULT) on a scratch page of its own (ENOSYS: absent), then cached.
 * features().numa reports the same.
 */
export function available(): boolean {
  if (probed === undefined) {
    const scratch = Region.anonymous(pageSize)
    try {
      const span = resolveSpan(scratch, undefined, 'numa.available')
      probed = -native.mbind(span.address, span.length, N.MPOL_DEFAULT, new Uint32Array(0), 0, 0) !== errno.ENOSYS
    } finally {
      scratch.close()
    }
  }
  return probed
}
