// The package as a user gets it (issue 23): `npm pack`, then `npm install <tarball> --ignore-scripts`
// into an empty project with no compiler on PATH, then an example and the CLI run from it with plain
// node. And the one error a host without a prebuilt addon gets (prebuiltAddonFor, and load() itself).
import { execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { prebuiltAddonFor } from '../lib/native.ts'
import { repoRoot } from './helpers/dist.mjs'
import { inVm } from './helpers/env.mjs'

const buildFromSource = 'npm explore memdedup -- npm run build:addon'

describe('prebuiltAddonFor: the prebuilt addon a host gets, or the one error it throws', () => {
  it('linux-x64 with glibc gets prebuilds/linux-x64/memdedup.glibc.node', () => {
    expect(prebuiltAddonFor({ platform: 'linux', arch: 'x64', libc: 'glibc' })).toEqual({ file: path.join('prebuilds', 'linux-x64', 'memdedup.glibc.node') })
  })

  it.each([
    { platform: 'linux', arch: 'arm64', libc: 'glibc', name: 'linux-arm64 (glibc)' },
    { platform: 'linux', arch: 'x64', libc: 'musl', name: 'linux-x64 (musl)' },
    { platform: 'linux', arch: 'arm64', libc: 'musl', name: 'linux-arm64 (musl)' },
    { platform: 'linux', arch: 'ia32', libc: 'glibc', name: 'linux-ia32 (glibc)' },
  ] as const)('$name: what is supported, and the command that builds it from source', ({ name, ...host }) => {
    const result = prebuiltAddonFor(host)
    expect(result).not.toHaveProperty('file')
    const { error } = result as { error: string }
    expect(error).toContain('prebuilt addon for linux-x64 (glibc) only')
    expect(error).toContain(`this is ${name}`)
    expect(error).toContain(buildFromSource)
    expect(error).toContain('--force')
  })

  it.each(['darwin', 'win32', 'freebsd'])('%s: Linux only, and no build from source offered (nothing would bind)', (platform) => {
    const { error } = prebuiltAddonFor({ platform, arch: 'arm64' }) as { error: string }
    expect(error).toMatch(/^memdedup runs on Linux only \(it binds Linux syscalls: [^)]+\); this is /)
    expect(error).toContain(`this is ${platform}-arm64`)
    expect(error).not.toContain('build:addon')
  })
})

// npm pack writes build/, prebuilds/ and dist/ into the checkout and npm install needs the registry:
// neither in the guest, and what this tests does not depend on the kernel.
const guestSkip = inVm ? ' — skipped in the VM: npm pack writes to the read-only checkout and npm install needs the registry; the host run tests the package' : ''

