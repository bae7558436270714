// The docs' examples run here, as a user would run them, so they cannot rot:
// - every ```js block of README.md is a plain-JavaScript .mjs file, run with `node` (no
//   transpiling: Node 20 must parse it as written);
// - every ```ts block of docs/guide.md is TypeScript (`using`), transpiled, then run the same way.
// Both run from a temp project whose node_modules/memdedup links to this checkout, so
// `import … from 'memdedup'` resolves through package.json's "exports" as it does after
// `npm install memdedup`. A block tagged `requires=feature,…` (keys of features()) skips, naming
// what this kernel lacks; `requires=root` (writes /sys/kernel/mm/ksm, reads PFNs) skips where this
// process may not.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import ts from 'typescript'
import { afterAll, describe, expect, it } from 'vitest'
import { features, type Features } from '../lib/index.ts'
import { ensureDist, repoRoot } from './helpers/dist.mjs'
import { acquireKsmLock } from './helpers/lock.mjs'
import { ksmSettingsDenied, requires } from './helpers/env.mjs'
import { probe } from './helpers/ksm.ts'

interface Example { doc: string; index: number; heading: string; lang: 'js' | 'ts'; requires: (keyof Features)[]; root: boolean; source: string }

/** The fenced blocks of one language in a doc, with what each needs and the heading it sits under. */
function examples(doc: string, lang: 'js' | 'ts'): Example[] {
  const text = fs.readFileSync(path.join(repoRoot, doc), 'utf8')
  return [...text.matchAll(new RegExp(`^\`\`\`${lang}([^\\n]*)\\n([\\s\\S]*?)^\`\`\`$`, 'gm'))].map((m, index) => {
    const needs = /requires=(\S+)/.exec(m[1])?.[1].split(',') ?? []
    const heading = text.slice(0, m.index).match(/^#+ (.*)$/gm)?.pop()?.replace(/^#+ /, '') ?? doc
    return { doc, index, heading, lang, requires: needs.filter((n) => n !== 'root') as (keyof Features)[], root: needs.includes('root'), source: m[2] }
  })
}

const readmeExamples = examples('README.md', 'js')
const guideExamples = examples('docs/guide.md', 'ts')

/** Why a `requires=root` example cannot run here (the probes, not the uid), or ''. */
const notRoot = () => ksmSettingsDenied() || (probe().pfnsVisible ? '' : 'needs root: /proc/self/pagemap hides PFNs from this process (CAP_SYS_ADMIN)')

/** A project directory where `memdedup` is this checkout, as after `npm install memdedup`. */
function consumerProject(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'memdedup-readme-'))
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'readme-examples', private: true, type: 'module' }))
  fs.mkdirSync(path.join(dir, 'node_modules'))
  fs.symlinkSync(repoRoot, path.join(dir, 'node_modules', 'memdedup'), 'dir')
  return dir
}

describe('doc examples', () => {
  it('the README has three or more plain-JavaScript examples and no TypeScript ones', () => {
    expect(readmeExamples.length).toBeGreaterThanOrEqual(3)
    expect(examples('README.md', 'ts')).toEqual([])
    for (const example of readmeExamples) expect(example.source).toMatch(/from 'memdedup'/)
  })

  it('docs/guide.md has its TypeScript examples', () => expect(guideExamples.length).toBeGreaterThanOrEqual(8))

  const dir = consumerProject()
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))  // removes the link, not what it points to
  for (const example of [...readmeExamples, ...guideExamples]) {
    const why = requires(features(), example.requires)
    it.skipIf(why !== '')(`${example.doc}: ${example.heading} (${example.lang} #${example.index + 1})${why}`, async (ctx) => {
      if (example.root && notRoot()) ctx.skip(notRoot())
      ensureDist()
      const js = example.lang === 'js' ? example.source : ts.transpileModule(example.source, {
        compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext },
      }).outputText
      const file = path.join(dir, `${path.basename(example.doc, '.md')}-${example.lang}-${example.index + 1}.mjs`)
      fs.writeFileSync(file, js)
      // Examples that drive ksmd hold the KSM tests' lock: a concurrent KSM test or bench
      // changing ksmd's settings mid-example would make its merge claims fail.
      const release = /\bksm\./.test(example.source) ? await acquireKsmLock() : () => {}
      let run
      try {
        run = spawnSync(process.execPath, [file], { cwd: dir, encoding: 'utf8', timeout: 120_000 })
      } finally {
        release()
      }
      expect(run.stderr).not.toMatch(/Error/)
      expect(run.status, run.stderr).toBe(0)
    })
  }
})
