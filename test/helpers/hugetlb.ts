// Free hugetlb pages for tests that map hugetlb memory. The host's vm.nr_hugepages is never
// changed (tests there skip, saying so); in the lab VM (MEMDEDUP_VM) the pages are reserved on
// demand and the old value is restored by restoreHugePages() (call it from afterAll).
import fs from 'node:fs'
import { inVm } from './env.mjs'
import { errorCode } from './errors.ts'

const nrHugepages = '/proc/sys/vm/nr_hugepages'
let restore: string | undefined

/** HugePages_Free of the default huge page size. */
export function hugetlbFree(): number {
  return Number(/^HugePages_Free:\s+(\d+)/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0)
}

/** Makes `need` default-size huge pages free (in the VM only); the reason when they are not. */
export function reserveHugePages(need: number): string | undefined {
  let failed = ''
  if (hugetlbFree() < need && inVm) {
    try {
      const old = fs.readFileSync(nrHugepages, 'utf8').trim()
      restore ??= old
      fs.writeFileSync(nrHugepages, String(Number(old) + need - hugetlbFree()))
    } catch (error) {
      // No hugetlb in this kernel (ENOENT) or not allowed to raise it: the reason below says so.
      const code = errorCode(error)
      if (code !== 'ENOENT' && code !== 'EACCES' && code !== 'EPERM') throw error
      failed = `; raising ${nrHugepages} failed: ${code}`
    }
  }
  const free = hugetlbFree()
  if (free >= need) return undefined
  return `no free hugetlb pages (HugePages_Free ${free} < ${need}); tests reserve them only in the VM (vm.nr_hugepages)${failed}`
}

/** Puts vm.nr_hugepages back to what it was before the first reserveHugePages() that raised it. */
export function restoreHugePages(): void {
  if (restore === undefined) return
  fs.writeFileSync(nrHugepages, restore)
  restore = undefined
}

/** Permissions and KernelPageSize (bytes) of the VMA starting at `address`, from /proc/self/smaps. */
export function vmaPageSize(address: bigint): { perms: string; kernelPageSize: number } {
  const smaps = fs.readFileSync('/proc/self/smaps', 'utf8')
  const start = smaps.search(new RegExp(`^${address.toString(16)}-`, 'm'))
  if (start < 0) return { perms: '', kernelPageSize: 0 }
  const rest = smaps.slice(start)
  const next = rest.search(/\n[0-9a-f]+-[0-9a-f]+ /)
  const entry = next < 0 ? rest : rest.slice(0, next)
  const perms = /^\S+ (\S+)/.exec(entry)?.[1] ?? ''
  const kb = /^KernelPageSize:\s+(\d+) kB$/m.exec(entry)?.[1]
  return { perms, kernelPageSize: Number(kb ?? 0) * 1024 }
}
