// numa: nodes() (the nodes with memory), bind() (mbind MPOL_BIND, with and without MPOL_MF_MOVE)
// and nodeOf() (move_pages' status query), including the bad inputs (error class, code, no
// mapping leaked) and the native re-checks behind them. The two-node cases need a machine (or the
// lab VM, which boots two QEMU NUMA nodes) with memory on two nodes; elsewhere they skip saying so.
import { describe, expect, it } from 'vitest'
import { InvalidStateError, Region, SyscallError, features, numa, pageSize } from '../lib/index.ts'
import { native } from '../lib/native.ts'
import { parseNodeList } from '../lib/numa.ts'
import { expectThrowsCode, thrown } from './helpers/errors.ts'
import { ownMappingCount } from './helpers/process.ts'

const P = pageSize
const f = features()
const ENOENT = -2
const EFAULT = -14

/** Skips (with the reason) unless the kernel has the NUMA syscalls. */
function needNuma(ctx: { skip: (note: string) => never }): void {
  if (!f.numa) ctx.skip(`this kernel (${f.kernelRelease}) has no NUMA syscalls (CONFIG_NUMA off): mbind and move_pages are ENOSYS`)
}

/** Skips unless two nodes have memory; returns them. */
function twoNodes(ctx: { skip: (note: string) => never }): [number, number] {
  needNuma(ctx)
  const nodes = numa.nodes()
  if (nodes.length < 2) ctx.skip(`needs 2 NUMA nodes with memory (this machine has ${nodes.length}: node ${nodes.join(', ')})`)
  return [nodes[0], nodes[1]]
}

/** The first node id without memory (it exists in no nodemask the kernel accepts). */
function nodeWithoutMemory(): number {
  const nodes = new Set(numa.nodes())
  let id = 0
  while (nodes.has(id)) id++
  return id
}

/** A pattern unique per page and offset, to compare content byte for byte after a move. */
function fillPattern(region: Region): void {
  const bytes = region.bytes
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 31 + Math.floor(i / P) * 7) & 0xff
}
function patternMismatch(region: Region): number {
  const bytes = region.bytes
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== ((i * 31 + Math.floor(i / P) * 7) & 0xff)) return i
  return -1
}

describe('numa.nodes', () => {
  it('lists the nodes with memory, ascending, node 0 among them', () => {
    const nodes = numa.nodes()
    expect(nodes.length).toBeGreaterThan(0)
    expect(nodes).toContain(0)
    expect([...nodes].sort((a, b) => a - b)).toEqual(nodes)
    expect(new Set(nodes).size).toBe(nodes.length)
  })

  it('parses the kernel node lists; anything else is ERR_PARSE_KERNEL_FILE', () => {
    expect(parseNodeList('0\n', 'f')).toEqual([0])
    expect(parseNodeList('0-1,3', 'f')).toEqual([0, 1, 3])
    expect(parseNodeList('0,2-4\n', 'f')).toEqual([0, 2, 3, 4])
    for (const bad of ['', '\n', '1-0', 'a', '0,', '0-', '-1', '0-1024', '1024', '0 1']) {
      expectThrowsCode(() => parseNodeList(bad, 'f'), Error, 'ERR_PARSE_KERNEL_FILE')
    }
  })
})

describe('numa.nodeOf', () => {
  it('untouched pages are not present: -ENOENT each', (ctx) => {
    needNuma(ctx)
    using r = Region.anonymous(4 * P)
    expect([...numa.nodeOf(r)]).toEqual([ENOENT, ENOENT, ENOENT, ENOENT])
  })

  it('written pages are on a node with memory; a range reports only its pages', (ctx) => {
    needNuma(ctx)
    using r = Region.anonymous(4 * P)
    r.bytes[P] = 1
    r.bytes[2 * P] = 1
    const status = numa.nodeOf(r)
    expect(status).toBeInstanceOf(Int32Array)
    expect(status.length).toBe(4)
    expect(status[0]).toBe(ENOENT)
    expect(numa.nodes()).toContain(status[1])
    expect(numa.nodes()).toContain(status[2])
    expect(status[3]).toBe(ENOENT)
    expect([...numa.nodeOf(r, { offset: P, length: 2 * P })]).toEqual([status[1], status[2]])
  })

  it('the shared zero page (a read fault) is -EFAULT: it belongs to no node', (ctx) => {
    needNuma(ctx)
    if (!f.zeroPage) ctx.skip('this kernel maps no shared zero page on read faults (features().zeroPage is false)')
    using r = Region.anonymous(2 * P)
    r.advise('nohugepage')
    expect(r.bytes[0]).toBe(0)
    expect(numa.nodeOf(r)[0]).toBe(EFAULT)
  })
})

