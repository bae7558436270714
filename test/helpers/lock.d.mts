// Types of lock.mjs (plain JavaScript, shared with bench/harness.mjs).

export declare const ksmLockPath: string
export declare const ksmLockTimeoutMs: number
/** Takes the cross-process KSM lock (a dead owner's is taken over); resolves to its release. */
export declare function acquireKsmLock(timeoutMs?: number): Promise<() => void>
/** Runs `fn` holding the lock. */
export declare function withKsmLock<T>(fn: () => T | Promise<T>, options?: { timeoutMs?: number }): Promise<T>
