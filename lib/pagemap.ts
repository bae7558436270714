/**
 * /proc/self/pagemap (entries) and the PAGEMAP_SCAN ioctl (scan). Same PFN = same physical
 * page: every merge claim in the tests is proven with entries().
 *
 * @module
 */
import fs from 'node:fs'
import { native, pageSize } from './native.ts'
import { check, errno, fsCall, parseError, SyscallError } from './errors.ts'
import { invalidArgType, invalidArgValue, outOfRange, readOptions, readRange, validateBoolean, validateInteger } from './validate.ts'
import { Region, resolveSpan, type Range } from './region.ts'

/** Bits of PagemapEntries.flags (decoded natively from the 64-bit pagemap entries). */
export const PageFlag = {
  present: native.pagemapConstants.ENTRY_PRESENT,
  swapped: native.pagemapConstants.ENTRY_SWAPPED,
  file: native.pagemapConstants.ENTRY_FILE,
  exclusive: native.pagemapConstants.ENTRY_EXCLUSIVE,
  softDirty: native.pagemapConstants.ENTRY_SOFT_DIRTY,
  uffdWp: native.pagemapConstants.ENTRY_UFFD_WP,
} as const

/** What `entries()` read from /proc/self/pagemap: a PFN and flag bits per page of the range, with a reader per flag. */
export class PagemapEntries {
  /** Virtual address of the first page. */
  readonly address: bigint
  /** Page frame number per page; 0 when the page is not present. */
  readonly pfns: BigUint64Array
  /** PageFlag bits per page. */
  readonly flags: Uint8Array

  constructor(address: bigint, pfns: BigUint64Array, flags: Uint8Array) {
    this.address = address
    this.pfns = pfns
    this.flags = flags
  }
  /** Number of pages read. */
  get length(): number {
    return this.pfns.length
  }
  /** The page is in RAM (PM_PRESENT). */
  present(page: number): boolean {
    return (this.flags[page] & PageFlag.present) !== 0
  }
  /** The page is in swap (PM_SWAP). */
  swapped(page: number): boolean {
    return (this.flags[page] & PageFlag.swapped) !== 0
  }
  /** The page is a file page or shared anonymous (PM_FILE). */
  file(page: number): boolean {
    return (this.flags[page] & PageFlag.file) !== 0
  }
  /** The frame is mapped by this process only (PM_MMAP_EXCLUSIVE): clear for a page merged with another process's. */
  exclusive(page: number): boolean {
    return (this.flags[page] & PageFlag.exclusive) !== 0
  }
  /** Written since the last clear of soft-dirty bits (PM_SOFT_DIRTY). */
  softDirty(page: number): boolean {
    return (this.flags[page] & PageFlag.softDirty) !== 0
  }
  /** Write-protected by userfaultfd (PM_UFFD_WP): not written since the last writeProtect(). */
  uffdWp(page: number): boolean {
    return (this.flags[page] & PageFlag.uffdWp) !== 0
  }
  /** How many pages have `flag` set. */
  count(flag: number): number {
    let n = 0
    for (let i = 0; i < this.flags.length; i++) if (this.flags[i] & flag) n++
    return n
  }
  /** Distinct PFNs among present pages. */
  distinctPfns(): number {
    const seen = new Set<bigint>()
    for (let i = 0; i < this.pfns.length; i++) if (this.flags[i] & PageFlag.present) seen.add(this.pfns[i])
    return seen.size
  }
}

// One descriptor for the life of the process: opening /proc/self/pagemap per call would
// dominate the cost of small reads. Opened lazily, O_CLOEXEC by Node.
let pagemapFd = -1
function pagemapDescriptor(): number {
  if (pagemapFd < 0) pagemapFd = fsCall('open', '/proc/self/pagemap', () => fs.openSync('/proc/self/pagemap', 'r'))
  return pagemapFd
}

/** Caller-owned storage for entries() in hot loops (see EntriesOptions.output). */
export interface EntriesOutput {
  pfns: BigUint64Array
  flags: Uint8Array
}

/** Allocates reusable entries() storage for up to `pages` pages. */
export function entriesOutput(pages: number): EntriesOutput {
  const n = validateInteger(pages, 'pages', 1, 2 ** 30)
  return { pfns: new BigUint64Array(n), flags: new Uint8Array(n) }
}

/** Options of `entries()`. */
export interface EntriesOptions {
  /** Reuse these arrays instead of allocating (a 1 GiB range needs 2.25 MiB of fresh, page-faulting
   *  memory per call otherwise). The result's arrays are views of them, valid until the next call. */
  output?: EntriesOutput
}

