// Shared by the fuzz runner, the adversarial runner and their vitest drivers (plain ESM: the
// children run without TypeScript). Process observations (/proc/self/maps, /proc/self/fd,
// /proc/self/mem), a seeded PRNG, and "run a child, survive its death" for the drivers.
import fs from 'node:fs'
import path from 'node:path'
import { spawn } from 'node:child_process'

import { repoRoot } from '../helpers/dist.mjs'
import { inVm } from '../helpers/env.mjs'

// One definition each (test/helpers), re-exported for the runners that import this module.
export { repoRoot, inVm }
export const fixturesDir = path.join(repoRoot, 'test', 'fixtures')

/** sfc32: small, fast, good enough to pick operations; the same seed replays the same run. */
export function prng(seed) {
  let a = 0x9e3779b9, b = 0x243f6a88, c = 0xb7e15162, d = seed >>> 0
  const next = () => {
    a >>>= 0; b >>>= 0; c >>>= 0; d >>>= 0
    const t = (a + b + d) >>> 0
    d = (d + 1) >>> 0
    a = b ^ (b >>> 9)
    b = (c + (c << 3)) >>> 0
    c = ((c << 21) | (c >>> 11)) + t
    return t / 4294967296
  }
  for (let i = 0; i < 16; i++) next()
  return {
    float: next,
    /** Integer in [min, max]. */
    int: (min, max) => min + Math.floor(next() * (max - min + 1)),
    pick: (list) => list[Math.floor(next() * list.length)],
    chance: (p) => next() < p,
    /** Picks a key of `weights` with probability proportional to its value. */
    weighted(weights) {
      let total = 0
      for (const w of Object.values(weights)) total += w
      let x = next() * total
      for (const [key, w] of Object.entries(weights)) if ((x -= w) < 0) return key
      return Object.keys(weights)[0]
    },
  }
}

/**
 * Address ranges of /proc/self/maps lines that belong to memdedup: named anonymous Regions
 * ("[anon:memdedup]"), memfds ("/memfd:memdedup…"), and files whose path contains `fileTag`.
 * The addon's own .node mapping is excluded, and mappings whose name contains `ignore`. Adjacent lines are merged: the kernel may merge
 * two Regions' VMAs, or split one Region's VMA by protection, so only the union is meaningful.
 */
export function ownedIntervals(fileTag = 'memdedup-fuzz', ignore = null) {
  const out = []
  for (const line of fs.readFileSync('/proc/self/maps', 'utf8').split('\n')) {
    if (!line) continue
    const name = line.split(/\s+/).slice(5).join(' ')
    if (name.endsWith('.node') || (ignore && name.includes(ignore))) continue
    if (!(name.includes('memdedup') || (fileTag && name.includes(fileTag)))) continue
    const [start, end] = line.slice(0, line.indexOf(' ')).split('-').map((h) => parseInt(h, 16))
    out.push([start, end])
  }
  return mergeIntervals(out)
}

/** Every line of /proc/self/maps as { start, end, perms, name }. */
export function mappings() {
  const out = []
  for (const line of fs.readFileSync('/proc/self/maps', 'utf8').split('\n')) {
    if (!line) continue
    const fields = line.split(/\s+/)
    const [start, end] = fields[0].split('-').map((h) => parseInt(h, 16))
    out.push({ start, end, perms: fields[1], name: fields.slice(5).join(' ') })
  }
  return out
}

/** Sorted, coalesced [start, end) intervals. */
export function mergeIntervals(list) {
  const sorted = [...list].sort((x, y) => x[0] - y[0])
  const out = []
  for (const [s, e] of sorted) {
    if (e <= s) continue
    const last = out[out.length - 1]
    if (last && s <= last[1]) last[1] = Math.max(last[1], e)
    else out.push([s, e])
  }
  return out
}

export function sameIntervals(a, b) {
  return a.length === b.length && a.every(([s, e], i) => b[i][0] === s && b[i][1] === e)
}

export function formatIntervals(list) {
  return list.map(([s, e]) => `${s.toString(16)}-${e.toString(16)}`).join(' ') || '(none)'
}

