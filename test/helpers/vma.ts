// /proc/self/maps as data: the VMA counts and boundaries the mremap / merge ports assert.
import fs from 'node:fs'

export interface Vma {
  start: bigint
  end: bigint
  perms: string
  name: string
}

export function vmas(): Vma[] {
  const out: Vma[] = []
  for (const line of fs.readFileSync('/proc/self/maps', 'latin1').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line)
    if (m) out.push({ start: BigInt('0x' + m[1]), end: BigInt('0x' + m[2]), perms: m[3], name: m[4] })
  }
  return out
}

/** The VMA containing `address` (find_vma_procmap() in the C tests), or undefined. */
export function vmaAt(address: bigint): Vma | undefined {
  return vmas().find((v) => v.start <= address && address < v.end)
}

/** VMAs intersecting [start, start + length). */
export function vmasIn(start: bigint, length: number): Vma[] {
  const end = start + BigInt(length)
  return vmas().filter((v) => v.end > start && v.start < end)
}

/** is_range_mapped(): [start, end) lies inside one VMA. */
export function isRangeMapped(start: bigint, end: bigint): boolean {
  return vmas().some((v) => v.start <= start && v.end >= end)
}

/** vma: [start - address0, end - address0) in pages, for readable assertion messages. */
export function layout(base: bigint, length: number, pageSize: number): string[] {
  return vmasIn(base, length).map((v) => `${(v.start - base) / BigInt(pageSize)}-${(v.end - base) / BigInt(pageSize)} ${v.perms} ${v.name}`)
}

/** The VmFlags of each VMA intersecting [start, start + length) in /proc/self/smaps (e.g. 'uw': uffd-wp registered). */
export function vmFlagsIn(start: bigint, length: number): { start: bigint; end: bigint; flags: string[] }[] {
  const end = start + BigInt(length)
  const out: { start: bigint; end: bigint; flags: string[] }[] = []
  for (const block of fs.readFileSync('/proc/self/smaps', 'latin1').split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(block)
    if (!m) continue
    const vma = { start: BigInt('0x' + m[1]), end: BigInt('0x' + m[2]) }
    if (vma.end <= start || vma.start >= end) continue
    out.push({ ...vma, flags: (/^VmFlags:(.*)$/m.exec(block)?.[1] ?? '').trim().split(/\s+/) })
  }
  return out
}
