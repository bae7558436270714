// Types of env.mjs (plain JavaScript, shared with bench/ and the vitest reporter). Keep in step
// with its exports: tsconfig.test.json checks every import of it against this file.

/** Set by ci/test-vm.mjs: the patched 6.12 under TCG, where everything is ~18x slower. */
export declare const inVm: boolean
export declare function hostRunOnly(what: string): string

/**
 * Why a test needing `names` (keys of `available`, e.g. features()'s 'sksm', 'uffdWpAsync')
 * cannot run here, or '' when it can.
 */
export declare function requires<F extends object>(available: F, names: readonly (keyof F & string)[]): string

/** Why this process may not change ksmd's settings (write /sys/kernel/mm/ksm/*), or '' when it may. */
export declare function ksmSettingsDenied(): string

/** The reason a skipped test's or suite's title gives (`title — skipped: reason`, …), or undefined. */
export declare function titleSkipReason(title: string): string | undefined

/** What the lab kernel is guaranteed to have: a VM skip whose reason matches one fails the run. */
export declare const labFeatures: ReadonlyArray<{ feature: string; pattern: RegExp }>
/** Reasons true on every kernel, the lab's too, though they name a feature. */
export declare const skipsByDesign: readonly RegExp[]
export declare const noReason: string
/** The lab feature `reason` names ('no reason' when there is none), or '' when the VM may skip for it. */
export declare function refusedInVm(reason: string): string
