// The adversarial input table (test/fixtures/adversarial-cases.mjs): each bad input runs in a
// child process and must end in the expected error class and code — never a signal, a hang, a
// leaked mapping or a leaked descriptor. Cases are grouped by the class of issue 9 they probe.
import { beforeAll, describe, expect, it } from 'vitest'
import { Deduplicator, FeatureUnavailableError, MshareAttachment, MshareRegion, Region, Reservation, TwinIndex, Userfaultfd, features, ksm, pageSize, pagemap, stats } from '../lib/index.ts'
import { ensureDist } from './helpers/ksm.ts'
import { runChild } from './helpers/child.ts'
import { errorCode, thrown } from './helpers/errors.ts'
import { guardReceivers } from '../lib/internal.ts'
import { inVm } from './fuzz/common.mjs'
import { hostRunOnly } from './helpers/env.mjs'
import { runAdversarial } from './fuzz/adversarial.mjs'
import { cases } from './fixtures/adversarial-cases.mjs'

const classes = [...new Set(cases.map((c) => c.cls))]
const caseTimeoutMs = inVm ? 120_000 : 10_000
let results: Map<number, { ok: boolean; detail: string }>

beforeAll(async () => {
  ensureDist()
  results = await runAdversarial(cases.map((_, i) => i), { caseTimeoutMs })
}, inVm ? 3_000_000 : 600_000)

// Argument checking is the same on any kernel; the lab VM (each child a Node start, ~18x slower)
// leaves the hundreds of cases to the host run.
const argumentsOnly = hostRunOnly('argument checking')
describe.skipIf(argumentsOnly)(`adversarial inputs: ${cases.length} cases, each in a child process${argumentsOnly}`, () => {
  it('covers every class of issue 9 with more than one input', () => {
    for (let cls = 1; cls <= 12; cls++) expect(cases.filter((c) => c.cls === String(cls)).length, `class ${cls}`).toBeGreaterThan(1)
    expect(new Set(cases.map((c) => c.id)).size).toBe(cases.length)
    expect(cases.length).toBeGreaterThanOrEqual(150)
  })
  for (const cls of classes) {
    describe(`class ${cls}`, () => {
      cases.forEach((c, i) => {
        if (c.cls !== cls) return
        it(c.title, () => {
          const r = results.get(i)
          if (!r?.ok) expect.fail(r?.detail ?? 'no result')
        })
      })
    })
  }
})

// ---------------------------------------------------------------------------------------------
// Issue 20, item 1: forged handles. The constructors of the resource classes are private only in
// TypeScript; from JS, a constructor that takes a descriptor or an address would wrap anything,
// and its close() or finalizer would then close a descriptor (or unmap memory) memdedup never
// opened. Every forgery runs in a child: before the guard, dropping a Userfaultfd wrapped around
// Node's own epoll descriptor aborts the process.

/** The child's descriptor table as fd → what it points at (the readdir's own fd drops out). */
const fdTable = `
  const fs = await import('node:fs')
  const fdTable = () => {
    const table = {}
    for (const n of fs.readdirSync('/proc/self/fd')) {
      try {
        table[n] = fs.readlinkSync('/proc/self/fd/' + n)
      } catch (error) {
        if (error.code !== 'ENOENT') throw error
      }
    }
    return table
  }
  const outcome = (fn) => {
    try {
      return { value: fn() }
    } catch (error) {
      return { error: { name: error?.constructor?.name, code: error?.code, message: String(error?.message) } }
    }
  }
`

/**
 * Forgeries of each resource class, every way JS allows: arguments a real constructor took (or
 * their shape), a token-like first argument, a symbol with memdedup's description, Reflect.construct
 * (with and without a foreign new.target), and subclasses. `fd` is a descriptor of the child's own
 * (/dev/null) and `victim` a live Region whose memory the forgery points at.
 */
