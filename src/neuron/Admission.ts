/**
 * Admission accounting for one model, as pure functions over an immutable state.
 * Seats = concurrent generations (the context's sequences). Past them, a bounded queue; a
 * principal may hold at most `maxPerPrincipal` seats + queue places together. When a seat frees,
 * the queued ticket whose principal holds the fewest seats goes next (arrival order breaks ties),
 * so one busy client cannot starve the others. A ticket may need several seats (a request for
 * `n` choices runs them on up to `n` sequences); the one chosen to go next waits at the head of
 * the queue until enough seats are free, so smaller tickets cannot starve it.
 */
export interface Limits {
  readonly maxInFlight: number
  readonly maxQueueDepth: number
  readonly maxPerPrincipal: number | undefined
}

export interface Ticket {
  readonly id: number
  readonly principal: string
  /** Seats it needs, 1 unless said (at most `maxInFlight`: the caller clamps it). */
  readonly seats?: number
}

const seatsOf = (ticket: Ticket) => ticket.seats ?? 1

/** Seats taken by the running tickets. */
export const seatsInUse = (state: State) => {
  let used = 0
  for (const t of state.running) used += seatsOf(t)
  return used
}

export interface State {
  readonly running: ReadonlyArray<Ticket>
  readonly queue: ReadonlyArray<Ticket>
}

export const empty: State = { running: [], queue: [] }

export type Decision = "run" | "queue" | "queue_full" | "principal_limit"

const holdings = (state: State, principal: string) =>
  state.running.filter((t) => t.principal === principal).length +
  state.queue.filter((t) => t.principal === principal).length

export const admit = (state: State, limits: Limits, ticket: Ticket): readonly [Decision, State] => {
  if (limits.maxPerPrincipal !== undefined && holdings(state, ticket.principal) >= limits.maxPerPrincipal) {
    return ["principal_limit", state]
  }
  if (seatsInUse(state) + seatsOf(ticket) <= limits.maxInFlight && state.queue.length === 0) {
    return ["run", { ...state, running: [...state.running, ticket] }]
  }
  if (state.queue.length >= limits.maxQueueDepth) return ["queue_full", state]
  return ["queue", { ...state, queue: [...state.queue, ticket] }]
}

/** Pick the next queued ticket: fewest running seats for its principal, then arrival order. */
const nextIndex = (state: State): number => {
  let best = -1
  let bestLoad = Infinity
  state.queue.forEach((t, i) => {
    const load = state.running.filter((r) => r.principal === t.principal).length
    if (load < bestLoad) {
      best = i
      bestLoad = load
    }
  })
  return best
}

/** Fill free seats from the queue; returns the tickets that start running. */
export const promote = (state: State, limits: Limits): readonly [ReadonlyArray<Ticket>, State] => {
  const started: Array<Ticket> = []
  let current = state
  while (seatsInUse(current) < limits.maxInFlight && current.queue.length > 0) {
    const i = nextIndex(current)
    const ticket = current.queue[i]!
    if (seatsInUse(current) + seatsOf(ticket) > limits.maxInFlight) break
    current = {
      running: [...current.running, ticket],
      queue: current.queue.filter((_, j) => j !== i)
    }
    started.push(ticket)
  }
  return [started, current]
}

/** A ticket leaves: finished, failed, cancelled or timed out, wherever it was. */
export const leave = (state: State, limits: Limits, id: number): readonly [ReadonlyArray<Ticket>, State] =>
  promote({
    running: state.running.filter((t) => t.id !== id),
    queue: state.queue.filter((t) => t.id !== id)
  }, limits)

export const isRunning = (state: State, id: number) => state.running.some((t) => t.id === id)
