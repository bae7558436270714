#!/usr/bin/env zx
// `npm run kselftest`: the C mm selftests of 6.12 on the patched lab kernel and on the baseline
// (the same config without kernel-patches/, `npm run kernel -- --unpatched`), one boot each.
// Prints test | baseline | patched (per test and per subtest) and exits 1 on a regression: a test
// or subtest that passes (or skips) on the baseline and fails, times out or never runs on the
// patched kernel, or a kernel report (Oops/BUG/WARNING) only the patched kernel prints.
//
//   npm run kselftest                      every test below (~15 min per kernel under TCG)
//   npm run kselftest -- --quick           the CI subset (ksm_functional_tests, pagemap_ioctl, cow,
//                                          mremap_dontunmap)
//   npm run kselftest -- --only=cow,ksm_tests   tests whose id starts with one of these
//   npm run kselftest -- --patched-kernel=BZIMAGE --baseline-kernel=BZIMAGE   skip the builds
//   npm run kselftest -- --kernels=patched  one side only (no comparison)
//   npm run kselftest -- --quiet           no guest output on the terminal
//   npm run kselftest -- --no-ports        the C programs only (no C-vs-port table)
//
// In the same boot, after the C programs, the TypeScript port of each (test/kselftest/, see `ports`)
// runs under vitest, and a second table shows test | C | port per kernel. A test whose C program
// passes while its port fails, or the reverse, is a disagreement and fails the run too: the port
// is only worth something while it agrees with the C. test:vm runs the --quick part of this
// comparison on every CI run (ci/test-vm.mjs).
//
// The binaries are built once from the lab's source (tag memdedup-base of linux-src) with the
// tools/ part of kernel-patches/ applied (the selftest fixes 6.12 lacks, e.g. 0007's argv NULL),
// statically, against that source's own UAPI headers, and cached in ~/.cache/memdedup/kselftest-<hash>/;
// the guest runs the same binaries on both kernels, from there (the host's / is its root).
// Results: ~/.cache/memdedup/kselftest-results[-quick].json.
import { $, fs, path, os, chalk } from 'zx'
import { cacheDir, repoRoot, log, fail, sha256, formatSeconds, isMain, runMain } from './lib.mjs'
import { ensureKernelBuild, kernelKey } from './kernel.mjs'
import { runInVm } from './vm.mjs'
import { ktap } from './ktap.mjs'

