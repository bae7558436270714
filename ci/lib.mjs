// Shared helpers for the lab scripts (ci/kernel.mjs, ci/vm.mjs, ci/test-vm.mjs).
import { $, fs, path, os, chalk } from 'zx'
import { createHash } from 'node:crypto'
import { fileURLToPath } from 'node:url'

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
export const cacheDir = process.env.MEMDEDUP_CACHE_DIR ?? path.join(os.homedir(), '.cache', 'memdedup')

export function log(message) {
  process.stderr.write(`${chalk.cyan('[lab]')} ${message}\n`)
}

export function fail(message) {
  const error = new Error(message)
  error.labFailure = true
  throw error
}

export function sha256(...parts) {
  const hash = createHash('sha256')
  for (const part of parts) hash.update(part).update('\0')
  return hash.digest('hex')
}

export function formatSeconds(ms) {
  return `${(ms / 1000).toFixed(1)} s`
}

// Debian packages by the command or file they provide; installed only when missing.
const packageChecks = {
  'qemu-system-x86': '/usr/bin/qemu-system-x86_64',
  iproute2: '/bin/ip',
  gcc: '/usr/bin/gcc',
  'libc6-dev': '/usr/lib/x86_64-linux-gnu/libc.a',
  make: '/usr/bin/make',
  flex: '/usr/bin/flex',
  bison: '/usr/bin/bison',
  bc: '/usr/bin/bc',
  'libelf-dev': '/usr/include/libelf.h',
  'libssl-dev': '/usr/include/openssl/ssl.h',
  cpio: '/usr/bin/cpio',
  ccache: '/usr/bin/ccache',
  'xz-utils': '/usr/bin/xz',
  git: '/usr/bin/git',
  'util-linux': '/usr/sbin/mkswap',
}

export async function ensurePackages(names = Object.keys(packageChecks)) {
  const missing = names.filter((name) => !fs.existsSync(packageChecks[name]))
  if (missing.length === 0) return
  const sudo = process.getuid() === 0 ? [] : ['sudo']
  log(`installing missing Debian packages: ${missing.join(' ')}`)
  // Another apt may hold the lock (unattended upgrades, a parallel job): wait for it.
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  await $({ env, stdio: 'inherit' })`${sudo} apt-get -o DPkg::Lock::Timeout=600 update`
  await $({ env, stdio: 'inherit' })`${sudo} apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends ${missing}`
  const still = missing.filter((name) => !fs.existsSync(packageChecks[name]))
  if (still.length) fail(`apt-get did not provide: ${still.join(' ')}`)
}

// Runs main() when the file is executed directly (node, zx or npm run), not when imported.
export function isMain(importMetaUrl) {
  const script = process.argv.find((arg) => /\.m?js$/.test(arg) && !arg.endsWith('/zx/build/cli.js') && !arg.includes('node_modules/.bin/'))
  return script !== undefined && path.resolve(script) === fileURLToPath(importMetaUrl)
}

export async function runMain(main) {
  try {
    process.exitCode = await main()
  } catch (error) {
    if (error.labFailure) {
      process.stderr.write(`${chalk.red('[lab] FAILED:')} ${error.message}\n`)
    } else {
      process.stderr.write(`${chalk.red('[lab] FAILED:')} ${error.stack ?? error}\n`)
    }
    process.exitCode = 1
  }
}