/** Decoded /proc/self/pagemap entries for the Region (or a page-aligned range of it). */
export function entries(region: Region, range?: Range, options?: EntriesOptions): PagemapEntries {
  const span = resolveSpan(region, range, 'pagemap.entries')
  const opts = readOptions(options, 'options', ['output'])
  const pages = span.length / pageSize
  let pfns: BigUint64Array
  let flags: Uint8Array
  if (opts.output === undefined) {
    pfns = new BigUint64Array(pages)
    flags = new Uint8Array(pages)
  } else {
    // Each array read once; native code re-checks the very objects it writes into.
    const output = opts.output as EntriesOutput | null
    const given = output === null || typeof output !== 'object' ? undefined : { pfns: output.pfns, flags: output.flags }
    if (given === undefined || !(given.pfns instanceof BigUint64Array) || !(given.flags instanceof Uint8Array)) {
      throw invalidArgType('options.output', 'the result of pagemap.entriesOutput()', output)
    }
    if (given.pfns.length < pages || given.flags.length < pages) {
      throw outOfRange('options.output', `room for ${pages} pages`, Math.min(given.pfns.length, given.flags.length))
    }
    pfns = given.pfns.subarray(0, pages)
    flags = given.flags.subarray(0, pages)
  }
  return readEntries(pagemapDescriptor(), '/proc/self/pagemap', span.address, pages, pfns, flags)
}

/**
 * The entries of `pages` pages from `address` read from the pagemap file `fd` (this process's or a
 * target's) into `pfns` and `flags` (native code checks they hold `pages`: a subclass may lie about
 * its length). SyscallError from pread, ERR_PARSE on a short read.
 * @internal
 */
export function readEntries(fd: number, file: string, address: number, pages: number, pfns: BigUint64Array, flags: Uint8Array): PagemapEntries {
  const got = check(native.pagemapEntries(fd, address, pages, pfns, flags), 'pread', () => `${file} at 0x${address.toString(16)}`)
  // A short read is no errno the kernel returned: the file said less than asked.
  if (got !== pages) throw parseError(file, `${got} of ${pages} entries`, `${pages} entries`)
  return new PagemapEntries(BigInt(address), pfns, flags)
}

/** Bits of a /proc/kpageflags word (include/uapi/linux/kernel-page-flags.h). */
const kpageflagBits = { ksm: 21n, zeroPage: 24n } as const

/**
 * /proc/kpageflags opened for reading, or -1 where it cannot be: it is root-only (EACCES, EPERM),
 * absent without CONFIG_PROC_PAGE_MONITOR (ENOENT). For kpageflag(); the caller closes it.
 * @internal
 */
export function openKpageflags(): number {
  try {
    return fs.openSync('/proc/kpageflags', 'r')
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code === 'EACCES' || code === 'EPERM' || code === 'ENOENT') return -1
    throw error
  }
}

/**
 * One flag of frame `pfn` from /proc/kpageflags (`fd` from openKpageflags()), or undefined where
 * the file cannot tell: not open (-1), or a short read (a PFN past the kernel's last frame, or a
 * container that masks the file with /dev/null).
 * @internal
 */
export function kpageflag(fd: number, pfn: bigint, flag: keyof typeof kpageflagBits): boolean | undefined {
  if (fd < 0) return undefined
  const word = Buffer.alloc(8)
  const got = fsCall('pread', '/proc/kpageflags', () => fs.readSync(fd, word, 0, 8, pfn * 8n))
  return got === 8 ? ((word.readBigUInt64LE(0) >> kpageflagBits[flag]) & 1n) === 1n : undefined
}

/** KPF_ZERO_PAGE of one frame, or undefined where /proc/kpageflags cannot tell (see kpageflag()). */
function kpageflagsZeroPage(pfn: bigint): boolean | undefined {
  const fd = openKpageflags()
  if (fd < 0) return undefined
  try {
    return kpageflag(fd, pfn, 'zeroPage')
  } finally {
    fs.closeSync(fd)
  }
}

/** One answer of the zero-page probe: which kernel signal said what about the two probe pages. */
interface ZeroPageVerdict {
  signal: string
  zeroPage: [boolean, boolean]
}

/**
 * Read-faults two fresh pages of a mapping of its own and asks classifyZeroPage() whether they map
 * the shared zero page.
 */
