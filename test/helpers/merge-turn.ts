// A child process that holds a TwinIndex's merge turn (content and deduplicator tests).
import { spawn, type ChildProcess } from 'node:child_process'
import type { TwinIndex } from '../../lib/index.ts'
import { distEntry, ensureDist } from './dist.mjs'

export interface TurnHolder {
  child: ChildProcess
  /** 'true' once the child took the turn, 'false' if another thread had it. */
  took: Promise<string>
  /** Ends stdin: the child gives the turn back and says 'ended' before it exits. */
  ended: () => Promise<string>
}

/** A child that opens the index, takes the turn for `leaseMs`, says so, and holds on until stdin ends. */
export function mergeTurnHolder(index: TwinIndex, leaseMs: number): TurnHolder {
  ensureDist()
  const script = `
    const { TwinIndex } = await import(${JSON.stringify(distEntry)})
    const index = TwinIndex.open(process.env.INDEX)
    const turn = index.tryMergeTurn({ leaseMs: ${leaseMs} })
    process.stdout.write(String(turn !== null) + '\\n')
    process.stdin.resume()
    process.stdin.on('end', () => { if (turn !== null) index.endMergeTurn(turn); process.stdout.write('ended\\n', () => process.exit(0)) })
  `
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, INDEX: index.path }, stdio: ['pipe', 'pipe', 'inherit'] })
  let out = ''
  const line = (n: number) =>
    new Promise<string>((resolve) => {
      const check = () => {
        const lines = out.split('\n')
        if (lines.length > n) resolve(lines[n - 1])
      }
      child.stdout!.on('data', (chunk) => ((out += chunk), check()))
      check()
    })
  return { child, took: line(1), ended: () => (child.stdin!.end(), line(2)) }
}
