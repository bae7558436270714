#!/usr/bin/env zx
// `npm run test:vm`: one boot of the lab kernel runs, in order,
//   1. uname -r               must end in -memdedup
//   2. madv-merge-probe       madvise(MADV_MERGE=26) must return 0 (and EINVAL on the host)
//   3. the seed's basic_test  tools/testing/selftests/sksm/basic_test.c from kernel-patches/0002,
//      and remote_test        tools/testing/selftests/sksm/remote_test.c from kernel-patches/0052
//   4. the vitest suite       node node_modules/vitest/vitest.mjs run; it ends with the skipped
//                             tests by reason and fails on a skip the lab must not need (a feature
//                             the lab kernel has, root, swap, or no reason: test/helpers/env.mjs)
//      (it also writes the run as KTAP, kept as node_modules/.cache/memdedup/vm.ktap; a KTAP
//      whose plans do not hold fails the run)
//   5. the C originals of the ports `npm run kselftest -- --quick` selects (ksm_functional_tests,
//      pagemap_ioctl, cow, mremap_dontunmap), compared with the suite's results for their ports
// and fails on any non-zero step, any C-vs-port disagreement, or any Oops/BUG:/WARNING: in the
// kernel console.
//
//   MEMDEDUP_VM_TEST_COMMAND='node -e "…"' npm run test:vm   replaces step 4 (lab self-test)
//   MEMDEDUP_VM_MEMORY=8G, MEMDEDUP_VM_TIMEOUT=3600 (seconds)
import { $, fs, path, chalk } from 'zx'
import { repoRoot, log, formatSeconds, isMain, runMain } from './lib.mjs'
import { hostSummaryFile } from '../test/helpers/skip-summary-reporter.mjs'
import { ktapProblems } from './ktap.mjs'
import { ensureKernelBuild } from './kernel.mjs'
import { runInVm } from './vm.mjs'
import { ensureSelftests, tests as kselftests, guestScript, parseRun, portCases, compareWithPorts, portTable } from './kselftest.mjs'

const shellQuote = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`

/**
 * The failed tests of a vitest JSON report, one line each: file, title and the first line of the
 * error (and a line for a file that failed to load or whose hook failed).
 * @param {string | undefined} json
 */
export function failedTests(json) {
  if (!json) return []
  const lines = []
  for (const file of JSON.parse(json).testResults ?? []) {
    const name = path.relative(repoRoot, file.name)
    const failures = (file.assertionResults ?? []).filter((t) => t.status === 'failed')
    for (const t of failures) {
      const first = String(t.failureMessages?.[0] ?? '').split('\n')[0].slice(0, 300)
      lines.push(`FAIL ${name}: ${t.fullName ?? t.title}\n     ${first}`)
    }
    if (file.status === 'failed' && failures.length === 0) lines.push(`FAIL ${name}: ${String(file.message ?? 'the file failed').split('\n')[0].slice(0, 300)}`)
  }
  return lines
}

async function main() {
  const started = Date.now()
  const kernel = await ensureKernelBuild()

  // The host half of the probe: the stock host kernel must not know MADV_MERGE.
  const host = await $`${kernel.programs.madvMergeProbe}`.nothrow().quiet()
  log(`host ${(await $`uname -r`.quiet()).stdout.trim()}: ${host.stdout.trim()}`)

  // --configLoader runner: the default loader bundles vitest.config.ts into node_modules/.vite-temp,
  // which is read-only in the guest. The --reporter list replaces the config's, so it names the
  // skip summary again: in the guest (MEMDEDUP_VM) it also fails the suite on a skip for a feature
  // the lab kernel has (test/helpers/env.mjs labFeatures) or a skip that gives no reason.
  const custom = process.env.MEMDEDUP_VM_TEST_COMMAND
  const report = 'vitest.json'
  const skipSummary = 'skip-summary.txt'
  const ktapReport = 'vm.ktap'
  const suite = custom ?? `MEMDEDUP_SKIP_SUMMARY="$MEMDEDUP_SCRATCH/${skipSummary}" MEMDEDUP_KTAP="$MEMDEDUP_SCRATCH/${ktapReport}" node node_modules/vitest/vitest.mjs run --configLoader runner --reporter=default --reporter=./test/helpers/skip-summary-reporter.mjs --reporter=./test/helpers/ktap-reporter.mjs --reporter=json --outputFile.json="$MEMDEDUP_SCRATCH/${report}"`
  // The C side of the C-vs-port check (skipped with a custom command: there are no port results).
  const cTests = custom ? [] : kselftests.filter((t) => t.quick)
  const binDir = cTests.length ? await ensureSelftests() : null
  // Each step prints a marker line; the script stops at the first failing step.
  const script = `
