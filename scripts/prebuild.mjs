// prepack: the addon for linux-x64 glibc, stripped, into prebuilds/ (shipped by package.json
// `files`), where lib/native.ts load() finds it when the package has no build/: installing
// memdedup then needs no compiler and runs no install script.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const glibc = process.report.getReport().header.glibcVersionRuntime
if (process.platform !== 'linux' || process.arch !== 'x64' || !glibc) {
  throw new Error(`the prebuilt addon is linux-x64 glibc and is built on such a host; this is ${process.platform}-${process.arch}${glibc ? '' : ' without glibc'}`)
}
// The build's output on stderr: stdout is npm pack's (the tarball's name).
execFileSync(process.execPath, [path.join(root, 'native', 'node-gyp.mjs'), 'build'], { stdio: ['ignore', 2, 2] })
const built = path.join(root, 'build', 'Release', 'memdedup.node')
const prebuilt = path.join(root, 'prebuilds', 'linux-x64', 'memdedup.glibc.node')
// Only this file ships from prebuilds/: nothing left over from an earlier layout.
fs.rmSync(path.join(root, 'prebuilds'), { recursive: true, force: true })
fs.mkdirSync(path.dirname(prebuilt), { recursive: true })
execFileSync('strip', ['--strip-unneeded', '-o', prebuilt, built])
// The newest glibc symbol version it links against is the oldest glibc it loads on.
const versions = execFileSync('objdump', ['-T', prebuilt], { encoding: 'utf8' }).match(/GLIBC_\d+(\.\d+)*/g) ?? []
const newest = versions.map((v) => v.slice('GLIBC_'.length)).sort((a, b) => a.localeCompare(b, 'en', { numeric: true })).at(-1)
console.error(`${path.relative(root, prebuilt)}: ${fs.statSync(prebuilt).size} bytes, needs glibc >= ${newest} (built on ${glibc})`)