const forgeries: Record<string, string> = {
  'new Userfaultfd(fd, …) (the old constructor signature)': 'new lib.Userfaultfd(fd, 0, 0, 0n, 0)',
  'new Userfaultfd({}, fd, …) (a token-like object first)': 'new lib.Userfaultfd({}, fd, 0, 0, 0n, 0)',
  'new Userfaultfd(Symbol(description), fd, …)': "new lib.Userfaultfd(Symbol('memdedup.internal'), fd, 0, 0, 0n, 0)",
  'Reflect.construct(Userfaultfd, [fd, …])': 'Reflect.construct(lib.Userfaultfd, [fd, 0, 0, 0n, 0])',
  'Reflect.construct(Userfaultfd, [fd, …], Other)': 'Reflect.construct(lib.Userfaultfd, [fd, 0, 0, 0n, 0], class Other {})',
  'class extends Userfaultfd calling super(fd, …)': 'new (class extends lib.Userfaultfd { constructor() { super(fd, 0, 0, 0n, 0) } })()',
  'class extends Userfaultfd with the default constructor': 'new (class extends lib.Userfaultfd {})(fd, 0, 0, 0n, 0)',
  'new Region(symbol, victim memory and fd)': "new lib.Region(Symbol('memdedup.internal'), { address: Number(victim.address), length: P, kind: 'memfd', prot: undefined, fd })",
  'Reflect.construct(Region, [symbol, …], Other)': "Reflect.construct(lib.Region, [Symbol('memdedup.internal'), { address: Number(victim.address), length: P, kind: 'memfd', fd }], class Other {})",
  'class extends Region calling super(symbol, …)': "new (class extends lib.Region { constructor() { super(Symbol('memdedup.internal'), { address: Number(victim.address), length: P, kind: 'memfd', fd }) } })()",
  'new Reservation(symbol, victim memory)': "new lib.Reservation(Symbol('memdedup.internal'), { address: Number(victim.address), length: P, closed: false, slots: [] })",
  'class extends Reservation with the default constructor': "new (class extends lib.Reservation {})(Symbol('memdedup.internal'), { address: Number(victim.address), length: P, closed: false, slots: [] })",
  'new MshareRegion(symbol, fd, …)': "new lib.MshareRegion(Symbol('memdedup.internal'), fd, 'forged', P, true)",
  'Reflect.construct(MshareRegion, [symbol, fd, …], Other)': "Reflect.construct(lib.MshareRegion, [Symbol('memdedup.internal'), fd, 'forged', P, true], class Other {})",
  'new MshareAttachment(symbol, …, victim memory)': "new lib.MshareAttachment(Symbol('memdedup.internal'), {}, Number(victim.address), P, 'rw', () => {})",
  'class extends MshareAttachment calling super(symbol, …)': "new (class extends lib.MshareAttachment { constructor() { super(Symbol('memdedup.internal'), {}, Number(victim.address), P, 'rw', () => {}) } })()",
  'new TwinIndex(symbol, handle-like object)': "new lib.TwinIndex(Symbol('memdedup.internal'), {})",
  'Reflect.construct(TwinIndex, [symbol, {}], Other)': "Reflect.construct(lib.TwinIndex, [Symbol('memdedup.internal'), {}], class Other {})",
}

