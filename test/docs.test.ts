// The API reference (`npm run docs`, TypeDoc) is built from doc comments: every symbol the package
// exports from lib/index.ts, every member of an exported namespace (`ksm.enable`) and every public
// member of an exported class has one. (Interface fields are left to TypeDoc's `notDocumented`
// warnings: many mirror a kernel file's name, `pagesShared` for pages_shared.) Walked with the TypeScript compiler, as TypeDoc
// reads it, so a symbol added without a comment fails here rather than leaving a blank page.
import fs from 'node:fs'
import path from 'node:path'
import ts from 'typescript'
import { describe, expect, it } from 'vitest'
import { repoRoot } from './helpers/dist.mjs'

const config = ts.getParsedCommandLineOfConfigFile(path.join(repoRoot, 'tsconfig.json'), {}, { ...ts.sys, onUnRecoverableConfigFileDiagnostic: () => {} })!
const entry = path.join(repoRoot, 'lib', 'index.ts')
const program = ts.createProgram([entry], config.options)
const checker = program.getTypeChecker()

const documented = (symbol: ts.Symbol) => symbol.getDocumentationComment(checker).length > 0 || (symbol.declarations ?? []).some((d) => ts.getJSDocCommentsAndTags(d).length > 0)
const internal = (symbol: ts.Symbol) => (symbol.declarations ?? []).some((d) => ts.getJSDocTags(d).some((t) => t.tagName.text === 'internal'))
const isModule = (symbol: ts.Symbol) => (symbol.declarations ?? []).some(ts.isSourceFile)

/** A module re-exported as a namespace (`export * as ksm`) is documented by a leading `/** … @module *\/` comment. */
function moduleDocumented(symbol: ts.Symbol): boolean {
  const file = symbol.declarations!.find(ts.isSourceFile)!
  const first = /^\s*(\/\*\*[\s\S]*?\*\/)/.exec(file.text)?.[1] ?? ''
  return /@module\b/.test(first)
}

/** Public members a reader of the reference sees: not private, protected, #private or @internal. */
function members(symbol: ts.Symbol): ts.Symbol[] {
  const all = [...(symbol.members?.values() ?? []), ...(symbol.exports?.values() ?? [])]
  return all.filter((m) => {
    if (m.flags & ts.SymbolFlags.Prototype || m.escapedName === '__constructor' || m.name.startsWith('#')) return false
    if (internal(m)) return false
    const modifiers = ts.getCombinedModifierFlags(m.valueDeclaration ?? m.declarations![0])
    return !(modifiers & (ts.ModifierFlags.Private | ts.ModifierFlags.Protected))
  })
}

function undocumented(): string[] {
  const missing: string[] = []
  const visit = (name: string, exported: ts.Symbol) => {
    const symbol = exported.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(exported) : exported
    if (isModule(symbol)) {
      if (!moduleDocumented(symbol)) missing.push(`${name} (namespace: a /** … @module */ comment at the top of its file)`)
      for (const member of checker.getExportsOfModule(symbol)) visit(`${name}.${member.name}`, member)
      return
    }
    if (internal(symbol)) return
    if (!documented(symbol)) missing.push(name)
    if (symbol.flags & ts.SymbolFlags.Class) {
      for (const member of members(symbol)) if (!documented(member)) missing.push(`${name}.${member.name}`)
    }
  }
  const index = checker.getSymbolAtLocation(program.getSourceFile(entry)!)!
  for (const exported of checker.getExportsOfModule(index)) visit(exported.name, exported)
  return missing
}

describe('API reference (doc comments)', () => {
  it('the walk sees the package exports', () => {
    const index = checker.getSymbolAtLocation(program.getSourceFile(entry)!)!
    expect(checker.getExportsOfModule(index).map((s) => s.name)).toEqual(expect.arrayContaining(['Region', 'ksm', 'Deduplicator', 'SyscallError']))
  })

  it('every exported symbol, namespace member and public class member has a doc comment', () => {
    expect(undocumented()).toEqual([])
  })
})

// The README and docs/ link to each other's sections; a heading renamed or moved breaks a link
// silently on GitHub and npm. Anchors are GitHub's slugs of the headings.
const slug = (heading: string) => heading.trim().toLowerCase().replace(/[^\p{L}\p{N} _-]/gu, '').replace(/ /g, '-')

describe('links between the docs', () => {
  const docs = ['README.md', ...fs.readdirSync(path.join(repoRoot, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)]
  it.each(docs)('%s: every relative link names a file and heading that exist', (doc) => {
    const text = fs.readFileSync(path.join(repoRoot, doc), 'utf8').replace(/^```[\s\S]*?^```$/gm, '')
    const broken: string[] = []
    for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      if (/^[a-z]+:/.test(target)) continue
      const [file, anchor] = target.split('#')
      const resolved = file === '' ? path.join(repoRoot, doc) : path.resolve(path.dirname(path.join(repoRoot, doc)), file)
      if (!fs.existsSync(resolved)) {
        broken.push(`${target} (no file)`)
        continue
      }
      if (anchor === undefined) continue
      const headings = [...fs.readFileSync(resolved, 'utf8').replace(/^```[\s\S]*?^```$/gm, '').matchAll(/^#+ (.*)$/gm)].map((m) => slug(m[1]))
      if (!headings.includes(anchor)) broken.push(`${target} (no such heading)`)
    }
    expect(broken).toEqual([])
  })
})
