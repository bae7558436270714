#!/usr/bin/env node
// memdedup command line, for people who never write code against the library: what this kernel
// offers (probe), what KSM saves system-wide (stats) and per process (top), and any program run
// with KSM on for its whole process tree (run). Exit codes: 0 ok, 1 runtime failure, 2 usage
// error; `run` exits with its command's status (128 + signal when killed, 127 not found).
import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import util from 'node:util'
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander'
import { Daemon, type DaemonPassReport } from './daemon.ts'
import { message, type ErrorCode, type SyscallError } from './errors.ts'
import { features } from './features.ts'
import * as ksm from './ksm.ts'
import * as stats from './stats.ts'
import type { ProcessStats, UnreadableProcess } from './stats.ts'

/**
 * A failure to report as `memdedup: message` with exit status `exitCode`. `code` is one of the
 * registry's (lib/errors.ts `codes`) or the errno name a syscall returned (prctl, spawn).
 */
class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
    readonly code: CliCode = 'ERR_MEMDEDUP_CLI',
  ) {
    super(message)
  }
}
/** An errno name a syscall returned (a SyscallError's, or spawn's). */
type CliCode = ErrorCode | keyof typeof os.constants.errno

// https://no-color.org: any non-empty NO_COLOR turns colour off; so does a stdout that is not a terminal.
const colour = Boolean(process.stdout.isTTY) && !process.env.NO_COLOR
const paint = (code: string) => (text: string) => (colour ? `\x1b[${code}m${text}\x1b[0m` : text)
const bold = paint('1')
const dim = paint('2')
const green = paint('32')
const yellow = paint('33')
const stderrColour = Boolean(process.stderr.isTTY) && !process.env.NO_COLOR
const warnColour = (text: string) => (stderrColour ? `\x1b[33m${text}\x1b[0m` : text)

let jsonMessages = false
/** A warning on stderr: text, or one JSON line under --json. */
function warn(message: string, code: string): void {
  process.stderr.write(jsonMessages ? JSON.stringify({ warning: { code, message } }) + '\n' : warnColour(`memdedup: warning: ${message}`) + '\n')
}

/** An error on stderr: `memdedup: message`, or one JSON line under --json. */
function printError(code: string, message: string): void {
  process.stderr.write(jsonMessages ? JSON.stringify({ error: { code, message } }) + '\n' : `memdedup: ${message}\n`)
}

/**
 * A line on stdout. Everything memdedup prints there goes through process.stdout.write, whose
 * failures reach the handler below (console.log would drop them).
 */
function out(text: string): void {
  process.stdout.write(text + '\n')
}

// A failed write to stdout. EPIPE: its reader went away (`memdedup stats --watch | head -1`), where
// a C program dies of SIGPIPE, which Node ignores. memdedup then exits at once and silently, with
// the status it already has, so 0 (not 141, 128 + SIGPIPE): a reader that has seen enough is how a
// piped watch ends, as `q` ends it on a terminal, and a `set -o pipefail` script should not fail on
// it. Any other error (ENOSPC on /dev/full, EIO) is reported, exit 1.
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code === 'EPIPE') process.exit()
  const reason = typeof error.errno === 'number' ? util.getSystemErrorMap().get(error.errno)?.[1] : undefined
  printError(error.code ?? 'ERR_MEMDEDUP_CLI', `cannot write to stdout: ${reason && error.code ? `${error.code} (${reason})` : error.message}`)
  process.exit(1)
})

