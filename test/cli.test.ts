// The `memdedup` command as users get it: the package is packed (`npm pack`) and installed into a
// prefix once per run, and every test runs that prefix's node_modules/.bin/memdedup.
//
// In the lab VM the checkout is read-only and there is no network, so the guest cannot pack or
// install: it reuses the prefix the host's run of this file left under node_modules/.cache, when
// that prefix was packed from this checkout's lib/ and native/ (else the file skips, saying so).
import { execFileSync, spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { beforeAll, describe, expect, it, type TestContext } from 'vitest'
import { codes, features, ksm, pageSize } from '../lib/index.ts'
import { fixtureBinary } from './helpers/c-fixture.ts'
import { holdKsmLock, collect, fastKsmd, inVm, ksmdTimeoutMs, probe, repoRoot, skipUnlessKsmSettings, type ChildResult } from './helpers/ksm.ts'
import { hostRunOnly } from './helpers/env.mjs'

const prefix = path.join(repoRoot, 'node_modules', '.cache', 'memdedup-cli')
const bin = path.join(prefix, 'node_modules', '.bin', 'memdedup')
const installed = path.join(prefix, 'node_modules', 'memdedup')
const slow = inVm ? 18 : 1

/** Files of `dir` (recursively) whose content differs between the checkout and the installed package. */
function differingFiles(dir: string): string[] {
  const out: string[] = []
  const walk = (relative: string) => {
    for (const entry of fs.readdirSync(path.join(repoRoot, relative), { withFileTypes: true })) {
      const file = path.join(relative, entry.name)
      if (entry.isDirectory()) walk(file)
      else if (!fs.existsSync(path.join(installed, file)) || !fs.readFileSync(path.join(repoRoot, file)).equals(fs.readFileSync(path.join(installed, file)))) out.push(file)
    }
  }
  walk(dir)
  return out
}

/** Why the guest cannot test the installed bin, or '' (on the host the install happens in beforeAll). */
function guestSkip(): string {
  if (!inVm) return ''
  if (!fs.existsSync(bin)) return ` — skipped: ${bin} is missing and the guest cannot npm pack/install (read-only, offline): run this file on the host first`
  const stale = [...differingFiles('lib'), ...differingFiles('native')]
  if (stale.length) return ` — skipped: the host's install under node_modules/.cache/memdedup-cli was packed from other sources (${stale.slice(0, 3).join(', ')}): run this file on the host first`
  return ''
}
const skipAll = guestSkip()

/** npm pack + npm install of the tarball into `prefix` (the prebuilt addon in the tarball is used). */
function packAndInstall(): void {
  fs.rmSync(prefix, { recursive: true, force: true })
  fs.mkdirSync(prefix, { recursive: true })
  // Its own package.json makes the prefix the project npm installs into (else npm walks up to the checkout's).
  fs.writeFileSync(path.join(prefix, 'package.json'), JSON.stringify({ name: 'memdedup-cli-test', private: true }) + '\n')
  const npm = (args: string[], cwd: string) => execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 600_000 })
  const tarball = npm(['pack', '--silent', '--pack-destination', prefix], repoRoot).trim().split('\n').pop()!
  // The npm cache answers when it can; the registry only for what it lacks (commander, node-addon-api).
  npm(['install', '--prefer-offline', '--no-save', '--no-audit', '--no-fund', `./${tarball}`], prefix)
  fs.rmSync(path.join(prefix, tarball))
  if (!fs.existsSync(bin)) throw new Error(`npm install left no ${bin}`)
}

beforeAll(() => {
  if (!skipAll && !inVm) packAndInstall()
}, 600_000)

interface Run extends SpawnSyncReturns<string> {
  json: () => any
}

/** Runs the installed bin to completion; `stdout`: a file descriptor to give it as stdout instead of a pipe. */
function memdedup(args: string[], options: { env?: NodeJS.ProcessEnv; cwd?: string; wrap?: string[]; timeoutMs?: number; stdout?: number } = {}): Run {
  const argv = [...(options.wrap ?? []), bin, ...args]
  const result = spawnSync(argv[0], argv.slice(1), {
    cwd: options.cwd ?? os.tmpdir(),
    stdio: ['ignore', options.stdout ?? 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '', ...options.env },
    encoding: 'utf8',
    timeout: options.timeoutMs ?? 60_000 * slow,
  })
  return Object.assign(result, { json: () => JSON.parse(result.stdout) })
}

