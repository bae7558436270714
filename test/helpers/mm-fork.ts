// test/fixtures/mm-fork.c: the fork(2) (and SIGSEGV) half of the cow.c, uffd-unit-tests.c and
// mkdirty.c ports, compiled once per source into os.tmpdir() and run per case. It prints one JSON
// line of observations; the ports assert on it.
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import { expect } from 'vitest'
import { features } from '../../lib/index.ts'
import { fixtureBinary } from './c-fixture.ts'
import { errorCode } from './errors.ts'

/** Path of the compiled helper (built on first use). */
export const mmForkBinary = (): string => fixtureBinary('mm-fork')

/** What one run printed: `skip` (the C's ksft_test_result_skip reason) or the observations. */
export type MmForkResult = { skip?: string } & Record<string, number | string>

/** Runs `mm-fork ...args`: every JSON line it printed. Fails on a crash or a non-zero exit. */
export function mmForkLines(args: (string | number)[], timeoutMs = 120_000): MmForkResult[] {
  const child = spawnSync(mmForkBinary(), args.map(String), { encoding: 'utf8', timeout: timeoutMs })
  const output = `${child.stdout ?? ''}${child.stderr ?? ''}`
  expect(child.signal, `mm-fork ${args.join(' ')} was killed: ${output}`).toBeNull()
  expect(child.status, `mm-fork ${args.join(' ')} exited ${child.status}: ${output}`).toBe(0)
  return output
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as MmForkResult)
}

/** Runs `mm-fork ...args` for its one result line. */
export function mmFork(args: (string | number)[], timeoutMs?: number): MmForkResult {
  const [result] = mmForkLines(args, timeoutMs)
  expect(result, `mm-fork ${args.join(' ')} printed no result`).toBeDefined()
  return result
}

/** PMD size of THP (/sys/kernel/mm/transparent_hugepage/hpage_pmd_size), 0 without THP. */
export function pmdSize(): number {
  try {
    return Number(fs.readFileSync('/sys/kernel/mm/transparent_hugepage/hpage_pmd_size', 'utf8').trim())
  } catch (error) {
    // No THP in this kernel (CONFIG_TRANSPARENT_HUGEPAGE off): the file does not exist. Anything
    // else (a typo, EACCES) is a bug that must not turn every THP case into a silent non-case.
    if (errorCode(error) === 'ENOENT') return 0
    throw error
  }
}

/**
 * Why the THP cases cannot run here, or '' when they can: the C's thp_is_enabled() (the THP
 * sysfs directory exists and transparent_hugepage/enabled is [always] or [madvise]) and
 * read_pmd_pagesize() (non-zero). A THP case calls ctx.skip(reason) when this is not ''.
 */
export function thpUnavailable(): string {
  if (!features().thp) return `Transparent Hugepages not available: no /sys/kernel/mm/transparent_hugepage on ${features().kernelRelease} (CONFIG_TRANSPARENT_HUGEPAGE off)`
  if (pmdSize() === 0) return 'Transparent Hugepages not available: no PMD size (/sys/kernel/mm/transparent_hugepage/hpage_pmd_size missing)'
  const enabled = fs.readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8')
  const mode = /\[(\w+)\]/.exec(enabled)?.[1]
  if (mode === undefined) throw new Error(`/sys/kernel/mm/transparent_hugepage/enabled has no [mode]: ${enabled.trim()}`)
  if (mode === 'never') return 'Transparent Hugepages not available: /sys/kernel/mm/transparent_hugepage/enabled is [never]'
  return ''
}
