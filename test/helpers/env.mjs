// Where the tests run and what the kernel offers: one place for the skip conditions, shared by
// test/ (vitest) and bench/ (plain Node). Plain JavaScript so both can import it.
import fs from 'node:fs'
import os from 'node:os'

/** Set by ci/test-vm.mjs: the patched 6.12 under TCG, where everything is ~18x slower. */
export const inVm = Boolean(process.env.MEMDEDUP_VM)

/**
 * For behaviour no kernel decides (argument parsing, shell semantics, JS lifetimes): in the lab VM
 * (user space ~18x slower, and CI's time is bounded) the title's skip reason, '' on the host,
 * which runs it: `it.skipIf(hostRunOnly(what))(title + hostRunOnly(what), …)`.
 * @param {string} what
 */
export function hostRunOnly(what) {
  return inVm ? ` — skipped in the VM: ${what} does not depend on the kernel, the host run tests it` : ''
}

/**
 * Why a test needing `names` (keys of features(), e.g. 'sksm', 'uffdWpAsync') cannot run here,
 * or '' when it can: `it.skipIf(why)(title + why, …)` says the reason in the title.
 * @param {Record<string, unknown>} available features()
 * @param {readonly string[]} names
 */
export function requires(available, names) {
  const absent = names.filter((name) => !available[name])
  return absent.length === 0 ? '' : ` — skipped: this kernel (${os.release()}) lacks ${absent.join(', ')}`
}

/**
 * Why this process may not change ksmd's settings (write /sys/kernel/mm/ksm/*), or '' when it may:
 * the one probe every test that writes those files asks before it skips. A probe, not a uid
 * check: root with a read-only /sys (a container) may not (EROFS), a user given the files may.
 * Only the "not allowed" errors become a reason; ENOENT (no KSM) is said as such; others throw.
 * @returns {string}
 */
export function ksmSettingsDenied() {
  if (ksmDenied !== undefined) return ksmDenied
  const file = '/sys/kernel/mm/ksm/run'
  try {
    fs.accessSync(file, fs.constants.W_OK)
    ksmDenied = ''
  } catch (error) {
    const code = /** @type {NodeJS.ErrnoException} */ (error).code
    if (code === 'ENOENT') ksmDenied = `no ${file}: this kernel (${os.release()}) has no KSM (CONFIG_KSM off)`
    else if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') ksmDenied = `needs root: ${file} is not writable here (${code}), so ksmd's settings cannot be changed`
    else throw error
  }
  return ksmDenied
}
/** @type {string | undefined} */
let ksmDenied

// ---- Skip reasons (read by test/helpers/skip-summary-reporter.mjs) -----------------------------
// A test says why it skips with ctx.skip('reason') (the result's note), or in its title or its
// suite's: `title — skipped: reason`, `title [skipped: reason]`, `title (skipped: reason)`, which
// is how it.skipIf / describe.skipIf say it.

/**
 * The reason a skipped test's or suite's title gives ("in the VM: …" for `— skipped in the VM: …`), or undefined.
 * @param {string} title
 */
export function titleSkipReason(title) {
  const m = /\s[—–-]\s*skipped\b([^:]{0,20}):\s*(.+?)\s*$/.exec(title) ?? /[[(]skipped\b([^:]{0,20}):\s*(.+?)[\])]\s*$/.exec(title)
  return m ? [m[1].trim(), m[2]].filter(Boolean).join(': ') : undefined
}

/**
 * What the lab kernel (ci/test-vm.mjs: the patched 6.12, run as root, with swap) is guaranteed to
 * have: in the VM a skip whose reason names one of these fails the run, since there the reason
 * cannot be true. The one list; test/skip-summary.test.ts pins what it matches.
 */
export const labFeatures = [
  { feature: 'root', pattern: /\broot\b|CAP_SYS_ADMIN|\bPFNs?\b|\/sys\/kernel\/mm\/ksm\/\w+ is not writable/i },
  // KSM itself missing, or shared with other processes (none in the lab); not sub-features newer
  // than 6.12 (ksm_stat's ksm_mergeable line is 6.13+).
  {
    feature: 'KSM',
    pattern: /CONFIG_KSM|\bKSM\b[^.;]*\bnot (?:enabled|supported|available)|\b(?:no|lacks?|without)\b[\w ,/]*\bksm(?:Process)?\b|\b(?:no|lacks?|without) PR_SET_MEMORY_MERGE|PR_SET_MEMORY_MERGE(?:: EINVAL| not supported)|\bno \/proc\/\S+\/ksm_stat|ksm_stat"?\)? failed|\bother processes use KSM\b|\balso use it\b/i,
  },
  { feature: 'SKSM', pattern: /\bsksm\b|\bMADV_MERGE\b/i },
  { feature: 'THP', pattern: /\bTHPs?\b|transparent[ _]?huge ?pages?|\bhuge ?page allocation|huge zero ?page|read_pmd_pagesize/i },
  { feature: 'msharefs', pattern: /mshare/i },
  // Before 'userfaultfd': the more specific name wins.
  { feature: 'uffd WP_ASYNC', pattern: /wp_?async|uffd-wp|\bwpUnpopulated\b|PAGEFAULT_FLAG_WP|pagefaultFlagWp/i },
  { feature: 'userfaultfd', pattern: /userfaultfd|uffd/i },
  { feature: 'soft-dirty', pattern: /soft[-_ ]?dirty/i },
  { feature: 'swap', pattern: /\bswap\b|\/proc\/swaps|SwapTotal/i },
  { feature: 'PAGEMAP_SCAN', pattern: /pagemap_?scan/i },
  { feature: 'zero page', pattern: /zero ?page|zeroPfn/i },
  // The lab boots two NUMA nodes and mounts cgroup v2 with the memory and cpuset controllers.
  { feature: 'NUMA', pattern: /\bNUMA\b|CONFIG_NUMA|\bmbind\b|move_pages|merge_across_nodes/i },
  { feature: 'memcg', pattern: /\bmemcg\b|memory controller|\bcpuset\b|cgroup v2|CONFIG_MEMCG|CONFIG_CGROUPS/i },
]

/**
 * Reasons that are true on every kernel, the lab's too, though they name a feature: what memdedup
 * does not bind or map, what the port leaves out, tests of a feature's absence ("this kernel has
 * KSM"), and cases the lab leaves to another case by choice.
 */
export const skipsByDesign = [
  /\bmemdedup (?:does not (?:bind|map)|has no)\b/i,
  /\bnot ported\b|\bported at the \w+ size only\b/i,
  /\ba Node process cannot\b/i,
  /\bkernel (?:\([^)]*\) |[\w.+~-]+ )?(?:has|maps|offers)\b(?! no\b)/i,
  /\bthe lab runs .+ instead\b|\bto bound the VM time\b/i,
]

export const noReason = '(no reason given)'

/**
 * Why the lab VM must not skip for `reason`: the lab feature it names, 'no reason' for a skip that
 * gives none, or '' when the skip is fine there.
 * @param {string} reason
 */
export function refusedInVm(reason) {
  if (!reason || reason === noReason) return 'no reason'
  // A title can give two reasons (`[skipped: a] [skipped: b]`): each is judged on its own.
  for (const part of reason.split(/\]\s*[[(]skipped\b[^:]{0,20}:\s*/)) {
    if (skipsByDesign.some((pattern) => pattern.test(part))) continue
    const feature = labFeatures.find(({ pattern }) => pattern.test(part))?.feature
    if (feature) return feature
  }
  return ''
}
