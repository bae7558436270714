// Child processes and benchmarks run plain Node (no TypeScript): they import the compiled
// dist/. One check that it is there and not older than lib/, shared by test/ and bench/.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { inVm } from './env.mjs'

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
export const distEntry = path.join(repoRoot, 'dist', 'lib', 'index.js')

/**
 * Makes sure dist/ is built from the current lib/: rebuilds it when missing or older, unless the
 * checkout is read-only (the VM), where a stale build is used and a missing one is an error.
 */
export function ensureDist() {
  const libDir = path.join(repoRoot, 'lib')
  const sources = fs.readdirSync(libDir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts'))
  const newestLib = Math.max(...sources.map((f) => fs.statSync(path.join(libDir, f)).mtimeMs))
  const built = fs.existsSync(distEntry) ? fs.statSync(distEntry).mtimeMs : -1
  if (built >= newestLib) return
  let writable = true
  try {
    fs.accessSync(repoRoot, fs.constants.W_OK)
    fs.accessSync(path.join(repoRoot, 'dist'), fs.constants.W_OK)
  } catch (error) {
    // dist/ missing but the root is writable: tsc creates it.
    writable = error.code === 'ENOENT' && !inVm
  }
  if (!writable) {
    if (built < 0) throw new Error(`${distEntry} is missing and the checkout is read-only: run \`npx tsc -p tsconfig.json\` on the host first`)
    return // stale but unbuildable here: use it
  }
  const tsc = path.join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc')
  try {
    execFileSync(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: repoRoot, stdio: 'pipe' })
  } catch (error) {
    // Type errors elsewhere in lib/ (work in progress) still emit JavaScript; only a missing build is fatal.
    if (!fs.existsSync(distEntry)) throw new Error(`tsc did not produce ${distEntry}: ${String(error.stdout ?? error)}`)
  }
}