function probeZeroPageMapping(): bigint | null {
  const probe = Region.anonymous(2 * pageSize)
  try {
    // No THP: a huge zero page (or a huge page) would answer another question.
    if (fs.existsSync('/sys/kernel/mm/transparent_hugepage')) probe.advise('nohugepage')
    // CPU loads: the read faults in question. A fresh anonymous page reads as zeros.
    if (probe.bytes[0] !== 0 || probe.bytes[pageSize] !== 0) throw new Error('pagemap.zeroPfn: a fresh anonymous page did not read as zeros')
    return classifyZeroPage(probe)
  } finally {
    probe.close()
  }
}

/**
 * @internal The zero-page probe's verdict on the first two pages of `region` (both present): the
 * PFN they share (0n where PFNs are hidden) when every signal this process may read says they map
 * the zero page, null when every one says they are private pages. Signals that disagree, page by
 * page or with each other, mean a kernel this probe does not understand: it throws rather than
 * answer wrongly. x86_64 has one zero page (MIPS, with one per cache colour, is not supported).
 * Exported so tests can feed it private zeroed pages: what a read fault maps where the kernel
 * forbids the zero page.
 */
export function classifyZeroPage(region: Region): bigint | null {
  const e = entries(region, { offset: 0, length: 2 * pageSize })
  if (!e.present(0) || !e.present(1)) throw new Error('pagemap.zeroPfn: a read-faulted anonymous page is not present in /proc/self/pagemap')
  const verdicts: ZeroPageVerdict[] = []
  // Without CAP_SYS_ADMIN every PFN reads as 0: no frame to compare.
  if (e.pfns[0] !== 0n && e.pfns[1] !== 0n) {
    const shared = e.pfns[0] === e.pfns[1]
    verdicts.push({ signal: `PFNs 0x${e.pfns[0].toString(16)}, 0x${e.pfns[1].toString(16)}`, zeroPage: [shared, shared] })
    const kpf = [kpageflagsZeroPage(e.pfns[0]), kpageflagsZeroPage(e.pfns[1])]
    if (kpf[0] !== undefined && kpf[1] !== undefined) verdicts.push({ signal: 'KPF_ZERO_PAGE', zeroPage: [kpf[0], kpf[1]] })
  }
  if (probePagemapScan()) {
    // PAGE_IS_PFNZERO is the kernel's is_zero_pfn(), reported with or without CAP_SYS_ADMIN.
    const res = scan(region, { range: { offset: 0, length: 2 * pageSize }, require: ['pfnZero'], report: ['pfnZero'] })
    const covered = (page: number) => {
      const address = region.address + BigInt(page * pageSize)
      for (let i = 0; i < res.starts.length; i++) if (res.starts[i] <= address && address < res.ends[i]) return true
      return false
    }
    verdicts.push({ signal: 'PAGE_IS_PFNZERO', zeroPage: [covered(0), covered(1)] })
  }
  if (verdicts.length === 0) {
    // Last resort (PFNs hidden, no PAGEMAP_SCAN: before 6.7): the zero page is no normal page, so
    // its entry never has PM_MMAP_EXCLUSIVE; a fresh private page has it unless a fork() in
    // another thread shares it at this very moment.
    verdicts.push({ signal: 'PM_MMAP_EXCLUSIVE clear', zeroPage: [!e.exclusive(0), !e.exclusive(1)] })
  }
  const answer = verdicts[0].zeroPage[0]
  if (verdicts.some((v) => v.zeroPage[0] !== answer || v.zeroPage[1] !== answer)) {
    const said = verdicts.map((v) => `${v.signal}: ${v.zeroPage.map((z) => (z ? 'zero page' : 'private page')).join(', ')}`)
    throw new Error(`pagemap.zeroPfn: the kernel's signals disagree on whether a read fault maps the zero page (${said.join('; ')})`)
  }
  return answer ? e.pfns[0] : null
}

let zeroPagePfn: bigint | null | undefined
/**
 * The shared zero page as pagemap.entries() reads it: what a read fault of untouched private
 * anonymous memory maps, one frame for every such page. Its PFN with CAP_SYS_ADMIN; 0n without
 * (every PFN reads as 0 then, but the zero page is still there: features().zeroPage); null where
 * this kernel maps no shared zero page on read faults and gives each page a private zeroed frame
 * instead (mm_forbids_zeropage(): an s390 process that runs a KVM guest; PVM hosts booted with
 * pvm_no_zero_page=1).
 * Probed once, on a two-page mapping of its own, and cached; throws if the kernel's signals
 * (shared frame, KPF_ZERO_PAGE, PAGE_IS_PFNZERO) disagree.
 */
