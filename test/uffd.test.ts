// userfaultfd: open + feature negotiation, register/unregister/writeProtect on Regions, and the
// bad inputs (each asserting error class, code, and that no fd leaked). No test here ever
// writes to a page under a *synchronous* WP or touches a MISSING/MINOR registration: with
// nobody reading the uffd that would block the worker forever.
import { spawn } from 'node:child_process'
import { describe, expect, it } from 'vitest'
import { FeatureUnavailableError, InvalidStateError, Region, Reservation, SyscallError, Userfaultfd, features, pagemap, pageSize } from '../lib/index.ts'
import { vmFlagsIn } from './helpers/vma.ts'
import { thrown } from './helpers/errors.ts'
import { probeUserfaultfd } from '../lib/uffd.ts'
import { noFdLeak } from './helpers/process.ts'
import { requires } from './helpers/env.mjs'
import { ensureDist, distEntry } from './helpers/dist.mjs'

const P = pageSize
const f = features()
const noUffd = !f.userfaultfd
const noAsync = !f.uffdWpAsync || !f.pagemapScan
const why = requires(f, ['userfaultfd'])
const whyAsync = requires(f, ['uffdWpAsync', 'pagemapScan'])


describe('probe', () => {
  it('probeUserfaultfd() never throws and agrees with features()', () => {
    const p = probeUserfaultfd()
    expect(p).toEqual({ available: f.userfaultfd, wpAsync: f.uffdWpAsync })
  })
})

describe.skipIf(noUffd)(`Userfaultfd.open ${why}`, () => {
  it('opens without features and closes idempotently, releasing the fd', () => {
    noFdLeak(() => {
      const uffd = Userfaultfd.open()
      expect(uffd.fd).toBeGreaterThanOrEqual(0)
      expect(uffd.closed).toBe(false)
      expect(uffd.features).toEqual([])
      expect(uffd.offeredFeatures.length).toBeGreaterThan(0)
      // UFFDIO_API, UFFDIO_REGISTER and UFFDIO_UNREGISTER are always usable on the fd.
      expect(uffd.ioctls & (1n << 63n)).toBe(1n << 63n)
      expect(uffd.ioctls & 3n).toBe(3n)
      uffd.close()
      uffd.close()
      expect(uffd.closed).toBe(true)
      expect(uffd.fd).toBe(-1)
    })
  })

  it('`using` closes it', () => {
    noFdLeak(() => {
      using uffd = Userfaultfd.open()
      expect(uffd.closed).toBe(false)
    })
  })

  it.skipIf(noAsync)(`grants wpAsync (with wpUnpopulated, which anonymous tracking needs) ${whyAsync}`, () => {
    using uffd = Userfaultfd.open({ features: ['wpAsync'] })
    expect(uffd.features).toContain('wpAsync')
    expect(uffd.features).toContain('wpUnpopulated')
  })

  it('grants the features of pagemap_ioctl.c (wpUnpopulated, wpAsync, wpHugetlbfsShmem) when offered', () => {
    const wanted = ['wpUnpopulated', 'wpAsync', 'wpHugetlbfsShmem'] as const
    const offered = Userfaultfd.open()
    const all = wanted.every((w) => offered.offeredFeatures.includes(w))
    offered.close()
    if (!all) return expect(() => Userfaultfd.open({ features: [...wanted] })).toThrow(FeatureUnavailableError)
    using uffd = Userfaultfd.open({ features: [...wanted] })
    expect(uffd.features).toEqual(expect.arrayContaining([...wanted]))
  })

  it('accepts raw feature bits (open flag set)', () => {
    using uffd = Userfaultfd.open({ features: [1 << 0] })
    expect(uffd.features).toEqual(['pagefaultFlagWp'])
  })

  it('unknown feature name → TypeError ERR_INVALID_ARG_VALUE, no fd leaked', () => {
    noFdLeak(() => {
      expect(() => Userfaultfd.open({ features: ['wpAsnyc' as never] })).toThrow(TypeError)
      expect(() => Userfaultfd.open({ features: ['wpAsnyc' as never] })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }))
      expect(() => Userfaultfd.open({ features: 'wpAsync' as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }))
      expect(() => Userfaultfd.open({ features: [{}] as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }))
      expect(() => Userfaultfd.open(42 as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }))
    })
  })

  it('a feature the kernel does not offer → FeatureUnavailableError naming it, no fd leaked', () => {
    noFdLeak(() => {
      const bit = 1 << 30 // not defined by any kernel yet
      const error = thrown(() => Userfaultfd.open({ features: ['wpAsync', bit] }))
      expect(error).toBeInstanceOf(FeatureUnavailableError)
      expect((error as FeatureUnavailableError).code).toBe('ERR_MEMDEDUP_FEATURE_UNAVAILABLE')
      expect((error as FeatureUnavailableError).feature).toContain('0x40000000')
    })
  })

  it('event features need allowBlockingFaults (they stall fork/munmap until read)', () => {
    noFdLeak(() => {
      expect(() => Userfaultfd.open({ features: ['eventRemove'] })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }))
    })
    using uffd = Userfaultfd.open({ features: ['eventRemove'], allowBlockingFaults: true })
    expect(uffd.features).toEqual(['eventRemove'])
  })
})

