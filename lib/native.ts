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
}

export interface UserfaultfdBinding {
  // --- userfaultfd (write tracking) ---
}

export type Binding = MmBinding & PrctlBinding & PagemapBinding & UserfaultfdBinding

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

export const native: Binding = load()
export const constants = native.constants
export const pageSize: number = native.constants.pageSize
