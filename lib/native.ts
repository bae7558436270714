// Loads build/Release/memdedup.node and types the raw binding. Nothing else lives here:
// validation, defaults and error messages belong to the modules that call it.
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import path from 'node:path'

/** Raw result convention: >= 0 success, negative value = -errno. */
export type Rc = number

export interface MmBinding {
  mmap(hint: number, length: number, prot: number, flags: number, fd: number, offset: number): Rc
  munmap(address: number, length: number): Rc
  mprotect(address: number, length: number, prot: number): Rc
  madvise(address: number, length: number, advice: number): Rc
  mremap(oldAddress: number, oldLength: number, newLength: number, flags: number, newAddress: number): Rc
  wrap(address: number, length: number): ArrayBuffer
  detach(buffer: ArrayBuffer): void
  copyOut(address: number, length: number, into: Uint8Array): number
  memfdCreate(name: string, flags: number): Rc
  ftruncate(fd: number, length: number): Rc
  closeFd(fd: number): Rc
  constants: Record<string, number> & { pageSize: number }
}

export interface PrctlBinding {
  prctlGetMemoryMerge(): Rc
  prctlSetMemoryMerge(value: number): Rc
  prctlSetVmaAnonName(address: number, length: number, name: string): Rc
}

export interface PagemapBinding {
  pagemapEntries(fd: number, address: number, pages: number, pfns: BigUint64Array, flags: Uint8Array): Rc
  // --- PAGEMAP_SCAN (write tracking) ---
  /**
   * PAGEMAP_SCAN on `fd` (/proc/self/pagemap) → number of regions | -errno. Regions are split
   * into starts/ends/categories (capacity >= vecLen, re-checked natively); with all three null
   * the kernel gets vec = 0. out[0] = walk_end, out[1] = bytes in the regions. Flags and masks are signed 64-bit, passed as is.
   */
  pagemapScan(
    fd: number, start: number, end: number, flags: number, maxPages: number,
    categoryInverted: number, categoryMask: number, categoryAnyofMask: number, returnMask: number,
    vecLen: number, starts: BigUint64Array | null, ends: BigUint64Array | null,
    categories: Uint32Array | null, out: Float64Array,
  ): Rc
  /** PAGEMAP_SCAN with an invalid vec on purpose: -EFAULT means the ioctl exists. */
  pagemapScanProbe(fd: number, address: number): Rc
  pagemapConstants: Record<string, number>
}

export interface UserfaultfdBinding {
  // --- userfaultfd (write tracking) ---
  /** method: uffdConstants.OPEN_SYSCALL | OPEN_SYSCALL_USER_MODE_ONLY | OPEN_DEVICE → fd | -errno */
  uffdOpen(method: number): Rc
  /** UFFDIO_API (once per fd) → 0 | -errno; out[0] = offered features, out[1] = ioctls. */
  uffdApi(fd: number, features: number, out: BigUint64Array): Rc
  /** UFFDIO_REGISTER → 0 | -errno; out[0] = ioctls usable on the range. */
  uffdRegister(fd: number, address: number, length: number, mode: number, out: BigUint64Array): Rc
  uffdUnregister(fd: number, address: number, length: number): Rc
  /** UFFDIO_WRITEPROTECT; mode UFFDIO_WRITEPROTECT_MODE_WP protects, 0 unprotects. */
  uffdWriteProtect(fd: number, address: number, length: number, mode: number): Rc
  uffdConstants: Record<string, number>
}

export interface ContentBinding {
  /** Hashes the pages at address + index * pageSize into out; -EINVAL if the arrays are too short. */
  hashPages(address: number, pageIndexes: Uint32Array, count: number, out: BigUint64Array): Rc
}

export type Binding = MmBinding & PrctlBinding & PagemapBinding & UserfaultfdBinding & ContentBinding

function load(): Binding {
  if (process.platform !== 'linux') {
    throw new Error(`memdedup needs Linux (it binds Linux-only syscalls); this is ${process.platform}`)
  }
  const require = createRequire(import.meta.url)
  const here = path.dirname(fileURLToPath(import.meta.url))
  // lib/ when run from source, dist/lib/ when compiled.
  const roots = [path.resolve(here, '..'), path.resolve(here, '..', '..')]
  const tried: string[] = []
  for (const root of roots) {
    for (const flavour of ['Release', 'Debug']) {
      const file = path.join(root, 'build', flavour, 'memdedup.node')
      tried.push(file)
      try {
        return require(file) as Binding
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw error
      }
    }
  }
  throw new Error(`memdedup native addon not found (run \`npm install\` or \`npx node-gyp rebuild\`); tried:\n  ${tried.join('\n  ')}`)
}

// A spread copy: the addon's exports object is in V8 dictionary mode, a plain object literal is
// fast (every call site reads a property of it).
export const native: Binding = { ...load() }
export const constants = native.constants
export const pageSize: number = native.constants.pageSize