function mib(bytes: number | null): string {
  if (bytes === null) return '-'
  const abs = Math.abs(bytes)
  if (abs >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(1)}G`
  if (abs >= 2 ** 20) return `${(bytes / 2 ** 20).toFixed(1)}M`
  if (abs >= 2 ** 10) return `${(bytes / 2 ** 10).toFixed(0)}K`
  return `${bytes}B`
}

function table(rows: [string, unknown][]): string {
  const width = Math.max(...rows.map(([k]) => k.length))
  return rows.map(([k, v]) => `${k.padEnd(width)}  ${String(v)}`).join('\n')
}

function seconds(value: string): number {
  const s = Number(value)
  if (!Number.isFinite(s) || s < 0.05 || s > 86_400) throw new InvalidArgumentError('must be a number of seconds between 0.05 and 86400.')
  return s
}

/** Terminal size: the tty's, else $COLUMNS/$LINES, else unlimited (a pipe gets every row and column). */
function terminalSize(): { columns: number; rows: number } {
  // A pty nobody sized (script(1) on /dev/null) reports 0 × 0: that is "unknown", not "no room".
  const pick = (tty: number | undefined, name: string) =>
    process.stdout.isTTY && tty !== undefined && tty > 0 ? tty : Number(process.env[name]) > 0 ? Number(process.env[name]) : Infinity
  return { columns: pick(process.stdout.columns, 'COLUMNS'), rows: pick(process.stdout.rows, 'LINES') }
}

/**
 * Calls `draw` now and every `intervalMs` until SIGINT, SIGTERM or `q` (stdin a terminal), or
 * once when `once`. A throw from `draw` ends the loop with that error.
 */
function refresh(intervalMs: number, once: boolean, draw: () => void): Promise<void> {
  if (once) {
    draw()
    return Promise.resolve()
  }
  return new Promise((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined
    const stdin = process.stdin
    const keys = (data: Buffer) => {
      // Raw mode turns ^C into a byte instead of SIGINT.
      if (data.includes(0x71) || data.includes(0x51) || data.includes(0x03)) finish()
    }
    const finish = (error?: unknown) => {
      clearTimeout(timer)
      process.off('SIGINT', stop)
      process.off('SIGTERM', stop)
      if (stdin.isTTY) {
        stdin.off('data', keys)
        stdin.setRawMode(false)
        stdin.pause()
      }
      if (error === undefined) resolve()
      else reject(error)
    }
    const stop = () => finish()
    process.on('SIGINT', stop)
    process.on('SIGTERM', stop)
    if (stdin.isTTY) {
      stdin.setRawMode(true)
      stdin.on('data', keys)
      stdin.resume()
    }
    const tick = () => {
      try {
        draw()
      } catch (error) {
        finish(error)
        return
      }
      timer = setTimeout(tick, intervalMs)
    }
    tick()
  })
}

const clearScreen = () => (process.stdout.isTTY ? '\x1b[H\x1b[2J' : '')

// probe ------------------------------------------------------------------------------------------

function probe(opts: { json?: boolean }): void {
  const f = features()
  out(opts.json ? JSON.stringify(f, null, 2) : table(Object.entries(f)))
}

// stats ------------------------------------------------------------------------------------------

function statsText(s: stats.SystemStats): string {
  const rows: [string, unknown][] = [
    ['kernel', s.kernelRelease],
    ['nr_anon_pages', `${s.nrAnonPages} (${mib(s.nrAnonPages * s.pageSize)})`],
    ['nr_page_table_pages', `${s.nrPageTablePages} (${mib(s.nrPageTablePages * s.pageSize)})`],
  ]
  if (s.ksm === null) rows.push(['ksm', 'not available (no /sys/kernel/mm/ksm: CONFIG_KSM=n)'])
  else {
    rows.push(['ksmd', s.ksm.run === 1 ? green('running') : yellow(`stopped (run = ${s.ksm.run})`)])
    rows.push(['saved (pages_sharing)', mib(s.savedBytes)])
    rows.push(['general_profit', mib(s.generalProfit)])
    for (const [key, value] of Object.entries(s.ksm)) {
      if (key !== 'run' && key !== 'generalProfit') rows.push([key.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase()), value])
    }
  }
  return table(rows)
}

async function statsCommand(opts: { json?: boolean; watch?: boolean; interval: number }): Promise<void> {
  if (!opts.watch) {
    const s = stats.system()
    out(opts.json ? JSON.stringify(s, null, 2) : statsText(s))
    return
  }
  await refresh(opts.interval * 1000, false, () => {
    const s = stats.system()
    if (opts.json) out(JSON.stringify({ time: new Date().toISOString(), ...s }))
    else out(`${clearScreen()}${bold(`memdedup stats, every ${opts.interval} s`)}  ${dim(new Date().toLocaleTimeString())}\n${statsText(s)}\n`)
  })
}

// run --------------------------------------------------------------------------------------------

/** PR_SET_MEMORY_MERGE on this process, inherited by what it spawns; the kernel's refusal explained. */
function enableProcessMerge(): void {
  if (!ksm.available()) {
    throw new CliError(`KSM is not available on kernel ${os.release()}: ${ksm.sysfsDir} does not exist (built without CONFIG_KSM)`, 1, 'ERR_MEMDEDUP_FEATURE_UNAVAILABLE')
  }
  try {
    ksm.process.set(true)
  } catch (error) {
    const code = (error as SyscallError).code
    if (code === 'EINVAL') {
      throw new CliError(`prctl(PR_SET_MEMORY_MERGE) was refused with EINVAL: kernel ${os.release()} lacks process-wide KSM (it needs Linux 6.4+ with CONFIG_KSM)`, 1, code)
    }
    if (code === 'EPERM' || code === 'EACCES') {
      // The kernel itself asks for no capability: a seccomp filter or a security module said no.
      throw new CliError(`prctl(PR_SET_MEMORY_MERGE) was refused with ${code}: a seccomp filter or security module forbids it here (container runtime profile, systemd SystemCallFilter=, SELinux/AppArmor)`, 1, code)
    }
    throw error
  }
}

/** Warns when ksmd is stopped (nothing merges then), or starts it when asked. */
function checkKsmd(start: boolean): void {
  const runFile = `${ksm.sysfsDir}/run`
  let run: number
  try {
    run = Number(fs.readFileSync(runFile, 'utf8').trim())
  } catch (error) {
    warn(`cannot read ${runFile} (${(error as NodeJS.ErrnoException).code}): whether ksmd runs is unknown`, 'KSMD_UNKNOWN')
    return
  }
  if (run === 1) return
  if (!start) {
    warn(`ksmd is not running (${runFile} = ${run}): nothing will be merged until it runs; start it with --start-ksmd or \`echo 1 > ${runFile}\` (root)`, 'KSMD_STOPPED')
    return
  }
  try {
    ksm.configure({ run: 1 })
  } catch (error) {
    const code = (error as SyscallError).code as CliCode
    throw new CliError(`--start-ksmd: cannot write 1 to ${runFile} (${code})${code === 'EACCES' || code === 'EPERM' ? ': only root can start ksmd' : ''}`, 1, code)
  }
}

