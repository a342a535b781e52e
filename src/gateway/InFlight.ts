/**
 * Requests this gateway has in flight per replica, and when each replica was last used. Read
 * by routing (least busy), the scheduler (busy victims go last) and the Evictor (drain before an
 * unload, idle sweep). Synchronous and fiber-free: the proxy counts every request through it.
 */
import { Effect } from "effect"

const key = (node: string, model: string) => `${node}\u0000${model}`

export class InFlight extends Effect.Service<InFlight>()("cortex/InFlight", {
  sync: () => {
    const counts = new Map<string, number>()
    const lastUse = new Map<string, number>()

    /** Count a request against a replica until the returned release runs; it also marks use. */
    const track = (node: string, model: string) => {
      const k = key(node, model)
      counts.set(k, (counts.get(k) ?? 0) + 1)
      lastUse.set(k, Date.now())
      let released = false
      return () => {
        if (released) return
        released = true
        lastUse.set(k, Date.now())
        const n = (counts.get(k) ?? 1) - 1
        if (n <= 0) counts.delete(k)
        else counts.set(k, n)
      }
    }

    return {
      track,
      busy: (node: string, model: string) => counts.get(key(node, model)) ?? 0,
      /** Requests on any model of a node (a node removed by a reload drains until this is 0). */
      onNode: (node: string) => {
        let n = 0
        for (const [k, c] of counts) if (k.startsWith(`${node}\u0000`)) n += c
        return n
      },
      /** ms epoch of the replica's last use through this gateway (0 = never). */
      lastUse: (node: string, model: string) => lastUse.get(key(node, model)) ?? 0,
      markUsed: (node: string, model: string) => void lastUse.set(key(node, model), Date.now())
    } as const
  }
}) {}
