// docs/lab.md's Layout section is the module list (DESIGN.md's layers, as files): every source file
// of lib/ and native/ is named there, and nothing named there is missing.
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { repoRoot } from './helpers/dist.mjs'

const doc = fs.readFileSync(path.join(repoRoot, 'docs', 'lab.md'), 'utf8')
const start = doc.indexOf('\n## Layout\n')
const layout = doc.slice(start, doc.indexOf('\n## ', start + 1) < 0 ? undefined : doc.indexOf('\n## ', start + 1))

function sources(dir: string, pattern: RegExp): string[] {
  return fs.readdirSync(path.join(repoRoot, dir), { recursive: true, encoding: 'utf8' }).filter((f) => pattern.test(f)).map((f) => `${dir}/${f}`)
}

describe('docs/lab.md Layout (issue 20, item 5)', () => {
  it('names every lib/ module (lib/region/ included) and every native/ source', () => {
    expect(start).toBeGreaterThan(0)
    const files = [...sources('lib', /\.ts$/), ...sources('native', /\.(cc|h)$/)]
    const missing = files.filter((file) => !layout.includes(path.basename(file)))
    expect(missing).toEqual([])
    expect(layout).toContain('region/')
  })

  it('names no lib/ or native/ file that does not exist', () => {
    const named = [...layout.matchAll(/(?<![.\w])([a-z_]+\.(?:ts|cc|h))\b/g)].map((m) => m[1])
    const existing = new Set([...sources('lib', /\.ts$/), ...sources('native', /\.(cc|h)$/)].map((f) => path.basename(f)))
    expect(named.filter((name) => !existing.has(name))).toEqual([])
  })
})
