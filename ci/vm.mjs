#!/usr/bin/env zx
// Runs a command (or a shell) in the lab kernel under QEMU, in the same working directory.
//
//   npm run vm -- <command...>                  output on this terminal, exit status returned
//   npm run vm                                  interactive shell (best effort; `exit` stops the VM)
//   npm run vm -- --memory=8G --hugepages=64 --timeout=600 -- <command...>
//   npm run vm -- --kernel=BZIMAGE -- <command...>   another kernel (e.g. an older cached build)
//   npm run vm -- --flavour=perf -- <command...>     the production-like kernel (benchmarks)
//
// The guest sees the host's / read-only (9p), a tmpfs /tmp and $HOME, a scratch dir shared
// read-write at $MEMDEDUP_SCRATCH, and a 1 GiB swap disk. Any Oops/BUG:/WARNING:/panic in the
// kernel console fails the run. The console log path is printed at the end of every run.
import { $, fs, path, os } from 'zx'
import { spawn } from 'node:child_process'
import { cacheDir, repoRoot, log, fail, formatSeconds, ensurePackages, isMain, runMain } from './lib.mjs'
import { ensureKernel, flavourOption } from './kernel.mjs'

const qemu = 'qemu-system-x86_64'
const guestInit = path.join(repoRoot, 'ci', 'guest-init.sh')
const consoleDir = path.join(cacheDir, 'console')
// Every report the lab's debug options print (DEBUG_VM, DEBUG_ATOMIC_SLEEP, lockdep, DEBUG_LIST) and
// the ones the kernel prints on its own (RCU stalls, soft lockups, hung tasks); test/lab.test.ts
// checks it against samples of each. The OOM killer's report is not a problem (tests cause it).
export const kernelProblem = new RegExp([
  'Oops', 'BUG:', 'kernel BUG at', 'WARNING:', 'Kernel panic', 'general protection fault', 'page dumped because',
  'possible (circular|recursive) locking', 'inconsistent lock state', 'DEBUG_LOCKS_WARN_ON',
  'list_(add|del) corruption', 'UBSAN:', 'KASAN:', 'rcu: INFO:|detected stalls on CPUs',
  'soft lockup', 'blocked for more than \\d+ seconds',
].join('|'))