describe('forged handles: only memdedup constructs its resource classes (issue 20, item 1)', () => {
  type Forged = { error?: { name: string; code: string | undefined; message: string }; intact: boolean; memory: boolean }
  let results: Record<string, { close: Forged; drop: Forged }>
  let tableBefore: Record<string, string>
  let tableAfter: Record<string, string>
  let uncaught: string[]

  beforeAll(() => {
    // Each forgery gets its own descriptor (all opened first, so none is reused), once closed at
    // once with close() and once dropped for the finalizer. Then the child collects garbage and
    // reports, for each, what the constructor threw and whether its descriptor and the victim's
    // memory survived.
    const names = Object.keys(forgeries)
    const attempts = names.map((name) => `[${JSON.stringify(name)}, (fd, victim) => ${forgeries[name]}]`).join(',\n')
    const run = runChild(`
      ${fdTable}
      const P = lib.pageSize
      const attempts = [${attempts}]
      const victims = attempts.map(() => ({ close: lib.Region.anonymous(P), drop: lib.Region.anonymous(P) }))
      const fds = attempts.map(() => ({ close: fs.openSync('/dev/null', 'r'), drop: fs.openSync('/dev/null', 'r') }))
      // Before the guard, a forgery's finalizer could throw (closeFd of a non-number): recorded.
      const uncaught = []
      process.on('uncaughtException', (error) => uncaught.push(String(error)))
      const before = fdTable()
      const outcomes = attempts.map(([name, forge], i) => {
        const closed = outcome(() => forge(fds[i].close, victims[i].close))
        if (closed.value) outcome(() => closed.value.close())
        const dropped = outcome(() => forge(fds[i].drop, victims[i].drop))
        return { name, close: closed.error, drop: dropped.error }
      })
      await gcAll()
      const alive = (fd) => { try { return fs.readlinkSync('/proc/self/fd/' + fd) === '/dev/null' } catch (error) { if (error.code !== 'ENOENT') throw error; return false } }
      const mapped = (region) => fs.readFileSync('/proc/self/maps', 'latin1').split('\\n').some((line) => {
        const [start, end] = line.split(' ')[0].split('-').map((hex) => BigInt('0x' + hex))
        return start <= region.address && region.address < end
      })
      const results = {}
      outcomes.forEach(({ name, close, drop }, i) => {
        results[name] = {
          close: { error: close, intact: alive(fds[i].close), memory: mapped(victims[i].close) },
          drop: { error: drop, intact: alive(fds[i].drop), memory: mapped(victims[i].drop) },
        }
      })
      console.log(JSON.stringify({ results, before, after: fdTable(), uncaught }))
    `)
    results = run.result.results
    tableBefore = run.result.before
    tableAfter = run.result.after
    uncaught = run.result.uncaught
  })

  for (const name of Object.keys(forgeries)) {
    it(`${name}: TypeError ERR_ILLEGAL_CONSTRUCTOR, no descriptor closed, no memory unmapped`, () => {
      for (const how of ['close', 'drop'] as const) {
        const r = results[name][how]
        expect(r.error, `${how}: the forgery was constructed`).toMatchObject({ name: 'TypeError', code: 'ERR_ILLEGAL_CONSTRUCTOR' })
        expect(r.intact, `${how}: the child's /dev/null descriptor was closed`).toBe(true)
        expect(r.memory, `${how}: the victim Region's memory was unmapped`).toBe(true)
      }
    })
  }

  it('the child ends with the descriptor table it started with, and no finalizer threw', () => {
    expect(tableAfter).toEqual(tableBefore)
    expect(uncaught).toEqual([])
  })

  it("a Userfaultfd forged around Node's own epoll descriptor and dropped does not abort the process", () => {
    const run = runChild(`
      ${fdTable}
      const before = fdTable()
      const epoll = Object.keys(before).find((fd) => before[fd] === 'anon_inode:[eventpoll]')
      if (epoll === undefined) {
        console.log(JSON.stringify({ skip: 'no anon_inode:[eventpoll] descriptor in this Node' }))
      } else {
        const { error } = outcome(() => new lib.Userfaultfd(Number(epoll), 0, 0, 0n, 0)) // dropped at once
        await gcAll()
        await new Promise((resolve) => setTimeout(resolve, 20)) // the event loop runs on epoll
        console.log(JSON.stringify({ error, before, after: fdTable() }))
      }
    `)
    expect(run.result.skip).toBeUndefined()
    expect(run.result.error).toMatchObject({ name: 'TypeError', code: 'ERR_ILLEGAL_CONSTRUCTOR' })
    expect(run.result.after).toEqual(run.result.before)
  })

  it('a Userfaultfd forged around a negative descriptor and dropped throws nothing later (no finalizer)', () => {
    const run = runChild(`
      ${fdTable}
      const forged = [-1, -5, 2 ** 31, 0.5].map((fd) => outcome(() => new lib.Userfaultfd(fd, 0, 0, 0n, 0)).error)
      await gcAll() // a finalizer throwing here is an uncaught exception: the child exits 1
      console.log(JSON.stringify({ forged }))
    `)
    expect(run.result.forged).toHaveLength(4)
    for (const error of run.result.forged) expect(error).toMatchObject({ name: 'TypeError', code: 'ERR_ILLEGAL_CONSTRUCTOR' })
  })
})

