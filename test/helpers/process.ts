// Process-level observations used to prove "nothing left behind": mappings, fds, RSS.
import fs from 'node:fs'
import { expect } from 'vitest'

export function mappingCount(): number {
  return fs.readFileSync('/proc/self/maps', 'utf8').trimEnd().split('\n').length
}

/**
 * Mappings memdedup made: "[anon:memdedup]" (named anonymous), memfd:memdedup…, and files the
 * tests map (libc, the test files). V8 maps and unmaps heap pages of its own concurrently, so the
 * total count is noise; this one is exact (anonymous Regions count only where the kernel names
 * them, CONFIG_ANON_VMA_NAME; elsewhere VmSize and RSS catch their leaks).
 */
export function ownMappingCount(): number {
  return fs
    .readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((line) => /memdedup|libc\.so|\.test\.ts$/.test(line)).length
}

/** Whether this kernel names anonymous mappings (CONFIG_ANON_VMA_NAME). */
export function anonNamesSupported(): boolean {
  return fs.readFileSync('/proc/self/maps', 'utf8').includes('[anon:')
}

export function fdCount(): number {
  return fs.readdirSync('/proc/self/fd').length
}

/** Runs `body` and asserts that it leaves the process's fd count unchanged. */
export function noFdLeak(body: () => void): void {
  const before = fdCount()
  body()
  expect(fdCount()).toBe(before)
}

/** Capabilities by number (include/uapi/linux/capability.h). */
export const CAP_SYS_NICE = 23

/** Whether this process holds capability `cap` (the CapEff mask of /proc/self/status). */
export function hasCapability(cap: number): boolean {
  const match = /^CapEff:\s+([0-9a-f]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))
  if (!match) throw new Error('/proc/self/status has no CapEff line')
  return ((BigInt(`0x${match[1]}`) >> BigInt(cap)) & 1n) === 1n
}

function statusBytes(field: string): number {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(fs.readFileSync('/proc/self/status', 'utf8'))
  return Number(match?.[1] ?? 0) * 1024
}

export const rssBytes = () => statusBytes('VmRSS')
export const vmSizeBytes = () => statusBytes('VmSize')

/** Whether a mapping covering `address` exists in /proc/self/maps. */
export function isMapped(address: bigint): boolean {
  return fs
    .readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .some((line) => {
      const [range] = line.split(' ')
      if (!range) return false
      const [start, end] = range.split('-').map((h) => BigInt('0x' + h))
      return address >= start && address < end
    })
}

export const libcPath = ['/usr/lib/x86_64-linux-gnu/libc.so.6', '/lib/x86_64-linux-gnu/libc.so.6'].find((p) => fs.existsSync(p))!

/** A kernel thread's pid as /proc lists it (no VmSize, empty cmdline), or undefined in a PID namespace without them. */
export function kernelThreadPid(): number | undefined {
  const pid = fs
    .readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e))
    .find((e) => {
      try {
        return !/^VmSize:/m.test(fs.readFileSync(`/proc/${e}/status`, 'utf8')) && fs.readFileSync(`/proc/${e}/cmdline`).length === 0
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code
        if (code === 'ENOENT' || code === 'ESRCH') return false // exited meanwhile
        throw error
      }
    })
  return pid === undefined ? undefined : Number(pid)
}
