// The lab's console check (ci/vm.mjs kernelProblem): every report the lab kernel's debug options
// can print must fail a run, and ordinary messages (the OOM killer, which tests provoke) must not.
import fs from 'node:fs'
import { describe, expect, it } from 'vitest'
import { kernelProblem } from './helpers/ci-vm.mjs'
import type { CVerdict, PortVerdict } from './helpers/ci-kselftest.mjs'

const reports = [
  '[   74.045825] BUG: kernel NULL pointer dereference, address: 0000000000000000',
  '[   74.047001] Oops: Oops: 0000 [#1] SMP',
  '[   26.266941] BUG: sleeping function called from invalid context at kernel/locking/mutex.c:283',
  '[    3.100000] WARNING: CPU: 1 PID: 77 at mm/ksm.c:2180 stable_tree_append+0x4c/0x60',
  '[    5.000000] WARNING: possible circular locking dependency detected',
  '[    5.000000] WARNING: possible recursive locking detected',
  '[    5.000000] WARNING: inconsistent lock state',
  '[    5.000000] DEBUG_LOCKS_WARN_ON(1)',
  '[    5.000000] list_add corruption. prev->next should be next (ffff888100000000)',
  '[    5.000000] list_del corruption, ffff888100000000->next is LIST_POISON1 (dead000000000100)',
  '[    5.000000] kernel BUG at mm/rmap.c:1234!',
  '[    5.000000] page dumped because: VM_BUG_ON_FOLIO(!folio_test_locked(folio))',
  '[    5.000000] BUG: Bad page state in process node  pfn:12345',
  '[    5.000000] BUG: Bad rss-counter state mm:00000000 type:MM_ANONPAGES val:-1',
  '[    5.000000] general protection fault, probably for non-canonical address 0xdead000000000100',
  '[    5.000000] Kernel panic - not syncing: Fatal exception',
  '[   30.000000] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:',
  '[   30.000000] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [node:123]',
  '[  150.000000] INFO: task node:123 blocked for more than 120 seconds.',
  '[    5.000000] BUG: KASAN: use-after-free in stable_tree_search+0x1/0x2',
  '[    5.000000] UBSAN: array-index-out-of-bounds in mm/ksm.c:100:5',
]

const ordinary = [
  '[   60.000000] node invoked oom-killer: gfp_mask=0x140dca(GFP_HIGHUSER_MOVABLE|__GFP_COMP|__GFP_ZERO), order=0, oom_score_adj=0',
  '[   60.000000] Out of memory: Killed process 321 (sksm-stress) total-vm:4200000kB, anon-rss:3900000kB',
  '[    0.500000] Adding 1048572k swap on /dev/vda.  Priority:-2 extents:1 across:1048572k',
  '[    1.000000] memdedup-init: command exited with status 0',
  '[    0.100000] Memory failure: 0x12345: recovery action for clean LRU page: Recovered',
]

describe('lab console check (ci/vm.mjs kernelProblem)', () => {
  it.each(reports)('fails a run on: %s', (line) => {
    expect(kernelProblem.test(line)).toBe(true)
  })

  it.each(ordinary)('lets pass: %s', (line) => {
    expect(kernelProblem.test(line)).toBe(false)
  })
})

// The C-vs-port check (ci/kselftest.mjs): what counts as a disagreement, and that a C program's
// subtests are matched to the port's cases by their `# [RUN] test_x` name.
describe('C vs port comparison (ci/kselftest.mjs)', async () => {
  const { compareWithPorts, disagree, parseRun } = await import('./helpers/ci-kselftest.mjs')
  const file = 'test/kselftest/ksm_functional_tests.test.ts'
  const selected = [{ id: 'ksm_functional_tests' }, { id: 'migration' }]
  const output = [
    '=== kselftest: begin ksm_functional_tests',
    '# [RUN] test_unmerge', 'ok 1 Pages were unmerged',
    '# [RUN] test_prctl_fork', 'not ok 2 Merge in child failed',
    '# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0',
    '=== kselftest: end ksm_functional_tests exit=1 seconds=3',
  ].join('\n')

  it.each<[CVerdict, PortVerdict, boolean]>([
    ['pass', 'fail', true], ['fail', 'pass', true], ['timeout', 'pass', true], ['not run', 'pass', true],
    ['pass', 'pass', false], ['fail', 'fail', false], ['pass', 'skip', false], ['skip', 'pass', false], ['xfail', 'pass', false],
  ])('C %s, port %s: disagreement %s', (c, port, expected) => {
    expect(disagree(c, port)).toBe(expected)
  })

  it('matches subtests by their [RUN] name and flags the one that differs', () => {
    const c = parseRun(output, selected)
    const rows = compareWithPorts(c, [
      { file, name: 'ksm_functional_tests test_unmerge', title: 'test_unmerge', status: 'passed' },
      { file, name: 'ksm_functional_tests test_prctl_fork', title: 'test_prctl_fork', status: 'passed' },
    ], selected)
    expect(rows.map((r) => [r.test, r.subtest, r.c, r.port, r.disagree])).toEqual([
      ['ksm_functional_tests', null, 'fail', 'pass', true],
      ['ksm_functional_tests', 'test_unmerge', 'pass', 'pass', false],
      ['ksm_functional_tests', 'test_prctl_fork', 'fail', 'pass', true],
      ['migration', null, 'not run', 'no port', false],
    ])
  })

  it('a port that ran no case (vitest died, stale pattern) is a disagreement, not a silent pass', () => {
    const c = parseRun(output.replace('not ok 2', 'ok 2').replace('exit=1', 'exit=0').replace('fail:1', 'fail:0'), selected)
    const [row] = compareWithPorts(c, [], selected)
    expect(row).toMatchObject({ c: 'pass', port: 'absent', disagree: true })
  })
})

