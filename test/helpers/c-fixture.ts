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
  for (const dir of buildDirs) {
    try {
      fs.mkdirSync(dir, { recursive: true })
      // gcc's own EROFS is only an exit status: find a read-only dir (the lab's 9p view) first.
      fs.accessSync(dir, fs.constants.W_OK)
      const output = path.join(dir, file)
      execFileSync('gcc', ['-O2', '-Wall', '-static', '-pthread', '-o', `${output}.${process.pid}`, source], { stdio: 'pipe' })
      fs.renameSync(`${output}.${process.pid}`, output)
      built.set(name, output)
      return output
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EROFS' && (error as NodeJS.ErrnoException).code !== 'EACCES') throw error
    }
  }
  throw new Error(`no writable directory to build ${name} in: ${buildDirs.join(', ')}`)
}
