// The two guards of the resource classes (Region, Reservation, Userfaultfd, MshareRegion,
// MshareAttachment): `private` is TypeScript-only, so from JS their constructors and methods are
// reachable with any arguments and any receiver. Not exported from index.ts.
//  - Construction: every constructor takes `internal` first and calls assertInternal() before
//    anything else, so `new X(…)` from outside (no token, a look-alike, Reflect.construct, a
//    subclass) throws ERR_ILLEGAL_CONSTRUCTOR before a finalizer is registered or a descriptor
//    or address is stored: a forged handle can never close or unmap what memdedup did not open.
//  - Receivers: guardReceivers() makes every method and accessor of a class check `this` with
//    the class's own brand check (`#field in value`) first: a wrong receiver is ERR_INVALID_THIS,
//    like Node's own classes, instead of V8's codeless "Cannot read private member" TypeError.
import { codedError } from './errors.ts'

/** The construction token: only lib/ modules hold it (index.ts does not export this module). */
export const internal: unique symbol = Symbol('memdedup.internal')
export type Internal = typeof internal

/** A class, whatever its constructor's visibility (a private constructor is no `new () => …` type). */
type Class = { readonly prototype: object; readonly name: string }

/**
 * The first statement of a resource class's constructor:
 * `assertInternal(token, new.target, Userfaultfd, 'Userfaultfd.open()')`. Throws TypeError
 * ERR_ILLEGAL_CONSTRUCTOR unless `token` is memdedup's own and the class itself is constructed
 * (no subclass, no foreign new.target). `use` names the factories, for the message.
 */
export function assertInternal(token: unknown, newTarget: unknown, cls: Class, use: string): void {
  if (token !== internal || newTarget !== cls) throw codedError('ERR_ILLEGAL_CONSTRUCTOR', use)
}

const { apply, defineProperty, getOwnPropertyDescriptor, ownKeys } = Reflect
const toObject = Object
const AsyncFunction = (async () => {}).constructor
function invalidThis(type: string): Error {
  return codedError('ERR_INVALID_THIS', type)
}

/**
 * Wraps every method, getter and setter of `cls.prototype` (symbol keys included) so that it first
 * checks its receiver with `isInstance` (the class's brand check; it is called with an object) and
 * throws TypeError ERR_INVALID_THIS for anything else (an async method returns it rejected). Names
 * and lengths are kept; the wrappers are methods (not constructible), like the originals. Called once, from the class's static block:
 * `static { guardReceivers(Userfaultfd, (value) => #fd in value) }`.
 */
export function guardReceivers(cls: Class, isInstance: (value: object) => boolean): void {
  const prototype = cls.prototype
  const type = cls.name
  const wrap = (original: (...args: unknown[]) => unknown): ((...args: unknown[]) => unknown) => {
    const checked = original instanceof AsyncFunction
      ? {
          // An async method reports a wrong receiver the way it reports everything: rejecting.
          method(this: unknown) {
            if (!isInstance(toObject(this))) return Promise.reject(invalidThis(type))
            return apply(original, this, arguments)
          },
        }.method
      : {
          method(this: unknown) {
            // Object(this), not typeof tests, and the error built out of line: a primitive, null or
            // undefined becomes an object that is no instance, and the wrapper stays small enough for
            // TurboFan to fold the check away on a real instance (typeof tests cost ~4 ns a call).
            if (!isInstance(toObject(this))) throw invalidThis(type)
            return apply(original, this, arguments)
          },
        }.method
    defineProperty(checked, 'name', { value: original.name, configurable: true })
    defineProperty(checked, 'length', { value: original.length, configurable: true })
    return checked
  }
  for (const key of ownKeys(prototype)) {
    if (key === 'constructor') continue
    const descriptor = getOwnPropertyDescriptor(prototype, key)!
    if (typeof descriptor.value === 'function') descriptor.value = wrap(descriptor.value)
    if (descriptor.get) descriptor.get = wrap(descriptor.get)
    if (descriptor.set) descriptor.set = wrap(descriptor.set)
    defineProperty(prototype, key, descriptor)
  }
}
