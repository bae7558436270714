// lib/stats.ts: the kernel counters the savings claims rest on.
import fs from 'node:fs'
import { describe, expect, it } from 'vitest'
import { Region, SyscallError, stats, pageSize } from '../lib/index.ts'
import { thrown } from './helpers/errors.ts'

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
