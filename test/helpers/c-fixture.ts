// C helpers under test/fixtures/, compiled once per source (with native/compat.h, which they
// include) by the host gcc, static (exec is the slow part under TCG).
import { execFileSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { repoRoot } from './dist.mjs'

const compat = path.join(repoRoot, 'native', 'compat.h')

/** Build directories, first usable wins: the checkout's cache (the lab guest sees the host's
 *  build there, read-only: compiling under TCG takes a minute), then os.tmpdir(). */
const buildDirs = [path.join(repoRoot, 'node_modules', '.cache', 'memdedup'), os.tmpdir()]

/** Whether dir exists or can be made, and can be written: gcc's own EROFS is only an exit status,
 *  and on the lab's read-only 9p view mkdir of a missing dir is ENOENT (a fresh checkout). */
function writable(dir: string): boolean {
  try {
    fs.mkdirSync(dir, { recursive: true })
    fs.accessSync(dir, fs.constants.W_OK)
    return true
  } catch (error) {
    if (['EROFS', 'EACCES', 'ENOENT'].includes((error as NodeJS.ErrnoException).code ?? '')) return false
    throw error
  }
}

const built = new Map<string, string>()
/** Path of test/fixtures/<name>.c compiled (built on first use, reused while the sources match). */
export function fixtureBinary(name: string): string {
  const cached = built.get(name)
  if (cached) return cached
  const source = path.join(repoRoot, 'test', 'fixtures', `${name}.c`)
  const hash = crypto.createHash('sha256').update(fs.readFileSync(source)).update(fs.readFileSync(compat)).digest('hex').slice(0, 16)
  const file = `${name}-${hash}`
  const existing = buildDirs.map((dir) => path.join(dir, file)).find((candidate) => fs.existsSync(candidate))
  if (existing) {
    built.set(name, existing)
    return existing
  }
  const dir = buildDirs.find(writable)
  if (dir) {
    const output = path.join(dir, file)
    execFileSync('gcc', ['-O2', '-Wall', '-static', '-pthread', '-o', `${output}.${process.pid}`, source], { stdio: 'pipe' })
    fs.renameSync(`${output}.${process.pid}`, output)
    built.set(name, output)
    return output
  }
  throw new Error(`no writable directory to build ${name} in: ${buildDirs.join(', ')}`)
}
