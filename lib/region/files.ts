// What Region.file and Region.memfd learn from files before mapping: regular files opened
// without blocking, and hugetlb page sizes (the kernel maps hugetlbfs only in whole huge pages).
import fs from 'node:fs'
import { constants as C } from '../native.ts'
import { FeatureUnavailableError, fsCall } from '../errors.ts'
import { invalidArgValue } from '../validate.ts'

let defaultHugePageSize: number | undefined
/** The default hugetlb page size (Hugepagesize in /proc/meminfo, what MFD_HUGETLB uses). */
export function hugetlbPageSize(): number {
  if (defaultHugePageSize === undefined) {
    const meminfo = fsCall('open', '/proc/meminfo', () => fs.readFileSync('/proc/meminfo', 'latin1'))
    const kb = /^Hugepagesize:\s+(\d+) kB$/m.exec(meminfo)
    if (!kb) throw new FeatureUnavailableError('hugetlb', 'no Hugepagesize in /proc/meminfo (CONFIG_HUGETLBFS is off)')
    defaultHugePageSize = Number(kb[1]) * 1024
  }
  return defaultHugePageSize
}

const HUGETLBFS_MAGIC = 0x958458f6
/** The huge page size of the file behind `fd` if it lives on hugetlbfs (statfs f_bsize), else 0. */
export function hugetlbfsPageSize(fd: number, path: string): number {
  const stat = fsCall('statfs', path, () => fs.statfsSync(`/proc/self/fd/${fd}`))
  return stat.type === HUGETLBFS_MAGIC ? stat.bsize : 0
}

/** What a file that is not a regular file is, for the refusal. */
function fileKind(stats: fs.Stats): string {
  if (stats.isFIFO()) return 'a FIFO'
  if (stats.isDirectory()) return 'a directory'
  if (stats.isSocket()) return 'a socket'
  if (stats.isCharacterDevice()) return 'a character device'
  if (stats.isBlockDevice()) return 'a block device'
  return 'not a regular file'
}

/**
 * @internal Opens a regular file without blocking (Region.file, TwinIndex.open): O_PATH first
 * (opens nothing: a FIFO neither waits for a writer nor releases one, a device runs no open
 * handler), fstat, and only a regular file is reopened through /proc/self/fd (the same inode
 * whatever the path does since) with `access` | O_NONBLOCK: a file another process holds a lease
 * on is EAGAIN at once instead of a wait of up to lease-break-time (45 s) on the event loop.
 * Anything else is TypeError ERR_INVALID_ARG_VALUE naming the argument (`name`, `value`).
 */
export function openRegularFile(path: string, access: number, name: string, value: unknown, wanted: string): number {
  const pathFd = fsCall('open', path, () => fs.openSync(path, C.O_PATH))
  try {
    const stats = fsCall('fstat', path, () => fs.fstatSync(pathFd))
    if (!stats.isFile()) throw invalidArgValue(name, `is ${fileKind(stats)}, not ${wanted} (refused without being opened)`, value)
    return fsCall('open', path, () => fs.openSync(`/proc/self/fd/${pathFd}`, access | C.O_NONBLOCK))
  } finally {
    fs.closeSync(pathFd)
  }
}