describe('numa.bind', () => {
  it('bind to node 0, then fault: every page is on node 0', (ctx) => {
    needNuma(ctx)
    using r = Region.anonymous(8 * P)
    numa.bind(r, 0)
    r.bytes.fill(1)
    expect([...numa.nodeOf(r)]).toEqual(new Array(8).fill(0))
  })

  it('a range only; an array with a duplicate counts as the set', (ctx) => {
    needNuma(ctx)
    using r = Region.anonymous(4 * P)
    numa.bind(r, [0, 0], { range: { offset: P, length: 2 * P } })
    r.bytes.fill(1)
    expect([...numa.nodeOf(r, { offset: P, length: 2 * P })]).toEqual([0, 0])
  })

  it('move: true on present pages that are already there succeeds; content unchanged', (ctx) => {
    needNuma(ctx)
    using r = Region.anonymous(4 * P)
    fillPattern(r)
    const [first] = numa.nodes()
    numa.bind(r, first, { move: true })
    expect([...numa.nodeOf(r)]).toEqual(new Array(4).fill(first))
    expect(patternMismatch(r)).toBe(-1)
  })

  it('a node without memory is SyscallError EINVAL from mbind', (ctx) => {
    needNuma(ctx)
    using r = Region.anonymous(P)
    for (const node of [nodeWithoutMemory(), 1000]) {
      if (numa.nodes().includes(node)) continue
      const error = expectThrowsCode(() => numa.bind(r, node), SyscallError, 'EINVAL')
      expect(error.errno).toBe(-22)
      expect(error.syscall).toBe('mbind')
      expect(error.message).toContain(`node ${node}`)
    }
  })
})

describe('numa.bind and numa.nodeOf on two NUMA nodes', () => {
  it('half the Region bound to one node, half to the other: each page faults on its node', (ctx) => {
    const [a, b] = twoNodes(ctx)
    const pages = 16
    using r = Region.anonymous(pages * P)
    const half = (pages / 2) * P
    numa.bind(r, a, { range: { offset: 0, length: half } })
    numa.bind(r, [b], { range: { offset: half, length: half } })
    fillPattern(r)
    const expected = Array.from({ length: pages }, (_, i) => (i < pages / 2 ? a : b))
    expect([...numa.nodeOf(r)]).toEqual(expected)
    expect(patternMismatch(r)).toBe(-1)
  })

  it('bind({ move: true }) moves faulted pages to the other node, content byte for byte unchanged', (ctx) => {
    const [a, b] = twoNodes(ctx)
    const pages = 16
    using r = Region.anonymous(pages * P)
    numa.bind(r, a)
    fillPattern(r)
    expect([...numa.nodeOf(r)]).toEqual(new Array(pages).fill(a))
    // Without move the policy changes, the pages stay.
    numa.bind(r, b)
    expect([...numa.nodeOf(r)]).toEqual(new Array(pages).fill(a))
    numa.bind(r, b, { move: true })
    expect([...numa.nodeOf(r)]).toEqual(new Array(pages).fill(b))
    expect(patternMismatch(r)).toBe(-1)
    // And back, a range only.
    numa.bind(r, a, { range: { offset: 0, length: 4 * P }, move: true })
    expect([...numa.nodeOf(r)]).toEqual(Array.from({ length: pages }, (_, i) => (i < 4 ? a : b)))
    expect(patternMismatch(r)).toBe(-1)
  })
})

