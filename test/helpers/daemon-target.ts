// test/fixtures/daemon-target.c as a child process: a program that knows nothing of memdedup
// (for the Daemon and the remote MADV_MERGE tests), and the PFNs of another process's pages.
import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import readline from 'node:readline'
import { pageSize } from '../../lib/index.ts'
import { fixtureBinary } from './c-fixture.ts'

export interface DaemonTarget {
  child: ChildProcess
  pid: number
  /** Address of the cold pages (content by seed, class page % classes). */
  cold: bigint
  /** Address of the hot pages (rewritten every 2 ms). */
  hot: bigint
  /** Sends a command line ('verify'; see daemon-target.c), resolves with the JSON line it answers. */
  ask(command: string): Promise<any>
  stop(): Promise<void>
}

/**
 * Starts daemon-target <cold> <hot> <seed> [classes], optionally as another uid, growable (its
 * "grow N" command) or with its cold pages in transparent huge pages (thp).
 */
export async function startDaemonTarget(cold: number, hot: number, seed: number, options: { classes?: number; uid?: number; gid?: number; growable?: boolean; thp?: boolean } = {}): Promise<DaemonTarget> {
  const { classes, growable, thp, ...spawnOptions } = options
  const args = [String(cold), String(hot), String(seed), ...(classes === undefined ? [] : [String(classes)])]
  const env = { ...process.env, DAEMON_TARGET_GROWABLE: growable ? '1' : '0', DAEMON_TARGET_THP: thp ? '1' : '0' }
  const child = spawn(fixtureBinary('daemon-target'), args, { stdio: ['pipe', 'pipe', 'inherit'], env, ...spawnOptions })
  const lines = readline.createInterface({ input: child.stdout! })[Symbol.asyncIterator]()
  const next = async () => {
    const { value, done } = await lines.next()
    if (done) throw new Error(`daemon-target exited early (status ${child.exitCode})`)
    return JSON.parse(value as string)
  }
  const hello = await next()
  return {
    child,
    pid: child.pid!,
    cold: BigInt(hello.cold),
    hot: BigInt(hello.hot),
    async ask(command) {
      child.stdin!.write(`${command}\n`)
      return next()
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGKILL')
      await exited
    },
  }
}

/** PFNs of `pages` pages of process `pid` from `address` (0 where not present; root to see them). */
export function pfnsOf(pid: number | 'self', address: bigint, pages: number): bigint[] {
  const fd = fs.openSync(`/proc/${pid}/pagemap`, 'r')
  try {
    const entries = Buffer.alloc(pages * 8)
    fs.readSync(fd, entries, 0, entries.length, Number(address / BigInt(pageSize)) * 8)
    return Array.from({ length: pages }, (_, i) => {
      const entry = entries.readBigUInt64LE(i * 8)
      return entry >> 63n ? entry & ((1n << 55n) - 1n) : 0n
    })
  } finally {
    fs.closeSync(fd)
  }
}

/** Pages i where two PFN lists (pfnsOf) name the same present frame. */
export function sharedFrames(a: readonly bigint[], b: readonly bigint[]): number {
  return a.filter((pfn, i) => pfn !== 0n && pfn === b[i]).length
}
