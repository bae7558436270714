#!/usr/bin/env zx
// Builds the pinned Debian linux-source-6.12 (kernel-patches/base.json) with kernel-patches/ applied
// and caches the bzImage.
//
//   npm run kernel            build (or reuse) the lab kernel, print its path
//   npm run kernel -- --force rebuild even on a cache hit
//   npm run kernel -- --check-latest   apply the series (no build) to the newest linux-source-6.12
//                             the registry serves; exit 2 when a patch does not apply
//   npm run kernel -- --unpatched   the baseline: same config fragment (minus options only the
//                             series adds, e.g. CONFIG_SKSM), no patches (ci/kselftest.mjs compares)
//   npm run kernel -- --flavour=perf   same series, production-like config: the fragment's debug
//                             options (perfDropped below: lockdep, DEBUG_VM, DEBUG_LIST, ...) off,
//                             release -memdedup-perf. Benchmarks run on it; tests on the debug one.
//
// Cache layout (~/.cache/memdedup, or $MEMDEDUP_CACHE_DIR):
//   sources/<pkg>_<version>/  the source tarball of each base fetched (+ .sha256 once verified)
//   check-latest/          --check-latest verdicts per (newest version, series)
//   linux-src/             unpacked source, a git repo; tag memdedup-base = pristine tarball
//   kbuild/                out-of-tree build dir (O=), kept between builds for incremental make
//   ccache/                compiler cache (CCACHE_DIR)
//   bzImage-<key>          the result, keyed by (source version, patches, config fragment)
//   linux-src-unpatched/   git worktree of linux-src at memdedup-base, for the --unpatched build
//   kbuild-unpatched/      its build dir (so a baseline build never resets the patched one's state)
//   unpatched-bzImage-<key>  the baseline kernel (named so that bzImage-* stays the patched one)
//   kbuild-perf/, perf-bzImage-<key>   the perf flavour's build dir and kernel
//   basic_test-<key>, remote_test-<key>, madv-merge-probe-<key>   user-space test programs for the guest
import { $, fs, path, os, chalk } from 'zx'
import { spawn, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { cacheDir, repoRoot, log, fail, sha256, formatSeconds, ensurePackages, isMain, runMain } from './lib.mjs'

const patchesDir = path.join(repoRoot, 'kernel-patches')
const baseTag = 'memdedup-base'
// Bump when the recipe below changes in a way that changes the bzImage.
const recipeVersion = 'recipe-1'

/** The pinned source: kernel-patches/base.json (package, version, tarball path, tarball sha256). */
export async function readBase() {
  return fs.readJson(path.join(patchesDir, 'base.json'))
}

// Names the source in cache keys and markers: the Debian version plus the tarball's hash.
function sourceVersion(base) {
  return `${base.version}+${base.tarballSha256.slice(0, 16)}`
}

async function fileSha256(file) {
  const hash = createHash('sha256')
  for await (const chunk of fs.createReadStream(file)) hash.update(chunk)
  return hash.digest('hex')
}

const aptEnv = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }

// Refreshes the package lists when we may (root, or sudo without a password); reading works either way.
async function aptUpdate() {
  const sudo = process.getuid() === 0 ? [] : ['sudo', '-n']
  const result = await $({ env: aptEnv })`${sudo} apt-get -q -o DPkg::Lock::Timeout=600 update`.nothrow().quiet()
  if (result.exitCode !== 0) log(`apt-get update failed (exit ${result.exitCode}); using the package lists as they are`)
}

/** Versions of `pkg` the registry serves, newest first (dpkg's ordering). */
export async function servedVersions(pkg) {
  const { stdout } = await $`apt-cache madison ${pkg}`.nothrow().quiet()
  const versions = [...new Set(stdout.split('\n').map((line) => line.split('|')[1]?.trim()).filter(Boolean))]
  const newer = (a, b) => spawnSync('dpkg', ['--compare-versions', a, 'gt', b]).status === 0
  return versions.sort((a, b) => (a === b ? 0 : newer(a, b) ? -1 : 1))
}

