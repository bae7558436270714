// What a call throws, so a test can assert its class and every field (code, errno, syscall).
import { expect } from 'vitest'

/** The value `fn` throws, or undefined when it returns. */
export function thrown(fn: () => unknown): unknown {
  try {
    fn()
  } catch (error) {
    return error
  }
  return undefined
}

/** Asserts `fn` throws an instance of `type` with `code`; returns the error for further checks. */
export function expectThrowsCode<T extends Error>(fn: () => unknown, type: abstract new (...args: never[]) => T, code: string): T {
  const error = thrown(fn)
  expect(error).toBeInstanceOf(type)
  expect((error as { code?: string }).code).toBe(code)
  return error as T
}

/** The `code` of a thrown Node or memdedup error ('ENOENT', 'ERR_REGION_CLOSED', …), or undefined. */
export function errorCode(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null || !('code' in error)) return undefined
  return typeof error.code === 'string' ? error.code : undefined
}
