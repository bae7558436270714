// Runs node-gyp on this package (whatever the working directory) against the headers of the Node
// that runs it, when that Node ships them.
//
// node-gyp otherwise downloads headers from nodejs.org into ~/.cache/node-gyp: on a machine without
// that network (or for a user whose cache is empty) the build fails although Debian's and
// NodeSource's nodejs install the very headers under <prefix>/include/node. An explicit nodedir (the
// npm_config_nodedir environment variable or a .npmrc entry) still wins.
import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync, readdirSync, symlinkSync } from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const env = { ...process.env }
const prefix = path.resolve(path.dirname(process.execPath), '..')
const headers = path.join(prefix, 'include', 'node', 'node_version.h')
if (!env.npm_config_nodedir && existsSync(headers)) env.npm_config_nodedir = prefix

// npm hands the scripts it runs its own node-gyp; a development checkout has one in devDependencies.
const nodeGyp = env.npm_config_node_gyp || createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js')
const nodeGypRun = (args) => {
  const run = spawnSync(process.execPath, [nodeGyp, ...args], { cwd: packageRoot, env, stdio: 'inherit' })
  if (run.error) throw run.error
  if (run.status !== 0) process.exit(run.status ?? 1)
}
// The package ships native/binding.gyp but no binding.gyp at its root: for a package with one, npm
// runs `node-gyp rebuild` at install (`npm ci` too, whose lockfile drops `"gypfile": false`), which
// fails without a compiler although the prebuilt addon would do. A checkout has the root link in git.
const rootGyp = path.join(packageRoot, 'binding.gyp')
if (!existsSync(rootGyp)) symlinkSync(path.join('native', 'binding.gyp'), rootGyp)
const args = process.argv.slice(2)
// `build` in a tree never configured (a fresh clone) configures first; N-API keeps an existing
// configuration valid across Node versions, so `build` stays incremental after that.
// binding.gyp lists native/*.cc when it is configured: a source file added since (a new syscall
// family) configures again, or `build` would link an addon without it.
const targetMk = path.join(packageRoot, 'build', 'memdedup.target.mk')
const unlisted = () => {
  const listed = readFileSync(targetMk, 'utf8')
  return readdirSync(path.join(packageRoot, 'native')).some((f) => f.endsWith('.cc') && !listed.includes(`native/${f.slice(0, -3)}.o`))
}
if (args[0] === 'build' && (!existsSync(path.join(packageRoot, 'build', 'Makefile')) || !existsSync(targetMk) || unlisted())) nodeGypRun(['configure'])
nodeGypRun(args)