export function zeroPfn(): bigint | null {
  if (zeroPagePfn === undefined) zeroPagePfn = probeZeroPageMapping()
  return zeroPagePfn
}

/**
 * Whether a read fault of untouched private anonymous memory maps the shared zero page (see
 * zeroPfn()); false too where /proc/self/pagemap does not exist (CONFIG_PROC_PAGE_MONITOR=n), so
 * nothing can show it.
 */
export function probeZeroPage(): boolean {
  try {
    return zeroPfn() !== null
  } catch (error) {
    if (error instanceof SyscallError && error.syscall === 'open' && error.code === 'ENOENT') return false
    throw error
  }
}

/**
 * Clears the soft-dirty bit of every page of this process: writes "4" to /proc/self/clear_refs.
 * Afterwards PageFlag.softDirty (and PAGEMAP_SCAN's 'softDirty') mark exactly the pages written
 * since, plus mappings created since (new VMAs start soft-dirty). The kernel only offers this per
 * process, not per range; it write-protects the page tables, so the next write to each page takes
 * a fault. Needs CONFIG_MEM_SOFT_DIRTY to mean anything (see softDirtySupported()).
 */
export function clearSoftDirty(): void {
  fsCall('write', '/proc/self/clear_refs', () => fs.writeFileSync('/proc/self/clear_refs', '4'))
}

let softDirty: boolean | undefined
/**
 * Whether this kernel tracks soft-dirty (CONFIG_MEM_SOFT_DIRTY): a new mapping carries the "sd"
 * VmFlag in /proc/self/smaps (vm_util.c's softdirty_supported()). Cached.
 */
export function softDirtySupported(): boolean {
  if (softDirty === undefined) {
    const probe = Region.anonymous(pageSize)
    try {
      const start = probe.address.toString(16)
      const smaps = fsCall('read', '/proc/self/smaps', () => fs.readFileSync('/proc/self/smaps', 'utf8'))
      const at = smaps.search(new RegExp(`^0*${start}-`, 'm'))
      const flags = at < 0 ? undefined : /^VmFlags:(.*)$/m.exec(smaps.slice(at))?.[1]
      softDirty = flags !== undefined && flags.split(' ').includes('sd')
    } finally {
      probe.close()
    }
  }
  return softDirty
}

// ---------------------------------------------------------------------------------------------
// PAGEMAP_SCAN (6.7+): page categories of a range in one ioctl, optionally write-protecting the
// matching pages (PM_SCAN_WP_MATCHING) of a range registered with a 'wpAsync' Userfaultfd.

const P = native.pagemapConstants

/** PAGE_IS_* categories. Open set: raw numbers pass through (newer kernels add bits). */
export const PageCategory = {
  wpAllowed: P.PAGE_IS_WPALLOWED,
  written: P.PAGE_IS_WRITTEN,
  file: P.PAGE_IS_FILE,
  present: P.PAGE_IS_PRESENT,
  swapped: P.PAGE_IS_SWAPPED,
  pfnZero: P.PAGE_IS_PFNZERO,
  huge: P.PAGE_IS_HUGE,
  softDirty: P.PAGE_IS_SOFT_DIRTY,
  /** 6.14+ (MADV_GUARD_INSTALL); older kernels reject it with EINVAL. */
  guard: P.PAGE_IS_GUARD,
} as const
/** A PAGEMAP_SCAN category by name ('written', 'present', …), the keys of PageCategory. */
export type PageCategoryName = keyof typeof PageCategory
const categoryNames = Object.keys(PageCategory) as PageCategoryName[]

/** PM_SCAN_* flags. */
export const ScanFlag = {
  wpMatching: P.PM_SCAN_WP_MATCHING,
  checkWpAsync: P.PM_SCAN_CHECK_WPASYNC,
} as const

/** Category names, a raw mask, or a mix in an array. */
export type Categories = number | readonly (PageCategoryName | number)[]

