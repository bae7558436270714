// Types of adversarial.mjs (plain JavaScript).

/** What test/fixtures/adversarial-runner.mjs reports for one case. */
export interface AdversarialResult {
  index: number
  ok: boolean
  detail: string
}

/** Runs the cases at `indexes` in children (batched; a batch that dies is re-run case by case). */
export declare function runAdversarial(indexes: number[], options?: { batchSize?: number; caseTimeoutMs?: number }): Promise<Map<number, AdversarialResult>>
