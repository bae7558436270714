// Types of dist.mjs (plain JavaScript, shared with bench/).

/** The checkout's root directory. */
export declare const repoRoot: string
/** dist/lib/index.js: what child processes and benchmarks import. */
export declare const distEntry: string
/** Rebuilds dist/ from lib/ when it is missing or older (never in a read-only checkout). */
export declare function ensureDist(): void