describe.skipIf(inVm)(`the packed tarball, installed with --ignore-scripts and no compiler${guestSkip}`, () => {
  const temp = fs.mkdtempSync(path.join(os.tmpdir(), 'memdedup-package-'))
  const bin = path.join(temp, 'bin')
  const project = path.join(temp, 'project')
  const installed = path.join(project, 'node_modules', 'memdedup')
  // Only what npm, npx and `sh -c` (npx runs the bin through it) need; nothing from /usr/bin else.
  const env = { PATH: bin, HOME: os.homedir(), NO_COLOR: '1' }
  let tarball = ''
  let entries: string[] = []
  let installError = ''

  beforeAll(() => {
    fs.mkdirSync(bin)
    fs.mkdirSync(project)
    for (const tool of ['node', 'npm', 'npx', 'sh']) {
      const found = execFileSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).trim()
      fs.symlinkSync(found, path.join(bin, tool))
    }
    // The real npm pack: prepack (scripts/prebuild.mjs) and prepare (the build) run in the checkout.
    execFileSync('npm', ['pack', '--silent', '--pack-destination', temp], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 })
    tarball = path.join(temp, fs.readdirSync(temp).find((f) => f.endsWith('.tgz'))!)
    entries = execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8' }).split('\n').filter(Boolean)
    fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'empty-project', private: true, type: 'module' }) + '\n')
    const started = performance.now()
    // --prefer-offline: the npm cache answers when it can, the registry only for what it lacks (commander, node-addon-api).
    const install = spawnSync('npm', ['install', tarball, '--ignore-scripts', '--prefer-offline', '--no-audit', '--no-fund'], { cwd: project, env, encoding: 'utf8', timeout: 120_000 })
    if (install.status !== 0) {
      const offline = /\b(ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH)\b/.exec(install.stderr)
      if (!offline) throw new Error(`npm install ${tarball} failed:\n${install.stderr}`)
      installError = `the npm registry is unreachable (${offline[1]}) and the npm cache lacks memdedup's dependencies`
      return
    }
    const size = fs.statSync(tarball).size
    console.log(`${path.basename(tarball)}: ${(size / 1024).toFixed(0)} KiB, ${entries.length} files; installed in ${((performance.now() - started) / 1000).toFixed(1)} s`)
  }, 240_000)

  afterAll(() => fs.rmSync(temp, { recursive: true, force: true }))

  const run = (command: string, args: string[]) => spawnSync(path.join(bin, command), args, { cwd: project, env, encoding: 'utf8', timeout: 30_000 })

  it('the PATH has node, npm and npx but no compiler, make or python', () => {
    for (const tool of ['cc', 'gcc', 'g++', 'c++', 'clang', 'make', 'python3']) {
      expect(spawnSync('sh', ['-c', `command -v ${tool}`], { env, encoding: 'utf8' }).stdout, tool).toBe('')
    }
    expect(run('node', ['--version']).stdout.trim()).toBe(process.version)
  })

  it('the tarball has the prebuilt addon, dist/ with source maps, lib/, native/ and LICENSE and the daemon systemd unit; no root binding.gyp, tests or lab', () => {
    const file = (prebuiltAddonFor({ platform: 'linux', arch: 'x64', libc: 'glibc' }) as { file: string }).file
    for (const expected of [file, 'LICENSE', 'README.md', 'package.json', 'packaging/memdedup-daemon.service', 'dist/lib/index.js', 'dist/lib/index.js.map', 'dist/lib/index.d.ts', 'dist/lib/index.d.ts.map', 'dist/lib/cli.js', 'lib/index.ts', 'native/binding.gyp', 'native/node-gyp.mjs', 'native/addon.cc']) {
      expect(entries).toContain(`package/${expected}`)
    }
    // A root binding.gyp makes npm run `node-gyp rebuild` at install (npm ci ignores "gypfile": false).
    expect(entries).not.toContain('package/binding.gyp')
    const tops = new Set(entries.map((entry) => entry.split('/')[1]))
    expect([...tops].sort()).toEqual(['LICENSE', 'README.md', 'dist', 'lib', 'native', 'package.json', 'packaging', 'prebuilds'])
    expect(entries.filter((entry) => /\.test\.|\/(test|ci|bench|kernel-patches|scripts|build)\//.test(entry))).toEqual([])
  })

  it('installs with no install script and no build; every source map names a file the package has', (ctx) => {
    if (installError) ctx.skip(installError)
    const manifest = JSON.parse(fs.readFileSync(path.join(installed, 'package.json'), 'utf8'))
    expect(Object.keys(manifest.scripts ?? {}).filter((name) => /^(pre|post)?install$/.test(name))).toEqual([])
    expect(manifest).toMatchObject({ gypfile: false, os: ['linux'], cpu: ['x64'], libc: ['glibc'], license: 'MIT' })
    expect(fs.existsSync(path.join(installed, 'build'))).toBe(false)
    const maps = fs.readdirSync(path.join(installed, 'dist'), { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.map'))
    expect(maps.length).toBeGreaterThan(20)
    for (const map of maps) {
      const { sources } = JSON.parse(fs.readFileSync(path.join(installed, 'dist', map), 'utf8')) as { sources: string[] }
      for (const source of sources) expect(fs.existsSync(path.resolve(installed, 'dist', path.dirname(map), source)), `${map}: ${source}`).toBe(true)
    }
  })

  it('an .mjs example imports memdedup, maps a Region, writes and reads bytes back, and reads features()', (ctx) => {
    if (installError) ctx.skip(installError)
    fs.writeFileSync(
      path.join(project, 'example.mjs'),
      `import { Region, features, pageSize } from 'memdedup'
const region = Region.anonymous(2 * pageSize)
region.bytes.set([1, 2, 3], pageSize)
const back = [...region.read({ offset: pageSize, length: pageSize }).subarray(0, 3)]
region.close()
console.log(JSON.stringify({ back, pageSize, features: features() }))
`,
    )
    const example = run('node', ['example.mjs'])
    expect(example.stderr).toBe('')
    expect(example.status).toBe(0)
    const out = JSON.parse(example.stdout)
    expect(out.back).toEqual([1, 2, 3])
    expect(out.pageSize).toBeGreaterThan(0)
    expect(out.features).toMatchObject({ kernelRelease: os.release(), pageSize: out.pageSize })
    expect(typeof out.features.ksm).toBe('boolean')
  })

  it('npx memdedup probe and probe --json run from the project', (ctx) => {
    if (installError) ctx.skip(installError)
    const text = run('npx', ['memdedup', 'probe'])
    expect(text.status, text.stderr).toBe(0)
    expect(text.stdout).toContain(os.release())
    const json = run('npx', ['memdedup', 'probe', '--json'])
    expect(json.status, json.stderr).toBe(0)
    expect(JSON.parse(json.stdout)).toMatchObject({ kernelRelease: os.release() })
  })

  it('load() on a host with no prebuilt addon throws the one error (process.arch set to arm64 before the import)', (ctx) => {
    if (installError) ctx.skip(installError)
    const script = "Object.defineProperty(process, 'arch', { value: 'arm64' }); await import('memdedup')"
    const result = run('node', ['--input-type=module', '-e', script])
    expect(result.status).toBe(1)
    expect(result.stderr).toContain('memdedup ships a prebuilt addon for linux-x64 (glibc) only; this is linux-arm64 (glibc)')
    expect(result.stderr).toContain(buildFromSource)
  })
})