/**
 * The file a shell runs for `command`, searched as bash does rather than as execvp(3) does: a name
 * with a slash is the file itself; otherwise the first executable regular file of that name in a
 * $PATH directory, else the first such file that is not executable (so its exec fails with EACCES:
 * 126), else none (127, "command not found"). execvp instead fails with EACCES as soon as one $PATH
 * directory may not be searched (another user's ~/bin left in $PATH by su), which would make a
 * missing command look like one that cannot be executed.
 */
function findCommand(command: string): string | undefined {
  if (command.includes('/')) return command
  let notExecutable: string | undefined
  for (const dir of (process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(':')) {
    const file = path.resolve(dir || '.', command) // an empty entry is the current directory
    let stat: fs.Stats
    try {
      stat = fs.statSync(file)
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code
      // Not there, or not reachable by this user: look on, as a shell does.
      if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EACCES' || code === 'ELOOP' || code === 'ENAMETOOLONG') continue
      throw error
    }
    if (!stat.isFile()) continue
    try {
      fs.accessSync(file, fs.constants.X_OK)
      return file
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EACCES') throw error
      notExecutable ??= file
    }
  }
  return notExecutable
}

/**
 * Why spawn could not start `file` (found at `found`), with a shell's status: 127 when the name leads
 * to no file (ENOENT; ENOTDIR, ENAMETOOLONG, ELOOP: a path through a non-directory, too long, or
 * through a symlink loop, which dash and POSIX count as not found too, where bash says 126), 126
 * when the file is there but cannot be executed (EACCES, E2BIG, …).
 */
function execFailure(file: string, found: string, error: NodeJS.ErrnoException): CliError {
  // ENOENT is also a file whose interpreter (#!) or loader is missing.
  if (error.code === 'ENOENT') {
    const why = fs.existsSync(found) ? 'cannot execute: required file not found (its #! interpreter or ELF loader is missing)' : file.includes('/') ? 'no such file or directory' : 'command not found'
    return new CliError(`${file}: ${why}`, 127, 'ENOENT')
  }
  const notFound: Record<string, string> = { ENOTDIR: 'not a directory', ENAMETOOLONG: 'file name too long', ELOOP: 'too many levels of symbolic links' }
  if (error.code !== undefined && error.code in notFound) return new CliError(`${file}: ${notFound[error.code]}`, 127, error.code as CliCode)
  if (error.code === 'EACCES') return new CliError(`${file}: permission denied`, 126, 'EACCES')
  return new CliError(`${file}: cannot run it (${error.code ?? error.message})`, 126, error.code as CliCode | undefined)
}

async function runCommand(argv: string[], opts: { json?: boolean; startKsmd?: boolean }): Promise<number> {
  enableProcessMerge()
  checkKsmd(Boolean(opts.startKsmd))
  const [file, ...args] = argv
  const found = findCommand(file)
  // No syscall failed: nothing on $PATH has that name (a shell's 127).
  if (found === undefined) throw new CliError(message('ERR_CLI_COMMAND_NOT_FOUND', file, 'command not found'), 127, 'ERR_CLI_COMMAND_NOT_FOUND')
  let child: ChildProcess
  try {
    // argv0: the command sees the name it was given, as from a shell.
    child = spawn(found, args, { stdio: 'inherit', argv0: file })
  } catch (error) {
    // spawn throws some failures to exec (ENAMETOOLONG, ENOTDIR, ELOOP, E2BIG) and emits the others
    // (ENOENT, EACCES) as 'error' below: both are the child that never ran.
    if ((error as NodeJS.ErrnoException).syscall !== 'spawn') throw error
    throw execFailure(file, found, error as NodeJS.ErrnoException)
  }
  const forwarded = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const
  const forward = (signal: NodeJS.Signals) => {
    child.kill(signal)
  }
  for (const signal of forwarded) process.on(signal, forward)
  try {
    const status = await new Promise<{ code: number; signal: NodeJS.Signals | null }>((resolve, reject) => {
      // spawn failed (the child never ran): the shell's statuses.
      child.once('error', (error: NodeJS.ErrnoException) => reject(execFailure(file, found, error)))
      child.once('exit', (code, signal) => resolve({ code: signal ? 128 + (os.constants.signals[signal] ?? 0) : (code ?? 1), signal }))
    })
    if (opts.json) process.stderr.write(JSON.stringify({ command: argv, pid: child.pid, exitCode: status.code, signal: status.signal }) + '\n')
    return status.code
  } finally {
    for (const signal of forwarded) process.off(signal, forward)
  }
}

// top --------------------------------------------------------------------------------------------

const sortFields = ['merged', 'zero', 'profit', 'rss', 'pss', 'anon', 'pte', 'pid', 'command'] as const
type SortField = (typeof sortFields)[number]

const sortKey: Record<SortField, (p: ProcessStats) => number | string> = {
  merged: (p) => p.ksmMergingPages,
  zero: (p) => p.ksmZeroPages ?? 0,
  profit: (p) => p.ksmProcessProfit ?? 0,
  rss: (p) => p.rss,
  pss: (p) => p.pss,
  anon: (p) => p.anonymous,
  pte: (p) => p.pageTableBytes,
  pid: (p) => p.pid,
  command: (p) => p.command,
}

interface TopSnapshot {
  time: string
  system: stats.SystemStats
  processes: ProcessStats[]
  unreadable: UnreadableProcess[]
  totals: { processes: number; ksmMergingPages: number; ksmZeroPages: number; ksmProcessProfit: number; rss: number; pss: number; anonymous: number; pageTableBytes: number }
}

function snapshot(all: boolean, sort: SortField): TopSnapshot {
  const readable: ProcessStats[] = []
  const unreadable: UnreadableProcess[] = []
  for (const p of stats.processes({ all })) {
    if ('error' in p) unreadable.push(p)
    else readable.push(p)
  }
  const key = sortKey[sort]
  // Numbers largest first, pid and command ascending.
  readable.sort((a, b) => {
    const x = key(a)
    const y = key(b)
    if (typeof x === 'string' || sort === 'pid') return x < y ? -1 : x > y ? 1 : 0
    return (y as number) - (x as number) || a.pid - b.pid
  })
  const sum = (f: (p: ProcessStats) => number) => readable.reduce((total, p) => total + f(p), 0)
  return {
    time: new Date().toISOString(),
    system: stats.system(),
    processes: readable,
    unreadable,
    totals: {
      processes: readable.length,
      ksmMergingPages: sum((p) => p.ksmMergingPages),
      ksmZeroPages: sum((p) => p.ksmZeroPages ?? 0),
      ksmProcessProfit: sum((p) => p.ksmProcessProfit ?? 0),
      rss: sum((p) => p.rss),
      pss: sum((p) => p.pss),
      anonymous: sum((p) => p.anonymous),
      pageTableBytes: sum((p) => p.pageTableBytes),
    },
  }
}

interface Column {
  title: string
  width: number
  /** Lower is dropped first when the terminal is too narrow. */
  keep: number
  cell: (p: ProcessStats | UnreadableProcess) => string
  total: (t: TopSnapshot['totals']) => string
}

function topColumns(pageSize: number): Column[] {
  const size = (f: (p: ProcessStats) => number | null) => (p: ProcessStats | UnreadableProcess) => ('error' in p ? '-' : mib(f(p)))
  const pages = (n: number | null) => (n === null ? null : n * pageSize)
  return [
    { title: 'PID', width: 7, keep: 9, cell: (p) => String(p.pid), total: () => '' },
    { title: 'MERGED', width: 8, keep: 8, cell: size((p) => pages(p.ksmMergingPages)), total: (t) => mib(t.ksmMergingPages * pageSize) },
    { title: 'PROFIT', width: 8, keep: 6, cell: size((p) => p.ksmProcessProfit), total: (t) => mib(t.ksmProcessProfit) },
    { title: 'ZERO', width: 7, keep: 2, cell: size((p) => pages(p.ksmZeroPages)), total: (t) => mib(t.ksmZeroPages * pageSize) },
    { title: 'RSS', width: 8, keep: 7, cell: size((p) => p.rss), total: (t) => mib(t.rss) },
    { title: 'PSS', width: 8, keep: 1, cell: size((p) => p.pss), total: (t) => mib(t.pss) },
    { title: 'ANON', width: 8, keep: 4, cell: size((p) => p.anonymous), total: (t) => mib(t.anonymous) },
    { title: 'PTE', width: 7, keep: 3, cell: size((p) => p.pageTableBytes), total: (t) => mib(t.pageTableBytes) },
    {
      title: 'KSM',
      width: 4,
      keep: 5,
      cell: (p) => ('error' in p ? p.error : p.ksmMergeAny ? 'any' : p.ksmMergeable ? 'vma' : '-'),
      total: () => '',
    },
  ]
}

const minCommandWidth = 12

/** The table as lines that fit `columns` × `rows`: low-priority columns dropped, commands cut. */
function topText(s: TopSnapshot, sort: SortField, size: { columns: number; rows: number }): string[] {
  let columns = topColumns(s.system.pageSize)
  const widthOf = (cols: Column[]) => cols.reduce((w, c) => w + c.width + 1, 0)
  while (columns.length > 2 && widthOf(columns) + minCommandWidth > size.columns) {
    const drop = columns.reduce((low, c) => (c.keep < low.keep ? c : low))
    columns = columns.filter((c) => c !== drop)
  }
  const commandWidth = Math.max(1, size.columns - widthOf(columns))
  const cut = (text: string, width: number) => (text.length <= width ? text : width <= 1 ? text.slice(0, width) : text.slice(0, width - 1) + '…')
  const line = (cells: string[], command: string) =>
    cut(cells.map((cell, i) => cut(cell, columns[i].width).padStart(columns[i].width)).join(' ') + ' ' + cut(command, commandWidth), size.columns).trimEnd()
  const k = s.system.ksm
  const ksmdState = k === null ? 'KSM not available' : k.run === 1 ? 'ksmd running' : `ksmd stopped (run = ${k.run})`
  const header = [
    cut(
      `memdedup top  ${ksmdState}  saved ${mib(s.system.savedBytes)} (pages_sharing)  general_profit ${mib(s.system.generalProfit)}  sorted by ${sort}`,
      size.columns,
    ),
    cut(`${s.processes.length} processes${s.unreadable.length ? `, ${s.unreadable.length} unreadable${process.getuid?.() === 0 ? '' : ' (run as root to see them)'}` : ''}  ${s.time}`, size.columns),
  ]
  const titles = line(
    columns.map((c) => c.title),
    'COMMAND',
  )
  const totals = line(
    columns.map((c) => c.total(s.totals)),
    'total',
  )
  const body = [...s.processes, ...s.unreadable]
  const room = Number.isFinite(size.rows) ? Math.max(0, size.rows - header.length - 3) : Infinity
  let shown = body.map((p) => {
    const text = line(
      columns.map((c) => c.cell(p)),
      p.command,
    )
    return 'error' in p ? dim(text) : p.ksmMergingPages > 0 ? green(text) : text
  })
  if (shown.length > room) {
    const hidden = shown.length - room + 1
    shown = [...shown.slice(0, Math.max(0, room - 1)), dim(cut(`… ${hidden} more`, size.columns))]
  }
  return [...header.map(bold), bold(titles), ...shown, bold(totals)]
}

async function topCommand(opts: { once?: boolean; json?: boolean; sort: SortField; interval: number; all?: boolean }): Promise<void> {
  await refresh(opts.interval * 1000, Boolean(opts.once), () => {
    const s = snapshot(Boolean(opts.all), opts.sort)
    if (opts.json) out(JSON.stringify(s))
    else out(clearScreen() + topText(s, opts.sort, terminalSize()).join('\n'))
  })
}

// daemon -----------------------------------------------------------------------------------------

function pidList(value: string, previous: number[] = []): number[] {
  const pid = Number(value)
  if (!Number.isInteger(pid) || pid < 1 || pid > 2 ** 22) throw new InvalidArgumentError('must be a process id (a positive integer).')
  return [...previous, pid]
}

function budget(value: string): number {
  const b = Number(value)
  if (!(b > 0 && b <= 1)) throw new InvalidArgumentError('must be a share of one CPU, > 0 and <= 1 (0.05 is 5%).')
  return b
}

/** One pass as a line of text: what it saw and merged. */
function passLine(r: DaemonPassReport, totalMerged: number): string {
  const failures = r.failures.map((f) => `${f.pid}: ${f.code}`).join(', ')
  return `${new Date(r.time).toISOString()}  targets ${r.targets}  present ${r.presentPages}  written ${r.writtenPages}  checked ${r.checkedPages}  hashed ${r.hashedPages}  ` +
    `merged ${r.mergedPages} (total ${totalMerged})  rewritten ${r.rewrittenPages}  ${r.durationMs} ms, CPU ${r.cpuMs.toFixed(1)} ms` +
    (failures ? `  failed: ${failures}` : '')
}

async function daemonCommand(opts: { pid?: number[]; cgroup?: string[]; optedIn?: boolean; interval: number; maxInterval?: number; cpuBudget: number; once?: boolean; json?: boolean; stablePasses: number; scope: 'uid' | 'global'; dryRun?: boolean }): Promise<number> {
  if (!opts.pid && !opts.cgroup && !opts.optedIn) throw new CliError('no targets: give --pid, --cgroup or --opted-in', 2)
  if (opts.maxInterval !== undefined && opts.maxInterval < opts.interval) throw new CliError(`--max-interval (${opts.maxInterval}) must be at least --interval (${opts.interval})`, 2)
  const daemon = new Daemon({ pids: opts.pid, cgroups: opts.cgroup, optedIn: Boolean(opts.optedIn), stablePasses: opts.stablePasses, scope: opts.scope, merge: opts.dryRun ? 'none' : 'sksm' })
  let total = 0
  const show = (r: DaemonPassReport) => {
    total += r.mergedPages
    out(opts.json ? JSON.stringify(r) : passLine(r, total))
  }
  try {
    // A page merges after stablePasses unwritten passes, counted from the pass that opened its
    // process: --once runs that many more, an interval apart, one line each.
    if (opts.once) {
      for (let i = 0; i <= opts.stablePasses; i++) {
        if (i > 0) await new Promise((resolve) => setTimeout(resolve, opts.interval * 1000))
        show(daemon.pass())
      }
      return 0
    }
    await new Promise<void>((resolve) => {
      const stop = () => {
        daemon.stop()
        resolve()
      }
      process.once('SIGINT', stop)
      process.once('SIGTERM', stop)
      daemon.run({ intervalMs: Math.round(opts.interval * 1000), maxIntervalMs: Math.round((opts.maxInterval ?? opts.interval) * 1000), cpuBudget: opts.cpuBudget, onPass: show })
    })
    return 0
  } finally {
    daemon.close()
  }
}

// program ----------------------------------------------------------------------------------------

function packageVersion(): string {
  // lib/cli.ts or dist/lib/cli.js: the package.json above either.
  for (let dir = path.dirname(fileURLToPath(import.meta.url)); dir !== path.dirname(dir); dir = path.dirname(dir)) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'))
      if (pkg.name === 'memdedup') return pkg.version
    } catch {
      // no package.json here: go up
    }
  }
  return 'unknown'
}

