/**
 * Device groups: which GPUs one worker owns. `[[device_groups]] devices = [0, 1]` in neuron.toml
 * puts GPUs 0 and 1 under one worker (started with CUDA_VISIBLE_DEVICES=0,1), so a model loaded
 * there is split by llama.cpp across both; every GPU not named is a group of its own, and a CPU
 * host is one CPU group. A model's memory on a group is split across its devices in proportion
 * to their free memory at load time: that is llama.cpp's own default split, and node-llama-cpp
 * 3.21.1 offers no way to set another (`tensor_split` and any `split_mode` but "layer" are
 * refused here, naming the key, rather than accepted and ignored).
 */
import { Schema } from "effect"
import { ConfigError } from "../domain/contract.js"
import type { Device } from "./Discovery.js"

export const DeviceGroupTable = Schema.Struct({
  devices: Schema.Array(Schema.Int.pipe(Schema.nonNegative())).pipe(Schema.minItems(1)),
  tensor_split: Schema.optionalWith(Schema.Array(Schema.Number.pipe(Schema.nonNegative())), { exact: true }),
  split_mode: Schema.optionalWith(Schema.String, { exact: true })
}).annotations({ parseOptions: { onExcessProperty: "error" } })
export type DeviceGroupTable = typeof DeviceGroupTable.Type

/** `[simulate] devices = [{ total_mb = 8000 }, ...]`: GPUs that are not there, for tests (see README). */
export const SimulateTable = Schema.Struct({
  devices: Schema.Array(
    Schema.Struct({
      total_mb: Schema.Number.pipe(Schema.positive()),
      name: Schema.optionalWith(Schema.String, { exact: true }),
      /** Declared telemetry, so tests can follow the figures through /health, /metrics and `cortex status`. */
      utilization: Schema.optionalWith(Schema.Number.pipe(Schema.between(0, 1)), { exact: true }),
      temperature_c: Schema.optionalWith(Schema.Number, { exact: true }),
      power_w: Schema.optionalWith(Schema.Number.pipe(Schema.nonNegative()), { exact: true })
    }).annotations({ parseOptions: { onExcessProperty: "error" } })
  ).pipe(Schema.minItems(1))
}).annotations({ parseOptions: { onExcessProperty: "error" } })
export type SimulateTable = typeof SimulateTable.Type

export interface SimulatedDevice {
  readonly totalMb: number
  readonly name?: string | undefined
  readonly utilization?: number | undefined
  readonly temperatureC?: number | undefined
  readonly powerW?: number | undefined
}

/**
 * The groups' device indices, checked on their own (before any device is known): every index in
 * at most one group, and nothing asked that node-llama-cpp cannot do.
 */
export const checkGroups = (
  file: string,
  groups: ReadonlyArray<DeviceGroupTable> | undefined
): ConfigError | ReadonlyArray<ReadonlyArray<number>> | undefined => {
  if (groups === undefined) return undefined
  const owner = new Map<number, number>()
  for (const [g, group] of groups.entries()) {
    const key = `device_groups[${g}]`
    if (group.tensor_split !== undefined) {
      return new ConfigError({
        file,
        key: `${key}.tensor_split`,
        reason: "node-llama-cpp 3.21.1 cannot set a tensor split; llama.cpp splits a group's layers by the " +
          "devices' free memory. Remove the key (see README, 'Multi-GPU hosts')"
      })
    }
    if (group.split_mode !== undefined && group.split_mode !== "layer") {
      return new ConfigError({
        file,
        key: `${key}.split_mode`,
        reason: `'${group.split_mode}' cannot be set through node-llama-cpp 3.21.1; only "layer" (llama.cpp's ` +
          "default, whole layers per device) is available"
      })
    }
    for (const index of group.devices) {
      const first = owner.get(index)
      if (first !== undefined) {
        return new ConfigError({
          file,
          key: `${key}.devices`,
          reason: first === g
            ? `device ${index} is listed twice`
            : `device ${index} is already in device_groups[${first}]; a device belongs to at most one group`
        })
      }
      owner.set(index, g)
    }
  }
  return groups.map((g) => g.devices)
}

/** A group's id, which is also its worker's: the device ids joined by "+" ("cuda:0+cuda:1"). */
export const groupId = (devices: ReadonlyArray<Device>) => devices.map((d) => d.id).join("+")

/**
 * The host's devices partitioned into groups: the configured ones (in order), then every GPU
 * not named on its own. An index the host does not have is a config error naming the key.
 */
export const resolveGroups = (
  file: string,
  devices: ReadonlyArray<Device>,
  configured: ReadonlyArray<ReadonlyArray<number>> | undefined
): ConfigError | ReadonlyArray<ReadonlyArray<Device>> => {
  if (configured === undefined || configured.length === 0) return devices.map((d) => [d])
  const gpus = devices.filter((d) => d.kind === "cuda")
  const have = gpus.map((d) => d.index).join(", ")
  const named = new Set<number>()
  const groups: Array<ReadonlyArray<Device>> = []
  for (const [g, indices] of configured.entries()) {
    const group: Array<Device> = []
    for (const index of indices) {
      const device = gpus.find((d) => d.index === index)
      if (!device) {
        return new ConfigError({
          file,
          key: `device_groups[${g}].devices`,
          reason: `this host has no GPU ${index} (${gpus.length > 0 ? `its GPUs are ${have}` : "it has no GPU"})`
        })
      }
      group.push(device)
      named.add(index)
    }
    groups.push(group)
  }
  for (const d of devices) if (!named.has(d.index) || d.kind !== "cuda") groups.push([d])
  return groups
}

/**
 * A group's load split across its devices in proportion to their free memory (llama.cpp's
 * default split); the shares add up to `requiredMb`. With no free memory anywhere, evenly.
 */
export const splitByFree = (
  requiredMb: number,
  free: ReadonlyArray<{ readonly id: string; readonly freeMb: number }>
): Array<{ readonly id: string; readonly mb: number }> => {
  const total = free.reduce((s, d) => s + Math.max(0, d.freeMb), 0)
  const weights = free.map((d) => total > 0 ? Math.max(0, d.freeMb) / total : 1 / free.length)
  let left = requiredMb
  return free.map((d, i) => {
    const mb = i === free.length - 1 ? left : Math.round(requiredMb * weights[i]! * 1000) / 1000
    left -= mb
    return { id: d.id, mb }
  })
}