/** What `scan()` asks PAGEMAP_SCAN for: which pages (require, anyOf, exclude), what to report, and whether to write-protect them again. */
export interface ScanOptions {
  /** Page-aligned part of the Region; the whole Region when omitted. */
  range?: Range
  /** Every one of these categories (category_mask). */
  require?: Categories
  /** At least one of these (category_anyof_mask). */
  anyOf?: Categories
  /** None of these: each is inverted (category_inverted) and required (category_mask), so
   *  { require: ['written'], exclude: ['huge'] } is "written and not huge". A category both
   *  required and excluded means "excluded" (the kernel's inversion). scanRaw() takes the raw
   *  category_inverted for other combinations (e.g. inverted anyOf). */
  exclude?: Categories
  /** Categories reported per region (return_mask). Default: require | anyOf | exclude, or all
   *  of the 6.12 categories when none is given. */
  report?: Categories
  /** PM_SCAN_WP_MATCHING: write-protect the matching pages (re-arm write tracking). */
  writeProtect?: boolean
  /** PM_SCAN_CHECK_WPASYNC: fail with EPERM unless the range is registered with a 'wpAsync'
   *  Userfaultfd. Default: same as writeProtect (the kernel would silently skip such VMAs). */
  checkWpAsync?: boolean
  /** Stop after this many matching pages (>= 1; omit for no limit — the kernel's 0). */
  maxPages?: number
  /** Capacity of the result, in regions (default 1024, or output's capacity). A full vector
   *  stops the walk: resume from walkEnd, or use scanAll(). */
  vectorLength?: number
  /** Reusable result arrays for hot loops: the result's arrays are then views of these (valid
   *  until the next scan into them) and nothing is allocated per call. */
  output?: ScanOutput
}

/** Caller-owned result storage (see ScanOptions.output). */
export interface ScanOutput {
  starts: BigUint64Array
  ends: BigUint64Array
  categories: Uint32Array
}

/** Allocates reusable result arrays for `vectorLength` regions. */
export function scanOutput(vectorLength: number): ScanOutput {
  const n = validateInteger(vectorLength, 'vectorLength', 1, 2 ** 26)
  return { starts: new BigUint64Array(n), ends: new BigUint64Array(n), categories: new Uint32Array(n) }
}

/** What `scan()` returns: runs of contiguous pages with equal categories, as [start, end) addresses. */
export interface ScanResult {
  /** Start address of each region of contiguous pages with equal categories. */
  starts: BigUint64Array
  /** End address (exclusive) of each region. */
  ends: BigUint64Array
  /** PAGE_IS_* bits per region, masked by `report`. */
  categories: Uint32Array
  /** Where the walk stopped: the end of the range unless the vector or maxPages ran out. */
  walkEnd: bigint
  /** Total pages in the regions. */
  pages: number
}

const sixTwelveCategories = 0xff

function categoryMask(value: unknown, name: string): number {
  if (value === undefined) return 0
  if (typeof value === 'number') {
    if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw outOfRange(name, 'a PAGE_IS_* bit mask (0 to 2^32-1)', value)
    return value
  }
  if (!Array.isArray(value)) throw invalidArgType(name, 'an array of category names or a number', value)
  let mask = 0
  for (const [i, item] of value.entries()) {
    if (typeof item === 'number') mask |= categoryMask(item, `${name}[${i}]`)
    else if (typeof item === 'string' && (categoryNames as string[]).includes(item)) mask |= PageCategory[item as PageCategoryName]
    else if (typeof item === 'string') throw invalidArgValue(`${name}[${i}]`, `must be one of: ${categoryNames.map((n) => `'${n}'`).join(', ')}`, item)
    else throw invalidArgType(`${name}[${i}]`, 'a category name (string) or bit (number)', item)
  }
  return mask >>> 0
}

/** Names of the known bits of a categories value (unknown bits are left out). */
export function categoryNamesOf(mask: number): PageCategoryName[] {
  return categoryNames.filter((name) => (mask & PageCategory[name]) !== 0)
}

/**
 * @internal What a ScanOptions asks PAGEMAP_SCAN for, everything but where: the one reading of
 * scan options, for this process's Regions (scan, scanAll) and another process's pagemap
 * (remote.ts TargetProcess.scan).
 */
export interface ScanRequest {
  flags: number
  maxPages: number
  inverted: number
  mask: number
  anyof: number
  report: number
  vectorLength: number
  output: ScanOutput | undefined
}

/** A ScanRequest on a pagemap descriptor, over [address, end). */
interface Plan extends ScanRequest {
  fd: number
  address: number
  end: number
}

/** @internal The ScanOptions keys readScanRequest() reads (all but `range`). */
export const scanRequestKeys = ['require', 'anyOf', 'exclude', 'report', 'writeProtect', 'checkWpAsync', 'maxPages', 'vectorLength', 'output'] as const
const scanOptionKeys = ['range', ...scanRequestKeys] as const

