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

/** Build directories, first usable wins: the checkout's cache (the lab guest sees the host's
 *  build there, read-only: compiling under TCG takes a minute), then os.tmpdir(). */
const buildDirs = [path.join(repoRoot, 'node_modules', '.cache', 'memdedup'), os.tmpdir()]

let binary: string | undefined
/** Path of the compiled helper (built on first use, static: exec is the slow part under TCG). */
export function mmForkBinary(): string {
  if (binary) return binary
  const hash = crypto.createHash('sha256').update(fs.readFileSync(source)).update(fs.readFileSync(compat)).digest('hex').slice(0, 16)
  const name = `mm-fork-${hash}`
  binary = buildDirs.map((dir) => path.join(dir, name)).find((file) => fs.existsSync(file))
  if (binary) return binary
  for (const dir of buildDirs) {
    try {
      fs.mkdirSync(dir, { recursive: true })
      const output = path.join(dir, name)
      execFileSync('gcc', ['-O2', '-Wall', '-static', '-pthread', '-o', `${output}.${process.pid}`, source], { stdio: 'pipe' })
      fs.renameSync(`${output}.${process.pid}`, output)
      return (binary = output)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EROFS' && (error as NodeJS.ErrnoException).code !== 'EACCES') throw error
    }
  }
  throw new Error(`no writable directory to build mm-fork in: ${buildDirs.join(', ')}`)
}

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
