// Argument checks shared by the lib modules. Errors follow Node's conventions: TypeError with
// code ERR_INVALID_ARG_TYPE / ERR_INVALID_ARG_VALUE, RangeError with ERR_OUT_OF_RANGE.
// Options are read once (readOptions): a getter cannot return one value to the check and
// another to the code that uses it.
import { inspect } from 'node:util'
import { pageSize } from './native.ts'
import { codedError } from './errors.ts'

function describe(value: unknown): string {
  if (value === null) return 'null'
  if (typeof value === 'function') return 'a function'
  if (typeof value === 'object') {
    // Node's wording (determineSpecificType): the class's name, else the object itself, shallowly
    // (a null-prototype object, an instance of an anonymous class).
    const name: unknown = value.constructor?.name
    return typeof name === 'string' && name !== '' ? `an instance of ${name}` : inspect(value, { depth: -1 })
  }
  if (typeof value === 'string') return `type string (${JSON.stringify(value.length > 28 ? value.slice(0, 25) + '...' : value)})`
  return `type ${typeof value} (${String(value)})`
}

export function invalidArgType(name: string, expected: string, actual: unknown): TypeError {
  return codedError('ERR_INVALID_ARG_TYPE', `The "${name}" argument must be ${expected}. Received ${describe(actual)}`) as TypeError
}

export function invalidArgValue(name: string, reason: string, actual: unknown): TypeError {
  return codedError('ERR_INVALID_ARG_VALUE', `The argument '${name}' ${reason}. Received ${describe(actual)}`) as TypeError
}

export function outOfRange(name: string, expected: string, actual: unknown): RangeError {
  return codedError('ERR_OUT_OF_RANGE', `The value of "${name}" is out of range. It must be ${expected}. Received ${String(actual)}`) as RangeError
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

/**
 * Reads an options object once: each allowed key exactly once into a fresh plain object, so a
 * getter cannot answer the check and the use differently. An own key not in `keys` (a typo like
 * `writeprotect`) is a TypeError ERR_INVALID_ARG_VALUE naming it; undefined means {}; null is a
 * TypeError except for the `nullable` keys.
 */
export function readOptions<K extends string>(value: unknown, name: string, keys: readonly K[], nullable: readonly K[] = []): { readonly [P in K]?: unknown } {
  if (value === undefined) return {}
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw invalidArgType(name, 'of type object', value)
  for (const key of Object.keys(value)) {
    if (!(keys as readonly string[]).includes(key)) {
      throw invalidArgValue(`${name}.${key}`, `is not a known option (known: ${keys.join(', ')})`, (value as Record<string, unknown>)[key])
    }
  }
  const out: { [P in K]?: unknown } = {}
  for (const key of keys) {
    const item = (value as Record<string, unknown>)[key]
    // null is not "use the default" (a `?? default` would make it so): only where it means something.
    if (item === null && !nullable.includes(key)) throw invalidArgType(`${name}.${key}`, 'a value other than null (omit it for the default)', item)
    if (item !== undefined) out[key] = item
  }
  return out
}

/** A page-aligned { offset, length } read once (undefined stays undefined). */
export function readRange(value: unknown, name = 'range'): { offset: unknown; length: unknown } | undefined {
  if (value === undefined) return undefined
  if (value === null || typeof value !== 'object') throw invalidArgType(name, 'an object like { offset, length }', value)
  const { offset, length } = value as { offset: unknown; length: unknown }
  return { offset, length }
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

/** A process id for /proc/<pid>: 'self' or a positive integer (never a path fragment). */
export function validatePid(value: unknown, name = 'pid'): number | 'self' {
  if (value === 'self') return value
  if (typeof value !== 'number') throw invalidArgType(name, "'self' or a number", value)
  return validateInteger(value, name, 1, 2 ** 31 - 1)
}