set -u
step() { printf '\\n== [vm] %s\\n' "$1"; }
fail() { printf '== [vm] FAILED: %s (exit %s)\\n' "$1" "$2"; exit "$2"; }
step 'uname -r'
release=$(uname -r); echo "$release"
case "$release" in *-memdedup) ;; *) fail 'kernel release does not end in -memdedup' 1 ;; esac
echo "cpus: $(nproc)"
step 'madv-merge-probe --expect-present'
${shellQuote(kernel.programs.madvMergeProbe)} --expect-present || fail madv-merge-probe $?
step 'sksm basic_test (seed selftest)'
${shellQuote(kernel.programs.basicTest)} || fail basic_test $?
step 'sksm remote_test (process_madvise MADV_MERGE, kernel-patches/0052)'
${shellQuote(kernel.programs.remoteTest)} || fail remote_test $?
step ${shellQuote(`suite: ${suite}`)}
suite_started=$(cut -d' ' -f1 /proc/uptime)
${suite} || fail 'test suite' $?
echo "suite took $(awk -v s="$suite_started" '{print $1 - s}' /proc/uptime) s (guest clock)"
${cTests.length ? `step 'C originals of the ports (npm run kselftest -- --quick)'
echo 128 > /proc/sys/vm/nr_hugepages
( ${guestScript(binDir, cTests)} )` : ''}
`
  const vmStarted = Date.now()
  const result = await runInVm(script, {
    cwd: repoRoot,
    kernel: kernel.bzImage,
    memory: process.env.MEMDEDUP_VM_MEMORY ?? '4G',
    // The suite takes ~35-40 min under TCG; the limit is for a hung guest, not a slow one.
    timeoutMs: Number(process.env.MEMDEDUP_VM_TIMEOUT ?? 55 * 60) * 1000,
    env: { VITEST_CACHE_DIR: '/tmp/vitest-cache', TMPDIR: '/tmp', CI: process.env.CI ?? '1', MEMDEDUP_SKSM_STRESS: kernel.programs.sksmStress },
    stdio: 'pipe', echo: true, collect: [report, skipSummary, ktapReport],
  })
  // The guest's vitest JSON and KTAP, kept beside the host's skip summary for reading after the run.
  if (result.collected[report]) {
    await fs.outputFile(path.join(path.dirname(hostSummaryFile), 'vitest-vm.json'), result.collected[report])
  }
  // The suite's KTAP must hold its plans: kernel CI tooling counts what it says.
  let ktapBroken = []
  if (!custom && result.exitCode === 0) {
    const text = result.collected[ktapReport]
    ktapBroken = text === undefined ? ['the guest wrote no KTAP'] : ktapProblems(text)
    if (text !== undefined) {
      const file = path.join(path.dirname(hostSummaryFile), ktapReport)
      await fs.outputFile(file, text)
      log(`KTAP of the VM suite: ${file}${ktapBroken.length ? ` (${ktapBroken.join('; ')})` : ''}`)
    }
  }
  let disagreements = 0
  if (cTests.length && result.exitCode === 0) {
    const rows = compareWithPorts(parseRun(result.output, cTests), portCases(JSON.parse(result.collected[report] ?? '{}'), repoRoot), cTests)
    console.log(`\n## C vs port in this boot\n\n${portTable(rows)}\n`)
    disagreements = rows.filter((r) => r.disagree).length
  }
  const summary = [
    `kernel ${kernel.release} (${kernel.cached ? 'cached' : `built in ${formatSeconds(kernel.buildMs)}`})`,
    `VM ${formatSeconds(Date.now() - vmStarted)} (${result.accel}, init at ${result.initUptimeSeconds ?? '?'} s)`,
    `exit ${result.commandExitCode ?? 'none (guest died)'}`,
    `kernel problems ${result.problems.length}`,
    `C-vs-port disagreements ${disagreements}`,
    ...(ktapBroken.length ? [`KTAP broken: ${ktapBroken.join('; ')}`] : []),
    `total ${formatSeconds(Date.now() - started)}`,
  ].join(', ')
  // `npm test` ends with both runs' skips, so the host's summary does not scroll away.
  const hostSkips = fs.existsSync(hostSummaryFile)
    ? `host run of ${(await fs.stat(hostSummaryFile)).mtime.toISOString()}:\n${await fs.readFile(hostSummaryFile, 'utf8')}` : 'host: no summary (run npm run test:host)\n'
  const vmSkips = result.collected[skipSummary] ? `VM:\n${result.collected[skipSummary]}` : 'VM: no summary (the suite did not finish)\n'
  if (!custom) console.log(`\n## Skipped tests\n\n${hostSkips}\n${vmSkips}`)
  // Last, so that the tail of a CI log (all a reader may get) names what failed.
  const failed = failedTests(result.collected[report])
  if (failed.length) console.log(`\n## Failed tests in the VM (${failed.length})\n\n${failed.join('\n')}\n`)
  const ok = result.exitCode === 0 && disagreements === 0 && ktapBroken.length === 0
  console.log(`${ok ? chalk.green('test:vm PASS') : chalk.red('test:vm FAIL')}: ${summary}`)
  return ok ? 0 : (result.exitCode || 1)
}

if (isMain(import.meta.url)) await runMain(main)
