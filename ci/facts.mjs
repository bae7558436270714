#!/usr/bin/env node
// Prints, first thing in CI, the facts a failure depends on: the pinned kernel base, the host kernel
// and the boot flags that change mm behaviour, THP, the zero page, KSM (and its other users), swap,
// privileges. Plain Node (no zx), so it runs before anything else; every probe says "unknown" rather
// than fail, because the point is to print what is known.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

// Reads a file's trimmed text, or null when it does not exist or may not be read here.
function read(file) {
  try {
    return fs.readFileSync(file, 'utf8').trim()
  } catch (error) {
    if (['ENOENT', 'EACCES', 'EPERM', 'ENOTDIR'].includes(error.code)) return null
    throw error
  }
}

// Boot parameters that change what mm tests see (zero page, THP, KSM, memory layout, init of pages).
const mmFlag = /^(pvm_no_zero_page|transparent_hugepage|thp_anon|hugepages|hugepagesz|default_hugepagesz|ksm|numa|mem|memmap|movablecore|kernelcore|init_on_alloc|init_on_free|page_alloc\.|zswap\.|swapaccount|cgroup_|userfaultfd|nokaslr|norandmaps|page_owner|slub_debug)/

function kernelBase() {
  const base = JSON.parse(fs.readFileSync(path.join(repoRoot, 'kernel-patches/base.json'), 'utf8'))
  return `${base.package} ${base.version} (tarball sha256 ${base.tarballSha256})`
}

function zeroPage() {
  const dist = path.join(repoRoot, 'dist/lib/features.js')
  if (!fs.existsSync(dist)) return Promise.resolve('unknown (dist/ not built)')
  return import(dist).then(({ features }) => {
    const f = features()
    if (!('zeroPage' in f)) return 'unknown (features() does not report it)'
    return f.zeroPage ? 'yes (read faults map the shared zero page)' : 'NO (read faults map private zeroed pages)'
  }, (error) => `unknown (${error.message})`)
}

function ksmState() {
  const ksm = '/sys/kernel/mm/ksm'
  if (!fs.existsSync(ksm)) return 'absent (no CONFIG_KSM)'
  const value = (name) => read(path.join(ksm, name)) ?? '?'
  // Other processes with merged pages: tests must not assume they are KSM's only user.
  let users = 0
  for (const pid of fs.readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    const stat = read(`/proc/${pid}/ksm_stat`)
    const merging = stat?.match(/ksm_merging_pages (\d+)/)?.[1]
    if (merging && Number(merging) > 0) users++
  }
  return `run=${value('run')} pages_shared=${value('pages_shared')} pages_sharing=${value('pages_sharing')} ` +
    `use_zero_pages=${value('use_zero_pages')} ksm_zero_pages=${value('ksm_zero_pages')} ` +
    `processes with merged pages (visible here)=${users}; sysfs writable: ${canWrite(path.join(ksm, 'run'))}`
}

function canWrite(file) {
  try {
    fs.accessSync(file, fs.constants.W_OK)
    return 'yes'
  } catch (error) {
    if (['EACCES', 'EPERM', 'EROFS'].includes(error.code)) return `no (${error.code})`
    throw error
  }
}

const thp = '/sys/kernel/mm/transparent_hugepage'
const swaps = (read('/proc/swaps') ?? '').split('\n').slice(1).filter(Boolean)
const facts = [
  ['kernel base (pinned)', kernelBase()],
  ['host kernel', `${os.release()} ${os.machine()}, ${os.availableParallelism()} CPUs, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`],
  ['mm boot flags', (read('/proc/cmdline') ?? '').split(/\s+/).filter((arg) => mmFlag.test(arg)).join(' ') || 'none'],
  ['THP', fs.existsSync(thp) ? `enabled ${read(`${thp}/enabled`)}, defrag ${read(`${thp}/defrag`)}, PMD ${read(`${thp}/hpage_pmd_size`)}` : 'absent'],
  ['zero page', await zeroPage()],
  ['KSM', ksmState()],
  ['swap', swaps.length ? swaps.map((line) => line.split(/\s+/).slice(0, 3).join(' ')).join('; ') : 'none'],
  ['hugetlb', `nr_hugepages=${read('/proc/sys/vm/nr_hugepages') ?? '?'}`],
  ['max_map_count', read('/proc/sys/vm/max_map_count') ?? '?'],
  ['NUMA nodes', fs.existsSync('/sys/devices/system/node') ? fs.readdirSync('/sys/devices/system/node').filter((n) => /^node\d+$/.test(n)).length : '?'],
  ['user', `${os.userInfo().username} (uid ${process.getuid()})`],
  ['pagemap PFNs', process.getuid() === 0 ? 'visible (root)' : 'hidden unless CAP_SYS_ADMIN'],
]
const width = Math.max(...facts.map(([name]) => name.length))
console.log('== facts this run depends on')
for (const [name, value] of facts) console.log(`${name.padEnd(width)}  ${value}`)
