// Error classes shaped like Node core's (lib/internal/errors.js): the native side hands back
// only -errno; the Error with code, errno and syscall is built here.
import os from 'node:os'
import { constants as osConstants } from 'node:os'

const errnoNames = new Map<number, string>()
for (const [name, value] of Object.entries(osConstants.errno)) {
  if (!errnoNames.has(value)) errnoNames.set(value, name)
}

/** Errno name for a positive errno, e.g. 22 → 'EINVAL'; unknown numbers stay readable. */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`
}

export class SyscallError extends Error {
  /** 'EINVAL', 'ENOMEM', … */
  readonly code: string
  /** Negative, like Node's own errors (fs, net). */
  readonly errno: number
  /** The call with its operation, e.g. 'madvise(MADV_MERGE)'. */
  readonly syscall: string

  constructor(syscall: string, errno: number, context?: string) {
    const positive = Math.abs(errno)
    const code = errnoName(positive)
    super(`${syscall} ${code}${context ? ` (${context})` : ''}`)
    this.code = code
    this.errno = -positive
    this.syscall = syscall
  }
}
Object.defineProperty(SyscallError.prototype, 'name', { value: 'SyscallError', enumerable: false })

export class FeatureUnavailableError extends Error {
  readonly code = 'ERR_MEMDEDUP_FEATURE_UNAVAILABLE'
  readonly feature: string
  readonly kernelRelease: string

  constructor(feature: string, detail: string) {
    const release = os.release()
    super(`${feature} is not available on kernel ${release}: ${detail}`)
    this.feature = feature
    this.kernelRelease = release
  }
}
Object.defineProperty(FeatureUnavailableError.prototype, 'name', { value: 'FeatureUnavailableError', enumerable: false })

/** Throws a SyscallError when a raw native result is negative; returns it otherwise. */
export function check(rc: number, syscall: string, context?: string): number {
  if (rc < 0) throw new SyscallError(syscall, -rc, context)
  return rc
}

/**
 * An operation on an object in the wrong state: a closed Region or Userfaultfd, or a view of
 * memory whose protection does not allow it. `code` says which (ERR_REGION_CLOSED, …).
 */
export class InvalidStateError extends Error {
  readonly code: string

  constructor(code: string, message: string) {
    super(message)
    this.code = code
  }
}
Object.defineProperty(InvalidStateError.prototype, 'name', { value: 'InvalidStateError', enumerable: false })
