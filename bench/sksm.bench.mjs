// SKSM merge cost, memdedup's sksm.merge against madvise(MADV_MERGE) in C (bench/c/sksm_merge.c),
// alternating round by round. Needs the SKSM kernel (the lab VM: `npm run vm -- node bench/run.mjs
// sksm`); elsewhere it prints why and returns no rows. The KSM comparison (time to savings,
// ksmd's merge speed in the same boot) is in `npm run demo`, which reports it beside these.
import { inVm } from '../test/helpers/env.mjs'

const MiB = 1024 * 1024
const ROUNDS = 3

export default async function (h) {
  const { Region, sksm, pageSize } = await h.memdedup()
  if (!sksm.available()) {
    console.error(`  sksm: skipped: kernel ${(await import('node:os')).release()} has no SKSM (madvise(MADV_MERGE) is EINVAL); run it in the lab VM`)
    return []
  }
  // under TCG everything is ~18x slower: smaller sizes, fewer iterations
  const slow = inVm
  const bytes = (slow ? 16 : 64) * MiB
  const iterations = slow ? 5 : 9
  const binary = h.compileC('c/sksm_merge.c')
  const rows = []

  // the same layout as sksm_merge.c's fill(): distinct per page, never zero
  const fill = (region, seed) => {
    const words = new BigUint64Array(region.bytes.buffer, region.bytes.byteOffset, region.length / 8)
    for (let page = 0; page < region.length / pageSize; page++) {
      words[(page * pageSize) / 8] = seed
      words[(page * pageSize) / 8 + 1] = BigInt(page + 1)
    }
  }
  let seedCounter = BigInt(process.pid) << 32n
  const nextSeed = () => (seedCounter += 1n)

  async function compare(name, test, setup, { goal, size }) {
    const c = []
    const js = []
    for (let round = 0; round < ROUNDS; round++) {
      c.push(h.runC(binary, [test, iterations, size]).ns)
      js.push(await setup())
    }
    rows.push({ name, cNs: Math.min(...c), jsNs: Math.min(...js), goal, ...(size > pageSize ? { bytes: size } : {}) })
  }

  await compare('sksm.merge 1 untouched page (syscall + LRU drain)', 'untouched', () => {
    const region = Region.anonymous(pageSize)
    try {
      return h.medianNs(() => sksm.merge(region), { iterations, warmup: 20, batch: 20 })
    } finally {
      region.close()
    }
  }, { goal: 1.15, size: pageSize })

  await compare(`sksm.merge ${bytes / MiB} MiB, every page a duplicate (dedup)`, 'dedup', () => {
    const original = Region.anonymous(bytes)
    const twin = Region.anonymous(bytes)
    try {
      original.advise('nohugepage')
      twin.advise('nohugepage')
      const seed = nextSeed()
      fill(original, seed)
      sksm.merge(original)
      const samples = []
      for (let i = 0; i < iterations; i++) {
        fill(twin, seed) // COWs the merged pages back to private copies
        samples.push(h.timeNs(() => sksm.merge(twin)))
      }
      return h.median(samples)
    } finally {
      original.close()
      twin.close()
    }
  }, { goal: 1.15, size: bytes })

  await compare(`sksm.merge ${bytes / MiB} MiB, no page has a twin (index)`, 'index', () => {
    const region = Region.anonymous(bytes)
    try {
      region.advise('nohugepage')
      const samples = []
      for (let i = 0; i < iterations; i++) {
        fill(region, nextSeed())
        samples.push(h.timeNs(() => sksm.merge(region)))
      }
      return h.median(samples)
    } finally {
      region.close()
    }
  }, { goal: 1.15, size: bytes })
  return rows
}
