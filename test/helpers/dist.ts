// Child processes run plain Node (no TypeScript): they import the compiled dist/. `npm test`
// builds it first; this guard makes a single-file vitest run say so instead of failing oddly.
import fs from 'node:fs'
import path from 'node:path'

export const distEntry = path.resolve(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '../../dist/lib/index.js')

export function assertDistBuilt(): void {
  if (!fs.existsSync(distEntry)) throw new Error(`${distEntry} is missing: run \`npx tsc -p tsconfig.json\` (npm test does)`)
}
