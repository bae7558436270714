// /proc/self/pagemap (entries) and the PAGEMAP_SCAN ioctl (scan). Same PFN = same physical
// page: every merge claim in the tests is proven with entries().
import fs from 'node:fs'
import { native, pageSize } from './native.ts'
import { check } from './errors.ts'
import { Region, resolveSpan, type Range } from './region.ts'

/** Bits of PagemapEntries.flags (decoded natively from the 64-bit pagemap entries). */
export const PageFlag = {
  present: 1,
  swapped: 2,
  file: 4,
  exclusive: 8,
  softDirty: 16,
  uffdWp: 32,
} as const

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
  get length(): number {
    return this.pfns.length
  }
  present(page: number): boolean {
    return (this.flags[page] & PageFlag.present) !== 0
  }
  swapped(page: number): boolean {
    return (this.flags[page] & PageFlag.swapped) !== 0
  }
  file(page: number): boolean {
    return (this.flags[page] & PageFlag.file) !== 0
  }
  exclusive(page: number): boolean {
    return (this.flags[page] & PageFlag.exclusive) !== 0
  }
  softDirty(page: number): boolean {
    return (this.flags[page] & PageFlag.softDirty) !== 0
  }
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
  if (pagemapFd < 0) pagemapFd = fs.openSync('/proc/self/pagemap', 'r')
  return pagemapFd
}

/** Decoded /proc/self/pagemap entries for the Region (or a page-aligned range of it). */
export function entries(region: Region, range?: Range): PagemapEntries {
  const span = resolveSpan(region, range, 'pagemap.entries')
  const pages = span.length / pageSize
  const pfns = new BigUint64Array(pages)
  const flags = new Uint8Array(pages)
  const got = check(native.pagemapEntries(pagemapDescriptor(), span.address, pages, pfns, flags), 'pread', '/proc/self/pagemap')
  if (got !== pages) throw new Error(`short read of /proc/self/pagemap: ${got} of ${pages} entries`)
  return new PagemapEntries(BigInt(span.address), pfns, flags)
}

let zeroPagePfn: bigint | undefined
/** PFN of the shared zero page (what a read fault of untouched anonymous memory maps). */
export function zeroPfn(): bigint {
  if (zeroPagePfn === undefined) {
    const probe = Region.anonymous(pageSize)
    try {
      probe.read()
      zeroPagePfn = entries(probe).pfns[0]
    } finally {
      probe.close()
    }
  }
  return zeroPagePfn
}

// PLACEHOLDER until the write-tracking work lands (being written now).
export function probePagemapScan(): boolean {
  throw new Error('PAGEMAP_SCAN binding not built yet')
}