/**
 * The source tarball of `base` in the cache (sources/<package>_<version>/), fetched on first use with
 * apt-get download + dpkg-deb (no system package is installed, upgraded or replaced, so several
 * versions sit side by side) and checked against base.tarballSha256 when that is set.
 */
export async function ensureSourceTarball(base) {
  const dir = path.join(cacheDir, 'sources', `${base.package}_${base.version}`)
  const tarball = path.join(dir, path.basename(base.tarball))
  const verified = `${tarball}.sha256`
  const known = fs.existsSync(verified) ? (await fs.readFile(verified, 'utf8')).trim() : null
  if (known && fs.existsSync(tarball) && (!base.tarballSha256 || known === base.tarballSha256)) return tarball
  let served = await servedVersions(base.package)
  if (!served.includes(base.version)) {
    await aptUpdate()
    served = await servedVersions(base.package)
  }
  if (!served.includes(base.version)) {
    fail(`${base.package} ${base.version}, the base kernel-patches/base.json pins, is not served by the registry ` +
      `(it serves: ${served.join(', ') || 'nothing'}; newest: ${served[0] ?? 'none'}). To rebase: ` +
      '`npm run kernel -- --check-latest` applies the series to the newest and reports each patch; fix the ' +
      'patches that fail, then set version and tarballSha256 in kernel-patches/base.json to the new base.')
  }
  await fs.mkdirp(path.join(cacheDir, 'sources'))
  const work = await fs.mkdtemp(path.join(cacheDir, 'sources', 'fetching-'))
  try {
    log(`fetching ${base.package} ${base.version} into ${dir}`)
    // As root apt drops to _apt, which cannot write the temp dir: download as ourselves.
    await $({ cwd: work, env: aptEnv })`apt-get -q -o APT::Sandbox::User=${os.userInfo().username} download ${`${base.package}=${base.version}`}`.quiet()
    const [deb] = (await fs.readdir(work)).filter((name) => name.endsWith('.deb'))
    if (!deb) fail(`apt-get download ${base.package}=${base.version} produced no .deb`)
    await $`dpkg-deb -x ${path.join(work, deb)} ${path.join(work, 'root')}`
    const extracted = path.join(work, 'root', base.tarball)
    if (!fs.existsSync(extracted)) fail(`${deb} has no ${base.tarball}`)
    const actual = await fileSha256(extracted)
    if (base.tarballSha256 && actual !== base.tarballSha256) {
      fail(`${base.tarball} of ${base.package} ${base.version} has sha256 ${actual}, kernel-patches/base.json pins ` +
        `${base.tarballSha256}: the registry serves different source under the same version; refusing to build it`)
    }
    await fs.mkdirp(dir)
    await fs.move(extracted, tarball, { overwrite: true })
    await fs.writeFile(verified, `${actual}\n`)
  } finally {
    await fs.remove(work)
  }
  return tarball
}