function program(setExit: (code: number) => void): Command {
  const json = () => new Option('--json', 'machine-readable output (JSON)')
  const interval = () => new Option('--interval <seconds>', 'seconds between refreshes').argParser(seconds).default(2)
  const cli = new Command('memdedup')
    .description('Linux memory deduplication (KSM, SKSM): what the kernel offers, what it merges, and programs run with KSM on')
    .version(packageVersion())
    .enablePositionalOptions()
    .exitOverride()
    .showHelpAfterError('(memdedup --help lists the commands)')
    // Usage errors: commander's text, or under --json nothing (main prints the JSON line). Set
    // before the commands are added, which copy it.
    .configureOutput({
      writeErr: (text) => {
        if (!jsonMessages) process.stderr.write(text)
      },
    })
  cli
    .command('probe')
    .description('which deduplication and write-tracking features this kernel offers')
    .addOption(json())
    .action((opts) => {
      jsonMessages = Boolean(opts.json)
      probe(opts)
    })
  cli
    .command('stats')
    .description('system-wide KSM counters (/sys/kernel/mm/ksm), general_profit, nr_anon_pages and nr_page_table_pages')
    .addOption(json())
    .option('--watch', 'refresh until q or Ctrl-C (with --json: one JSON line per refresh)')
    .addOption(interval())
    .action(async (opts) => {
      jsonMessages = Boolean(opts.json)
      await statsCommand(opts)
    })
  cli
    .command('run')
    .description('run a command with KSM on for its whole process tree (PR_SET_MEMORY_MERGE, inherited across fork and exec)')
    .argument('<command...>', 'the program and its arguments (put -- before them when they start with -)')
    .addOption(new Option('--json', 'report warnings, errors and the exit status as JSON lines on stderr (stdout is the command\'s)'))
    .option('--start-ksmd', 'start ksmd (/sys/kernel/mm/ksm/run = 1) when it is stopped (root only)')
    .passThroughOptions()
    .action(async (argv: string[], opts) => {
      jsonMessages = Boolean(opts.json)
      setExit(await runCommand(argv, opts))
    })
  cli
    .command('top')
    .description('per-process table of what KSM and SKSM merged (/proc/*/ksm_stat, smaps_rollup, VmPTE), refreshing, with totals')
    .addOption(json())
    .option('--once', 'print one table (or JSON line) and exit')
    .addOption(new Option('--sort <field>', 'sort by').choices(sortFields).default('merged'))
    .addOption(interval())
    .option('--all', 'every process, not only those KSM tracks or merged')
    .action(async (opts) => {
      jsonMessages = Boolean(opts.json)
      await topCommand(opts)
    })
  cli
    .command('daemon')
    .description('merge unchanged twin pages of other, unmodified processes with process_madvise(MADV_MERGE), tracking their writes with soft-dirty bits: ksmd\'s job in user space (root; lab kernel)')
    .addOption(new Option('--pid <pid>', 'a target process (repeatable)').argParser(pidList))
    .addOption(new Option('--cgroup <path>', 'every process of this cgroup v2 directory and its descendants, new ones picked up each pass (repeatable)').argParser((v: string, prev: string[] = []) => [...prev, v]))
    .option('--opted-in', 'every process that opted in to KSM (PR_SET_MEMORY_MERGE, MADV_MERGEABLE): ksmd\'s population')
    .addOption(new Option('--interval <seconds>', 'seconds between passes').argParser(seconds).default(1))
    .addOption(new Option('--max-interval <seconds>', 'longest wait after idle passes (each idle pass doubles the wait; default: --interval, no backing off)').argParser(seconds))
    .addOption(new Option('--cpu-budget <share>', 'longest share of one CPU the passes take (stretches the interval)').argParser(budget).default(1))
    .addOption(new Option('--stable-passes <n>', 'passes a page stays unwritten before it may merge').argParser((v: string) => {
      const n = Number(v)
      if (!Number.isInteger(n) || n < 1 || n > 255) throw new InvalidArgumentError('must be an integer from 1 to 255.')
      return n
    }).default(2))
    .addOption(new Option('--scope <scope>', 'which processes\' pages may meet: uid (same effective uid) or global (any: reveals content across users)').choices(['uid', 'global']).default('uid'))
    .option('--dry-run', 'count what would merge, merge nothing')
    .option('--once', 'run stable-passes + 1 passes and exit')
    .addOption(json())
    .action(async (opts) => {
      jsonMessages = Boolean(opts.json)
      setExit(await daemonCommand(opts))
    })
  return cli
}

