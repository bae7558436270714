// Runs node-gyp against the headers of the Node that runs it, when that Node ships them.
//
// node-gyp otherwise downloads headers from nodejs.org into ~/.cache/node-gyp: on a machine without
// that network (or for a user whose cache is empty) `npm install` fails although Debian's and
// NodeSource's nodejs install the very headers under <prefix>/include/node. An explicit nodedir (the
// npm_config_nodedir environment variable or a .npmrc entry) still wins.
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'

const env = { ...process.env }
const prefix = path.resolve(path.dirname(process.execPath), '..')
const headers = path.join(prefix, 'include', 'node', 'node_version.h')
if (!env.npm_config_nodedir && existsSync(headers)) env.npm_config_nodedir = prefix

// npm hands install scripts its own node-gyp; a development checkout has one in devDependencies.
const nodeGyp = env.npm_config_node_gyp || createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js')
const run = spawnSync(process.execPath, [nodeGyp, ...process.argv.slice(2)], { env, stdio: 'inherit' })
if (run.error) throw run.error
process.exit(run.status ?? 1)
