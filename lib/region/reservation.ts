// The slots of a Reservation: address space memdedup owns and maps into with MAP_FIXED /
// MREMAP_FIXED (the Reservation class is in ../region.ts). The state lists the occupied slots;
// everything else in [address, address + length) is PROT_NONE memory of ours named
// "memdedup-reserved". A slot is a Region placed there, a range held for a closed Region's views
// (see views.ts), or a range lost after a failed placement (never mapped over nor unmapped
// again: something else may live there).
import fs from 'node:fs'
import { native, constants as C } from '../native.ts'
import { outOfRange } from '../validate.ts'
import { holdForViews, type Views } from './views.ts'

type SlotKind = 'region' | 'pending' | 'lost'
export interface Slot {
  /** Relative to the reservation's start. */
  offset: number
  length: number
  kind: SlotKind
  /** The Region in a 'region' slot (weak: a dropped Region is unmapped by its own finalizer). */
  owner?: WeakRef<{ close(): void }>
}
export interface ReservationState {
  address: number
  length: number
  closed: boolean
  /** Sorted by offset, never overlapping. */
  slots: Slot[]
}
export interface Home {
  reservation: ReservationState
  slot: Slot
}
export interface Target {
  state: ReservationState
  offset: number
}

export const reservedFlags = C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_NORESERVE
const reservedName = 'memdedup-reserved'

export function nameReserved(address: number, length: number): void {
  // Best effort: lets repairHole() tell our PROT_NONE from anyone else's in /proc/self/maps.
  native.prctlSetVmaAnonName(address, length, reservedName)
}

export function overlapping(state: ReservationState, offset: number, length: number): Slot | undefined {
  return state.slots.find((s) => s.offset < offset + length && offset < s.offset + s.length)
}

export function claim(state: ReservationState, offset: number, length: number, kind: SlotKind): Slot {
  const slot: Slot = { offset, length, kind }
  const at = state.slots.findIndex((s) => s.offset > offset)
  state.slots.splice(at < 0 ? state.slots.length : at, 0, slot)
  return slot
}

export function removeSlot(state: ReservationState, slot: Slot): void {
  const at = state.slots.indexOf(slot)
  if (at >= 0) state.slots.splice(at, 1)
}

/**
 * [address, address + length), a whole slot or its head or tail, leaves its Region: it goes back
 * to the reservation (PROT_NONE again) at once without live views, else once they are collected.
 */
export function giveBack(home: Home, address: number, length: number, views: Views): void {
  const { reservation: state, slot } = home
  const offset = address - state.address
  if (offset === slot.offset && length === slot.length) removeSlot(state, slot)
  else if (offset === slot.offset) {
    slot.offset += length
    slot.length -= length
  } else slot.length -= length
  if (views.live.size === 0) {
    returnToReservation(state, address, length)
    return
  }
  // A view may still be read or written by native code: zero-filled memory stands in until then
  // (if this fails the old mapping stays, which serves as well).
  if (!state.closed) native.mmapFixed(state.address, state.length, address, length, C.PROT_READ | C.PROT_WRITE, reservedFlags, -1, 0)
  const pending = claim(state, offset, length, 'pending')
  holdForViews(views, {
    address,
    length,
    release: () => {
      removeSlot(state, pending)
      returnToReservation(state, address, length)
    },
  })
}

/** Makes our own mapping at [address, length) PROT_NONE reservation again (atomically: MAP_FIXED). */
export function returnToReservation(state: ReservationState, address: number, length: number): void {
  if (state.closed) {
    native.munmap(address, length)
    return
  }
  if (native.mmapFixed(state.address, state.length, address, length, C.PROT_NONE, reservedFlags, -1, 0) >= 0) {
    nameReserved(address, length)
    return
  }
  // Still our mapping: unmap it, and never touch that range again.
  native.munmap(address, length)
  claim(state, address - state.address, length, 'lost')
}

/**
 * After a failed MAP_FIXED / MREMAP_FIXED at [offset, offset + length): the kernel may have
 * unmapped the target before failing (mremap checks the source after unmapping the target on
 * kernels before 6.17; mmap restores a gap). Re-reserve a hole with MAP_FIXED_NOREPLACE; if
 * something is mapped there and it is not all our named reservation, the range is lost.
 */
export function repairHole(state: ReservationState, offset: number, length: number): void {
  const address = state.address + offset
  const rc = native.mmap(address, length, C.PROT_NONE, reservedFlags | C.MAP_FIXED_NOREPLACE, -1, 0)
  if (rc === address) {
    nameReserved(address, length)
    return
  }
  if (rc >= 0) native.munmap(rc, length)
  if (!stillReserved(address, length)) claim(state, offset, length, 'lost')
}

/** Whether /proc/self/maps shows [address, address + length) wholly as our named PROT_NONE. */
function stillReserved(address: number, length: number): boolean {
  let maps: string
  try {
    maps = fs.readFileSync('/proc/self/maps', 'latin1')
  } catch {
    return false
  }
  let covered = address
  for (const line of maps.split('\n')) {
    const match = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line)
    if (!match) continue
    const start = parseInt(match[1], 16)
    const end = parseInt(match[2], 16)
    if (end <= covered || start >= address + length) continue
    if (start > covered || match[3] !== '---p' || match[4] !== `[anon:${reservedName}]`) return false
    covered = end
    if (covered >= address + length) return true
  }
  return false
}

/** Unmaps every free part of the reservation (slots stay: their owners unmap them). */
export function releaseFree(state: ReservationState): void {
  let at = 0
  for (const slot of state.slots) {
    if (slot.offset > at) native.munmap(state.address + at, slot.offset - at)
    at = Math.max(at, slot.offset + slot.length)
  }
  if (at < state.length) native.munmap(state.address + at, state.length - at)
}

export const reservationFinalizer = new FinalizationRegistry<ReservationState>((state) => {
  if (state.closed) return
  releaseFree(state)
  state.closed = true
})

export function checkFree(state: ReservationState, offset: number, length: number, name: string): void {
  if (offset + length > state.length) {
    throw outOfRange(name, `inside the Reservation (offset + length <= ${state.length})`, `offset ${offset} + length ${length}`)
  }
  const taken = overlapping(state, offset, length)
  if (taken) {
    const what = taken.kind === 'region' ? 'a Region placed' : taken.kind === 'pending' ? 'memory held for the views of a closed Region' : 'a range lost to a failed placement'
    throw outOfRange(name, `a free range of the Reservation (it overlaps ${what} at offset ${taken.offset}, length ${taken.length})`, `offset ${offset} + length ${length}`)
  }
}