async function readSeries() {
  const series = await fs.readFile(path.join(patchesDir, 'series'), 'utf8')
  const names = series.split('\n').map((line) => line.replace(/#.*/, '').trim()).filter(Boolean)
  if (names.length === 0) fail('kernel-patches/series lists no patches')
  return Promise.all(names.map(async (name) => ({ name, file: path.join(patchesDir, name), text: await fs.readFile(path.join(patchesDir, name), 'utf8') })))
}

// The requested options, exactly as they must appear in .config.
function requestedOptions(fragment) {
  return fragment.split('\n').map((line) => line.trim())
    .filter((line) => /^CONFIG_\w+=/.test(line) || /^# CONFIG_\w+ is not set$/.test(line))
}

// The perf flavour: these options of the fragment (the "Catch kernel bugs" block, what a
// distribution kernel does not ship) are turned off; LOCALVERSION becomes -memdedup-perf.
// CONFIG_DEBUG_KERNEL stays: tinyconfig's EXPERT selects it, and it only opens the debug menu.
const perfDropped = ['CONFIG_DEBUG_VM', 'CONFIG_DEBUG_ATOMIC_SLEEP', 'CONFIG_PROVE_LOCKING', 'CONFIG_DEBUG_LIST']
export const flavours = ['debug', 'perf']

/** The config fragment of `flavour`: the file as it is (debug), or with perfDropped off (perf). */
export function flavourFragment(fragment, flavour) {
  if (flavour === 'debug') return fragment
  if (flavour !== 'perf') fail(`unknown kernel flavour ${flavour} (${flavours.join(', ')})`)
  const lines = fragment.split('\n')
  for (const name of perfDropped) {
    if (!lines.includes(`${name}=y`)) fail(`kernel-patches/config has no ${name}=y: update perfDropped in ci/kernel.mjs`)
  }
  return lines.map((line) => {
    const name = line.match(/^(CONFIG_\w+)=y$/)?.[1]
    if (name && perfDropped.includes(name)) return `# ${name} is not set`
    if (line.startsWith('CONFIG_LOCALVERSION=')) return 'CONFIG_LOCALVERSION="-memdedup-perf"'
    return line
  }).join('\n')
}

export async function kernelKey({ flavour = 'debug' } = {}) {
  const base = await readBase()
  const version = sourceVersion(base)
  const patches = await readSeries()
  const fragment = flavourFragment(await fs.readFile(path.join(patchesDir, 'config'), 'utf8'), flavour)
  // The debug key is what it always was (its cached kernels stay valid); perf's is its own.
  const key = sha256(recipeVersion, version, ...patches.flatMap((p) => [p.name, p.text]), fragment, ...(flavour === 'debug' ? [] : [flavour])).slice(0, 16)
  return { key, version, base, patches, fragment }
}

async function ensurePristineTree(base) {
  const version = sourceVersion(base)
  // Fixed paths (not versioned) so ccache and make reuse work across source updates.
  const tree = path.join(cacheDir, 'linux-src')
  const marker = path.join(tree, '.git', 'memdedup-pristine')
  if (fs.existsSync(marker) && (await fs.readFile(marker, 'utf8')).trim() === version) return tree
  const sourceTarball = await ensureSourceTarball(base)
  const started = Date.now()
  log(`unpacking ${sourceTarball} into ${tree} (once per base; ~1 min)`)
  const staging = `${tree}.unpacking`
  await fs.remove(staging)
  await fs.mkdirp(staging)
  await $`tar -xf ${sourceTarball} -C ${staging} --strip-components=1`
  // A git repo makes "a fresh copy" cheap (reset + clean) and gives the patch authors git format-patch.
  // Debian's top-level .gitignore ignores everything (/*), hence add -f.
  await $`git -C ${staging} init -q`
  await $`git -C ${staging} add -f -A .`
  await $`git -C ${staging} -c user.name=memdedup-lab -c user.email=lab@memdedup.invalid commit -q -m ${`base: Debian ${base.package} ${base.version} (sha256 ${base.tarballSha256})`}`
  await $`git -C ${staging} tag ${baseTag}`
  await fs.writeFile(path.join(staging, '.git', 'memdedup-pristine'), `${version}\n`)
  await fs.remove(tree)
  await fs.move(staging, tree)
  log(`unpacked in ${formatSeconds(Date.now() - started)}`)
  return tree
}

// Resets the tree to the pristine source and applies the series; a rejected hunk fails naming it.
async function applySeries(tree, patches, key) {
  const marker = path.join(tree, '.git', 'memdedup-applied')
  const wanted = sha256(...patches.flatMap((p) => [p.name, p.text]))
  if (fs.existsSync(marker) && (await fs.readFile(marker, 'utf8')).trim() === wanted) return
  await fs.remove(marker)
  await $`git -C ${tree} checkout -q -f --detach ${baseTag}`
  await $`git -C ${tree} clean -q -f -d -x`
  for (const patch of patches) {
    const check = await $`git -C ${tree} apply --check --verbose ${patch.file}`.nothrow().quiet()
    if (check.exitCode !== 0) {
      // Apply what applies and keep the rejects, so the message can show each failing hunk.
      const withRejects = await $`git -C ${tree} apply --reject --verbose ${patch.file}`.nothrow().quiet()
      const report = `${withRejects.stdout}${withRejects.stderr}`.split('\n')
        .filter((line) => /^(error: patch failed|Applying patch .* with|Rejected hunk)/.test(line))
      const rejectFiles = (await $`git -C ${tree} ls-files --others --ignored --exclude-standard -z`.quiet()).stdout
        .split('\0').filter((file) => file.endsWith('.rej'))
      const rejects = []
      for (const file of rejectFiles) rejects.push(`--- ${file}\n${await fs.readFile(path.join(tree, file), 'utf8')}`)
      await $`git -C ${tree} checkout -q -f --detach ${baseTag}`
      await $`git -C ${tree} clean -q -f -d -x`
      fail(`patch ${patch.name} does not apply to the pinned base (kernel-patches/base.json):\n${report.join('\n')}\n${rejects.join('\n')}`)
    }
    await $`git -C ${tree} apply --index ${patch.file}`.quiet()
    log(`applied ${patch.name}`)
  }
  await fs.writeFile(marker, `${wanted}\n`)
}

function makeArgs(buildDir) {
  return [`O=${buildDir}`, 'CC=ccache gcc', 'HOSTCC=ccache gcc', 'ARCH=x86_64']
}

function buildEnv() {
  return {
    ...process.env,
    CCACHE_DIR: path.join(cacheDir, 'ccache'),
    CCACHE_MAXSIZE: process.env.CCACHE_MAXSIZE ?? '5G',
    // Same timestamps in every build so ccache hits across rebuilds.
    KBUILD_BUILD_TIMESTAMP: '2026-01-01',
    KBUILD_BUILD_USER: 'memdedup',
    KBUILD_BUILD_HOST: 'lab',
    // Set (even empty) LOCALVERSION stops setlocalversion appending "+" for a git tree.
    LOCALVERSION: '',
  }
}

async function configure(tree, buildDir, fragment) {
  const env = buildEnv()
  await fs.mkdirp(buildDir)
  await $({ env, cwd: tree })`make -s ${makeArgs(buildDir)} tinyconfig`.quiet()
  await fs.appendFile(path.join(buildDir, '.config'), `\n# --- kernel-patches/config ---\n${fragment}\n`)
  await $({ env, cwd: tree })`make -s ${makeArgs(buildDir)} olddefconfig`.quiet()
  const config = new Set((await fs.readFile(path.join(buildDir, '.config'), 'utf8')).split('\n').map((line) => line.trim()))
  const missing = requestedOptions(fragment).filter((line) => !config.has(line))
  if (missing.length) {
    const actual = missing.map((line) => {
      const name = line.match(/CONFIG_\w+/)[0]
      const got = [...config].find((l) => l.startsWith(`${name}=`) || l === `# ${name} is not set`)
      return `  wanted ${line}, got ${got ?? '(absent: a dependency is missing)'}`
    })
    fail(`kernel-patches/config: ${missing.length} option(s) did not survive olddefconfig:\n${actual.join('\n')}`)
  }
}

// make with a one-line progress display; the full output goes to <buildDir>/build.log.
async function build(tree, buildDir) {
  const logFile = path.join(buildDir, 'build.log')
  const out = fs.createWriteStream(logFile)
  const jobs = String(os.availableParallelism())
  const started = Date.now()
  let objects = 0
  let last = ''
  const tty = process.stderr.isTTY
  let lastPrinted = 0
  const progress = (final = false) => {
    const line = `[lab] building: ${objects} files compiled, ${formatSeconds(Date.now() - started)} elapsed${last ? `, ${last}` : ''}`
    if (tty) process.stderr.write(`\r\x1b[K${line.slice(0, process.stderr.columns - 1)}${final ? '\n' : ''}`)
    else if (final || Date.now() - lastPrinted > 30_000) { process.stderr.write(`${line}\n`); lastPrinted = Date.now() }
  }
  const timer = setInterval(progress, tty ? 1000 : 5000)
  const child = spawn('make', [...makeArgs(buildDir), `-j${jobs}`, 'bzImage'], { cwd: tree, env: buildEnv(), stdio: ['ignore', 'pipe', 'pipe'] })
  const tail = []
  const errors = [] // with -j, the first error scrolls away behind the other jobs' output
  const onData = (chunk) => {
    out.write(chunk)
    for (const line of chunk.toString().split('\n')) {
      if (!line.trim()) continue
      tail.push(line); if (tail.length > 30) tail.shift()
      if (/error|\*\*\*|warning:/i.test(line) && errors.length < 60) errors.push(line)
      const m = line.match(/^\s+(CC|AS|LD|AR)\s+(\S+)/)
      if (m) { objects++; last = m[2] }
    }
  }
  child.stdout.on('data', onData)
  child.stderr.on('data', onData)
  const code = await new Promise((resolve) => child.on('close', resolve))
  clearInterval(timer)
  progress(true)
  await new Promise((resolve) => out.end(resolve))
  if (code !== 0) fail(`kernel build failed (make exit ${code}); errors:\n${errors.join('\n')}\nlast lines:\n${tail.join('\n')}\nfull log: ${logFile}`)
  return Date.now() - started
}

// Compiles the seed selftest and the MADV_MERGE probe with the host gcc; both run from the guest via 9p.
async function buildGuestPrograms(tree, key) {
  const programs = {
    basicTest: { source: tree && path.join(tree, 'tools/testing/selftests/sksm/basic_test.c'), output: path.join(cacheDir, `basic_test-${key}`) },
    remoteTest: { source: tree && path.join(tree, 'tools/testing/selftests/sksm/remote_test.c'), output: path.join(cacheDir, `remote_test-${key}`) },
    madvMergeProbe: { source: path.join(repoRoot, 'ci/madv-merge-probe.c'), output: path.join(cacheDir, `madv-merge-probe-${sha256(fs.readFileSync(path.join(repoRoot, 'ci/madv-merge-probe.c'))).slice(0, 16)}`) },
    // test/sksm_stress.test.ts runs it in the guest (compiling there would take TCG seconds).
    sksmStress: { source: path.join(repoRoot, 'test/fixtures/sksm-stress.c'), output: path.join(cacheDir, `sksm-stress-${sha256(fs.readFileSync(path.join(repoRoot, 'test/fixtures/sksm-stress.c')), fs.readFileSync(path.join(repoRoot, 'native/compat.h'))).slice(0, 16)}`) },
  }
  if (key === null) { // the unpatched baseline has no sksm selftests
    delete programs.basicTest
    delete programs.remoteTest
  }
  for (const { source, output } of Object.values(programs)) {
    if (fs.existsSync(output)) continue
    if (!source || !fs.existsSync(source)) fail(`missing source for ${output}`)
    // Static, so it does not depend on which libc the guest sees; dynamic if libc.a is missing.
    const staticBuild = await $`gcc -O2 -Wall -static -o ${output}.tmp ${source} -lpthread`.nothrow().quiet()
    if (staticBuild.exitCode !== 0) await $`gcc -O2 -Wall -o ${output}.tmp ${source} -lpthread`
    await fs.move(`${output}.tmp`, output, { overwrite: true })
  }
  return Object.fromEntries(Object.entries(programs).map(([name, { output }]) => [name, output]))
}

/**
 * Builds (or finds in the cache) the lab kernel.
 * @param {{force?: boolean}} [options]
 * @returns {Promise<string>} absolute path of the cached bzImage
 */
export async function ensureKernel({ force = false, flavour = 'debug' } = {}) {
  return (await ensureKernelBuild({ force, flavour })).bzImage
}

/**
 * Like ensureKernel(), with everything a caller may want.
 * @returns {Promise<{bzImage: string, release: string, key: string, cached: boolean,
 *   buildMs: number, programs: {basicTest: string, remoteTest: string, madvMergeProbe: string, sksmStress: string}}>}
 */
export async function ensureKernelBuild({ force = false, unpatched = false, flavour = 'debug' } = {}) {
  if (unpatched) return ensureUnpatchedBuild({ force })
  const started = Date.now()
  await ensurePackages()
  const { key, version, base, patches, fragment } = await kernelKey({ flavour })
  const prefix = flavour === 'debug' ? '' : `${flavour}-`
  const bzImage = path.join(cacheDir, `${prefix}bzImage-${key}`)
  const releaseFile = `${bzImage}.release`
  const selftests = ['basic_test', 'remote_test'].map((name) => path.join(cacheDir, `${name}-${key}`))
  if (!force && fs.existsSync(bzImage) && fs.existsSync(releaseFile) && selftests.every((file) => fs.existsSync(file))) {
    const programs = await buildGuestPrograms(null, key) // the selftests are cached: probe and stress only
    const release = (await fs.readFile(releaseFile, 'utf8')).trim()
    log(`kernel cache hit: ${bzImage} (${release})`)
    return { bzImage, release, key, flavour, cached: true, buildMs: Date.now() - started, programs }
  }
  log(`${flavour} kernel cache miss (key ${key}, source ${version}); building`)
  const tree = await ensurePristineTree(base)
  await applySeries(tree, patches, key)
  // One build dir per flavour: switching flavours never throws away the other's incremental state.
  const buildDir = path.join(cacheDir, flavour === 'debug' ? 'kbuild' : `kbuild-${flavour}`)
  await configure(tree, buildDir, fragment)
  const makeMs = await build(tree, buildDir)
  const release = (await $({ env: buildEnv(), cwd: tree })`make -s ${makeArgs(buildDir)} kernelrelease`.quiet()).stdout.trim()
  const suffix = flavour === 'debug' ? '-memdedup' : `-memdedup-${flavour}`
  if (!release.endsWith(suffix)) fail(`kernel release ${release} does not end in ${suffix}`)
  await fs.copy(path.join(buildDir, 'arch/x86/boot/bzImage'), `${bzImage}.tmp`)
  await fs.copy(path.join(buildDir, '.config'), `${bzImage}.config`)
  await fs.writeFile(releaseFile, `${release}\n`)
  await fs.move(`${bzImage}.tmp`, bzImage, { overwrite: true })
  const programs = await buildGuestPrograms(tree, key)
  log(`built ${release} in ${formatSeconds(makeMs)} (make) / ${formatSeconds(Date.now() - started)} (total): ${bzImage}`)
  return { bzImage, release, key, flavour, cached: false, buildMs: Date.now() - started, programs }
}

/** --flavour=NAME from argv (default debug). */
export function flavourOption(argv) {
  const given = argv.find((arg) => arg.startsWith('--flavour='))?.slice('--flavour='.length) ?? 'debug'
  if (!flavours.includes(given)) fail(`--flavour=${given}: unknown kernel flavour (${flavours.join(', ')})`)
  return given
}

// --- The unpatched baseline -------------------------------------------------------------------
// Same recipe and config fragment, no series: what the patched kernel's kselftest verdicts are
// compared against (ci/kselftest.mjs). It has its own worktree and build dir, so building it never
// touches the patched build's linux-src/ checkout or kbuild/ objects.
const unpatchedLocalVersion = '-memdedup-unpatched'

// The fragment minus the options that exist only with the series (a Kconfig symbol the pristine
// source does not define, such as CONFIG_SKSM); LOCALVERSION marks the release as the baseline.
async function unpatchedFragment(fragment, tree) {
  const { stdout } = await $`git -C ${tree} grep -h -E ${'^\\s*(menu)?config\\s+[A-Za-z0-9_]+'} ${baseTag} -- ${':(glob)**/Kconfig*'}`.quiet()
  const known = new Set(stdout.split('\n').map((line) => line.trim().split(/\s+/)[1]).filter(Boolean))
  const dropped = []
  const lines = fragment.split('\n').map((line) => {
    const name = line.match(/^(?:# )?CONFIG_(\w+)(?:=| is not set$)/)?.[1]
    if (name === 'LOCALVERSION') return `CONFIG_LOCALVERSION="${unpatchedLocalVersion}"`
    if (name && !known.has(name)) { dropped.push(`CONFIG_${name}`); return `# (series only, dropped: ${line.trim()})` }
    return line
  })
  return { fragment: lines.join('\n'), dropped }
}

async function ensureUnpatchedTree(base) {
  const tree = await ensurePristineTree(base) // the patched checkout; only its git objects are used
  const worktree = path.join(cacheDir, 'linux-src-unpatched')
  const baseCommit = (await $`git -C ${tree} rev-parse ${`${baseTag}^{commit}`}`.quiet()).stdout.trim()
  const head = (await $`git -C ${worktree} rev-parse HEAD`.nothrow().quiet()).stdout.trim()
  if (head === baseCommit) return worktree
  // Missing, or left over from an older linux-src (its git dir is gone): make it again.
  log(`adding the unpatched worktree ${worktree} (${baseTag})`)
  await fs.remove(worktree)
  await $`git -C ${tree} worktree prune`.quiet()
  await $`git -C ${tree} worktree add -f --detach ${worktree} ${baseTag}`.quiet()
  return worktree
}

export async function unpatchedKernelKey() {
  const base = await readBase()
  const version = sourceVersion(base)
  const tree = await ensurePristineTree(base)
  const { fragment, dropped } = await unpatchedFragment(await fs.readFile(path.join(patchesDir, 'config'), 'utf8'), tree)
  const key = sha256(recipeVersion, 'unpatched', version, fragment).slice(0, 16)
  return { key, version, base, fragment, dropped }
}

async function ensureUnpatchedBuild({ force = false } = {}) {
  const started = Date.now()
  await ensurePackages()
  const { key, version, base, fragment, dropped } = await unpatchedKernelKey()
  const bzImage = path.join(cacheDir, `unpatched-bzImage-${key}`)
  const releaseFile = `${bzImage}.release`
  if (!force && fs.existsSync(bzImage) && fs.existsSync(releaseFile)) {
    const programs = await buildGuestPrograms(null, null)
    const release = (await fs.readFile(releaseFile, 'utf8')).trim()
    log(`unpatched kernel cache hit: ${bzImage} (${release})`)
    return { bzImage, release, key, cached: true, buildMs: Date.now() - started, programs, unpatched: true }
  }
  log(`unpatched kernel cache miss (key ${key}, source ${version}; series-only options dropped: ${dropped.join(' ') || 'none'}); building`)
  const tree = await ensureUnpatchedTree(base)
  const buildDir = path.join(cacheDir, 'kbuild-unpatched')
  await configure(tree, buildDir, fragment)
  const makeMs = await build(tree, buildDir)
  const release = (await $({ env: buildEnv(), cwd: tree })`make -s ${makeArgs(buildDir)} kernelrelease`.quiet()).stdout.trim()
  if (!release.endsWith(unpatchedLocalVersion)) fail(`kernel release ${release} does not end in ${unpatchedLocalVersion}`)
  await fs.copy(path.join(buildDir, 'arch/x86/boot/bzImage'), `${bzImage}.tmp`)
  await fs.copy(path.join(buildDir, '.config'), `${bzImage}.config`)
  await fs.writeFile(releaseFile, `${release}\n`)
  await fs.move(`${bzImage}.tmp`, bzImage, { overwrite: true })
  const programs = await buildGuestPrograms(null, null)
  log(`built ${release} in ${formatSeconds(makeMs)} (make) / ${formatSeconds(Date.now() - started)} (total): ${bzImage}`)
  return { bzImage, release, key, cached: false, buildMs: Date.now() - started, programs, unpatched: true }
}

// --- Drift: does the series apply to the newest base the registry serves? --------------------

/**
 * Applies the series (no build) to the newest `base.package` the registry serves and reports patch by
 * patch. Returns { pinned, newest, rows: [{ name, verdict, detail }], applies }. The verdict is cached
 * per (newest version, series), so CI pays the unpacking (~1 min) once per Debian release.
 */
export async function checkLatest() {
  const base = await readBase()
  await aptUpdate()
  const [newest] = await servedVersions(base.package)
  if (!newest) fail(`the registry serves no ${base.package}`)
  if (newest === base.version) return { pinned: base.version, newest, rows: [], applies: true }
  const patches = await readSeries()
  const resultFile = path.join(cacheDir, 'check-latest', `${base.package}_${newest}-${sha256(...patches.flatMap((p) => [p.name, p.text])).slice(0, 16)}.json`)
  if (fs.existsSync(resultFile)) return fs.readJson(resultFile)
  const tarball = await ensureSourceTarball({ ...base, version: newest, tarballSha256: null })
  const work = path.join(cacheDir, 'check-latest', 'tree')
  await fs.remove(work)
  await fs.mkdirp(work)
  log(`unpacking ${base.package} ${newest} to apply the series to it`)
  await $`tar -xf ${tarball} -C ${work} --strip-components=1`
  await $({ cwd: work })`git init -q` // so git apply reads paths relative to the tree, not to an outer repo
  const rows = []
  for (const patch of patches) {
    const check = await $({ cwd: work })`git apply --check ${patch.file}`.nothrow().quiet()
    if (check.exitCode === 0) {
      await $({ cwd: work })`git apply ${patch.file}`.quiet()
      rows.push({ name: patch.name, verdict: 'applies', detail: '' })
      continue
    }
    // Apply what applies (later patches may build on it) and name the hunks that do not.
    const partial = await $({ cwd: work })`git apply --reject --verbose ${patch.file}`.nothrow().quiet()
    const detail = `${partial.stdout}${partial.stderr}`.split('\n')
      .filter((line) => /^(error: patch failed|Rejected hunk)/.test(line)).join('; ')
    rows.push({ name: patch.name, verdict: 'FAILS', detail })
  }
  await fs.remove(work)
  const result = { pinned: base.version, newest, rows, applies: rows.every((row) => row.verdict === 'applies') }
  await fs.writeJson(resultFile, result)
  return result
}

async function main() {
  if (process.argv.includes('--check-latest')) {
    const { pinned, newest, rows, applies } = await checkLatest()
    if (pinned === newest) {
      log(`pinned base ${pinned} is the newest the registry serves`)
      return 0
    }
    console.log(`pinned base ${pinned}; newest served ${newest}:\n`)
    console.log('| patch | on ' + newest + ' |\n|---|---|')
    for (const row of rows) console.log(`| ${row.name} | ${row.verdict}${row.detail ? `: ${row.detail}` : ''} |`)
    const failing = rows.filter((row) => row.verdict !== 'applies').length
    log(applies ? `the series applies to ${newest}: rebase by pinning it in kernel-patches/base.json`
      : `${failing} of ${rows.length} patches do not apply to ${newest}: the next rebase`)
    return applies ? 0 : 2
  }
  const force = process.argv.includes('--force')
  const unpatched = process.argv.includes('--unpatched')
  const result = await ensureKernelBuild({ force, unpatched, flavour: flavourOption(process.argv) })
  console.log(result.bzImage)
  return 0
}

if (isMain(import.meta.url)) await runMain(main)