describe.skipIf(noUffd)(`register / unregister / writeProtect ${why}`, () => {
  it('registers WP, protects and unprotects (sync WP: never written while protected)', () => {
    noFdLeak(() => {
      using r = Region.anonymous(8 * P)
      r.bytes.fill(1)
      using uffd = Userfaultfd.open()
      const ioctls = uffd.register(r, { writeProtect: true })
      expect(ioctls & (1n << 6n)).toBe(1n << 6n) // _UFFDIO_WRITEPROTECT
      expect(uffd.registrations(r)).toEqual([{ offset: 0, length: 8 * P, writeProtect: true, missing: false, minor: false }])
      uffd.writeProtect(r, { offset: 0, length: 4 * P }, true)
      expect(pagemap.entries(r).uffdWp(0)).toBe(true)
      expect(pagemap.entries(r).uffdWp(5)).toBe(false)
      uffd.writeProtect(r, undefined, false)
      expect(pagemap.entries(r).count(32)).toBe(0)
      r.bytes[0] = 2 // safe again: unprotected
      uffd.unregister(r)
      expect(uffd.registrations(r)).toEqual([])
    })
  })

  it.skipIf(noAsync)(`wpAsync: writes to protected pages do not block and show up in PAGEMAP_SCAN ${whyAsync}`, () => {
    using r = Region.anonymous(16 * P)
    using uffd = Userfaultfd.open({ features: ['wpAsync'] })
    uffd.register(r, { writeProtect: true })
    uffd.writeProtect(r, undefined, true)
    expect(pagemap.scan(r, { require: ['written'] }).pages).toBe(0)
    r.bytes[3 * P] = 1
    r.bytes[9 * P] = 1
    const written = pagemap.scan(r, { require: ['written'] })
    expect([...written.starts].map((s) => Number(s - r.address) / P)).toEqual([3, 9])
  })

  it('registers a sub-range, and the rest separately', () => {
    using r = Region.anonymous(8 * P)
    using uffd = Userfaultfd.open()
    uffd.register(r, { writeProtect: true }, { offset: 2 * P, length: 2 * P })
    uffd.register(r, { writeProtect: true }, { offset: 4 * P, length: 4 * P })
    expect(uffd.registrations(r)).toEqual([{ offset: 2 * P, length: 6 * P, writeProtect: true, missing: false, minor: false }])
    uffd.unregister(r, { offset: 2 * P, length: 2 * P })
    expect(uffd.registrations(r)).toEqual([{ offset: 4 * P, length: 4 * P, writeProtect: true, missing: false, minor: false }])
  })

  it('register twice → InvalidStateError ERR_UFFD_ALREADY_REGISTERED, no fd leaked', () => {
    noFdLeak(() => {
      using r = Region.anonymous(4 * P)
      using uffd = Userfaultfd.open()
      uffd.register(r, { writeProtect: true })
      expect(() => uffd.register(r, { writeProtect: true })).toThrow(InvalidStateError)
      expect(() => uffd.register(r, { writeProtect: true }, { offset: P, length: P })).toThrow(expect.objectContaining({ code: 'ERR_UFFD_ALREADY_REGISTERED' }))
    })
  })

  it('a range registered by another uffd → SyscallError EBUSY from the kernel', () => {
    noFdLeak(() => {
      using r = Region.anonymous(4 * P)
      using a = Userfaultfd.open()
      using b = Userfaultfd.open()
      a.register(r, { writeProtect: true })
      const error = thrown(() => b.register(r, { writeProtect: true }))
      expect(error).toBeInstanceOf(SyscallError)
      expect(error).toMatchObject({ code: 'EBUSY', errno: -16, syscall: 'ioctl(UFFDIO_REGISTER)' })
    })
  })

  it('writeProtect without WP registration → InvalidStateError ERR_UFFD_NOT_REGISTERED', () => {
    noFdLeak(() => {
      using r = Region.anonymous(4 * P)
      using uffd = Userfaultfd.open()
      expect(() => uffd.writeProtect(r, undefined, true)).toThrow(expect.objectContaining({ name: 'InvalidStateError', code: 'ERR_UFFD_NOT_REGISTERED' }))
      uffd.register(r, { writeProtect: true }, { offset: 0, length: P })
      expect(() => uffd.writeProtect(r, { offset: 0, length: 2 * P }, true)).toThrow(expect.objectContaining({ code: 'ERR_UFFD_NOT_REGISTERED' }))
      uffd.writeProtect(r, { offset: 0, length: P }, false)
    })
  })

  it('MISSING / MINOR need allowBlockingFaults (registration only: the memory is never touched)', () => {
    noFdLeak(() => {
      using r = Region.anonymous(4 * P)
      using uffd = Userfaultfd.open()
      expect(() => uffd.register(r, { missing: true })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }))
      expect(() => uffd.register(r, { minor: true })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }))
      expect(() => uffd.register(r, {})).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }))
      uffd.register(r, { missing: true, allowBlockingFaults: true })
      expect(uffd.registrations(r)[0]).toMatchObject({ missing: true, writeProtect: false })
      // Unregister before anything could touch it (close() of r would too).
      uffd.unregister(r)
    })
  })

  it('MINOR on anonymous memory → SyscallError EINVAL (shmem/hugetlbfs only)', () => {
    using r = Region.anonymous(4 * P)
    using uffd = Userfaultfd.open()
    expect(() => uffd.register(r, { minor: true, allowBlockingFaults: true })).toThrow(expect.objectContaining({ name: 'SyscallError', code: 'EINVAL', syscall: 'ioctl(UFFDIO_REGISTER)' }))
    expect(uffd.registrations(r)).toEqual([])
  })

  it('ranges outside the region → RangeError ERR_OUT_OF_RANGE; bad types → TypeError', () => {
    noFdLeak(() => {
      using r = Region.anonymous(4 * P)
      using uffd = Userfaultfd.open()
      for (const range of [{ offset: 4 * P, length: P }, { offset: 0, length: 5 * P }, { offset: 1, length: P }, { offset: 0, length: 0 }, { offset: -P, length: P }]) {
        expect(() => uffd.register(r, { writeProtect: true }, range)).toThrow(RangeError)
        expect(() => uffd.register(r, { writeProtect: true }, range)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }))
      }
      expect(() => uffd.writeProtect(r, { offset: 8 * P, length: P }, true)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }))
      expect(() => uffd.unregister(r, { offset: 0, length: 8 * P })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }))
      expect(() => uffd.register({} as never, { writeProtect: true })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }))
      expect(() => uffd.register(r, { writeProtect: 'yes' as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }))
      uffd.register(r, { writeProtect: true })
      expect(() => uffd.writeProtect(r, undefined, 1 as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }))
    })
  })

  it('closed region → InvalidStateError ERR_REGION_CLOSED', () => {
    noFdLeak(() => {
      using uffd = Userfaultfd.open()
      const r = Region.anonymous(4 * P)
      r.close()
      expect(() => uffd.register(r, { writeProtect: true })).toThrow(expect.objectContaining({ name: 'InvalidStateError', code: 'ERR_REGION_CLOSED' }))
      expect(() => uffd.writeProtect(r, undefined, true)).toThrow(expect.objectContaining({ code: 'ERR_REGION_CLOSED' }))
      expect(() => uffd.unregister(r)).toThrow(expect.objectContaining({ code: 'ERR_REGION_CLOSED' }))
    })
  })

  it('closed uffd → InvalidStateError ERR_UFFD_CLOSED', () => {
    noFdLeak(() => {
      using r = Region.anonymous(4 * P)
      const uffd = Userfaultfd.open()
      uffd.close()
      expect(() => uffd.register(r, { writeProtect: true })).toThrow(expect.objectContaining({ name: 'InvalidStateError', code: 'ERR_UFFD_CLOSED' }))
      expect(() => uffd.writeProtect(r, undefined, true)).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }))
      expect(() => uffd.unregister(r)).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }))
    })
  })

  it('closing the Region unregisters it first; the uffd stays usable', () => {
    noFdLeak(() => {
      using uffd = Userfaultfd.open()
      const r = Region.anonymous(4 * P)
      uffd.register(r, { writeProtect: true })
      uffd.writeProtect(r, undefined, true)
      r.close()
      expect(uffd.registrations(r)).toEqual([])
      // A new mapping (possibly at the same address) registers cleanly.
      using r2 = Region.anonymous(4 * P)
      uffd.register(r2, { writeProtect: true })
    })
  })

  it('remapping a registered Region unregisters the old one; the new one is not registered', () => {
    using uffd = Userfaultfd.open()
    const r = Region.anonymous(4 * P)
    r.bytes.fill(7)
    uffd.register(r, { writeProtect: true })
    uffd.writeProtect(r, undefined, true)
    using moved = r.remap(64 * P)
    expect(r.closed).toBe(true)
    expect(uffd.registrations(moved)).toEqual([])
    expect(pagemap.entries(moved, { offset: 0, length: 4 * P }).count(32)).toBe(0)
    moved.bytes[0] = 8 // would block forever if the sync WP had survived the move
    expect(moved.bytes[P]).toBe(7)
  })

  it('class 9: growing or shrinking in place leaves no registration behind in the kernel', () => {
    for (const newLength of [64 * P, 2 * P]) {
      using a = Userfaultfd.open()
      using b = Userfaultfd.open()
      // A hole after the Region so it can grow in place: map 64 pages, keep the first 4.
      const big = Region.anonymous(64 * P)
      const r = big.remap(4 * P, { mayMove: false })
      a.register(r, { writeProtect: true })
      using resized = r.remap(newLength, { mayMove: false })
      expect(resized.address).toBe(r.address)
      expect(a.registrations(resized)).toEqual([])
      // Another uffd can register all of it: the kernel kept nothing for `a` (EBUSY before).
      b.register(resized, { writeProtect: true })
      expect(b.registrations(resized)).toEqual([{ offset: 0, length: newLength, writeProtect: true, missing: false, minor: false }])
    }
  })

  // Some kernels (6.18.44 seen; not Debian's 6.12.118, whose copy_vma() refuses the merge): mremap
  // moves a VMA with copy_vma(), which merges it into a neighbour registered with the same uffd (one
  // of them never faulted: no anon_vma), then mremap_userfaultfd_prep() drops the uffd context of
  // the *merged* VMA: the neighbour loses its registration silently (its next PAGEMAP_SCAN with
  // checkWpAsync: EPERM; found by the fuzzer). remap() unregisters the Region before it moves.
  describe('a move next to another Region registered with the same uffd leaves that Region registered', () => {
    let view: Uint8Array | undefined
    const moves = {
      'fixed into a Reservation': (a: Region, res: Reservation) => a.remap(12 * P, { fixed: { into: res, offset: 20 * P } }),
      'fixed into a Reservation, grown from 8 pages': (a: Region, res: Reservation) => a.remap(12 * P, { fixed: { into: res, offset: 20 * P } }),
      'fixed into a Reservation, with a live view (the old range is kept until the move is done)': (a: Region, res: Reservation) => {
        view = a.bytes
        return a.remap(12 * P, { fixed: { into: res, offset: 20 * P } })
      },
    }
    for (const [how, move] of Object.entries(moves)) {
      it(how, () => {
        using uffd = Userfaultfd.open()
        using res = Region.reserve(64 * P)
        // Neither Region is ever touched (no anon_vma), which is what lets the kernel merge them.
        using b = res.mapAnonymous({ offset: 32 * P, length: 4 * P })
        const a = Region.anonymous(how.includes('grown') ? 8 * P : 12 * P)
        uffd.register(a, { writeProtect: true })
        uffd.register(b, { writeProtect: true })
        using moved = move(a, res)
        expect(moved.address + BigInt(moved.length)).toBe(b.address)
        expect(vmFlagsIn(b.address, b.length).map((v) => v.flags.includes('uw'))).toEqual([true])
        expect(uffd.registrations(b)).toEqual([{ offset: 0, length: 4 * P, writeProtect: true, missing: false, minor: false }])
        uffd.writeProtect(b, undefined, true) // ENOENT once the kernel dropped the registration
        expect(vmFlagsIn(moved.address, moved.length).every((v) => !v.flags.includes('uw'))).toBe(true)
        view = undefined
      })
    }
  })

  it('a remap the kernel refuses leaves the Region registered (its pages read as written until protected again)', () => {
    using uffd = Userfaultfd.open({ features: noAsync ? [] : ['wpAsync'] })
    const [first, second] = Region.anonymous(8 * P).split(4 * P)
    using r = first
    using wall = second
    r.bytes.fill(1)
    uffd.register(r, { writeProtect: true })
    uffd.writeProtect(r, undefined, true)
    // Growing in place into `wall`: the kernel refuses (ENOMEM); nothing moved.
    expect(thrown(() => r.remap(6 * P, { mayMove: false }))).toMatchObject({ name: 'SyscallError', code: 'ENOMEM', syscall: 'mremap' })
    expect(r.closed).toBe(false)
    expect(vmFlagsIn(r.address, r.length).map((v) => v.flags.includes('uw'))).toEqual([true])
    expect(uffd.registrations(r)).toEqual([{ offset: 0, length: 4 * P, writeProtect: true, missing: false, minor: false }])
    if (!noAsync) expect(pagemap.scan(r, { require: ['written'] }).pages).toBe(4)
    uffd.writeProtect(r, undefined, true)
    expect(wall.bytes[0]).toBe(0)
  })

  it('class 12: unknown option keys are refused', () => {
    expect(thrown(() => Userfaultfd.open({ featurs: [] } as never))).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' })
    using uffd = Userfaultfd.open()
    using r = Region.anonymous(P)
    expect(thrown(() => uffd.register(r, { writeprotect: true } as never))).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' })
  })

  it('closing the uffd leaves registered Regions usable (the kernel drops the registrations)', () => {
    noFdLeak(() => {
      using r = Region.anonymous(4 * P)
      const uffd = Userfaultfd.open()
      uffd.register(r, { writeProtect: true })
      uffd.writeProtect(r, undefined, true)
      uffd.close()
      r.bytes[0] = 1 // no uffd left: the WP bit no longer traps
      expect(r.bytes[0]).toBe(1)
      r.close() // the (unsubscribed) hook must not run against the closed fd
    })
  })

  it('a file-backed private Region can be registered for WP only with wpAsync', (ctx) => {
    using r = Region.file(process.execPath, { length: 4 * P })
    using sync = Userfaultfd.open()
    expect(() => sync.register(r, { writeProtect: true })).toThrow(expect.objectContaining({ code: 'EINVAL' }))
    // The refusal above held; the "only with wpAsync" half needs the feature.
    if (!f.uffdWpAsync) ctx.skip(`UFFD_FEATURE_WP_ASYNC is not available on ${f.kernelRelease}: the wpAsync registration is not tested`)
    using wpAsync = Userfaultfd.open({ features: ['wpAsync'] })
    wpAsync.register(r, { writeProtect: true })
    wpAsync.writeProtect(r, undefined, true)
  })

  it('memfd (shmem) Regions take WP with wpHugetlbfsShmem', (ctx) => {
    using r = Region.memfd(4 * P)
    using plain = Userfaultfd.open()
    if (!plain.offeredFeatures.includes('wpHugetlbfsShmem')) return ctx.skip('wpHugetlbfsShmem is not offered here')
    using shmem = Userfaultfd.open({ features: ['wpHugetlbfsShmem'] })
    shmem.register(r, { writeProtect: true })
    shmem.writeProtect(r, undefined, true)
    shmem.writeProtect(r, undefined, false)
  })

  it('the documented danger: a write to a sync-WP page blocks the thread (in a child, killed after a timeout)', async () => {
    ensureDist()
    const script = `
      import { Region, Userfaultfd } from ${JSON.stringify(distEntry)}
      const r = Region.anonymous(4096)
      r.bytes[0] = 1
      const uffd = Userfaultfd.open()
      uffd.register(r, { writeProtect: true })
      uffd.writeProtect(r, undefined, true)
      process.stdout.write('armed\\n')
      r.bytes[0] = 2
      process.stdout.write('wrote\\n')
    `
    // Wait for 'armed', give the write a second (it takes microseconds when it does not block),
    // then check the child is still stuck and kill it.
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stderr.on('data', (chunk) => (stderr += chunk))
    const armed = new Promise<void>((resolve) => child.stdout.on('data', (chunk) => {
      stdout += chunk
      if (stdout.includes('armed')) resolve()
    }))
    const exited = new Promise<NodeJS.Signals | number | null>((resolve) => child.on('exit', (code, signal) => resolve(signal ?? code)))
    await Promise.race([armed, exited])
    await new Promise((resolve) => setTimeout(resolve, 1000))
    const stillRunning = child.exitCode === null && child.signalCode === null
    child.kill('SIGKILL')
    expect(await exited).toBe('SIGKILL')
    expect(stderr).toBe('')
    expect(stdout).toBe('armed\n')
    expect(stillRunning).toBe(true)
  }, 180_000)
})