/** A ScanOutput's three arrays, each read once (native code re-checks the very same objects). */
function readScanOutput(value: unknown, name: string): ScanOutput {
  const expected = 'a ScanOutput { starts: BigUint64Array, ends: BigUint64Array, categories: Uint32Array }'
  if (value === null || typeof value !== 'object') throw invalidArgType(name, expected, value)
  const { starts, ends, categories } = value as ScanOutput
  if (!(starts instanceof BigUint64Array) || !(ends instanceof BigUint64Array) || !(categories instanceof Uint32Array)) {
    throw invalidArgType(name, expected, value)
  }
  return { starts, ends, categories }
}

/** @internal The scan options (already read once by readOptions with scanRequestKeys) as a ScanRequest. */
export function readScanRequest(opts: { readonly [K in (typeof scanRequestKeys)[number]]?: unknown }): ScanRequest {
  const mask = categoryMask(opts.require, 'options.require')
  const anyof = categoryMask(opts.anyOf, 'options.anyOf')
  const inverted = categoryMask(opts.exclude, 'options.exclude')
  const report = opts.report === undefined ? (mask | anyof | inverted) || sixTwelveCategories : categoryMask(opts.report, 'options.report')
  const writeProtect = validateBoolean(opts.writeProtect ?? false, 'options.writeProtect')
  const checkWpAsync = validateBoolean(opts.checkWpAsync ?? writeProtect, 'options.checkWpAsync')
  const maxPages = opts.maxPages === undefined ? 0 : validateInteger(opts.maxPages, 'options.maxPages', 1)
  let output: ScanOutput | undefined
  let capacity = 2 ** 26
  if (opts.output !== undefined) {
    output = readScanOutput(opts.output, 'options.output')
    capacity = Math.min(output.starts.length, output.ends.length, output.categories.length)
    if (capacity < 1) throw outOfRange('options.output', 'arrays of at least 1 element', capacity)
  }
  const vectorLength = opts.vectorLength === undefined ? (output ? capacity : 1024) : validateInteger(opts.vectorLength, 'options.vectorLength', 1, capacity)
  return {
    mask: (mask | inverted) >>> 0,
    flags: (writeProtect ? P.PM_SCAN_WP_MATCHING : 0) | (checkWpAsync ? P.PM_SCAN_CHECK_WPASYNC : 0),
    maxPages,
    inverted,
    anyof,
    report,
    vectorLength,
    output,
  }
}

function plan(region: Region, options: ScanOptions | undefined): Plan {
  const opts = readOptions(options, 'options', scanOptionKeys)
  const span = resolveSpan(region, opts.range as Range | undefined, 'pagemap.scan')
  const request = readScanRequest(opts)
  return { ...request, fd: pagemapDescriptor(), address: span.address, end: span.address + span.length }
}

/** pm_scan_arg's slots by name, and the covered-bytes output (native/pagemap.cc, checked at load). */
const Arg = native.pagemapScanArg
/** The slots lib/ fills (size and vec are set natively; walkEnd and covered are outputs). */
type ScanFields = Record<'flags' | 'start' | 'end' | 'vecLen' | 'maxPages' | 'categoryInverted' | 'categoryMask' | 'categoryAnyofMask' | 'returnMask', number>
// One per module instance (each worker has its own): no JS runs while the native call uses it.
const scanArg = new BigUint64Array(Arg.length)

/** Fills scanArg; numbers are signed 64-bit (so -1 reaches the kernel as ~0, for raw scans). */
function fillScanArg(fields: ScanFields): BigUint64Array {
  scanArg.fill(0n)
  for (const key of Object.keys(fields) as (keyof ScanFields)[]) scanArg[Arg[key]] = BigInt.asUintN(64, BigInt(fields[key]))
  return scanArg
}

function run(p: Plan, start: number): ScanResult {
  const starts = p.output?.starts ?? new BigUint64Array(p.vectorLength)
  const ends = p.output?.ends ?? new BigUint64Array(p.vectorLength)
  const categories = p.output?.categories ?? new Uint32Array(p.vectorLength)
  const arg = fillScanArg({
    flags: p.flags, start, end: p.end, vecLen: p.vectorLength, maxPages: p.maxPages,
    categoryInverted: p.inverted, categoryMask: p.mask, categoryAnyofMask: p.anyof, returnMask: p.report,
  })
  // The context string is built only on failure: this runs on every scan of a hot loop.
  const n = check(native.pagemapScan(p.fd, arg, starts, ends, categories), 'ioctl(PAGEMAP_SCAN)', () => scanContext(p))
  const full = n === starts.length && n === ends.length && n === categories.length
  return {
    starts: full ? starts : starts.subarray(0, n),
    ends: full ? ends : ends.subarray(0, n),
    categories: full ? categories : categories.subarray(0, n),
    walkEnd: arg[Arg.walkEnd],
    pages: Number(arg[Arg.covered]) / pageSize,
  }
}