/** Open descriptors: number → readlink target. */
export function openFds() {
  const out = new Map()
  for (const name of fs.readdirSync('/proc/self/fd')) {
    let target = '?'
    try {
      target = fs.readlinkSync(`/proc/self/fd/${name}`)
    } catch (error) {
      if (error.code === 'ENOENT') continue // the directory handle readdir itself used
      throw error
    }
    out.set(Number(name), target)
  }
  return out
}

/** Descriptors in `after` that were not in `before` (or point elsewhere now), as "fd → target". */
export function fdDiff(before, after) {
  const added = []
  const removed = []
  for (const [fd, target] of after) if (before.get(fd) !== target) added.push(`${fd} → ${target}`)
  for (const [fd, target] of before) if (after.get(fd) !== target) removed.push(`${fd} → ${target}`)
  return { added, removed }
}

let memFd = -1
/**
 * Reads memory through /proc/self/mem (FOLL_FORCE: works on PROT_NONE pages and never faults
 * this process), so the shadow model is checked by a path independent of the library.
 */
export function readMemory(address, length, into = Buffer.allocUnsafe(length)) {
  if (memFd < 0) memFd = fs.openSync('/proc/self/mem', 'r')
  let done = 0
  while (done < length) {
    const n = fs.readSync(memFd, into, done, length - done, address + done)
    if (n <= 0) throw new Error(`short read of /proc/self/mem at 0x${(address + done).toString(16)}: ${done} of ${length} bytes`)
    done += n
  }
  return into
}

/** VmSize of this process in bytes (catches a leaked huge mapping the kernel did not name). */
export function vmSizeBytes() {
  const match = /^VmSize:\s+(\d+) kB$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))
  return Number(match?.[1] ?? 0) * 1024
}

/** "TypeError ERR_INVALID_ARG_TYPE: message" for reports. */
export function describeError(error) {
  if (!(error instanceof Error)) return `non-Error ${typeof error}: ${String(error)}`
  return `${error.name}${error.code ? ` ${error.code}` : ''}: ${error.message.split('\n')[0].slice(0, 200)}`
}

/**
 * Runs `node [nodeArgs] script args` and collects stdout lines, stderr and fd 3 (a trace pipe the
 * child may write one line per step to: the last `traceLines` are kept, so a crash can be
 * reported with the steps that led to it). `onLine` sees each stdout line as it arrives and may
 * return 'restart-timer' to extend the deadline. Never rejects: a signal, a timeout or a
 * non-zero exit is in the result.
 */
export function runChild(script, args, { timeoutMs, env = {}, nodeArgs = [], traceLines = 30, onLine } = {}) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...nodeArgs, script, ...args], {
      cwd: repoRoot,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
    })
    const lines = []
    const trace = []
    let stderr = ''
    let timedOut = false
    let timer
    const arm = () => {
      clearTimeout(timer)
      timer = setTimeout(() => {
        timedOut = true
        child.kill('SIGKILL')
      }, timeoutMs)
    }
    arm()
    let partial = ''
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (chunk) => {
      partial += chunk
      let nl
      while ((nl = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, nl)
        partial = partial.slice(nl + 1)
        lines.push(line)
        if (onLine?.(line) === 'restart-timer') arm()
      }
    })
    child.stderr.setEncoding('utf8')
    child.stderr.on('data', (chunk) => {
      stderr += chunk
      if (stderr.length > 200_000) stderr = stderr.slice(-100_000)
    })
    let tracePartial = ''
    child.stdio[3].setEncoding('utf8')
    child.stdio[3].on('data', (chunk) => {
      tracePartial += chunk
      const parts = tracePartial.split('\n')
      tracePartial = parts.pop()
      trace.push(...parts)
      if (trace.length > traceLines * 4) trace.splice(0, trace.length - traceLines)
    })
    child.on('error', (error) => {
      clearTimeout(timer)
      resolve({ code: null, signal: null, timedOut, lines, stderr: stderr + String(error), trace, pid: child.pid })
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      if (partial) lines.push(partial)
      if (tracePartial) trace.push(tracePartial)
      resolve({ code, signal, timedOut, lines, stderr, trace: trace.slice(-traceLines), pid: child.pid })
    })
  })
}
