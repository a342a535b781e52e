/**
 * An `@effect/sql` client over PGlite (PostgreSQL compiled to WASM, in this process): the
 * embedded store needs no server and installs from the npm registry alone. No maintained adapter
 * exists for effect 3.x (`@effect/sql-pglite` is effect 4 only), so this is the small one the
 * store needs: the pg dialect's compiler (shared with `@effect/sql-pg`, so every query is the
 * same text on both), queries through PGlite's extended protocol, and transactions.
 * PGlite is one connection: a transaction holds it (a semaphore) so that no other query runs
 * inside it; other queries wait their turn.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import { makeCompiler } from "@effect/sql-pg/PgClient"
import * as Client from "@effect/sql/SqlClient"
import type { Connection } from "@effect/sql/SqlConnection"
import { SqlError } from "@effect/sql/SqlError"
import { PGlite } from "@electric-sql/pglite"
import { Effect, Layer, Stream } from "effect"

/**
 * A first-come first-served lock for the one connection: O(1) per take and release (Effect's
 * semaphore wakes every waiter on each release, which showed in the profile with 32 requests
 * reserving at once).
 */
class Turn {
  private busy = false
  private readonly waiting: Array<() => void> = []
  readonly take: Effect.Effect<void> = Effect.async<void>((resume) => {
    if (!this.busy) {
      this.busy = true
      return resume(Effect.void)
    }
    const next = () => resume(Effect.void)
    this.waiting.push(next)
    return Effect.sync(() => {
      const i = this.waiting.indexOf(next)
      if (i >= 0) this.waiting.splice(i, 1)
    })
  })
  readonly release: Effect.Effect<void> = Effect.sync(() => {
    const next = this.waiting.shift()
    if (next) next()
    else this.busy = false
  })
  readonly with = <A, E>(effect: Effect.Effect<A, E>) =>
    Effect.acquireUseRelease(this.take, () => effect, () => this.release)
}

const query = (db: PGlite, sql: string, params: ReadonlyArray<unknown>) =>
  Effect.tryPromise({
    try: () =>
      params.length === 0 && sql.includes(";")
        ? db.exec(sql).then((results) => results.at(-1)?.rows ?? [])
        : db.query<Record<string, unknown>>(sql, params as Array<unknown>).then((r) => r.rows),
    catch: (cause) => new SqlError({ cause, message: `PGlite: ${(cause as Error)?.message ?? String(cause)}` })
  })

const connection = (db: PGlite, guard: <A, E>(effect: Effect.Effect<A, E>) => Effect.Effect<A, E>): Connection => {
  const execute = (
    sql: string,
    params: ReadonlyArray<unknown>,
    transformRows: (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined
  ) =>
    guard(query(db, sql, params)).pipe(
      Effect.map((rows) => transformRows ? transformRows(rows as ReadonlyArray<object>) : rows)
    )
  return {
    execute,
    executeRaw: (sql, params) => guard(query(db, sql, params)),
    executeStream: (sql, params, transformRows) =>
      Stream.fromIterableEffect(execute(sql, params, transformRows) as Effect.Effect<ReadonlyArray<unknown>, SqlError>),
    executeValues: (sql, params) =>
      guard(query(db, sql, params)).pipe(Effect.map((rows) => rows.map((row) => Object.values(row)))),
    executeUnprepared: execute
  }
}

/** Open (creating if needed) the database in `dataDir`; closed with the scope. */
export const makePglite = (dataDir: string) =>
  Effect.gen(function*() {
    const db = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () => PGlite.create(dataDir),
        catch: (cause) =>
          new SqlError({ cause, message: `could not open the embedded store in ${dataDir}: ${String(cause)}` })
      }),
      (db) => Effect.promise(() => db.close()).pipe(Effect.ignore)
    )
    // A commit does not wait for its WAL write to reach the disk: a crash may lose the last
    // moments' usage rows and meter counts, never corrupt the store; the limits' reservations
    // (a transaction per request) cost half as much CPU in the gateway's own thread.
    yield* Effect.tryPromise({
      try: () => db.exec("SET synchronous_commit TO off"),
      catch: (cause) => new SqlError({ cause, message: "PGlite: could not set synchronous_commit" })
    })
    const turn = new Turn()
    const shared = connection(db, turn.with)
    // A transaction holds the one connection for its scope; its own queries go straight through.
    const inTransaction = connection(db, (effect) => effect)
    const transactionAcquirer = Effect.as(
      Effect.acquireRelease(turn.take, () => turn.release),
      inTransaction
    )
    return yield* Client.make({
      acquirer: Effect.succeed(shared),
      transactionAcquirer,
      compiler: makeCompiler(),
      spanAttributes: [["db.system.name", "postgresql"], ["db.namespace", "pglite"]]
    })
  })

export const layerPglite = (dataDir: string): Layer.Layer<Client.SqlClient, SqlError> =>
  Layer.scoped(Client.SqlClient, makePglite(dataDir)).pipe(Layer.provide(Reactivity.layer))