const shellQuote = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`

// KVM under nested virtualisation can exist and still hang at boot, so a KVM boot must prove
// itself: a kernel without a root device panics and (panic=-1, -no-reboot) exits QEMU in well
// under a second with working KVM. The answer is cached per host boot.
let accelMemo
export async function probeAccel(kernel) {
  const forced = process.env.MEMDEDUP_ACCEL
  if (forced === 'kvm' || forced === 'tcg') return forced
  if (accelMemo) return accelMemo
  const bootId = (await fs.readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => '')).trim()
  const memoFile = path.join(cacheDir, 'accel-probe.json')
  const memo = await fs.readJson(memoFile).catch(() => ({}))
  if (memo.bootId === bootId && memo.accel) return (accelMemo = memo.accel)
  let accel = 'tcg'
  try {
    await fs.access('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK)
    const probe = spawn(qemu, ['-accel', 'kvm', '-cpu', 'host', '-m', '256M', '-nodefaults', '-display', 'none',
      '-no-reboot', '-kernel', kernel, '-append', 'panic=-1 root=/dev/memdedup-none'], { stdio: 'ignore' })
    const exited = await Promise.race([
      new Promise((resolve) => probe.on('exit', (code) => resolve(code === 0))),
      new Promise((resolve) => setTimeout(() => resolve(false), 5000)),
    ])
    if (probe.exitCode === null) probe.kill('SIGKILL')
    if (exited) accel = 'kvm'
  } catch { /* no usable /dev/kvm */ }
  log(`accelerator: ${accel}${accel === 'tcg' ? ' (KVM missing or hangs; expect Node ~18x slower)' : ''}`)
  await fs.outputJson(memoFile, { bootId, accel })
  return (accelMemo = accel)
}

function findProblems(consoleText) {
  const lines = consoleText.split('\n')
  const problems = []
  for (let i = 0; i < lines.length; i++) {
    if (!kernelProblem.test(lines[i])) continue
    // The report line and its trace, up to the end marker or 40 lines.
    const trace = [lines[i]]
    for (let j = i + 1; j < lines.length && j < i + 40; j++) {
      trace.push(lines[j])
      if (/---\[ end (trace|Kernel panic)/.test(lines[j])) { i = j; break }
    }
    problems.push(trace.join('\n'))
  }
  return problems
}

/**
 * Boots the lab kernel and runs `command` in the guest.
 * @param {string | string[] | null} command  shell command line, argv array, or null for a shell
 * @param {object} [options]
 * @param {string} [options.memory='4G']      QEMU -m
 * @param {number} [options.cpus=2]
 * @param {number} [options.numaNodes=2]      QEMU NUMA nodes sharing memory and CPUs (numaArgs)
 * @param {number} [options.timeoutMs=1800000] the VM is killed after this; exitCode 255
 * @param {Record<string,string>} [options.env] extra guest environment
 * @param {string} [options.cwd=process.cwd()] guest working directory (must exist on the host)
 * @param {number} [options.hugepages=0]      vm.nr_hugepages to reserve before the command
 * @param {string|false} [options.swap='1G']  size of the virtio swap disk, false for none
 * @param {'inherit'|'pipe'} [options.stdio='inherit']  'pipe' captures the output in result.output
 * @param {boolean} [options.echo=false]      with stdio 'pipe', also copy the output to stdout
 * @param {string} [options.kernel]           bzImage (default: ensureKernel({ flavour }))
 * @param {string} [options.flavour]          debug (default) or perf, when no kernel is given
 * @param {string[]} [options.collect=[]]     files to read back from $MEMDEDUP_SCRATCH (result.collected)
 * @returns {Promise<{exitCode: number, commandExitCode: number|null, ok: boolean, timedOut: boolean,
 *   problems: string[], consoleLog: string, output?: string, accel: string,
 *   collected: Record<string, string|null>,
 *   initUptimeSeconds: number|null, durationMs: number}>}
 *   exitCode is the command's status, 255 if the guest died without reporting, and at least 1
 *   when the console shows a kernel problem.
 */
export async function runInVm(command, options = {}) {
  const {
    memory = '4G', cpus = 2, timeoutMs = 30 * 60_000, env = {}, cwd = process.cwd(), hugepages = 0,
    swap = '1G', stdio = 'inherit', echo = false, collect = [], numaNodes = 2,
  } = options
  await ensurePackages(['qemu-system-x86', 'util-linux', 'iproute2']) // iproute2: the guest's `ip link set lo up`
  const kernel = options.kernel ?? await ensureKernel({ flavour: options.flavour ?? 'debug' })
  const accel = await probeAccel(kernel)
  const interactive = command === null || command === undefined
  const started = Date.now()

  const runDir = await fs.mkdtemp(path.join(cacheDir, 'run-'))
  const scratch = path.join(runDir, 'scratch')
  await fs.mkdirp(scratch)
  const retFile = path.join(runDir, 'exit-status')
  await fs.mkdirp(consoleDir)
  const consoleLog = path.join(consoleDir, `console-${new Date().toISOString().replace(/[:.]/g, '-')}-${process.pid}.log`)

  const guestEnv = {
    PATH: process.env.PATH,
    HOME: '/run/memdedup/home',
    TMPDIR: '/tmp',
    TERM: process.env.TERM ?? 'linux',
    LANG: process.env.LANG ?? 'C.UTF-8',
    MEMDEDUP_VM: '1',
    MEMDEDUP_SCRATCH: '/run/memdedup/scratch',
    ...env,
  }
  const envScript = [
    `MEMDEDUP_CWD=${shellQuote(cwd)}`,
    // The guest runs programs from the cache (probes, selftests, stress binaries): it may live in /tmp too.
    `MEMDEDUP_CACHE=${shellQuote(path.resolve(cacheDir))}`,
    `MEMDEDUP_HUGEPAGES=${Number(hugepages) | 0}`,
    `MEMDEDUP_INTERACTIVE=${interactive ? 1 : 0}`,
    ...Object.entries(guestEnv).filter(([, v]) => v !== undefined).map(([k, v]) => `export ${k}=${shellQuote(v)}`),
  ].join('\n')
  await fs.writeFile(path.join(scratch, 'env.sh'), `${envScript}\n`)
  const commandLine = interactive ? '' : Array.isArray(command) ? command.map(shellQuote).join(' ') : command
  await fs.writeFile(path.join(scratch, 'command.sh'), `${commandLine}\n`)

  const args = [
    '-accel', accel === 'kvm' ? 'kvm' : 'tcg,thread=multi',
    '-cpu', accel === 'kvm' ? 'host' : 'max',         // max: the instruction set Node's binary expects
    '-smp', smpArg(cpus, numaNodes), '-m', memory, ...numaArgs(memory, cpus, numaNodes),
    '-nodefaults', '-display', 'none', '-no-reboot',   // the guest's reboot ends QEMU
    '-kernel', kernel,
    '-append', [
      'root=hostroot rootfstype=9p rootflags=trans=virtio,version=9p2000.L,cache=mmap,msize=1048576 ro',
      'console=ttyS0 panic=-1 oops=panic printk.devkmsg=on', // an Oops ends the run at once
      // TCG on a loaded host can miss the boot-time timer check ("IO-APIC + timer doesn't work!"
      // panic, seen with a kernel build running beside the VM); the virtual timer is fine.
      'no_timer_check',
      `init=${guestInit}`,
    ].join(' '),
    '-serial', `file:${consoleLog}`,                   // kernel console, kept for the problem scan
    // Host / as the guest root, read-only; multidevs=remap keeps inode numbers unique across host mounts.
    '-virtfs', 'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
    '-virtfs', `local,path=${scratch},mount_tag=scratch,security_model=none,multidevs=remap`,
    '-device', 'virtio-serial-pci,id=vser',
    '-chardev', 'stdio,id=cmdio,signal=off',           // hvc0: the command's terminal
    '-device', 'virtconsole,bus=vser.0,chardev=cmdio',
    '-chardev', `file,id=ret,path=${retFile}`,          // the exit status, virtme-ng style
    '-device', 'virtserialport,bus=vser.0,chardev=ret,name=memdedup.ret',
  ]
  if (swap) {
    const swapImage = path.join(runDir, 'swap.img')
    await $`fallocate -l ${swap} ${swapImage}`
    await $`mkswap -q ${swapImage}`
    args.push('-drive', `file=${swapImage},format=raw,if=virtio,cache=unsafe`)
  }

  const child = spawn(qemu, args, { stdio: [interactive ? 'inherit' : 'ignore', stdio === 'pipe' ? 'pipe' : 'inherit', 'pipe'] })
  let output = ''
  if (stdio === 'pipe') child.stdout.on('data', (chunk) => { output += chunk; if (echo) process.stdout.write(chunk) })
  let qemuStderr = ''
  child.stderr.on('data', (chunk) => { qemuStderr += chunk })
  let timedOut = false
  const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL') }, timeoutMs)
  const stopOnSignal = () => child.kill('SIGKILL')
  process.once('SIGINT', stopOnSignal)
  process.once('SIGTERM', stopOnSignal)
  const qemuExit = await new Promise((resolve) => child.on('exit', (code, signal) => resolve(signal ?? code)))
  clearTimeout(timer)
  process.off('SIGINT', stopOnSignal)
  process.off('SIGTERM', stopOnSignal)

  const reported = (await fs.readFile(retFile, 'utf8').catch(() => '')).trim()
  const commandExitCode = /^\d+$/.test(reported) ? Number(reported) : null
  const consoleText = await fs.readFile(consoleLog, 'utf8').catch(() => '')
  const problems = findProblems(consoleText)
  const initUptime = Number.parseFloat(await fs.readFile(path.join(scratch, 'init-uptime'), 'utf8').catch(() => ''))
  // Files the command left in $MEMDEDUP_SCRATCH that the caller asked for (null: not written).
  const collected = Object.fromEntries(await Promise.all(collect.map(async (name) => [name, await fs.readFile(path.join(scratch, name), 'utf8').catch(() => null)])))
  await fs.remove(runDir)

  let exitCode = commandExitCode ?? 255
  if (problems.length && exitCode === 0) exitCode = 1
  if (timedOut) log(`timed out after ${formatSeconds(timeoutMs)}; killed QEMU`)
  if (commandExitCode === null) {
    log(`the guest did not report an exit status (QEMU exit ${qemuExit})${qemuStderr ? `; QEMU said:\n${qemuStderr.trim()}` : ''}`)
    const tail = consoleText.trim().split('\n').slice(-15).join('\n')
    if (tail) log(`last console lines:\n${tail}`)
  }
  for (const problem of problems) log(`KERNEL PROBLEM in the console log:\n${problem}`)
  log(`console log: ${consoleLog}`)
  return {
    exitCode, commandExitCode, ok: exitCode === 0, timedOut, problems, consoleLog,
    output: stdio === 'pipe' ? output : undefined, accel, collected,
    initUptimeSeconds: Number.isFinite(initUptime) ? initUptime : null, durationMs: Date.now() - started,
  }
}

// Keeps the newest 30 console logs.
async function pruneConsoleLogs() {
  const files = (await fs.readdir(consoleDir).catch(() => [])).filter((f) => f.startsWith('console-')).sort()
  for (const file of files.slice(0, -30)) await fs.remove(path.join(consoleDir, file))
}

// With NUMA nodes every CPU is a socket of its own: QEMU's default puts all CPUs in one socket
// (one LLC), and CPUs of one LLC on different nodes are a boot WARNING (topology_sane(): "CPU #1's
// llc-sibling CPU #0 is not on the same node"), which fails every run.
export function smpArg(cpus, nodes) {
  return nodes <= 1 ? String(cpus) : `${cpus},sockets=${cpus},cores=1,threads=1`
}

// QEMU's NUMA topology: `nodes` nodes share the memory evenly, CPUs dealt out in turn (a node
// may have none: a memory-only node, as on real machines). Two nodes by default, so every test
// runs where merge_across_nodes and cross-node merges mean something.
export function numaArgs(memory, cpus, nodes) {
  if (nodes <= 1) return []
  const units = { K: 1 / 1024, M: 1, G: 1024, T: 1024 * 1024 }
  const [, amount, unit = 'M'] = String(memory).toUpperCase().match(/^(\d+)([KMGT])?B?$/) ?? fail(`--memory=${memory}: expected a size like 4G or 512M`)
  const mib = Number(amount) * units[unit]
  if (!Number.isInteger(mib) || mib % nodes !== 0) fail(`--memory=${memory} does not split into ${nodes} NUMA nodes of whole MiB`)
  const args = []
  for (let node = 0; node < nodes; node++) {
    const nodeCpus = Array.from({ length: cpus }, (_, cpu) => cpu).filter((cpu) => cpu % nodes === node)
    args.push('-object', `memory-backend-ram,id=numa${node},size=${mib / nodes}M`,
      '-numa', ['node', `nodeid=${node}`, `memdev=numa${node}`, ...nodeCpus.map((cpu) => `cpus=${cpu}`)].join(','))
  }
  return args
}

async function main() {
  let args = process.argv.slice(process.argv.findIndex((arg) => arg.endsWith('vm.mjs')) + 1)
  const options = {}
  while (args.length && args[0].startsWith('--')) {
    const arg = args.shift()
    if (arg === '--') break
    const [, name, value] = arg.match(/^--([\w-]+)(?:=(.*))?$/) ?? []
    if (name === 'memory') options.memory = value
    else if (name === 'hugepages') options.hugepages = Number(value)
    else if (name === 'timeout') options.timeoutMs = Number(value) * 1000
    else if (name === 'cpus') options.cpus = Number(value)
    else if (name === 'no-swap') options.swap = false
    else if (name === 'kernel') options.kernel = path.resolve(value)
    else if (name === 'swap') options.swap = value
    else if (name === 'flavour') options.flavour = flavourOption([arg])
    else if (name === 'numa') options.numaNodes = Number(value)
    else fail(`unknown option ${arg} (options: --memory=4G --cpus=2 --numa=2 --hugepages=N --timeout=SECONDS --no-swap --swap=1G --kernel=BZIMAGE --flavour=debug|perf)`)
  }
  const command = args.length === 0 ? null : args.length === 1 ? args[0] : args
  if (command === null) log('interactive shell in the guest; Ctrl-C goes to the guest, `exit` stops the VM')
  const result = await runInVm(command, options)
  await pruneConsoleLogs()
  log(`exit status ${result.exitCode}${result.problems.length ? ` (kernel problems: ${result.problems.length})` : ''}, ${formatSeconds(result.durationMs)} total, guest init at ${result.initUptimeSeconds ?? '?'} s, ${result.accel}`)
  return result.exitCode
}

if (isMain(import.meta.url)) await runMain(main)
