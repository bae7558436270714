// Where the tests run and what the kernel offers: one place for the skip conditions, shared by
// test/ (vitest) and bench/ (plain Node). Plain JavaScript so both can import it.
import os from 'node:os'

/** Set by ci/test-vm.mjs: the patched 6.12 under TCG, where everything is ~18x slower. */
export const inVm = Boolean(process.env.MEMDEDUP_VM)

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
