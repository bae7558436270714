// Every ```ts block of the README runs here, as a user would run it, so the docs cannot rot.
// A block tagged `requires=feature,…` skips, naming the feature, where this kernel lacks it;
// `requires=root` (writes /sys/kernel/mm/ksm, reads PFNs) skips where this process may not.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import ts from 'typescript'
import { describe, expect, it } from 'vitest'
import { features, type Features } from '../lib/index.ts'
import { ensureDist, distEntry } from './helpers/dist.mjs'
import { acquireKsmLock } from './helpers/lock.mjs'
import { ksmSettingsDenied, requires } from './helpers/env.mjs'
import { probe } from './helpers/ksm.ts'

const readme = fs.readFileSync(new URL('../README.md', import.meta.url), 'utf8')
const blocks = [...readme.matchAll(/^```ts([^\n]*)\n([\s\S]*?)^```$/gm)].map((m, index) => {
  const needs = /requires=(\S+)/.exec(m[1])?.[1].split(',') ?? []
  const heading = readme.slice(0, m.index).match(/^#+ (.*)$/gm)?.pop()?.replace(/^#+ /, '') ?? 'README'
  return { index, heading, requires: needs.filter((n) => n !== 'root') as (keyof Features)[], root: needs.includes('root'), source: m[2] }
})

/** Why a `requires=root` example cannot run here (the probes, not the uid), or ''. */
const notRoot = () => ksmSettingsDenied() || (probe().pfnsVisible ? '' : 'needs root: /proc/self/pagemap hides PFNs from this process (CAP_SYS_ADMIN)')

describe('README examples', () => {
  it('has examples', () => expect(blocks.length).toBeGreaterThanOrEqual(4))

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'memdedup-readme-'))
  for (const block of blocks) {
    const why = requires(features(), block.requires)
    it.skipIf(why !== '')(`${block.heading} (#${block.index + 1})${why}`, async (ctx) => {
      if (block.root && notRoot()) ctx.skip(notRoot())
      ensureDist()
      // Examples that drive ksmd hold the KSM tests' lock: a concurrent KSM test or bench
      // changing ksmd's settings mid-example would make its merge claims fail.
      const release = /\bksm\./.test(block.source) ? await acquireKsmLock() : () => {}
      const js = ts.transpileModule(block.source.replaceAll("from 'memdedup'", `from ${JSON.stringify(distEntry)}`), {
        compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext },
      }).outputText
      const file = path.join(dir, `example-${block.index + 1}.mjs`)
      fs.writeFileSync(file, js)
      let run
      try {
        run = spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 120_000 })
      } finally {
        release()
      }
      expect(run.stderr).not.toMatch(/Error/)
      expect(run.status, run.stderr).toBe(0)
    })
  }
})