const recipeVersion = 'kselftest-2'
const baseTag = 'memdedup-base'
const shellQuote = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`

// Programs built from tools/testing/selftests/mm (6.12 has no `merge` test; it came later).
const programs = ['ksm_functional_tests', 'ksm_tests', 'cow', 'pagemap_ioctl', 'uffd-unit-tests', 'mremap_test',
  'mremap_dontunmap', 'migration', 'madv_populate', 'soft-dirty', 'mkdirty']

// What runs, in this order, in one boot. The ksm_tests modes are run_vmtests.sh's (-H/-P with a
// smaller -s: 100 MiB of ksmd scanning takes minutes under TCG). timeout: seconds (guest clock).
// quick: part of --quick.
export const tests = [
  // test_prctl_fork_exec execs ./ksm_functional_tests: it must run in the binaries' directory.
  { id: 'ksm_functional_tests', argv: ['ksm_functional_tests'], timeout: 360, quick: true, inBinDir: true },
  { id: 'ksm_tests -M -p 10', argv: ['ksm_tests', '-M', '-p', '10'], timeout: 120 },
  { id: 'ksm_tests -M -p 10 -t 1', argv: ['ksm_tests', '-M', '-p', '10', '-t', '1'], timeout: 120 },
  { id: 'ksm_tests -U', argv: ['ksm_tests', '-U'], timeout: 120 },
  { id: 'ksm_tests -Z -p 10 -z 0', argv: ['ksm_tests', '-Z', '-p', '10', '-z', '0'], timeout: 120 },
  { id: 'ksm_tests -Z -p 10 -z 1', argv: ['ksm_tests', '-Z', '-p', '10', '-z', '1'], timeout: 120 },
  { id: 'ksm_tests -N -m 1', argv: ['ksm_tests', '-N', '-m', '1'], timeout: 60 },
  { id: 'ksm_tests -N -m 0', argv: ['ksm_tests', '-N', '-m', '0'], timeout: 60 },
  { id: 'ksm_tests -P -s 16', argv: ['ksm_tests', '-P', '-s', '16'], timeout: 180 },
  { id: 'ksm_tests -H -s 16', argv: ['ksm_tests', '-H', '-s', '16'], timeout: 180 },
  { id: 'ksm_tests -D -s 16', argv: ['ksm_tests', '-D', '-s', '16'], timeout: 180 },
  { id: 'ksm_tests -C -p 10', argv: ['ksm_tests', '-C', '-p', '10'], timeout: 120 },
  { id: 'pagemap_ioctl', argv: ['pagemap_ioctl'], timeout: 300, quick: true },
  { id: 'cow', argv: ['cow'], timeout: 420, quick: true },
  // uffd-unit-tests in one piece takes 6-7 min under a loaded TCG host; split by -f (a substring
  // filter) so each part has its own timeout and a slow part cannot take the others down. With a
  // filter the program skips its UFFDIO_API checks (2 subtests). sigbus and events (fault-handling
  // stress, UFFDIO_COPY) are the slow parts.
  ...['register-ioctls', 'zeropage', 'move', 'wp-fork', 'wp-unpopulated', 'minor', 'poison', 'sigbus', 'events'].map((filter) => ({
    id: `uffd-unit-tests -f ${filter}`, argv: ['uffd-unit-tests', '-f', filter],
    timeout: { 'wp-fork': 240, minor: 180, sigbus: 300, events: 360 }[filter] ?? 120,
  })),
  { id: 'mremap_test', argv: ['mremap_test'], timeout: 300 },
  { id: 'mremap_dontunmap', argv: ['mremap_dontunmap'], timeout: 120, quick: true },
  { id: 'migration', argv: ['migration'], timeout: 60 },
  { id: 'madv_populate', argv: ['madv_populate'], timeout: 120 },
  { id: 'soft-dirty', argv: ['soft-dirty'], timeout: 300 },
  { id: 'mkdirty', argv: ['mkdirty'], timeout: 120 },
]

// The TypeScript port of each C test: its file in test/kselftest/ and, where one C program runs in
// several modes, a pattern on the port's test names that picks that mode's cases. `byRun`: the C
// program names each subtest by its `# [RUN] test_x` line and the port names its case `test_x…`, so
// the two are compared case by case too. Tests without an entry have no port (the table says so).
export const ports = {
  ksm_functional_tests: { file: 'test/kselftest/ksm_functional_tests.test.ts', byRun: true },
  'ksm_tests -M -p 10': { file: 'test/kselftest/ksm_tests.test.ts', name: /\(-M -p 10\)/ },
  'ksm_tests -M -p 10 -t 1': { file: 'test/kselftest/ksm_tests.test.ts', name: /\(-M -p 10\)/ },
  'ksm_tests -U': { file: 'test/kselftest/ksm_tests.test.ts', name: /\(-U\)/ },
  'ksm_tests -Z -p 10 -z 0': { file: 'test/kselftest/ksm_tests.test.ts', name: /\(-Z -p 10 -z 0\)/ },
  'ksm_tests -Z -p 10 -z 1': { file: 'test/kselftest/ksm_tests.test.ts', name: /\(-Z -p 10 -z 1\)/ },
  'ksm_tests -N -m 1': { file: 'test/kselftest/ksm_tests.test.ts', name: /\(-N -m 1\)/ },
  'ksm_tests -N -m 0': { file: 'test/kselftest/ksm_tests.test.ts', name: /\(-N -m 0\)/ },
  'ksm_tests -P -s 16': { file: 'test/kselftest/ksm_tests.test.ts', name: /\(-P / },
  'ksm_tests -H -s 16': { file: 'test/kselftest/ksm_tests.test.ts', name: /\(-H / },
  'ksm_tests -D -s 16': { file: 'test/kselftest/ksm_tests.test.ts', name: /\(-D / },
  'ksm_tests -C -p 10': { file: 'test/kselftest/ksm_tests.test.ts', name: /\(-C\)/ },
  pagemap_ioctl: { file: 'test/kselftest/pagemap_ioctl.test.ts' },
  cow: { file: 'test/kselftest/cow.test.ts' },
  ...Object.fromEntries(['register-ioctls', 'zeropage', 'move', 'wp-fork', 'wp-unpopulated', 'minor', 'poison', 'sigbus', 'events']
    .map((filter) => [`uffd-unit-tests -f ${filter}`, { file: 'test/kselftest/uffd-unit-tests.test.ts', name: new RegExp(`(^| )${filter}`) }])),
  mremap_test: { file: 'test/kselftest/mremap_test.test.ts' },
  mremap_dontunmap: { file: 'test/kselftest/mremap_dontunmap.test.ts' },
  madv_populate: { file: 'test/kselftest/madv_populate.test.ts' },
  'soft-dirty': { file: 'test/kselftest/soft-dirty.test.ts' },
  mkdirty: { file: 'test/kselftest/mkdirty.test.ts' },
}

/** The port's verdict over some vitest JSON results: fail if any case failed, pass if any passed,
 *  skip if every case skipped, absent if none matched. */
function portVerdict(cases) {
  if (cases.length === 0) return 'absent'
  if (cases.some((c) => c.status === 'failed')) return 'fail'
  if (cases.some((c) => c.status === 'passed')) return 'pass'
  return 'skip'
}

/** vitest's JSON report (--reporter=json) → [{ file (repo-relative), name (full title), status }]. */
export function portCases(report, root) {
  const cases = []
  for (const file of report?.testResults ?? []) {
    const rel = path.relative(root, file.name)
    for (const a of file.assertionResults ?? []) cases.push({ file: rel, name: a.fullName ?? a.title, title: a.title, status: a.status })
  }
  return cases
}

// A C verdict and a port verdict disagree when one says the kernel passes and the other that it
// fails (a C timeout or crash counts as a failure), or when a port that exists ran no case at all
// (vitest died, or the name pattern went stale: the check must not pass by comparing nothing).
// A skip on either side is a coverage gap, shown, not a disagreement.
const cFails = (v) => bad.has(v)
export const disagree = (c, port) =>
  port === 'absent' || (c === 'pass' || c === 'xfail' ? port === 'fail' : cFails(c) && port === 'pass')

/** test | C | port rows for one kernel, with subtest rows where the C and the port name the same cases. */
export function compareWithPorts(cTests, cases, selected) {
  const rows = []
  for (const t of selected) {
    const port = ports[t.id]
    const c = cTests[t.id]
    if (!port) { rows.push({ test: t.id, subtest: null, c: c.verdict, port: 'no port', disagree: false }); continue }
    const mine = cases.filter((k) => k.file === port.file && (!port.name || port.name.test(k.name)))
    const pv = portVerdict(mine)
    rows.push({ test: t.id, subtest: null, c: c.verdict, port: pv, cases: mine.length, disagree: disagree(c.verdict, pv) })
    if (!port.byRun) continue
    for (const [key, verdict] of Object.entries(c.subtests)) {
      const run = key.match(/^\d+ \[(test_\w+)\]/)?.[1]
      if (!run) continue
      const same = mine.filter((k) => k.title === run || k.title.startsWith(`${run} `) || k.title.startsWith(`${run}:`))
      const sv = portVerdict(same)
      rows.push({ test: t.id, subtest: run, c: verdict, port: sv, cases: same.length, disagree: disagree(verdict, sv) })
    }
  }
  return rows
}

// 2 MiB hugetlb pages reserved before the tests (cow, pagemap_ioctl, uffd-unit-tests have hugetlb
// cases; run_vmtests.sh reserves 256 MiB).
const hugepages = 128

// --- Build -----------------------------------------------------------------------------------

async function missingDevPackages() {
  const checks = { 'libnuma-dev': '/usr/lib/x86_64-linux-gnu/libnuma.a', 'liburing-dev': '/usr/lib/x86_64-linux-gnu/liburing.a' }
  return Object.entries(checks).filter(([, file]) => !fs.existsSync(file)).map(([name]) => name)
}

/** Builds (or finds) the static mm selftests of the pristine source; returns their directory. */
export async function ensureSelftests() {
  const missing = await missingDevPackages()
  if (missing.length) {
    // ksm_tests and migration link libnuma; cow's io_uring cases need liburing (else they skip).
    log(`installing missing Debian packages: ${missing.join(' ')}`)
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
    const sudo = process.getuid() === 0 ? [] : ['sudo']
    await $({ env, stdio: 'inherit' })`${sudo} apt-get -o DPkg::Lock::Timeout=600 update`
    await $({ env, stdio: 'inherit' })`${sudo} apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends ${missing}`
  }
  const src = path.join(cacheDir, 'linux-src')
  const base = (await $`git -C ${src} rev-parse ${`${baseTag}^{tree}`}`.quiet()).stdout.trim()
  const gcc = (await $`gcc --version`.quiet()).stdout.split('\n')[0]
  const toolsPatches = (await kernelKey()).patches.filter((p) => /^diff --git a\/tools\//m.test(p.text))
  const key = sha256(recipeVersion, base, gcc, ...programs, ...toolsPatches.map((p) => p.text)).slice(0, 16)
  const dir = path.join(cacheDir, `kselftest-${key}`)
  if (programs.every((p) => fs.existsSync(path.join(dir, p)))) return dir
  const started = Date.now()
  log(`building the mm selftests of ${baseTag} + ${toolsPatches.length} selftest patch(es) (statically) into ${dir}`)
  const work = await fs.mkdtemp(path.join(cacheDir, 'kselftest-build-'))
  try {
    // Only what `make headers` and the mm selftests read (not the whole tree).
    await $`git -C ${src} archive ${baseTag} Makefile Kbuild Kconfig scripts include arch/x86 usr tools mm/gup_test.h | tar -x -C ${work}`
    // The selftest fixes of the series (only their tools/ part: the kernel part needs the whole tree).
    for (const p of toolsPatches) await $({ cwd: work })`git apply --include=${'tools/*'} ${p.file}`
    await $({ cwd: work })`make -s ARCH=x86_64 O=${path.join(work, 'obj')} headers`
    const out = path.join(work, 'out')
    await fs.mkdirp(out)
    const mm = path.join(work, 'tools/testing/selftests/mm')
    const built = await $({ cwd: mm })`make -s -j${os.availableParallelism()} ARCH=x86_64 OUTPUT=${out} ${`KHDR_INCLUDES=-isystem ${path.join(work, 'obj/usr/include')}`} LDFLAGS=-static ${programs.map((p) => path.join(out, p))}`.nothrow().quiet()
    const absent = programs.filter((p) => !fs.existsSync(path.join(out, p)))
    if (built.exitCode !== 0 || absent.length) {
      const errors = `${built.stdout}${built.stderr}`.split('\n').filter((l) => /error|undefined reference/.test(l)).slice(0, 40)
      fail(`building the mm selftests failed (make exit ${built.exitCode}; missing: ${absent.join(' ') || 'none'}):\n${errors.join('\n')}`)
    }
    await fs.mkdirp(`${dir}.tmp`)
    for (const p of programs) await fs.copy(path.join(out, p), path.join(`${dir}.tmp`, p))
    await fs.remove(dir)
    await fs.move(`${dir}.tmp`, dir)
  } finally {
    await fs.remove(work)
  }
  log(`built ${programs.length} selftests in ${formatSeconds(Date.now() - started)}`)
  return dir
}

// --- Run -------------------------------------------------------------------------------------

const begin = '=== kselftest: begin '
const end = '=== kselftest: end '

// The ports take about as long as the C programs under TCG; they get the same budget again.
const portsTimeout = (selected) => selected.reduce((sum, t) => sum + t.timeout, 0) + 120

// Port runs write vitest's JSON report here ($MEMDEDUP_SCRATCH is read back by runInVm).
export const portsReport = 'ports.json'
const portsMarker = '=== kselftest: ports '

/** The guest's script: each C test between markers, then (withPorts) their ports under vitest. */
export function guestScript(binDir, selected, { withPorts = false, repo = repoRoot } = {}) {
  const lines = [
    'set -u',
    'cd /tmp',
    `echo "kernel: $(uname -r), cpus: $(nproc), hugetlb pages: $(cat /proc/sys/vm/nr_hugepages)"`,
    'run() {',
    '  id=$1; tmo=$2; shift 2',
    `  printf '\\n${begin}%s\\n' "$id"`,
    "  s=$(cut -d' ' -f1 /proc/uptime)",
    '  timeout -k 10 "$tmo" "$@" </dev/null 2>&1',
    '  rc=$?',
    `  printf '\\n${end}%s exit=%s seconds=%s\\n' "$id" "$rc" "$(awk -v s="$s" '{print $1 - s}' /proc/uptime)"`,
    '}',
  ]
  for (const t of selected) {
    const run = `run ${shellQuote(t.id)} ${t.timeout} ${[path.join(binDir, t.argv[0]), ...t.argv.slice(1)].map(shellQuote).join(' ')}`
    lines.push(t.inBinDir ? `(cd ${shellQuote(binDir)} && ${run})` : run)
  }
  const files = [...new Set(selected.map((t) => ports[t.id]?.file).filter(Boolean))]
  if (withPorts && files.length) {
    lines.push(`printf '\\n${portsMarker}%s\\n' ${shellQuote(files.join(' '))}`)
    // --configLoader runner: the default loader writes into node_modules/.vite-temp, read-only here.
    lines.push(`(cd ${shellQuote(repo)} && VITEST_CACHE_DIR=/tmp/vitest-cache timeout -k 10 ${portsTimeout(selected)} node node_modules/vitest/vitest.mjs run --configLoader runner --reporter=default --reporter=json --outputFile.json="$MEMDEDUP_SCRATCH/${portsReport}" ${files.map(shellQuote).join(' ')} </dev/null 2>&1)`)
  }
  lines.push('exit 0')
  return `${lines.join('\n')}\n`
}

// Verdicts, worst last. A subtest that is "skip" on one kernel and "pass" on the other is no
// regression; "fail", "timeout" and "not run" are.
const bad = new Set(['fail', 'timeout', 'not run'])

function addSubtest(subtests, name, verdict) {
  let key = name
  for (let n = 2; key in subtests; n++) key = `${name} #${n}`
  subtests[key] = verdict
}

// TAP (ksft_test_result_*) and uffd-unit-tests' "Testing X... done|skipped|failed" lines.
export function parseTestOutput(text) {
  const subtests = {}
  let totals = null
  let pendingUffd = null
  let context = '' // the last "# [RUN] …" / "# [INFO] …" line: cow's results only say "No leak from parent into child"
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\r$/, '')
    let m
    if ((m = line.match(/^# \[(?:RUN|INFO)\] (.*)$/))) context = m[1].trim()
    else if ((m = line.match(/^(not ok|ok) (\d+) (.*)$/))) {
      // Keyed "<number> <description>": descriptions repeat (ksm_functional_tests has five
      // "Pages were unmerged"), and the numbers follow the plan, the same on both kernels.
      const [, status, number, rest] = m
      // "ok 1 # SKIP reason" has no description at all (ksm_tests -N).
      const directive = rest.match(/(?:^|\s)#\s*(SKIP|XFAIL|XPASS|TODO)\b/i)?.[1]?.toUpperCase()
      // …then the reason names the case (mremap_test: "ok 1 # XFAIL mremap - Source and Destination …").
      const name = rest.replace(/(?:^|\s)#\s*(SKIP|XFAIL|XPASS|TODO)\b.*$/i, '').trim() ||
        rest.replace(/^#\s*(SKIP|XFAIL|XPASS|TODO)\b/i, '').trim()
      let verdict = status === 'ok' ? 'pass' : 'fail'
      if (directive === 'SKIP') verdict = 'skip'
      else if (directive === 'XFAIL') verdict = 'xfail'
      else if (directive === 'XPASS') verdict = 'fail'
      // Digits in the description are measurements (pagemap_ioctl: "Extra pages 44 (0.1%)"), not names.
      addSubtest(subtests, [number, context && `[${context}]`, name.replace(/\d+(\.\d+)?/g, 'N')].filter(Boolean).join(' '), verdict)
    } else if ((m = line.match(/^# Totals: pass:(\d+) fail:(\d+) xfail:(\d+) xpass:(\d+) skip:(\d+) error:(\d+)/))) {
      totals = { pass: +m[1], fail: +m[2], xfail: +m[3], xpass: +m[4], skip: +m[5], error: +m[6] }
    } else if ((m = line.match(/^Userfaults unit tests: pass=(\d+), skip=(\d+), fail=(\d+) \(total=(\d+)\)/))) {
      totals = { pass: +m[1], fail: +m[3], xfail: 0, xpass: 0, skip: +m[2], error: 0 }
    }
    // uffd-unit-tests: "Testing <name>... " then, maybe after other lines, done/skipped/failed.
    const start = line.match(/^Testing (.+?)\.\.\. ?(.*)$/)
    const tail = start ? start[2] : line
    if (start) pendingUffd = start[1]
    if (pendingUffd) {
      const r = tail.match(/^(done|skipped|failed)\b/)
      if (r) {
        addSubtest(subtests, pendingUffd, r[1] === 'done' ? 'pass' : r[1] === 'skipped' ? 'skip' : 'fail')
        pendingUffd = null
      }
    }
  }
  if (pendingUffd) addSubtest(subtests, pendingUffd, 'not run')
  return { subtests, totals }
}

function testVerdict(exitCode, totals) {
  if (exitCode === null) return 'not run'
  if (exitCode === 124 || exitCode === 137) return 'timeout'
  if (exitCode === 4) return 'skip'
  if (exitCode === 0 && totals && (totals.fail > 0 || totals.error > 0)) return 'fail'
  if (exitCode === 0 && totals && totals.pass + totals.xfail === 0 && totals.skip > 0) return 'skip' // every case skipped
  if (exitCode === 0) return 'pass'
  return 'fail'
}

// Splits the guest output at the markers into per-test results.
export function parseRun(output, selected) {
  const results = {}
  // The guest's terminal may turn \n into \r\n.
  const chunks = output.replace(/\r+\n/g, '\n').split(begin).slice(1)
  for (const chunk of chunks) {
    const id = chunk.slice(0, chunk.indexOf('\n'))
    const body = chunk.slice(id.length + 1)
    const endAt = body.indexOf(end)
    const text = endAt >= 0 ? body.slice(0, endAt) : body
    const m = endAt >= 0 ? body.slice(endAt + end.length).match(/ exit=(\d+) seconds=([\d.]+)/) : null
    const exitCode = m ? Number(m[1]) : null
    const { subtests, totals } = parseTestOutput(text)
    results[id] = { verdict: testVerdict(exitCode, totals), exitCode, seconds: m ? Number(m[2]) : null, totals, subtests }
  }
  for (const t of selected) results[t.id] ??= { verdict: 'not run', exitCode: null, seconds: null, totals: null, subtests: {} }
  return results
}

/** kselftest verdicts as KTAP's: pass and xfail are ok, skip is a skip, the rest (fail, timeout, not run) not ok. */
const ktapVerdict = (verdict) => (verdict === 'pass' || verdict === 'xfail' ? 'ok' : verdict === 'skip' ? 'skip' : 'not ok')

/** A run of the C tests as KTAP: one test per program (its exit code's verdict), its cases as subtests. */
export function runAsKtap(tests, selected) {
  return ktap(selected.map((t) => {
    const r = tests[t.id]
    const reason = r.verdict === 'skip' ? `exit 4 (KSFT_SKIP)` : ktapVerdict(r.verdict) === 'not ok' ? `${r.verdict}${r.exitCode === null ? '' : `, exit ${r.exitCode}`}` : undefined
    const subtests = Object.entries(r.subtests).map(([name, verdict]) => ({ name, verdict: ktapVerdict(verdict) }))
    return { name: t.id, verdict: ktapVerdict(r.verdict), reason, subtests }
  }))
}

async function runKernel(label, kernel, binDir, selected, { quiet, quick, withPorts }) {
  const budget = (selected.reduce((sum, t) => sum + t.timeout + 15, 0) + (withPorts ? portsTimeout(selected) : 0)) * 1000 + 10 * 60_000
  log(`${label}: ${kernel.release} (${kernel.bzImage}), ${selected.length} tests${withPorts ? ' and their ports' : ''}`)
  const result = await runInVm(guestScript(binDir, selected, { withPorts }), {
    kernel: kernel.bzImage, memory: '4G', hugepages, timeoutMs: budget, stdio: 'pipe', echo: !quiet, collect: [portsReport],
    env: { CI: process.env.CI ?? '1' },
  })
  const outputFile = path.join(cacheDir, `kselftest-${label}${quick ? '-quick' : ''}.log`)
  await fs.writeFile(outputFile, result.output ?? '')
  const tests = parseRun(result.output ?? '', selected)
  const ktapFile = outputFile.replace(/\.log$/, '.ktap')
  await fs.writeFile(ktapFile, runAsKtap(tests, selected))
  let portRows = null
  if (withPorts) {
    const report = result.collected[portsReport]
    portRows = compareWithPorts(tests, report ? portCases(JSON.parse(report), repoRoot) : [], selected)
  }
  log(`${label}: ${formatSeconds(result.durationMs)} (${result.accel}), guest exit ${result.commandExitCode ?? 'none (guest died)'}, kernel reports ${result.problems.length}`)
  return {
    release: kernel.release, bzImage: kernel.bzImage, durationMs: result.durationMs, accel: result.accel,
    guestExit: result.commandExitCode, timedOut: result.timedOut, problems: result.problems, consoleLog: result.consoleLog,
    output: outputFile, ktap: ktapFile, tests, portRows,
  }
}

function counts(r) {
  if (!r) return '—'
  const c = { pass: 0, fail: 0, skip: 0 }
  for (const v of Object.values(r.subtests)) {
    if (v === 'pass' || v === 'xfail') c.pass++
    else if (v === 'skip') c.skip++
    else c.fail++
  }
  const total = c.pass + c.fail + c.skip
  return total ? `${c.pass}/${c.fail}/${c.skip}` : '—'
}

const show = (r) => (r ? `${r.verdict}${r.seconds !== null ? ` (${r.seconds.toFixed(1)} s)` : ''}` : '—')

// Regressions: baseline pass/skip/xfail, patched fail/timeout/not run (tests, subtests, console).
export function compare(baseline, patched, selected) {
  const regressions = []
  const subtestDiffs = []
  for (const t of selected) {
    const b = baseline.tests[t.id]
    const p = patched.tests[t.id]
    if (!bad.has(b.verdict) && bad.has(p.verdict)) regressions.push({ test: t.id, subtest: null, baseline: b.verdict, patched: p.verdict })
    const names = new Set([...Object.keys(b.subtests), ...Object.keys(p.subtests)])
    for (const name of names) {
      const bv = b.subtests[name] ?? (b.verdict === 'not run' ? 'not run' : 'absent')
      const pv = p.subtests[name] ?? (p.verdict === 'not run' || p.verdict === 'timeout' ? 'not run' : 'absent')
      if (bv === pv) continue
      subtestDiffs.push({ test: t.id, subtest: name, baseline: bv, patched: pv })
      if (!bad.has(bv) && bv !== 'absent' && bad.has(pv)) regressions.push({ test: t.id, subtest: name, baseline: bv, patched: pv })
    }
  }
  if (patched.problems.length > baseline.problems.length) {
    regressions.push({ test: 'kernel console', subtest: null, baseline: `${baseline.problems.length} report(s)`, patched: `${patched.problems.length} report(s)` })
  }
  return { regressions, subtestDiffs }
}

function table(selected, runs) {
  const { baseline, patched } = runs
  const rows = ['| test | baseline | patched | subtests baseline (pass/fail/skip) | subtests patched (pass/fail/skip) |', '|---|---|---|---|---|']
  for (const t of selected) {
    rows.push(`| ${t.id} | ${show(baseline?.tests[t.id])} | ${show(patched?.tests[t.id])} | ${counts(baseline?.tests[t.id])} | ${counts(patched?.tests[t.id])} |`)
  }
  const console = (r) => (r ? (r.problems.length ? `${r.problems.length} report(s)` : 'clean') : '—')
  rows.push(`| kernel console (Oops/BUG/WARNING) | ${console(baseline)} | ${console(patched)} | | |`)
  return rows.join('\n')
}

/** test | C | port (| cases the port ran) rows, disagreements marked. */
export function portTable(rows) {
  const out = ['| test | C | port | port cases | |', '|---|---|---|---|---|']
  for (const r of rows) {
    const name = r.subtest ? `&nbsp;&nbsp;${r.test} / ${r.subtest}` : r.test
    const note = r.disagree ? '**DISAGREE**' : r.port === 'no port' ? '' : r.c !== r.port ? 'coverage differs' : ''
    out.push(`| ${name} | ${r.c} | ${r.port} | ${r.cases ?? ''} | ${note} |`)
  }
  const ported = rows.filter((r) => !r.subtest && r.port !== 'no port')
  out.push(`\n${ported.length} of ${rows.filter((r) => !r.subtest).length} C tests have a port; ${rows.filter((r) => r.disagree).length} disagreement(s)`)
  return out.join('\n')
}

function option(name) {
  const arg = process.argv.find((a) => a.startsWith(`--${name}=`))
  return arg ? arg.slice(name.length + 3) : undefined
}

async function main() {
  const started = Date.now()
  const quick = process.argv.includes('--quick')
  const quiet = process.argv.includes('--quiet')
  const only = option('only')?.split(',').map((s) => s.trim()).filter(Boolean)
  const kernels = (option('kernels') ?? 'baseline,patched').split(',')
  for (const k of kernels) if (!['baseline', 'patched'].includes(k)) fail(`--kernels: unknown kernel ${k} (baseline, patched)`)
  let selected = quick ? tests.filter((t) => t.quick) : tests
  if (only) selected = selected.filter((t) => only.some((o) => t.id === o || t.id.startsWith(`${o} `)))
  if (selected.length === 0) fail('no test selected')

  // A kernel given on the command line is used as is (its release read from the .release file
  // kernel.mjs writes beside it); else it is built or found in the cache.
  const given = async (file) => {
    const bzImage = path.resolve(file)
    const release = (await fs.readFile(`${bzImage}.release`, 'utf8').catch(() => path.basename(bzImage))).trim()
    return { bzImage, release }
  }
  const wanted = {}
  if (kernels.includes('baseline')) {
    wanted.baseline = option('baseline-kernel') ? await given(option('baseline-kernel')) : await ensureKernelBuild({ unpatched: true })
  }
  if (kernels.includes('patched')) {
    wanted.patched = option('patched-kernel') ? await given(option('patched-kernel')) : await ensureKernelBuild()
  }
  const binDir = await ensureSelftests()
  const withPorts = !process.argv.includes('--no-ports')

  const runs = {}
  for (const label of ['baseline', 'patched']) {
    if (wanted[label]) runs[label] = await runKernel(label, wanted[label], binDir, selected, { quiet, quick, withPorts })
  }

  console.log(`\n## mm kselftests (6.12, ${quick ? '--quick' : 'full'}): baseline vs patched\n`)
  console.log(table(selected, runs))
  for (const label of Object.keys(runs)) console.log(`\n${label}: ${runs[label].release}, ${formatSeconds(runs[label].durationMs)} in the VM (${runs[label].accel})`)
  let regressions = []
  let subtestDiffs = []
  if (runs.baseline && runs.patched) {
    ;({ regressions, subtestDiffs } = compare(runs.baseline, runs.patched, selected))
    if (subtestDiffs.length) {
      console.log('\n### Subtests whose verdict differs\n')
      console.log('| test | subtest | baseline | patched |\n|---|---|---|---|')
      for (const d of subtestDiffs) console.log(`| ${d.test} | ${d.subtest} | ${d.baseline} | ${d.patched} |`)
    }
  }
  const disagreements = []
  for (const [label, run] of Object.entries(runs)) {
    if (!run.portRows) continue
    console.log(`\n### C vs port on the ${label} kernel (${run.release})\n`)
    console.log(portTable(run.portRows))
    for (const row of run.portRows) if (row.disagree) disagreements.push({ kernel: label, ...row })
  }
  for (const [label, run] of Object.entries(runs)) for (const problem of run.problems) log(`${label} kernel report:\n${problem}`)
  const resultsFile = path.join(cacheDir, `kselftest-results${quick ? '-quick' : ''}.json`)
  await fs.outputJson(resultsFile, {
    date: new Date().toISOString(), quick, selftests: binDir, tests: selected, runs, regressions, subtestDiffs, disagreements,
    durationMs: Date.now() - started,
  }, { spaces: 2 })
  console.log(`\nresults: ${resultsFile}; KTAP: ${Object.values(runs).map((r) => r.ktap).join(', ')}; total ${formatSeconds(Date.now() - started)}`)
  if (disagreements.length) {
    console.log(chalk.red(`kselftest: ${disagreements.length} disagreement(s) between a C test and its port:`))
    for (const d of disagreements) console.log(chalk.red(`  ${d.kernel}: ${d.test}${d.subtest ? ` / ${d.subtest}` : ''}: C ${d.c}, port ${d.port}`))
  }
  if (regressions.length) {
    console.log(chalk.red(`kselftest: ${regressions.length} regression(s) on the patched kernel:`))
    for (const r of regressions) console.log(chalk.red(`  ${r.test}${r.subtest ? ` / ${r.subtest}` : ''}: baseline ${r.baseline}, patched ${r.patched}`))
  }
  if (regressions.length || disagreements.length) return 1
  if (!(runs.baseline && runs.patched)) {
    console.log(chalk.yellow('kselftest: one kernel only, nothing compared'))
    return 0
  }
  console.log(chalk.green('kselftest: no regression'))
  return 0
}

if (isMain(import.meta.url)) await runMain(main)