describe('KTAP (ci/ktap.mjs): what kernel CI tooling parses', async () => {
  const { ktap, ktapProblems, parseRun, runAsKtap } = await import('./helpers/ci-kselftest.mjs')

  it('nests subtests before their parent\'s line, rolls verdicts up, and keeps # out of names', () => {
    const text = ktap([
      { name: 'region.test.ts', subtests: [{ name: 'maps #1', verdict: 'ok' }, { name: 'hugetlb', verdict: 'skip', reason: 'no free\nhuge pages' }] },
      { name: 'sksm.test.ts', subtests: [{ name: 'a', verdict: 'skip' }, { name: 'b', verdict: 'skip' }] },
      { name: 'fuzz.test.ts', subtests: [{ name: 'run 1', verdict: 'ok' }, { name: 'run 2', verdict: 'not ok', reason: 'wrong bytes' }] },
    ])
    expect(text.split('\n')).toEqual([
      'KTAP version 1', '1..3',
      '    KTAP version 1', '    1..2', '    ok 1 maps %231', '    ok 2 hugetlb # SKIP no free huge pages',
      'ok 1 region.test.ts',
      '    KTAP version 1', '    1..2', '    ok 1 a # SKIP', '    ok 2 b # SKIP',
      'ok 2 sksm.test.ts # SKIP',
      '    KTAP version 1', '    1..2', '    ok 1 run 1', '    # wrong bytes', '    not ok 2 run 2',
      'not ok 3 fuzz.test.ts',
      '',
    ])
  })

  it('a C kselftest is its exit code (4: SKIP), its TAP cases are subtests', () => {
    const output = [
      '=== kselftest: begin cow', 'ok 1 a', 'not ok 2 b', '# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0', '=== kselftest: end cow exit=1 seconds=2',
      '=== kselftest: begin ksm_tests -N', 'ok 1 # SKIP one node', '=== kselftest: end ksm_tests -N exit=4 seconds=1',
    ].join('\n')
    const selected = [{ id: 'cow' }, { id: 'ksm_tests -N' }, { id: 'migration' }]
    const lines = runAsKtap(parseRun(output, selected), selected).split('\n')
    expect(lines).toContain('# fail, exit 1')
    expect(lines).toContain('not ok 1 cow')
    expect(lines).toContain('    not ok 2 2 b')
    expect(lines).toContain('ok 2 ksm_tests -N # SKIP exit 4 (KSFT_SKIP)')
    expect(lines).toContain('not ok 3 migration')
  })

  it('ktapProblems() accepts what ktap() writes and names what breaks a plan', () => {
    const good = ktap([{ name: 'a', subtests: [{ name: 'x', verdict: 'ok' }, { name: 'y', verdict: 'skip', reason: 'why' }] }, { name: 'b', verdict: 'not ok' }])
    expect(ktapProblems(good)).toEqual([])
    expect(ktapProblems('')).toEqual(['no "KTAP version 1" header'])
    expect(ktapProblems(good.replace(/^1\.\.2$/m, '1..3'))).toEqual(['the document: plan 1..3, 2 results'])
    expect(ktapProblems(good.replace('    1..2', '    1..1'))).toEqual(['subtests of "a": plan 1..1, 2 results'])
  })
})

describe('kernel flavours (ci/kernel.mjs)', async () => {
  const { flavourFragment, flavours } = await import('./helpers/ci-kernel.mjs')
  const fragment = fs.readFileSync(new URL('../kernel-patches/config', import.meta.url), 'utf8')

  it('debug is kernel-patches/config as written; perf turns its debug options off and names itself', () => {
    expect(flavours).toEqual(['debug', 'perf'])
    expect(flavourFragment(fragment, 'debug')).toBe(fragment)
    const perf = flavourFragment(fragment, 'perf').split('\n')
    for (const name of ['CONFIG_DEBUG_VM', 'CONFIG_DEBUG_ATOMIC_SLEEP', 'CONFIG_PROVE_LOCKING', 'CONFIG_DEBUG_LIST']) {
      expect(perf).toContain(`# ${name} is not set`)
      expect(perf).not.toContain(`${name}=y`)
    }
    expect(perf).toContain('CONFIG_LOCALVERSION="-memdedup-perf"')
    // Everything memdedup exercises stays.
    for (const line of ['CONFIG_KSM=y', 'CONFIG_SKSM=y', 'CONFIG_USERFAULTFD=y', 'CONFIG_MEM_SOFT_DIRTY=y', 'CONFIG_MSHARE=y']) expect(perf).toContain(line)
    expect(() => flavourFragment(fragment, 'fast')).toThrow(/unknown kernel flavour fast/)
    expect(() => flavourFragment(fragment.replace('CONFIG_DEBUG_LIST=y', ''), 'perf')).toThrow(/no CONFIG_DEBUG_LIST=y/)
  })
})
