// Per-page state of a Region (protection bits, uffd register modes) stored as runs of equal
// values, not one byte per page: a 24 TiB Region is one run, not a 6 GiB array.

export class PageRuns {
  /** First page of each run, ascending; starts[0] === 0. */
  #starts: number[]
  #values: number[]
  readonly pages: number

  constructor(pages: number, value: number) {
    this.pages = pages
    this.#starts = [0]
    this.#values = [value]
  }

  /** Value of `page`. */
  get(page: number): number {
    return this.#values[this.#index(page)]
  }

  /** Sets [from, to) to value. */
  fill(value: number, from = 0, to = this.pages): void {
    if (from >= to) return
    this.#split(from)
    if (to < this.pages) this.#split(to)
    const first = this.#index(from)
    const last = to < this.pages ? this.#index(to) : this.#starts.length
    this.#starts.splice(first, last - first, from)
    this.#values.splice(first, last - first, value)
    this.#coalesce()
  }

  /** [from, to, value] runs intersected with [from, to). */
  *runs(from = 0, to = this.pages): Generator<[number, number, number]> {
    for (let i = this.#index(from); i < this.#starts.length && this.#starts[i] < to; i++) {
      const start = Math.max(this.#starts[i], from)
      const end = Math.min(i + 1 < this.#starts.length ? this.#starts[i + 1] : this.pages, to)
      if (start < end) yield [start, end, this.#values[i]]
    }
  }

  /** First page in [from, to) whose value fails `ok`, or -1. */
  findFailing(ok: (value: number) => boolean, from = 0, to = this.pages): number {
    for (const [start, , value] of this.runs(from, to)) if (!ok(value)) return start
    return -1
  }

  /** A copy with `pages` pages: cut, or extended with `tail`. */
  resized(pages: number, tail: number): PageRuns {
    const out = new PageRuns(pages, tail)
    for (const [start, end, value] of this.runs(0, Math.min(pages, this.pages))) out.fill(value, start, end)
    return out
  }

  #index(page: number): number {
    let lo = 0
    let hi = this.#starts.length - 1
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1
      if (this.#starts[mid] <= page) lo = mid
      else hi = mid - 1
    }
    return lo
  }

  #split(page: number): void {
    const i = this.#index(page)
    if (this.#starts[i] !== page) {
      this.#starts.splice(i + 1, 0, page)
      this.#values.splice(i + 1, 0, this.#values[i])
    }
  }

  #coalesce(): void {
    for (let i = this.#starts.length - 1; i > 0; i--) {
      if (this.#values[i] === this.#values[i - 1]) {
        this.#starts.splice(i, 1)
        this.#values.splice(i, 1)
      }
    }
  }
}
