// test/fixtures/mm-fork.c: the fork(2) (and SIGSEGV) half of the cow.c, uffd-unit-tests.c and
// mkdirty.c ports, compiled once per source into os.tmpdir() and run per case. It prints one JSON
// line of observations; the ports assert on it.
import { spawnSync } from 'node:child_process'
import { expect } from 'vitest'
import { fixtureBinary } from './c-fixture.ts'

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
  } catch {
    return 0
  }
}
