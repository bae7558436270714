// Types of common.mjs (plain JavaScript: the fuzz and adversarial children run without TypeScript).

export declare const repoRoot: string
export declare const fixturesDir: string
/** Set by ci/test-vm.mjs: the patched 6.12 under TCG. */
export declare const inVm: boolean

export interface Prng {
  float(): number
  /** Integer in [min, max]. */
  int(min: number, max: number): number
  pick<T>(list: readonly T[]): T
  chance(p: number): boolean
  /** A key of `weights`, with probability proportional to its value. */
  weighted<K extends string>(weights: Record<K, number>): K
}
export declare function prng(seed: number): Prng

/** [start, end) address interval. */
export type Interval = [number, number]
export declare function ownedIntervals(fileTag?: string, ignore?: string | null): Interval[]
export interface Mapping {
  start: number
  end: number
  perms: string
  name: string
}
/** Every line of /proc/self/maps. */
export declare function mappings(): Mapping[]
export declare function mergeIntervals(list: Interval[]): Interval[]
export declare function sameIntervals(a: Interval[], b: Interval[]): boolean
export declare function formatIntervals(list: Interval[]): string
/** Open descriptors: number → readlink target. */
export declare function openFds(): Map<number, string>
export declare function fdDiff(before: Map<number, string>, after: Map<number, string>): { added: string[]; removed: string[] }
export declare function readMemory(address: number, length: number, into?: Buffer): Buffer
export declare function vmSizeBytes(): number
export declare function describeError(error: unknown): string

export interface ChildRunOptions {
  timeoutMs: number
  env?: NodeJS.ProcessEnv
  nodeArgs?: string[]
  traceLines?: number
  /** Sees each stdout line; 'restart-timer' extends the deadline. */
  onLine?: (line: string) => 'restart-timer' | undefined
}
export interface ChildRunResult {
  code: number | null
  signal: NodeJS.Signals | null
  timedOut: boolean
  lines: string[]
  stderr: string
  /** The last trace lines the child wrote to fd 3. */
  trace: string[]
  pid: number | undefined
}
/** Runs `node [nodeArgs] script args`; never rejects (a signal, timeout or exit code is in the result). */
export declare function runChild(script: string, args: string[], options: ChildRunOptions): Promise<ChildRunResult>