describe('numa: bad arguments', () => {
  it('not a Region, a closed Region, a range outside: coded errors, before any syscall', () => {
    expectThrowsCode(() => numa.bind({} as Region, 0), TypeError, 'ERR_INVALID_ARG_TYPE')
    expectThrowsCode(() => numa.nodeOf(null as unknown as Region), TypeError, 'ERR_INVALID_ARG_TYPE')
    const closed = Region.anonymous(P)
    closed.close()
    expectThrowsCode(() => numa.bind(closed, 0), InvalidStateError, 'ERR_REGION_CLOSED')
    expectThrowsCode(() => numa.nodeOf(closed), InvalidStateError, 'ERR_REGION_CLOSED')
    using r = Region.anonymous(2 * P)
    expectThrowsCode(() => numa.bind(r, 0, { range: { offset: P, length: 2 * P } }), RangeError, 'ERR_OUT_OF_RANGE')
    expectThrowsCode(() => numa.nodeOf(r, { offset: 1, length: P }), RangeError, 'ERR_OUT_OF_RANGE')
    expectThrowsCode(() => numa.nodeOf(r, { offset: 0, length: 0 }), RangeError, 'ERR_OUT_OF_RANGE')
  })

  it('nodes: integers 0 … 1023, one or a non-empty array, never coerced', () => {
    using r = Region.anonymous(P)
    for (const bad of [NaN, -1, 1024, 2 ** 53, 0.5, Infinity, [], [NaN], [0, 1024], new Array(1025).fill(0)]) {
      expectThrowsCode(() => numa.bind(r, bad as number), RangeError, 'ERR_OUT_OF_RANGE')
    }
    for (const bad of ['0', 0n, null, undefined, {}, ['0'], [null], new Uint32Array([0]), new Set([0]), { valueOf: () => 0 }]) {
      expectThrowsCode(() => numa.bind(r, bad as number), TypeError, 'ERR_INVALID_ARG_TYPE')
    }
    expectThrowsCode(() => numa.bind(r, 0, { move: 'yes' as unknown as boolean }), TypeError, 'ERR_INVALID_ARG_TYPE')
    expectThrowsCode(() => numa.bind(r, 0, { nodes: [0] } as object), TypeError, 'ERR_INVALID_ARG_VALUE')
  })

  it('a Proxy or getters as the nodes array: length and each element are read once', (ctx) => {
    needNuma(ctx)
    using r = Region.anonymous(P)
    const reads: PropertyKey[] = []
    const proxy = new Proxy([0, 0], { get: (target, key, receiver) => (reads.push(key), Reflect.get(target, key, receiver)) })
    numa.bind(r, proxy)
    expect(reads.filter((k) => k === 'length' || k === '0' || k === '1')).toEqual(['length', '0', '1'])
    // A getter that would answer a second read with a bad id is asked once.
    let n = 0
    const liar = [0]
    Object.defineProperty(liar, 0, { get: () => (n++ === 0 ? 0 : 5000) })
    numa.bind(r, liar)
    expect(n).toBe(1)
    const huge = new Proxy([], { get: (_, key) => (key === 'length' ? 2 ** 32 - 1 : 0) })
    expectThrowsCode(() => numa.bind(r, huge), RangeError, 'ERR_OUT_OF_RANGE')
    const throwing = new Proxy([0], { get: () => { throw new Error('trap') } })
    expect((thrown(() => numa.bind(r, throwing)) as Error).message).toBe('trap')
  })

  it('native re-checks: node ids, counts, array kinds and lengths (lib/ bypassed)', () => {
    using r = Region.anonymous(2 * P)
    const address = Number(r.address)
    const { MPOL_BIND } = native.numaConstants
    expectThrowsCode(() => native.mbind(address, P, MPOL_BIND, new Uint32Array([5000]), 1, 0), RangeError, 'ERR_OUT_OF_RANGE')
    expectThrowsCode(() => native.mbind(address, P, MPOL_BIND, new Uint32Array([0]), 2, 0), RangeError, 'ERR_OUT_OF_RANGE')
    expectThrowsCode(() => native.mbind(address, P, MPOL_BIND, new Uint32Array(2000), 2000, 0), RangeError, 'ERR_OUT_OF_RANGE')
    expectThrowsCode(() => native.mbind(address, P, MPOL_BIND, new Float64Array([0]) as unknown as Uint32Array, 1, 0), TypeError, 'ERR_INVALID_ARG_TYPE')
    expectThrowsCode(() => native.mbind(address, P, MPOL_BIND, new Uint32Array([0]), 1, -1), RangeError, 'ERR_OUT_OF_RANGE')
    expectThrowsCode(() => native.mbind(address, P, NaN, new Uint32Array([0]), 1, 0), RangeError, 'ERR_OUT_OF_RANGE')
    expectThrowsCode(() => native.movePagesStatus(address, 2, new Int32Array(1)), RangeError, 'ERR_OUT_OF_RANGE')
    expectThrowsCode(() => native.movePagesStatus(address, 1, new Uint32Array(1) as unknown as Int32Array), TypeError, 'ERR_INVALID_ARG_TYPE')
    expectThrowsCode(() => native.movePagesStatus(2 ** 53 - 1, 2 ** 40, new Int32Array(0)), RangeError, 'ERR_OUT_OF_RANGE')
  })

  it('no mapping leaked by any call, failed or not', (ctx) => {
    needNuma(ctx)
    const before = ownMappingCount()
    for (let i = 0; i < 20; i++) {
      using r = Region.anonymous(4 * P)
      numa.bind(r, 0, { range: { offset: P, length: P } })
      r.bytes.fill(1)
      numa.nodeOf(r)
      thrown(() => numa.bind(r, 1000))
      thrown(() => numa.bind(r, -1))
    }
    expect(ownMappingCount()).toBe(before)
  })
})
