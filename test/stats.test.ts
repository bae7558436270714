// lib/stats.ts: the kernel counters the savings claims rest on.
import fs from 'node:fs'
import os from 'node:os'
import { describe, expect, it } from 'vitest'
import { Region, SyscallError, ksm, stats, pageSize } from '../lib/index.ts'
import { errorCode, thrown } from './helpers/errors.ts'
import { kernelThreadPid } from './helpers/process.ts'

describe('stats', () => {
  it('vmstat() parses /proc/vmstat; RssAnon follows a populated region', () => {
    const v = stats.vmstat()
    expect(Object.keys(v).length).toBe(fs.readFileSync('/proc/vmstat', 'utf8').trim().split('\n').length)
    expect(v.nr_anon_pages).toBeGreaterThan(0)
    const pages = 16384 // 64 MiB
    const before = stats.status().RssAnon
    using r = Region.anonymous(pages * pageSize)
    r.advise('populateWrite')
    // Our own anonymous RSS is exact; the system-wide nr_anon_pages moves with every other
    // process, so it only has to be large enough to contain ours.
    expect(stats.status().RssAnon - before).toBeGreaterThanOrEqual(pages * pageSize)
    expect(stats.vmstat().nr_anon_pages).toBeGreaterThanOrEqual(pages)
  })

  it('smapsRollup() and status() report bytes, and RSS grows with a populated region', () => {
    const before = stats.smapsRollup()
    expect(before.Rss).toBeGreaterThan(0)
    expect(before.Rss % 1024).toBe(0)
    using r = Region.anonymous(1024 * pageSize)
    r.advise('populateWrite')
    expect(stats.smapsRollup().Anonymous - before.Anonymous).toBeGreaterThanOrEqual(1024 * pageSize * 0.9)
    const status = stats.status()
    expect(status.VmRSS).toBeGreaterThan(0)
    expect(stats.pageTableBytes()).toBe(status.VmPTE)
    expect(stats.meminfo().MemTotal).toBeGreaterThan(0)
  })

  it('reads another process by pid', () => {
    expect(stats.status(1).VmPTE ?? 0).toBeGreaterThanOrEqual(0)
    expect(() => stats.smapsRollup(2 ** 30)).toThrow(expect.objectContaining({ code: 'ENOENT' }))
  })

  it('class 12: a /proc file that cannot be read is a SyscallError, and a pid is never a path', () => {
    for (const read of [() => stats.status(2 ** 22 + 1), () => stats.smapsRollup(2 ** 22 + 1)]) {
      const error = thrown(read) as SyscallError
      expect(error).toBeInstanceOf(SyscallError) // Node's raw fs Error before
      expect(error).toMatchObject({ code: 'ENOENT', errno: -2, syscall: 'open' })
    }
    expect(thrown(() => stats.status('../self' as never))).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' })
    expect(thrown(() => stats.smapsRollup(-1))).toMatchObject({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' })
  })
})

describe('stats per process (what memdedup top reads)', () => {
  const ksmStat = fs.existsSync('/proc/self/ksm_stat')

  it('process() reads this process: pid, command, memory, and its page tables (VmPTE) growing with a populated region', () => {
    const before = stats.process()
    expect(before.pid).toBe(process.pid)
    expect(stats.process(process.pid).pid).toBe(process.pid)
    expect(before.command).toBe(fs.readFileSync('/proc/self/cmdline', 'utf8').replace(/\0$/, '').split('\0').join(' '))
    expect(before.rss).toBeGreaterThan(0)
    expect(before.pss).toBeGreaterThan(0)
    // 64 MiB of 4 KiB pages needs 32 page-table pages (one per 2 MiB) the kernel counts in VmPTE.
    const pages = 16384
    using r = Region.anonymous(pages * pageSize)
    // One PMD-mapped THP would need no page-table page at all.
    if (fs.existsSync('/sys/kernel/mm/transparent_hugepage/enabled')) r.advise('nohugepage')
    r.advise('populateWrite')
    const vmPteBefore = stats.status().VmPTE
    const after = stats.process()
    const vmPteAfter = stats.status().VmPTE
    expect(after.pageTableBytes).toBeGreaterThanOrEqual(vmPteBefore)
    expect(after.pageTableBytes).toBeLessThanOrEqual(vmPteAfter)
    expect(after.pageTableBytes - before.pageTableBytes).toBeGreaterThanOrEqual(((pages * pageSize) / (2 * 2 ** 20)) * pageSize)
    expect(after.anonymous - before.anonymous).toBeGreaterThanOrEqual(pages * pageSize * 0.9)
    if (ksmStat) expect(after.ksmMergingPages).toBe(ksm.processStats().ksmMergingPages)
  })

  it.skipIf(!ksmStat)(`processes() lists a process once it opts in to KSM (ksm_mergeable), and not before${ksmStat ? '' : ' — skipped: no /proc/self/ksm_stat'}`, (ctx) => {
    const mine = () => stats.processes().find((p) => p.pid === process.pid)
    const self = stats.process()
    if (self.ksmMergeable === null) ctx.skip(`this kernel (${os.release()}) does not report ksm_mergeable in /proc/self/ksm_stat`)
    if (self.ksmMergeAny === true) ctx.skip('this process already merges everything (PR_SET_MEMORY_MERGE set by the runner): it is listed before opting in')
    expect(mine()).toBeUndefined()
    using r = Region.anonymous(16 * pageSize)
    ksm.enable(r)
    const listed = mine()
    expect(listed).toMatchObject({ pid: process.pid, ksmMergeable: true })
    ksm.disable(r)
  })

  it('processes({ all: true }) lists every process with memory once, kernel threads never', () => {
    const all = stats.processes({ all: true })
    const pids = all.map((p) => p.pid)
    expect(new Set(pids).size).toBe(pids.length)
    expect(pids).toContain(process.pid)
    // Kernel threads (no Vm* lines in status: no mm) are not processes with memory.
    for (const entry of fs.readdirSync('/proc').filter((e) => /^\d+$/.test(e)).slice(0, 400)) {
      let text: string
      try {
        text = fs.readFileSync(`/proc/${entry}/status`, 'utf8')
      } catch (error) {
        if (errorCode(error) === 'ENOENT' || errorCode(error) === 'ESRCH') continue // exited meanwhile
        throw error
      }
      if (!/^VmSize:/m.test(text) && /^State:\s+[SRDI]/m.test(text)) expect(pids).not.toContain(Number(entry))
    }
    for (const p of all) {
      if ('error' in p) expect(['EACCES', 'EPERM']).toContain(p.error)
      else expect(p.rss).toBeGreaterThanOrEqual(0)
    }
  })

  it('a kernel thread is ESRCH, a gone pid ENOENT, and a pid or option is never anything but validated', () => {
    const kthread = kernelThreadPid()
    if (kthread) expect(thrown(() => stats.process(kthread))).toMatchObject({ name: 'SyscallError', code: 'ESRCH' })
    expect(thrown(() => stats.process(2 ** 22 + 1))).toMatchObject({ name: 'SyscallError', code: 'ENOENT', syscall: 'open' })
    expect(thrown(() => stats.process(-1))).toMatchObject({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' })
    expect(thrown(() => stats.process(1.5))).toMatchObject({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' })
    expect(thrown(() => stats.process('1' as never))).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' })
    expect(thrown(() => stats.process('../self' as never))).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' })
    expect(thrown(() => stats.processes(null as never))).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' })
    expect(thrown(() => stats.processes({ al: true } as never))).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' })
    expect(thrown(() => stats.processes({ all: 1 } as never))).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' })
  })

  it('system(): KSM sysfs, general_profit and /proc/vmstat in one object', () => {
    const s = stats.system()
    expect(s.pageSize).toBe(pageSize)
    expect(s.nrAnonPages).toBeGreaterThan(0)
    expect(s.nrPageTablePages).toBeGreaterThan(0)
    if (fs.existsSync('/sys/kernel/mm/ksm')) {
      expect(s.ksm).not.toBeNull()
      expect(s.savedBytes).toBe(s.ksm!.pagesSharing * pageSize)
      if (fs.existsSync('/sys/kernel/mm/ksm/general_profit')) expect(typeof s.generalProfit).toBe('number')
      else expect(s.generalProfit).toBeNull()
    } else expect(s.ksm).toBeNull()
  })
})
