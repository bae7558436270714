// Types of driver.mjs (plain JavaScript, shared with test/fuzz/run.mjs).

export declare const runnerScript: string

/** The JSON summary test/fixtures/fuzz-runner.mjs prints last. */
export interface FuzzSummary {
  seed: number
  ops: number
  requested: number
  seconds: number
  opsPerSec: number
  contentChecks: number
  counts: Record<string, number>
  sksm: boolean
  dedup: boolean
  tracking: boolean
  kernel: string
  failure: { kind: string; message: string; step: number; lastSteps: string[] } | null
}

interface FuzzRunBase {
  seed: number
  crashed: boolean
  /** 'crash', 'hang', 'exit' or the failure's kind; null when ok. */
  kind: string | null
}
/** ok: the runner printed a summary without a failure and exited 0. */
export type FuzzRun =
  | (FuzzRunBase & { ok: true; summary: FuzzSummary; problem: '' })
  | (FuzzRunBase & { ok: false; summary: FuzzSummary | null; problem: string })

export declare function fuzzOnce(options: { seed: number; ops: number; timeoutMs: number; dedup?: string; avoid?: string }): Promise<FuzzRun>