function scanContext(p: Plan): string {
  return `flags 0x${p.flags.toString(16)}, require 0x${p.mask.toString(16)}, anyOf 0x${p.anyof.toString(16)}, exclude 0x${p.inverted.toString(16)}, report 0x${p.report.toString(16)}`
}

/**
 * One PAGEMAP_SCAN over the Region (or options.range). Results land in typed arrays, no
 * per-page objects. When the vector fills up (or maxPages is reached) the walk stops at
 * walkEnd; scanAll() resumes for you.
 */
export function scan(region: Region, options?: ScanOptions): ScanResult {
  const p = plan(region, options)
  return run(p, p.address)
}

/**
 * Repeats PAGEMAP_SCAN from each walkEnd until the range is done (or maxPages, counted over
 * all batches, is reached). Yields one ScanResult per ioctl (with options.output, each batch's
 * arrays are overwritten by the next one: copy what you keep). The Region is re-checked before
 * every batch: closing it mid-iteration throws ERR_REGION_CLOSED instead of scanning freed
 * addresses.
 */
export function scanAll(region: Region, options?: ScanOptions): Generator<ScanResult, void, undefined> {
  // Validate now, not at the first next(): bad arguments throw where scanAll() is called.
  const p = plan(region, options)
  return batches(p, () => {
    resolveSpan(region, undefined, 'pagemap.scanAll')
    return pagemapDescriptor()
  })
}

/**
 * @internal One PAGEMAP_SCAN of `request` over [address, end) of the pagemap behind `fd`: scan()
 * for a pagemap other than this process's (remote.ts).
 */
export function scanPagemap(fd: number, request: ScanRequest, address: number, end: number): ScanResult {
  return run({ ...request, fd, address, end }, address)
}

/**
 * @internal scanAll() for a pagemap other than this process's (remote.ts): `descriptor()` is
 * called before every batch and returns the pagemap fd, or throws once its owner is closed.
 */
export function scanAllPagemap(descriptor: () => number, request: ScanRequest, address: number, end: number): Generator<ScanResult, void, undefined> {
  return batches({ ...request, fd: -1, address, end }, descriptor)
}

/** The batches of scanAll(): `descriptor()` re-checks the owner of the range and gives the fd. */
function* batches(p: Plan, descriptor: () => number): Generator<ScanResult, void, undefined> {
  let start = p.address
  let budget = p.maxPages
  while (start < p.end) {
    const batch = run({ ...p, fd: descriptor(), maxPages: budget }, start)
    yield batch
    const walkEnd = Number(batch.walkEnd)
    if (p.maxPages > 0) {
      budget -= batch.pages
      if (budget <= 0) return
    }
    if (walkEnd <= start) return
    start = walkEnd
  }
}

/** Raw pm_scan_arg fields for scanRaw (kselftest port: invalid arguments on purpose). */
export interface RawScanArgs {
  flags?: number
  maxPages?: number
  categoryInverted?: number
  categoryMask?: number
  categoryAnyofMask?: number
  returnMask?: number
  /** Output vector: three arrays of capacity >= vecLen, or null for vec = NULL. */
  vec?: { starts: BigUint64Array; ends: BigUint64Array; categories: Uint32Array } | null
  vecLen?: number
}

function rawInt(value: unknown, name: string): number {
  if (value === undefined) return 0
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) throw invalidArgType(name, 'a safe integer', value)
  return value
}

const rawScanKeys = ['flags', 'maxPages', 'categoryInverted', 'categoryMask', 'categoryAnyofMask', 'returnMask', 'vec', 'vecLen'] as const
type RawFields = { [K in Exclude<(typeof rawScanKeys)[number], 'vec'>]: number } & { vec: ScanOutput | null }