/**
 * Whether memdedup itself was given --json, known before commander parses (its usage errors come
 * before any action runs, and it stops reading options at an unknown one): a --json among memdedup's
 * own arguments, so not after `--`, not in run's command, not an option's value (`--sort --json`).
 */
function wantsJson(cli: Command, argv: string[]): boolean {
  let command = cli
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === '--json') return true
    if (arg === '--') return false
    if (arg.startsWith('-')) {
      if (command.options.some((o) => o.required && (o.long === arg || o.short === arg))) i++ // `--sort pid`: the value
    } else if (command === cli) command = cli.commands.find((c) => c.name() === arg) ?? cli
    else if (command.name() === 'run') return false // the command: what follows is its own
  }
  return false
}

async function main(argv: string[]): Promise<number> {
  let exitCode = 0
  const cli = program((code) => (exitCode = code))
  jsonMessages = wantsJson(cli, argv)
  try {
    await cli.parseAsync(argv, { from: 'user' })
    return exitCode
  } catch (error) {
    if (error instanceof CommanderError) {
      // --help and --version "fail" with code 0; everything else commander rejects is a usage error,
      // which it printed as text (or, under --json, left to this line: `code` is commander's, as
      // `commander.unknownOption`; `commander.help` is no command, or help for an unknown one).
      if (error.exitCode === 0) return 0
      if (jsonMessages) {
        const message = error.code === 'commander.help' ? `a command is needed, one of: ${cli.commands.map((c) => c.name()).join(', ')}` : error.message.replace(/^error: /, '')
        printError(error.code, message)
      }
      return 2
    }
    const e = error as Error & { code?: string; exitCode?: number }
    printError(e.code ?? 'ERR_MEMDEDUP_CLI', e.message)
    return error instanceof CliError ? error.exitCode : 1
  }
}

process.exitCode = await main(process.argv.slice(2))
