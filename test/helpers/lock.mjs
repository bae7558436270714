// The cross-process lock around everything that drives ksmd (run, pages_to_scan, the global
// counters): two test runs or a bench at once would corrupt each other's exact expectations.
// Plain JavaScript, shared by test/helpers/ksm.ts and bench/harness.mjs.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { inVm } from './env.mjs'

export const ksmLockPath = path.join(os.tmpdir(), 'memdedup-ksm-tests.lock')
export const ksmLockTimeoutMs = inVm ? 540_000 : 300_000

function alive(pid) {
  if (!Number.isInteger(pid) || pid <= 0) return false
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return error.code === 'EPERM'
  }
}

/**
 * Takes the lock (a lock left by a dead process is taken over) and returns its release.
 * @returns {Promise<() => void>}
 */
export async function acquireKsmLock(timeoutMs = ksmLockTimeoutMs) {
  const deadline = Date.now() + timeoutMs
  let told = false
  for (;;) {
    try {
      fs.writeFileSync(ksmLockPath, String(process.pid), { flag: 'wx' })
      let released = false
      return () => {
        if (released) return
        released = true
        try {
          if (fs.readFileSync(ksmLockPath, 'utf8') === String(process.pid)) fs.unlinkSync(ksmLockPath)
        } catch (error) {
          if (error.code !== 'ENOENT') throw error // else: already gone
        }
      }
    } catch (error) {
      if (error.code !== 'EEXIST') throw error
    }
    let owner = NaN
    try {
      owner = Number(fs.readFileSync(ksmLockPath, 'utf8'))
    } catch (error) {
      if (error.code === 'ENOENT') continue // released between our open and read
      throw error
    }
    if (!alive(owner)) {
      fs.rmSync(ksmLockPath, { force: true })
      continue
    }
    if (Date.now() > deadline) throw new Error(`${ksmLockPath} is held by pid ${owner} (another KSM test run) for more than ${timeoutMs} ms`)
    if (!told) {
      told = true
      process.stderr.write(`waiting for ${ksmLockPath}, held by pid ${owner}\n`)
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

/** Runs `fn` holding the lock. */
export async function withKsmLock(fn, { timeoutMs = ksmLockTimeoutMs } = {}) {
  const release = await acquireKsmLock(timeoutMs)
  try {
    return await fn()
  } finally {
    release()
  }
}