/** RawScanArgs read once into validated locals. */
function readRawArgs(args: RawScanArgs | undefined): RawFields {
  const a = readOptions(args, 'args', rawScanKeys, ['vec'])
  const vec = a.vec === undefined || a.vec === null ? null : readScanOutput(a.vec, 'args.vec')
  const fields: RawFields = {
    flags: rawInt(a.flags, 'args.flags'),
    maxPages: rawInt(a.maxPages, 'args.maxPages'),
    categoryInverted: rawInt(a.categoryInverted, 'args.categoryInverted'),
    categoryMask: rawInt(a.categoryMask, 'args.categoryMask'),
    categoryAnyofMask: rawInt(a.categoryAnyofMask, 'args.categoryAnyofMask'),
    returnMask: rawInt(a.returnMask, 'args.returnMask'),
    vecLen: rawInt(a.vecLen, 'args.vecLen'),
    vec,
  }
  if (vec !== null) {
    const capacity = Math.min(vec.starts.length, vec.ends.length, vec.categories.length)
    if (fields.vecLen < 0 || fields.vecLen > capacity) throw outOfRange('args.vecLen', `>= 0 and <= ${capacity} (the vector's capacity)`, fields.vecLen)
  }
  return fields
}

function rawScan(start: number, end: number, a: RawFields): { regions: number; walkEnd: bigint } {
  const arg = fillScanArg({
    flags: a.flags, start, end, vecLen: a.vecLen, maxPages: a.maxPages, categoryInverted: a.categoryInverted,
    categoryMask: a.categoryMask, categoryAnyofMask: a.categoryAnyofMask, returnMask: a.returnMask,
  })
  const n = check(native.pagemapScan(pagemapDescriptor(), arg, a.vec?.starts ?? null, a.vec?.ends ?? null, a.vec?.categories ?? null),
    'ioctl(PAGEMAP_SCAN)', () => `raw flags ${a.flags}`)
  return { regions: n, walkEnd: arg[Arg.walkEnd] }
}

/**
 * @internal PAGEMAP_SCAN with raw pm_scan_arg fields, no defaults and no mask checks (the
 * kselftest port's invalid-argument cases). Still only inside a live Region: `range` may have
 * length 0 (an empty scan) but must lie within it. Output goes only into the arrays given.
 */
export function scanRaw(region: Region, range: Range | undefined, args?: RawScanArgs): { regions: number; walkEnd: bigint } {
  const r = readRange(range)
  const fields = readRawArgs(args)
  let start: number, end: number
  if (r !== undefined && r.length === 0) {
    const whole = resolveSpan(region, undefined, 'pagemap.scanRaw')
    const offset = validateInteger(r.offset, 'range.offset', 0, whole.length)
    start = end = whole.address + offset
  } else {
    const span = resolveSpan(region, r as Range | undefined, 'pagemap.scanRaw')
    start = span.address
    end = span.address + span.length
  }
  return rawScan(start, end, fields)
}

/**
 * @internal Read-only PAGEMAP_SCAN of arbitrary addresses (the kselftest's "unmapped region"
 * case). Safe for any address because it refuses PM_SCAN_WP_MATCHING: without it the kernel
 * only reads page tables, and it writes results only into the given arrays.
 */
export function scanAddressesReadOnly(start: bigint, length: number, args?: RawScanArgs): { regions: number; walkEnd: bigint } {
  if (typeof start !== 'bigint' || start < 0n || start >= 2n ** 53n) throw invalidArgType('start', 'a bigint address below 2^53', start)
  validateInteger(length, 'length')
  // Read once: the flags checked here are the flags the kernel gets.
  const fields = readRawArgs(args)
  if ((fields.flags & P.PM_SCAN_WP_MATCHING) !== 0) {
    throw invalidArgValue('args.flags', 'may not contain PM_SCAN_WP_MATCHING outside a Region', fields.flags)
  }
  return rawScan(Number(start), Number(start) + length, fields)
}

let scanSupported: boolean | undefined
/**
 * Like vm_util.c's pagemap_scan_supported(): PAGEMAP_SCAN with an invalid vector address on
 * purpose; EFAULT means the ioctl exists (ENOTTY/EINVAL: it does not).
 */
export function probePagemapScan(): boolean {
  if (scanSupported === undefined) {
    let fd: number
    try {
      fd = pagemapDescriptor()
    } catch (error) {
      // No /proc/self/pagemap (CONFIG_PROC_PAGE_MONITOR off, or no /proc): no PAGEMAP_SCAN either.
      if (error instanceof SyscallError && error.code === 'ENOENT') return (scanSupported = false)
      throw error
    }
    const rc = native.pagemapScanProbe(fd, pageSize)
    if (rc === 0) throw new Error('PAGEMAP_SCAN succeeded with an invalid vector')
    scanSupported = rc === -errno.EFAULT
  }
  return scanSupported
}
