/**
 * The gateway's operator API, declared once: what `/admin/status`, `/admin/load`,
 * `/admin/unload` and `/v1/models` answer. The gateway builds its answers as these types and
 * the `cortex` operator commands decode them, so a gateway of another version is an error that
 * names the field, not an `undefined` in a table.
 */
import { Schema } from "effect"
import { ModelStatus, PullRecord } from "./contract.js"

const opt = <S extends Schema.Schema.Any>(s: S) => Schema.optionalWith(s, { exact: true })

export const NodeView = Schema.Struct({
  name: Schema.String,
  endpoint: Schema.String,
  healthy: Schema.Boolean,
  status: Schema.String,
  misses: Schema.Number,
  last_seen: Schema.NullOr(Schema.String),
  error: Schema.NullOr(Schema.String),
  devices: Schema.Array(Schema.Struct({
    id: Schema.String,
    name: Schema.String,
    total_mb: Schema.Number,
    free_mb: Schema.Number,
    used_mb: opt(Schema.Number),
    group: opt(Schema.String),
    /** Where the neuron's source has them (a GPU's telemetry; none for a CPU device). */
    utilization: opt(Schema.Number),
    temperature_c: opt(Schema.Number),
    power_w: opt(Schema.Number)
  })),
  models: Schema.Array(Schema.Struct({
    id: Schema.String,
    status: ModelStatus,
    in_flight: Schema.Number,
    queue_depth: Schema.Number
  }))
})
export type NodeView = typeof NodeView.Type

export const CatalogueEntry = Schema.Struct({
  id: Schema.String,
  object: Schema.Literal("model"),
  created: Schema.Number,
  owned_by: Schema.String,
  loaded: Schema.Boolean,
  locations: Schema.Array(Schema.Struct({ node: Schema.String, status: ModelStatus, healthy: Schema.Boolean })),
  feasible_on: Schema.Array(Schema.String),
  capabilities: Schema.Array(Schema.String),
  limit: Schema.Struct({ context: Schema.NullOr(Schema.Number), output: Schema.NullOr(Schema.Number) }),
  cost: opt(Schema.Record({ key: Schema.String, value: Schema.Number })),
  alias_of: opt(Schema.String)
})
export type CatalogueEntry = typeof CatalogueEntry.Type

export const CatalogueList = Schema.Struct({ object: Schema.Literal("list"), data: Schema.Array(CatalogueEntry) })
export type CatalogueList = typeof CatalogueList.Type

export const LoadInProgress = Schema.Struct({
  model: Schema.String,
  node: Schema.NullOr(Schema.String),
  since: Schema.String,
  waiters: Schema.Number
})
export type LoadInProgress = typeof LoadInProgress.Type

export const LoadRecord = Schema.Struct({
  model: Schema.String,
  node: Schema.String,
  reason: Schema.String,
  evicted: Schema.Array(Schema.String),
  wait_ms: Schema.Number,
  load_ms: Schema.Number,
  at: Schema.String
})
export type LoadRecord = typeof LoadRecord.Type

/** A pull on a node, as `/admin/status` and `/admin/pull` answer it. */
export const AdminDownload = Schema.Struct({ node: Schema.String, ...PullRecord.fields })
export type AdminDownload = typeof AdminDownload.Type

export const AdminRemoveAnswer = Schema.Struct({
  model: Schema.String,
  results: Schema.Array(Schema.Struct({ node: Schema.String, removed: Schema.Boolean, freed_bytes: Schema.Number }))
})
export type AdminRemoveAnswer = typeof AdminRemoveAnswer.Type

export const AdminStatus = Schema.Struct({
  version: Schema.String,
  nodes: Schema.Array(NodeView),
  models: Schema.Array(CatalogueEntry),
  loads_in_progress: Schema.Array(LoadInProgress),
  recent_loads: Schema.Array(LoadRecord),
  /** Pulls under way and recent ones, per node (absent from a gateway before model sources). */
  downloads: opt(Schema.Array(AdminDownload))
})
export type AdminStatus = typeof AdminStatus.Type

/** `/admin/load` without a node answers where it loaded; otherwise one result per node acted on. */
export const AdminLifecycleAnswer = Schema.Union(
  Schema.Struct({ model: Schema.String, node: Schema.String, status: Schema.String }),
  Schema.Struct({
    model: Schema.String,
    results: Schema.Array(Schema.Struct({ node: Schema.String, status: Schema.String }))
  })
)
export type AdminLifecycleAnswer = typeof AdminLifecycleAnswer.Type
