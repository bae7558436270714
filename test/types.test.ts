// What the package ships for TypeScript users: dist/**/*.d.ts, emitted with stripInternal, so
// members marked @internal (Region.span, Region.onClose, resolveSpan, …) are not part of the API.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { execFileSync } from 'node:child_process'
import { describe, expect, it } from 'vitest'
import { ensureDist, repoRoot } from './helpers/dist.mjs'

const dist = path.join(repoRoot, 'dist', 'lib')

function declarations(): Map<string, string> {
  ensureDist()
  const files = fs.readdirSync(dist, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.d.ts'))
  return new Map(files.map((f) => [f, fs.readFileSync(path.join(dist, f), 'utf8')]))
}

describe('shipped .d.ts (issue 20: stripInternal)', () => {
  it('tsconfig.json sets stripInternal', () => {
    const config = JSON.parse(fs.readFileSync(path.join(repoRoot, 'tsconfig.json'), 'utf8'))
    expect(config.compilerOptions.stripInternal).toBe(true)
  })

  it('no @internal member or function is declared in dist/lib/**/*.d.ts', () => {
    const found: string[] = []
    for (const [file, text] of declarations()) {
      if (text.includes('@internal')) found.push(file)
    }
    expect(found).toEqual([])
    const region = declarations().get('region.d.ts')!
    for (const name of ['isRegion(', 'onClose(', 'readableSpan(', ' span(', 'resolveSpan(']) expect(region, name).not.toContain(name)
    expect(region).toContain('remap(') // the public API is still there
  })

  it('a consumer type-checks against the shipped declarations (nothing public refers to a stripped one)', () => {
    // Outside the checkout (read-only in the lab VM); .mts: an ES module importing the package's entry.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'memdedup-consumer-'))
    try {
      fs.writeFileSync(path.join(dir, 'use.mts'), [
        `import { Region, Reservation, codes, ksm, stats, type Range } from ${JSON.stringify(path.join(dist, 'index.js'))}`,
        `const r: Region = Region.anonymous(4096)`,
        `const range: Range = { offset: 0, length: 4096 }`,
        `const res: Reservation = Region.reserve(4096)`,
        `const code: string = codes.ERR_REGION_CLOSED`,
        `void [r.bytes, range, res, code, ksm.available(), stats.system()]`,
        '',
      ].join('\n'))
      const tsc = path.join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc')
      const args = [tsc, '--noEmit', '--strict', '--skipLibCheck', 'false', '--module', 'nodenext', '--target', 'es2022', '--lib', 'es2022,esnext.disposable', '--types', 'node', path.join(dir, 'use.mts')]
      execFileSync(process.execPath, args, { cwd: repoRoot, stdio: 'pipe' })
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})
