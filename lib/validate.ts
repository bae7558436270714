// Argument checks shared by the lib modules. Errors follow Node's conventions: TypeError with
// code ERR_INVALID_ARG_TYPE / ERR_INVALID_ARG_VALUE, RangeError with ERR_OUT_OF_RANGE.
import { pageSize } from './native.ts'

function describe(value: unknown): string {
  if (value === null) return 'null'
  if (typeof value === 'function') return 'a function'
  if (typeof value === 'object') return `an instance of ${value.constructor?.name ?? 'Object'}`
  if (typeof value === 'string') return `type string (${JSON.stringify(value.length > 28 ? value.slice(0, 25) + '...' : value)})`
  return `type ${typeof value} (${String(value)})`
}

export function invalidArgType(name: string, expected: string, actual: unknown): TypeError {
  const error = new TypeError(`The "${name}" argument must be ${expected}. Received ${describe(actual)}`)
  ;(error as NodeJS.ErrnoException).code = 'ERR_INVALID_ARG_TYPE'
  return error
}

export function invalidArgValue(name: string, reason: string, actual: unknown): TypeError {
  const error = new TypeError(`The argument '${name}' ${reason}. Received ${describe(actual)}`)
  ;(error as NodeJS.ErrnoException).code = 'ERR_INVALID_ARG_VALUE'
  return error
}

export function outOfRange(name: string, expected: string, actual: unknown): RangeError {
  const error = new RangeError(`The value of "${name}" is out of range. It must be ${expected}. Received ${String(actual)}`)
  ;(error as NodeJS.ErrnoException).code = 'ERR_OUT_OF_RANGE'
  return error
}

/** A non-negative safe integer. */
export function validateInteger(value: unknown, name: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number') throw invalidArgType(name, 'of type number', value)
  if (!Number.isInteger(value)) throw outOfRange(name, 'an integer', value)
  if (value < min || value > max) throw outOfRange(name, `>= ${min} and <= ${max}`, value)
  return value
}

/** A positive multiple of the page size. */
export function validatePageLength(value: unknown, name: string): number {
  const length = validateInteger(value, name, 1)
  if (length % pageSize !== 0) throw outOfRange(name, `a multiple of the page size (${pageSize})`, value)
  return length
}

export function validatePageOffset(value: unknown, name: string): number {
  const offset = validateInteger(value, name, 0)
  if (offset % pageSize !== 0) throw outOfRange(name, `a multiple of the page size (${pageSize})`, value)
  return offset
}

export function validateObject(value: unknown, name: string, optional = true): Record<string, unknown> {
  if (value === undefined && optional) return {}
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw invalidArgType(name, 'of type object', value)
  }
  return value as Record<string, unknown>
}

export function validateBoolean(value: unknown, name: string): boolean {
  if (typeof value !== 'boolean') throw invalidArgType(name, 'of type boolean', value)
  return value
}

export function validateOneOf<T extends string>(value: unknown, name: string, allowed: readonly T[]): T {
  if (typeof value !== 'string') throw invalidArgType(name, 'of type string', value)
  if (!(allowed as readonly string[]).includes(value)) {
    throw invalidArgValue(name, `must be one of: ${allowed.map((a) => `'${a}'`).join(', ')}`, value)
  }
  return value as T
}
