// PLACEHOLDER until the write-tracking work lands (being written now).
export function probeUserfaultfd(): { available: boolean; wpAsync: boolean } {
  throw new Error('userfaultfd binding not built yet')
}
export class Userfaultfd {}