/** Starts the installed bin; `lines` resolves once stdout has `count` lines. */
function start(args: string[], env: NodeJS.ProcessEnv = {}) {
  const child = spawn(bin, args, { cwd: prefix, env: { ...process.env, NO_COLOR: '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  const done: Promise<ChildResult> = collect(child)
  let out = ''
  child.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString()))
  const lines = (count: number) =>
    new Promise<string[]>((resolve, reject) => {
      const check = () => {
        const got = out.split('\n').filter(Boolean)
        if (got.length >= count) resolve(got)
      }
      child.stdout!.on('data', check)
      child.once('exit', () => reject(new Error(`exited before printing ${count} lines: ${out}`)))
      check()
    })
  return { child, done, lines }
}

/**
 * Starts the installed bin with stdout a pipe whose reader goes away (as `| head -1` does) once it
 * printed `lines` lines, or at once (0: before it can write anything).
 */
async function readerGoesAway(args: string[], lines: number): Promise<ChildResult> {
  const run = start(args)
  if (lines > 0) await run.lines(lines)
  // Closes our end of the pipe: the command's next write fails with EPIPE.
  run.child.stdout!.destroy()
  return run.done
}

const commands = ['probe', 'stats', 'run', 'top']
/** Argument parsing does not depend on the kernel: the guest (a Node start costs ~18x there) checks a few cases, the host all. */
const guestFew = <T>(cases: T[], few: number): T[] => (inVm ? cases.slice(0, few) : cases)
/** Terminal handling (colours, ptys, widths) is the same on any kernel: the host run covers it. */
const hostOnly = hostRunOnly('terminal handling')
/** What a shell or a pipe does with the bin, the same on any kernel: the host run covers it. */
const parsing = hostRunOnly('argument parsing')
const piping = hostRunOnly('writing to stdout')
const processes = hostRunOnly('process handling')

describe.skipIf(skipAll)(`memdedup (the installed bin)${skipAll}`, () => {
  it.skipIf(parsing)('--help lists every command and exits 0; each command has --help and --json' + parsing, () => {
    const help = memdedup(['--help'])
    expect(help.status).toBe(0)
    for (const command of commands) expect(help.stdout).toMatch(new RegExp(`^  ${command}\\b`, 'm'))
    for (const command of guestFew(commands, 1)) {
      const sub = memdedup([command, '--help'])
      expect(sub.status, sub.stderr).toBe(0)
      expect(sub.stdout).toContain(`Usage: memdedup ${command}`)
      expect(sub.stdout).toContain('--json')
    }
    const version = memdedup(['--version'])
    expect(version.status).toBe(0)
    expect(version.stdout.trim()).toBe(JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')).version)
  })

  it.skipIf(parsing)('usage errors exit 2 with the reason on stderr and nothing on stdout' + parsing, () => {
    const cases = [[], ['bogus'], ['top', '--bogus'], ['top', '--sort=nope'], ['stats', '--interval=abc'], ['stats', '--interval=0'], ['top', '--interval', '-1'], ['run'], ['probe', 'extra', 'args']]
    for (const args of guestFew(cases, 3)) {
      const result = memdedup(args)
      expect(result.status, `memdedup ${args.join(' ')}: ${result.stderr}`).toBe(2)
      expect(result.stdout, args.join(' ')).toBe('')
      expect(result.stderr.length, args.join(' ')).toBeGreaterThan(0)
    }
    if (!inVm) expect(memdedup(['top', '--sort=nope']).stderr).toContain('merged')
  })

  it.skipIf(parsing)('with --json every usage error is one JSON object on stderr, {error: {code, message}}, and still exit 2' + parsing, () => {
    const cases: [string[], string][] = [
      [['bogus', '--json'], 'commander.unknownCommand'],
      [['top', '--json', '--bogus'], 'commander.unknownOption'],
      [['run', '--json'], 'commander.missingArgument'],
      [['stats', '--json', '--interval=abc'], 'commander.invalidArgument'],
      // --json after the error counts too.
      [['stats', '--interval=0', '--json'], 'commander.invalidArgument'],
      [['top', '--json', '--interval', '-1'], 'commander.invalidArgument'],
      [['top', '--json', '--sort=nope'], 'commander.invalidArgument'],
      [['top', '--json', '--interval'], 'commander.optionMissingArgument'],
      [['probe', '--json', 'extra', 'args'], 'commander.excessArguments'],
      [['--json'], 'commander.unknownOption'],
      [['help', 'bogus', '--json'], 'commander.help'],
    ]
    for (const [args, code] of guestFew(cases, 3)) {
      const result = memdedup(args)
      const what = `memdedup ${args.join(' ')}: ${result.stderr}`
      expect(result.status, what).toBe(2)
      expect(result.stdout, what).toBe('')
      expect(result.stderr.endsWith('\n') && result.stderr.indexOf('\n') === result.stderr.length - 1, what).toBe(true)
      expect(JSON.parse(result.stderr), what).toEqual({ error: { code, message: expect.stringMatching(/^(?!error:)\w/) } })
    }
    if (!inVm) expect(JSON.parse(memdedup(['top', '--json', '--sort=nope']).stderr).error.message).toContain('merged')
    // A --json that is not memdedup's own leaves usage errors as text: one in run's command, or
    // the value of an option.
    const notOurs = [
      ['run', '--bogus', 'sh', '--json'],
      ['run', '--bogus', '--', 'sh', '--json'],
      ['top', '--sort', '--json'],
    ]
    for (const args of guestFew(notOurs, 1)) {
      const result = memdedup(args)
      expect(result.status, `memdedup ${args.join(' ')}: ${result.stderr}`).toBe(2)
      expect(result.stderr, args.join(' ')).toMatch(/^error: /)
    }
  })

  it.skipIf(piping)('a reader that goes away (stats --watch | head -1) ends it quietly: exit 0, nothing on stderr' + piping, async () => {
    const cases: [string[], number][] = [
      [['stats', '--watch', '--interval=0.1'], 1],
      [['stats', '--watch', '--json', '--interval=0.1'], 1],
      // Gone before the first write.
      [['stats', '--watch', '--json', '--interval=0.1'], 0],
      [['probe'], 0],
      [['stats', '--json'], 0],
    ]
    for (const [args, lines] of guestFew(cases, 2)) {
      const result = await readerGoesAway(args, lines)
      expect({ code: result.code, signal: result.signal, stderr: result.stderr }, `${args.join(' ')} (reader gone after ${lines} lines)`).toEqual({ code: 0, signal: null, stderr: '' })
    }
  })

  it.skipIf(piping)('any other error writing stdout is reported (ENOSPC on /dev/full): exit 1, one line on stderr, no stack trace' + piping, (ctx: TestContext) => {
    if (!fs.existsSync('/dev/full')) ctx.skip('no /dev/full to make writes to stdout fail with ENOSPC')
    const full = fs.openSync('/dev/full', 'w')
    try {
      for (const args of guestFew([['stats', '--watch', '--interval=0.1'], ['stats'], ['top', '--once']], 1)) {
        const result = memdedup(args, { stdout: full })
        expect(result.status, `memdedup ${args.join(' ')}: ${result.stderr}`).toBe(1)
        expect(result.stderr, args.join(' ')).toMatch(/^memdedup: cannot write to stdout: ENOSPC\b[^\n]*\n$/)
      }
      const json = memdedup(['stats', '--watch', '--json', '--interval=0.1'], { stdout: full })
      expect(json.status, json.stderr).toBe(1)
      expect(json.stderr.trimEnd().split('\n'), json.stderr).toHaveLength(1)
      expect(JSON.parse(json.stderr)).toMatchObject({ error: { code: 'ENOSPC' } })
    } finally {
      fs.closeSync(full)
    }
  })

  it('probe --json and stats --json parse and agree with the kernel', () => {
    const features = memdedup(['probe', '--json']).json()
    expect(features.kernelRelease).toBe(os.release())
    expect(features.ksm).toBe(fs.existsSync('/sys/kernel/mm/ksm'))
    const s = memdedup(['stats', '--json'])
    expect(s.status, s.stderr).toBe(0)
    const system = s.json()
    expect(system.nrAnonPages).toBeGreaterThan(0)
    expect(system.nrPageTablePages).toBeGreaterThan(0)
    expect(system.pageSize).toBe(pageSize)
    if (features.ksm) {
      expect(typeof system.ksm.pagesSharing).toBe('number')
      expect(system.savedBytes).toBe(system.ksm.pagesSharing * pageSize)
      const profit = fs.existsSync('/sys/kernel/mm/ksm/general_profit')
      expect(system.generalProfit === null).toBe(!profit)
    } else expect(system.ksm).toBeNull()
    const text = memdedup(['stats'])
    expect(text.status).toBe(0)
    expect(text.stdout).toMatch(/^nr_page_table_pages\s+\d+/m)
  })

  it.skipIf(hostOnly)('colours only on a terminal, and never with NO_COLOR' + hostOnly, (ctx: TestContext) => {
    // A pipe: no escape sequences at all.
    expect(memdedup(['top', '--once'])).toMatchObject({ status: 0, stdout: expect.not.stringContaining('\x1b[') })
    expect(memdedup(['stats'])).toMatchObject({ status: 0, stdout: expect.not.stringContaining('\x1b[') })
    // script(1) gives the command a pseudo-terminal.
    const script = ['/usr/bin/script', '/bin/script'].find((p) => fs.existsSync(p))
    if (!script) ctx.skip('no script(1) (util-linux bsdutils) to give the command a pseudo-terminal: the terminal half is not tested')
    const onTty = (env: NodeJS.ProcessEnv) => spawnSync(script, ['-qec', `${bin} top --once`, '/dev/null'], { env: { ...process.env, ...env }, encoding: 'utf8', timeout: 60_000 * slow })
    const coloured = onTty({ NO_COLOR: '' })
    expect(coloured.status, coloured.stdout).toBe(0)
    expect(coloured.stdout).toContain('\x1b[1m')
    expect(coloured.stdout).toContain('COMMAND')
    const plain = onTty({ NO_COLOR: '1' })
    expect(plain.status).toBe(0)
    expect(plain.stdout).toContain('COMMAND')
    expect(plain.stdout).not.toContain('\x1b[1m')
  })

  describe.skipIf(!probe().ksmProcess)(`run${probe().ksmProcess ? '' : ` — skipped: kernel ${os.release()} lacks PR_SET_MEMORY_MERGE`}`, () => {
    // The child and its grandchild report PR_GET_MEMORY_MERGE through the installed library.
    const reporter = `
      import { ksm } from 'memdedup'
      import { execFileSync } from 'node:child_process'
      const grandchild = execFileSync(process.execPath, ['--input-type=module', '-e', "import { ksm } from 'memdedup'; console.log(ksm.process.get())"], { encoding: 'utf8' }).trim()
      const ksmStat = (await import('node:fs')).readFileSync('/proc/self/ksm_stat', 'utf8')
      console.log(JSON.stringify({ child: ksm.process.get(), grandchild: grandchild === 'true', mergeAny: /ksm_merge_any: yes/.test(ksmStat) || null }))
    `

    it('makes the command and its children mergeable (PR_GET_MEMORY_MERGE = 1 in both), and not without it', () => {
      const result = memdedup(['run', '--', process.execPath, '--input-type=module', '-e', reporter], { cwd: prefix })
      expect(result.status, result.stderr).toBe(0)
      const report = JSON.parse(result.stdout)
      expect(report.child).toBe(true)
      expect(report.grandchild).toBe(true)
      if (/ksm_merge_any/.test(fs.readFileSync('/proc/self/ksm_stat', 'utf8'))) expect(report.mergeAny).toBe(true)
      // The same program started directly is not mergeable: the flag above came from `run`.
      const direct = spawnSync(process.execPath, ['--input-type=module', '-e', reporter], { cwd: prefix, encoding: 'utf8' })
      expect(direct.status, direct.stderr).toBe(0)
      expect(JSON.parse(direct.stdout)).toMatchObject({ child: false, grandchild: false })
    })

    it.skipIf(processes)('options after the command belong to the command; stdio is inherited' + processes, () => {
      const result = memdedup(['run', 'sh', '-c', 'echo "$@"; echo err >&2', 'sh', '--json', '--help'])
      expect(result.status, result.stderr).toBe(0)
      expect(result.stdout).toBe('--json --help\n')
      expect(result.stderr).toContain('err\n')
    })

    it.skipIf(processes)("exits with the command's status, 128 + signal when a signal killed it" + processes, () => {
      expect(memdedup(['run', '--', 'sh', '-c', 'exit 7']).status).toBe(7)
      expect(memdedup(['run', '--', 'sh', '-c', 'kill -KILL $$']).status).toBe(128 + os.constants.signals.SIGKILL)
      expect(memdedup(['run', '--', 'sh', '-c', 'kill -SEGV $$']).status).toBe(128 + os.constants.signals.SIGSEGV)
      const json = memdedup(['run', '--json', '--', 'sh', '-c', 'kill -TERM $$'])
      expect(json.status).toBe(143)
      const last = JSON.parse(json.stderr.trim().split('\n').pop()!)
      expect(last).toMatchObject({ command: ['sh', '-c', 'kill -TERM $$'], exitCode: 143, signal: 'SIGTERM' })
    })

    it.skipIf(processes)('forwards SIGINT, SIGTERM and SIGHUP to the command' + processes, async () => {
      const script = `
        for (const s of ['SIGINT', 'SIGTERM']) process.on(s, () => { console.log('got ' + s); process.exit(40 + (s === 'SIGINT' ? 1 : 2)) })
        console.log('ready'); setInterval(() => {}, 1000)
      `
      for (const [signal, expected] of [
        ['SIGINT', 41],
        ['SIGTERM', 42],
        ['SIGHUP', 128 + os.constants.signals.SIGHUP],
      ] as const) {
        const run = start(['run', '--', process.execPath, '-e', script])
        await run.lines(1)
        // Only the memdedup process is signalled: the command hears it through the forwarding.
        run.child.kill(signal)
        const result = await run.done
        expect(result.code, `${signal}: ${result.stderr}`).toBe(expected)
        if (signal !== 'SIGHUP') expect(result.stdout).toContain(`got ${signal}`)
      }
    })

    it.skipIf(processes)('like a shell: a command that is not there exits 127, one that is there but not executable 126' + processes, (ctx) => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'memdedup-cli-'))
      try {
        // Not there: by name (searched in $PATH) and by path.
        const missing = memdedup(['run', '--', 'memdedup-no-such-command-xyz', 'arg'])
        expect(missing.status, missing.stderr).toBe(127)
        expect(missing.stderr).toContain('memdedup-no-such-command-xyz: command not found')
        const missingPath = memdedup(['run', '--', path.join(dir, 'nothing-here')])
        expect(missingPath.status, missingPath.stderr).toBe(127)
        expect(missingPath.stderr).toContain('no such file or directory')
        const json = memdedup(['run', '--json', '--', 'memdedup-no-such-command-xyz'])
        expect(json.status).toBe(127)
        // Issue 20: no syscall returned ENOENT for an empty $PATH search: the CLI's own registry code.
        expect(JSON.parse(json.stderr.trim().split('\n').pop()!)).toMatchObject({ error: { code: 'ERR_CLI_COMMAND_NOT_FOUND' } })
        expect(codes.ERR_CLI_COMMAND_NOT_FOUND).toBe('Error')
        // There but not executable: by path, and by name in a $PATH directory.
        fs.writeFileSync(path.join(dir, 'not-executable'), '#!/bin/sh\nexit 0\n', { mode: 0o644 })
        const denied = memdedup(['run', '--', path.join(dir, 'not-executable')])
        expect(denied.status, denied.stderr).toBe(126)
        expect(denied.stderr).toContain('permission denied')
        const deniedByName = memdedup(['run', '--', 'not-executable'], { env: { PATH: `${dir}:${process.env.PATH}` } })
        expect(deniedByName.status, deniedByName.stderr).toBe(126)
        expect(deniedByName.stderr).toContain('not-executable: permission denied')
        // A $PATH directory this user may not search (another user's ~/bin that `su` kept in
        // $PATH): execvp(3) fails with EACCES there, a shell goes on and says "command not found".
        // Root searches any directory: the check then runs memdedup as nobody.
        const blocked = path.join(dir, 'blocked')
        fs.mkdirSync(blocked, { mode: 0o000 })
        const setpriv = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => fs.existsSync(p))
        const root = process.getuid?.() === 0
        if (!root || setpriv) {
          const wrap = root ? [setpriv!, '--reuid=65534', '--regid=65534', '--clear-groups'] : []
          const env = { PATH: `${blocked}:${process.env.PATH}` }
          expect(spawnSync('sh', ['-c', 'memdedup-no-such-command-xyz'], { env: { ...process.env, ...env } }).status, 'sh').toBe(127)
          const behindBlocked = memdedup(['run', '--', 'memdedup-no-such-command-xyz'], { env, wrap })
          expect(behindBlocked.status, behindBlocked.stderr).toBe(127)
          expect(behindBlocked.stderr).toContain('memdedup-no-such-command-xyz: command not found')
          // …and still finds what comes after it.
          expect(memdedup(['run', '--', 'true'], { env, wrap }).status).toBe(0)
        } else ctx.annotate('not checked: a $PATH directory this user may not search (root, and no setpriv(1) to run as nobody)')
      } finally {
        fs.rmSync(dir, { recursive: true, force: true })
      }
    })

    it.skipIf(processes)('like /bin/sh (dash): a path that cannot name a file (too long, through a non-directory, a symlink loop) exits 127, also when spawn refuses it at once' + processes, () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'memdedup-cli-'))
      try {
        fs.writeFileSync(path.join(dir, 'file'), '')
        fs.symlinkSync('loop', path.join(dir, 'loop'))
        const long = 'a'.repeat(5000)
        for (const [command, why] of [
          // By name: searched in $PATH, found nowhere.
          [long, 'command not found'],
          // By path: Node's spawn throws these (ENAMETOOLONG, ENOTDIR, ELOOP) instead of emitting 'error'.
          [`./${long}`, 'file name too long'],
          [path.join(dir, 'b'.repeat(300)), 'file name too long'],
          [path.join(dir, 'file', 'x'), 'not a directory'],
          [path.join(dir, 'loop'), 'too many levels of symbolic links'],
        ]) {
          const result = memdedup(['run', '--', command])
          expect(result.status, `${command.slice(0, 80)}: ${result.stderr.slice(0, 300)}`).toBe(127)
          expect(result.stderr, command.slice(0, 80)).toContain(`${command}: ${why}`)
        }
        const json = memdedup(['run', '--json', '--', `./${long}`])
        expect(json.status, json.stderr.slice(0, 300)).toBe(127)
        expect(JSON.parse(json.stderr.trim().split('\n').pop()!)).toMatchObject({ error: { code: 'ENAMETOOLONG' } })
      } finally {
        fs.rmSync(dir, { recursive: true, force: true })
      }
    })

    // The refusal is staged with a seccomp filter: that needs CONFIG_SECCOMP_FILTER (the lab kernel has none).
    const noSeccomp = /^Seccomp_filters:/m.test(fs.readFileSync('/proc/self/status', 'utf8')) ? '' : ` — skipped: kernel ${os.release()} lacks seccomp filters (CONFIG_SECCOMP_FILTER)`
    it.skipIf(noSeccomp)('a refused prctl (seccomp EPERM, or EINVAL as on a kernel before 6.4) is exit 1 naming the cause, and the command never runs' + noSeccomp, () => {
      const deny = fixtureBinary('deny-prctl')
      const PR_SET_MEMORY_MERGE = 67
      const marker = path.join(os.tmpdir(), `memdedup-cli-ran-${process.pid}`)
      for (const [errno, cause] of [
        [os.constants.errno.EPERM, /EPERM: a seccomp filter or security module/],
        [os.constants.errno.EINVAL, /EINVAL: kernel .* lacks process-wide KSM/],
      ] as const) {
        const result = memdedup(['run', '--', 'touch', marker], { wrap: [deny, String(errno), String(PR_SET_MEMORY_MERGE)] })
        expect(result.status, result.stderr).toBe(1)
        expect(result.stderr).toMatch(cause)
        expect(fs.existsSync(marker)).toBe(false)
      }
      const json = memdedup(['run', '--json', '--', 'true'], { wrap: [deny, String(os.constants.errno.EPERM), String(PR_SET_MEMORY_MERGE)] })
      expect(json.status).toBe(1)
      expect(JSON.parse(json.stderr.trim())).toMatchObject({ error: { code: 'EPERM' } })
    })

    describe('ksmd state', () => {
      const state = holdKsmLock()

      it('warns on stderr when ksmd is stopped; --start-ksmd starts it', (ctx) => {
        skipUnlessKsmSettings(ctx)
        state.set({ run: 0 })
        const warned = memdedup(['run', '--', 'true'])
        expect(warned.status).toBe(0)
        expect(warned.stderr).toMatch(/warning: ksmd is not running \(\/sys\/kernel\/mm\/ksm\/run = 0\)/)
        const json = memdedup(['run', '--json', '--', 'true'])
        expect(JSON.parse(json.stderr.split('\n')[0])).toMatchObject({ warning: { code: 'KSMD_STOPPED' } })
        expect(ksm.stats().run).toBe(0)
        const started = memdedup(['run', '--start-ksmd', '--', 'true'])
        expect(started.status, started.stderr).toBe(0)
        expect(started.stderr).not.toContain('warning')
        expect(ksm.stats().run).toBe(1)
        // ksmd running: no warning.
        expect(memdedup(['run', '--', 'true']).stderr).toBe('')
      })
    })
  })

  describe.skipIf(!probe().ksm || !probe().ksmStat)(`top${probe().ksm && probe().ksmStat ? '' : ` — skipped: kernel ${os.release()} lacks KSM or /proc/<pid>/ksm_stat`}`, () => {
    const state = holdKsmLock()

    // SKSM (the lab kernel) merges synchronously; elsewhere ksmd does, as slowly as its other users let it.
    const sksm = features().sksm
    const mergeWait = inVm ? ksmdTimeoutMs : 4 * ksmdTimeoutMs

    it(`--once --json lists a process ${sksm ? 'SKSM' : 'ksmd'} merged, with the kernel’s own ksm_stat numbers`, async (ctx) => {
      // ksmd merges within the test's time only at full speed, which takes writing its settings.
      if (!sksm) skipUnlessKsmSettings(ctx)
      const pages = (1 << 20) / pageSize
      // A child that maps `pages` identical pages and merges them (MADV_MERGE) or has ksmd merge them
      // (MADV_MERGEABLE), through the installed library.
      const child = spawn(
        process.execPath,
        [
          '--input-type=module',
          '-e',
          `import { Region, ksm, sksm } from 'memdedup'
           const region = Region.anonymous(${pages * pageSize}); region.bytes.fill(0x5a)
           ${sksm ? 'sksm.merge(region)' : 'ksm.enable(region)'}
           // The timer keeps the Region reachable: an unreferenced one is collected and unmapped.
           console.log('ready'); setInterval(() => region.length, 1000)`,
        ],
        { cwd: prefix, stdio: ['ignore', 'pipe', 'inherit'] },
      )
      try {
        await new Promise((resolve, reject) => {
          child.stdout!.once('data', resolve)
          child.once('exit', (code) => reject(new Error(`merging child exited ${code}`)))
        })
        if (!sksm) state.set({ ...fastKsmd, run: 1 })
        const kernel = () => Number(/^ksm_merging_pages (\d+)$/m.exec(fs.readFileSync(`/proc/${child.pid}/ksm_stat`, 'utf8'))![1])
        // Every page identical: once all are merged the count stays put. Other KSM users (QEMU
        // marks guest RAM mergeable) make ksmd's full scans slow, hence a time limit, not scans.
        const deadline = Date.now() + mergeWait
        while (kernel() !== pages && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
        expect(kernel(), `${sksm ? 'SKSM' : 'ksmd'} merged ${kernel()} of ${pages} pages in ${mergeWait / 1000} s`).toBe(pages)
        const top = memdedup(['top', '--once', '--json'])
        expect(top.status, top.stderr).toBe(0)
        const snapshot = top.json()
        const row = snapshot.processes.find((p: { pid: number }) => p.pid === child.pid)
        expect(row, `pid ${child.pid} not in ${top.stdout.slice(0, 400)}`).toBeDefined()
        expect(row.ksmMergingPages).toBe(kernel())
        expect(row.ksmMergingPages).toBe(pages)
        expect(row.command).toContain('--input-type=module')
        expect(row.rss).toBeGreaterThan(0)
        expect(row.pageTableBytes).toBeGreaterThan(0)
        if (!sksm && row.ksmMergeable !== null) expect(row.ksmMergeable).toBe(true)
        expect(snapshot.totals.ksmMergingPages).toBeGreaterThanOrEqual(pages)
        if (!sksm) expect(snapshot.system.ksm.pagesSharing).toBeGreaterThan(0)
        // Sorted by merged pages, largest first.
        const merged = snapshot.processes.map((p: { ksmMergingPages: number }) => p.ksmMergingPages)
        expect(merged).toEqual([...merged].sort((a: number, b: number) => b - a))
        // The text table shows the row too, with its merged size.
        const text = memdedup(['top', '--once', '--sort=pid'], { env: { COLUMNS: '200' } })
        expect(text.status).toBe(0)
        const line = text.stdout.split('\n').find((l) => l.trimStart().startsWith(`${child.pid} `))
        expect(line, text.stdout).toBeDefined()
        expect(line).toContain(' 1.0M ') // 256 pages of 4 KiB merged
        expect(text.stdout.trimEnd().split('\n').pop()).toMatch(/ total$/)
      } finally {
        child.kill('SIGKILL')
      }
    }, (inVm ? 2 : 5) * ksmdTimeoutMs)

    it.skipIf(hostOnly)('fits the terminal: drops columns and cuts commands to $COLUMNS, rows to $LINES' + hostOnly, () => {
      const wide = memdedup(['top', '--once', '--all'], { env: { COLUMNS: '200' } })
      expect(wide.status).toBe(0)
      expect(wide.stdout).toMatch(/PID +MERGED +PROFIT +ZERO +RSS +PSS +ANON +PTE +KSM COMMAND/)
      for (const [columns, lines] of [
        [50, 10],
        [30, 6],
        [80, 24],
      ]) {
        const narrow = memdedup(['top', '--once', '--all'], { env: { COLUMNS: String(columns), LINES: String(lines) } })
        expect(narrow.status, narrow.stderr).toBe(0)
        const out = narrow.stdout.trimEnd().split('\n')
        expect(out.length).toBeLessThanOrEqual(lines)
        for (const l of out) expect([...l].length, l).toBeLessThanOrEqual(columns)
        expect(out.join('\n')).toMatch(/PID +MERGED/)
        expect(out[out.length - 1]).toMatch(/total$/)
      }
      expect(memdedup(['top', '--once', '--all'], { env: { COLUMNS: '50' } }).stdout).not.toContain('PSS')
    })

    it('another user’s processes are shown as unreadable, never a crash', (ctx: TestContext) => {
      const setpriv = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => fs.existsSync(p))
      if (process.getuid?.() !== 0) ctx.skip('needs root to run memdedup as nobody (setpriv --reuid=65534)')
      if (!setpriv) ctx.skip('no setpriv(1) (util-linux) to run memdedup as nobody')
      const result = memdedup(['top', '--once', '--all', '--json'], { wrap: [setpriv, '--reuid=65534', '--regid=65534', '--clear-groups'] })
      expect(result.status, result.stderr).toBe(0)
      const snapshot = result.json()
      expect(snapshot.unreadable.length).toBeGreaterThan(0)
      expect(snapshot.unreadable.every((p: { error: string }) => ['EACCES', 'EPERM'].includes(p.error))).toBe(true)
      // Its own processes it reads (the memdedup process itself runs as nobody).
      expect(snapshot.processes.length).toBeGreaterThan(0)
    })

    it('processes that exit while top reads them are skipped (a shell forking short-lived children meanwhile)', async () => {
      const churn = spawn('sh', ['-c', 'while :; do /bin/true & /bin/true; wait; done'], { stdio: 'ignore' })
      try {
        for (let i = 0; i < (inVm ? 3 : 10); i++) {
          const result = memdedup(['top', '--once', '--all', '--json'])
          expect(result.status, result.stderr).toBe(0)
          expect(result.json().processes.length).toBeGreaterThan(0)
        }
      } finally {
        churn.kill('SIGKILL')
      }
    })

    it.skipIf(piping)('a reader that goes away (top | head -1) ends it quietly: exit 0, nothing on stderr' + piping, async () => {
      for (const args of [
        ['top', '--interval=0.1'],
        ['top', '--json', '--interval=0.1'],
        ['top', '--once', '--json'],
      ]) {
        const result = await readerGoesAway(args, args.includes('--once') ? 0 : 1)
        expect({ code: result.code, signal: result.signal, stderr: result.stderr }, args.join(' ')).toEqual({ code: 0, signal: null, stderr: '' })
      }
    })

    it('refreshes until SIGTERM: one JSON line per refresh', async () => {
      const run = start(['top', '--json', '--interval=0.1'])
      const lines = await run.lines(2)
      run.child.kill('SIGTERM')
      const result = await run.done
      expect(result.code, result.stderr).toBe(0)
      for (const line of lines) expect(JSON.parse(line).totals).toBeDefined()
    })
  })

  it.skipIf(hostOnly)('on a terminal, top and stats --watch redraw until q is pressed' + hostOnly, async (ctx: TestContext) => {
    const script = ['/usr/bin/script', '/bin/script'].find((p) => fs.existsSync(p))
    if (!script) ctx.skip('no script(1) (util-linux bsdutils) to give the command a pseudo-terminal')
    for (const [args, drawn] of [
      ['top --interval=0.2', 'COMMAND'],
      ['stats --watch --interval=0.2', 'nr_anon_pages'],
    ]) {
      // script(1) runs the command on a pty and copies our pipe (kept open) to its keyboard.
      const child = spawn(script, ['-qec', `${bin} ${args}`, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] })
      const done = collect(child)
      let out = ''
      await new Promise<void>((resolve, reject) => {
        child.stdout!.on('data', (chunk: Buffer) => {
          out += chunk.toString()
          // Two redraws (each starts by clearing the screen), then the key.
          if (out.split('\x1b[2J').length > 3 && out.includes(drawn)) resolve()
        })
        child.once('exit', () => reject(new Error(`${args} exited before redrawing: ${out}`)))
      })
      child.stdin!.write('q')
      const result = await done
      expect(result.code, `${args}: ${result.stdout.slice(-300)}`).toBe(0)
      child.stdin!.end()
    }
  })

  it('stats --watch --json emits one JSON line per refresh and exits 0 on SIGINT', async () => {
    const run = start(['stats', '--watch', '--json', '--interval=0.1'])
    const lines = await run.lines(2)
    run.child.kill('SIGINT')
    const result = await run.done
    expect(result.code, result.stderr).toBe(0)
    expect(result.signal).toBeNull()
    const parsed = result.stdout.trim().split('\n').map((line) => JSON.parse(line))
    expect(parsed.length).toBeGreaterThanOrEqual(lines.length)
    for (const s of parsed) expect(s.nrAnonPages).toBeGreaterThan(0)
    expect(new Set(parsed.map((s) => s.time)).size).toBe(parsed.length)
  })
})
