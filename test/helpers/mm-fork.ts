// test/fixtures/mm-fork.c: the fork(2) (and SIGSEGV) half of the cow.c, uffd-unit-tests.c and
// mkdirty.c ports, compiled once per source into os.tmpdir() and run per case. It prints one JSON
// line of observations; the ports assert on it.
import { execFileSync, spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { expect } from 'vitest'
import { repoRoot } from './dist.mjs'

const source = path.join(repoRoot, 'test', 'fixtures', 'mm-fork.c')
const compat = path.join(repoRoot, 'native', 'compat.h')

let binary: string | undefined
/** Path of the compiled helper (built on first use; gcc is on the lab's root file system too). */
export function mmForkBinary(): string {
  if (binary) return binary
  const hash = crypto.createHash('sha256').update(fs.readFileSync(source)).update(fs.readFileSync(compat)).digest('hex').slice(0, 16)
  const output = path.join(os.tmpdir(), `memdedup-mm-fork-${hash}`)
  if (!fs.existsSync(output)) {
    execFileSync('gcc', ['-O2', '-Wall', '-pthread', '-o', `${output}.${process.pid}`, source], { stdio: 'pipe' })
    fs.renameSync(`${output}.${process.pid}`, output)
  }
  binary = output
  return output
}

/** What one run printed: `skip` (the C's ksft_test_result_skip reason) or the observations. */
export type MmForkResult = { skip?: string } & Record<string, number | string>

/** Runs `mm-fork ...args`; fails the test on a crash, a non-zero exit or no JSON line. */
export function mmFork(args: (string | number)[], timeoutMs = 60_000): MmForkResult {
  const child = spawnSync(mmForkBinary(), args.map(String), { encoding: 'utf8', timeout: timeoutMs })
  const output = `${child.stdout ?? ''}${child.stderr ?? ''}`
  expect(child.signal, `mm-fork ${args.join(' ')} was killed: ${output}`).toBeNull()
  expect(child.status, `mm-fork ${args.join(' ')} exited ${child.status}: ${output}`).toBe(0)
  const line = output.split('\n').find((l) => l.startsWith('{'))
  expect(line, `mm-fork ${args.join(' ')} printed no result: ${output}`).toBeDefined()
  return JSON.parse(line!) as MmForkResult
}

/** PMD size of THP (/sys/kernel/mm/transparent_hugepage/hpage_pmd_size), 0 without THP. */
export function pmdSize(): number {
  try {
    return Number(fs.readFileSync('/sys/kernel/mm/transparent_hugepage/hpage_pmd_size', 'utf8').trim())
  } catch {
    return 0
  }
}