// ---------------------------------------------------------------------------------------------
// Issue 20, item 8 (first part): a method or accessor of a resource class called on anything but
// an instance (Region.prototype.close.call({}), a getter taken off the prototype) is Node's
// TypeError ERR_INVALID_THIS, never V8's codeless "Cannot read private member" TypeError, nor a
// value computed for a non-instance.

describe('wrong receivers: TypeError ERR_INVALID_THIS (issue 20, item 8)', () => {
  const classes: Record<string, { prototype: object }> = { Region, Reservation, Userfaultfd, MshareRegion, MshareAttachment, TwinIndex, Deduplicator }

  /** Every function of the prototype: methods, getters, setters, by their property key. */
  function members(prototype: object): [string, (...args: unknown[]) => unknown][] {
    const out: [string, (...args: unknown[]) => unknown][] = []
    for (const key of Reflect.ownKeys(prototype)) {
      if (key === 'constructor') continue
      const d = Object.getOwnPropertyDescriptor(prototype, key)!
      const label = typeof key === 'symbol' ? `[${key.description}]` : key
      if (typeof d.value === 'function') out.push([label, d.value])
      if (d.get) out.push([`get ${label}`, d.get])
      if (d.set) out.push([`set ${label}`, d.set])
    }
    return out
  }

  for (const [name, cls] of Object.entries(classes)) {
    it(`${name}: every method and accessor refuses a receiver that is not a ${name}`, async () => {
      // A real object of another resource class is as wrong a receiver as a plain object.
      const foreign = name === 'Region' ? Region.reserve(pageSize) : Region.anonymous(pageSize)
      try {
        const receivers: [string, unknown][] = [
          ['{}', {}],
          ['1', 1],
          ["'x'", 'x'],
          ['undefined', undefined],
          ['null', null],
          [`Object.create(${name}.prototype)`, Object.create(cls.prototype)],
          [foreign.constructor.name, foreign],
        ]
        const list = members(cls.prototype)
        expect(list.length).toBeGreaterThan(3)
        for (const [member, fn] of list) {
          for (const [label, receiver] of receivers) {
            // An async method (Deduplicator.stop) rejects instead of throwing.
            let error: unknown
            try {
              const value = Reflect.apply(fn, receiver, [])
              if (value instanceof Promise) error = await value.then(() => undefined, (rejected: unknown) => rejected)
            } catch (caught) {
              error = caught
            }
            expect(error, `${name}.prototype.${member} on ${label}`).toBeInstanceOf(TypeError)
            expect(errorCode(error), `${name}.prototype.${member} on ${label}: ${String(error)}`).toBe('ERR_INVALID_THIS')
          }
        }
      } finally {
        foreign.close()
      }
    })
  }

  it('the examples of the issue', () => {
    const close = Userfaultfd.prototype.close
    expect(errorCode(thrown(() => close.call({})))).toBe('ERR_INVALID_THIS')
    const bytes = Object.getOwnPropertyDescriptor(Region.prototype, 'bytes')!.get!
    const error = thrown(() => bytes.call(1))
    expect(error).toBeInstanceOf(TypeError)
    expect(errorCode(error)).toBe('ERR_INVALID_THIS')
    expect((error as Error).message).toBe('Value of "this" must be of type Region')
  })

  it('guardReceivers covers setters and symbol keys; an async method rejects instead of throwing', async () => {
    class Probe {
      #value = 1
      static {
        guardReceivers(Probe, (value) => #value in value)
      }
      get value(): number {
        return this.#value
      }
      set value(v: number) {
        this.#value = v
      }
      [Symbol.iterator](): number {
        return this.#value
      }
      async later(): Promise<number> {
        return this.#value
      }
    }
    const probe = new Probe()
    probe.value = 5
    expect(probe.value).toBe(5)
    expect(probe[Symbol.iterator]()).toBe(5)
    await expect(probe.later()).resolves.toBe(5)
    const setter = Object.getOwnPropertyDescriptor(Probe.prototype, 'value')!.set!
    expect(errorCode(thrown(() => setter.call({}, 1)))).toBe('ERR_INVALID_THIS')
    expect(errorCode(thrown(() => Probe.prototype[Symbol.iterator].call(null)))).toBe('ERR_INVALID_THIS')
    const pending = Probe.prototype.later.call(Object.create(Probe.prototype))
    expect(pending).toBeInstanceOf(Promise)
    await expect(pending).rejects.toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_THIS', message: 'Value of "this" must be of type Probe' })
  })

  it('the checked methods keep their names and lengths, and work on a real instance', () => {
    expect(Region.prototype.protect.name).toBe('protect')
    expect(Region.prototype.protect.length).toBe(2)
    expect(Object.getOwnPropertyDescriptor(Region.prototype, 'bytes')!.get!.name).toBe('get bytes')
    expect(Region.prototype[Symbol.dispose].name).toBe(`[${Symbol.dispose.description}]`)
    expect(Reservation.prototype.mapAnonymous.length).toBe(2)
    expect(Userfaultfd.prototype.writeProtect.length).toBe(3)
    // Methods stay methods: not constructible.
    expect(thrown(() => new (Region.prototype.close as unknown as new () => object)())).toBeInstanceOf(TypeError)
    const region = Region.anonymous(pageSize)
    Region.prototype.protect.call(region, 'r')
    expect(region.protection()).toBe('r')
    region[Symbol.dispose]()
    expect(region.closed).toBe(true)
  })
})

describe('a real Region with a swapped prototype (issue 20, item 8)', () => {
  it("cannot point ksm.enable, sksm.merge or pagemap at memory it does not own: the Region's own span is used", () => {
    using victim = Region.anonymous(pageSize)
    using region = Region.anonymous(pageSize)
    const lying = Object.create(Region.prototype, {
      span: { value: () => ({ address: Number(victim.address), length: pageSize }) },
    }) as Region
    Object.setPrototypeOf(region, lying)
    const e = pagemap.entries(region)
    expect(e.address).toBe(region.address)
  })
})

// ---------------------------------------------------------------------------------------------
// Issue 20, "same thing once": one name per operation. The Deduplicator's v1 aliases add()/remove()
// (of track()/untrack()) are gone; ksm_stat has one parser, KSM presence one probe.

describe('one way to do each thing (issue 20)', () => {
  it('Deduplicator has track()/untrack() only: no add()/remove() aliases', () => {
    expect(typeof Deduplicator.prototype.track).toBe('function')
    expect(typeof Deduplicator.prototype.untrack).toBe('function')
    expect(Object.hasOwn(Deduplicator.prototype, 'add')).toBe(false)
    expect(Object.hasOwn(Deduplicator.prototype, 'remove')).toBe(false)
  })

  it('ksm.processStats() and stats.process() read the same ksm_stat fields alike', (ctx) => {
    if (!features().ksm) ctx.skip('no KSM (CONFIG_KSM off): no ksm_stat')
    let fromKsm: ReturnType<typeof ksm.processStats>
    try {
      fromKsm = ksm.processStats()
    } catch (error) {
      if (!(error instanceof FeatureUnavailableError)) throw error
      ctx.skip(`no /proc/self/ksm_stat on this kernel: ${error.message}`)
    }
    const fromStats = stats.process()
    for (const key of ['ksmRmapItems', 'ksmZeroPages', 'ksmProcessProfit', 'ksmMergeAny', 'ksmMergeable'] as const) {
      expect(fromStats[key], key).toBe(fromKsm![key] ?? null)
    }
  })

  it('features().ksm is ksm.available(), and stats.system() reports KSM exactly when it is true', () => {
    expect(features().ksm).toBe(ksm.available())
    expect(stats.system().ksm !== null).toBe(ksm.available())
  })
})
