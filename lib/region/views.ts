// Late users of a Region's views. A Node API handed `bytes` may use it after the call returns:
// zlib writes the same buffer again for every chunk (and aborts the process, CHECK(IsWithinBounds),
// if its length changed), dgram.send reads it after a DNS lookup, http once connected, and the
// thread pool (zlib, crypto.randomFill, fs.write) holds its pointer. So close(), remap() and
// split() never detach a view: it keeps its length and its memory until it is garbage-collected
// (Node keeps a buffer reachable while it uses it). Memory that stays (an in-place remap, the
// parts of a split) stays visible through the old views; memory that goes away while views cover
// it is not unmapped: mmap(MAP_FIXED) atomically replaces it with private, zero-filled,
// MAP_NORESERVE anonymous memory (no RSS until touched), where late reads see zeros and late
// writes land harmlessly, unmapped once every view of it has been collected. Only protect()
// taking write access away detaches the views over that range (revokeViews): a JS write there
// would SIGSEGV.
import { native, constants as C } from '../native.ts'

/** Address + length in bytes of a validated span of a live Region (internal). */
export interface Span {
  address: number
  length: number
}

/** One ArrayBuffer handed out: where it points, to find the views over a protect()ed range. */
interface View extends Span {
  buffer: WeakRef<ArrayBuffer>
}

/**
 * The views of one piece of memory, shared by a Region and its in-place remap() successors and
 * split() parts. `pending` are ranges that went away while views were live: held, released at
 * zero views. A view leaves `live` through a FinalizationRegistry when it is collected.
 */
export interface Views {
  live: Set<View>
  pending: PendingRange[]
}

/** A range held for views; `release` returns it to its reservation instead of unmapping it. */
interface PendingRange extends Span {
  release?: () => void
}

let pendingBytes = 0
const viewCollected = new FinalizationRegistry<{ views: Views; view: View }>(({ views, view }) => {
  views.live.delete(view)
  if (views.live.size > 0) return
  for (const range of views.pending) {
    if (range.release) range.release()
    else native.munmap(range.address, range.length)
    pendingBytes -= range.length
  }
  views.pending = []
})

export function newViews(): Views {
  return { live: new Set(), pending: [] }
}

/** Records `buffer` (a view over `span`) as live in `views` until it is collected. */
export function addView(views: Views, span: Span, buffer: ArrayBuffer): void {
  const view: View = { address: span.address, length: span.length, buffer: new WeakRef(buffer) }
  views.live.add(view)
  viewCollected.register(buffer, { views, view })
}

/** Detaches every live view that covers a byte of `span` (protect() took write access away). */
export function revokeViews(views: Views, span: Span): void {
  for (const view of views.live) {
    if (view.address >= span.address + span.length || span.address >= view.address + view.length) continue
    const buffer = view.buffer.deref()
    if (buffer !== undefined) native.detach(buffer)
  }
}

/** Holds `range` (already zero-filled stand-in memory) until the last of `views` is collected. */
export function holdForViews(views: Views, range: PendingRange): void {
  views.pending.push(range)
  pendingBytes += range.length
}

/**
 * The memory of [address, address + length), outside any Reservation, goes away: unmapped at
 * once without live views; otherwise atomically replaced (mmap MAP_FIXED) by zero-filled
 * stand-in memory, unmapped at zero views.
 */
export function vacate(address: number, length: number, views: Views): void {
  if (views.live.size === 0) {
    native.munmap(address, length)
    return
  }
  const flags = C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_NORESERVE | C.MAP_FIXED
  // Failing (ENOMEM) leaves the old mapping in place: it serves as the stand-in.
  native.mmap(address, length, C.PROT_READ | C.PROT_WRITE, flags, -1, 0)
  holdForViews(views, { address, length })
}

/** Bytes of address space held for views not yet garbage-collected (tests, bench). */
export function reservedBytes(): number {
  return pendingBytes
}
