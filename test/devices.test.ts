/**
 * Devices: nvidia-smi's CSV parsed from captured text (one GPU, eight, MIG, "[N/A]" fields), the
 * CUDA version from its banner, device groups from neuron.toml (overlaps, unknown indices and
 * what node-llama-cpp cannot do are config errors naming the key), and the split by free memory.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { mkdtempSync, writeFileSync } from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { ConfigError } from "../src/domain/contract.js"
import { checkGroups, resolveGroups, splitByFree } from "../src/neuron/DeviceGroups.js"
import { DeviceSource, simulatedDevices } from "../src/neuron/DeviceSource.js"
import { type Device, NVIDIA_SMI_QUERY, parseCudaVersion, parseNvidiaSmi } from "../src/neuron/Discovery.js"
import { loadNeuronConfig, NeuronConfig, type NeuronSettings } from "../src/neuron/NeuronConfig.js"

// Captured with --query-gpu=index,uuid,name,memory.total,memory.used,memory.free,utilization.gpu,
// temperature.gpu,power.draw,driver_version --format=csv,noheader,nounits
const ONE_GPU =
  "0, GPU-5c1d8e0a-2f7b-11ee-be56-0242ac120002, NVIDIA GeForce RTX 3060, 12288, 415, 11873, 3, 41, 17.85, 550.54.14\n"

const EIGHT_GPUS = Array.from(
  { length: 8 },
  (_, i) =>
    `${i}, GPU-8a${i}e4c21-0000-4b7e-9d3c-00000000000${i}, NVIDIA H100 80GB HBM3, 81559, ${1000 * i + 7}, ${
      81559 - (1000 * i + 7)
    }, ${10 * i}, ${30 + i}, ${70.5 + i}, 535.161.08`
).join("\n") + "\n"

// MIG mode on an A100: no GPU-wide utilisation ([N/A]); memory still per physical GPU.
const MIG = [
  "0, GPU-1b2c3d4e-aaaa-bbbb-cccc-000000000000, NVIDIA A100-SXM4-40GB, 40960, 634, 40326, [N/A], 32, 52.34, 535.104.05",
  "1, GPU-1b2c3d4e-aaaa-bbbb-cccc-000000000001, NVIDIA A100-SXM4-40GB, 40960, 10, 40950, [N/A], 30, 50.10, 535.104.05"
].join("\n")

// A board without power or temperature sensors, and one line nvidia-smi could not read at all.
const NA_FIELDS = [
  "0, GPU-00000000-0000-0000-0000-00000000beef, NVIDIA GeForce GTX 1650, 4096, 1200, [N/A], 7, [N/A], [Not Supported], 470.223.02",
  "[N/A], [N/A], [N/A], [N/A], [N/A], [N/A], [N/A], [N/A], [N/A], [N/A]",
  "garbage"
].join("\n")

describe("nvidia-smi parsing", () => {
  it("asks for every figure the neuron reports", () => {
    expect(NVIDIA_SMI_QUERY).toEqual(expect.arrayContaining([
      "index",
      "uuid",
      "name",
      "memory.total",
      "memory.used",
      "utilization.gpu",
      "temperature.gpu",
      "power.draw"
    ]))
  })

  it("reads one GPU with its telemetry and the driver version", () => {
    const { devices, driverVersion } = parseNvidiaSmi(ONE_GPU)
    expect(driverVersion).toBe("550.54.14")
    expect(devices).toEqual([{
      id: "cuda:0",
      kind: "cuda",
      index: 0,
      name: "NVIDIA GeForce RTX 3060",
      totalMb: 12288,
      freeMb: 11873,
      uuid: "GPU-5c1d8e0a-2f7b-11ee-be56-0242ac120002",
      utilization: 0.03,
      temperatureC: 41,
      powerW: 17.85
    }])
  })

  it("reads eight GPUs in order, each with its own figures", () => {
    const { devices } = parseNvidiaSmi(EIGHT_GPUS)
    expect(devices.map((d) => d.id)).toEqual(Array.from({ length: 8 }, (_, i) => `cuda:${i}`))
    expect(devices[7]).toMatchObject({ index: 7, totalMb: 81559, freeMb: 81559 - 7007, temperatureC: 37, powerW: 77.5 })
    expect(devices[7]!.utilization).toBeCloseTo(0.7)
  })

  it("leaves MIG's missing utilisation absent rather than zero", () => {
    const { devices, driverVersion } = parseNvidiaSmi(MIG)
    expect(driverVersion).toBe("535.104.05")
    expect(devices).toHaveLength(2)
    for (const d of devices) {
      expect(d).not.toHaveProperty("utilization")
      expect(d.temperatureC).toBeGreaterThan(0)
    }
    expect(devices[0]).toMatchObject({ totalMb: 40960, freeMb: 40326, powerW: 52.34 })
  })

  it("reads [N/A] and [Not Supported] as absent, derives free from used, and drops unreadable lines", () => {
    const { devices } = parseNvidiaSmi(NA_FIELDS)
    expect(devices).toEqual([{
      id: "cuda:0",
      kind: "cuda",
      index: 0,
      name: "NVIDIA GeForce GTX 1650",
      totalMb: 4096,
      freeMb: 4096 - 1200,
      uuid: "GPU-00000000-0000-0000-0000-00000000beef",
      utilization: 0.07
    }])
    expect(parseNvidiaSmi("").devices).toEqual([])
  })

  it("reads the CUDA version from the banner", () => {
    const banner = "+-----------------------------------------------------------------------------------------+\n" +
      "| NVIDIA-SMI 550.54.14              Driver Version: 550.54.14      CUDA Version: 12.4     |\n"
    expect(parseCudaVersion(banner)).toBe("12.4")
    expect(parseCudaVersion("no banner")).toBeUndefined()
  })
})

const ids = (groups: ReturnType<typeof resolveGroups>) =>
  (groups as ReadonlyArray<ReadonlyArray<Device>>).map((g) => g.map((d) => d.id))

const gpus = simulatedDevices([{ totalMb: 24000 }, { totalMb: 24000 }, { totalMb: 12000 }])

describe("device groups", () => {
  it("defaults to one group per device; configured groups come first, the rest alone", () => {
    const alone = resolveGroups("neuron.toml", gpus, undefined)
    expect(ids(alone)).toEqual([["cuda:0"], ["cuda:1"], ["cuda:2"]])
    const grouped = resolveGroups("neuron.toml", gpus, [[0, 1]])
    expect(ids(grouped)).toEqual([
      ["cuda:0", "cuda:1"],
      ["cuda:2"]
    ])
  })

  it("refuses an index the host does not have, naming the key", () => {
    const error = resolveGroups("/etc/neuron.toml", gpus, [[2], [1, 5]])
    expect(error).toBeInstanceOf(ConfigError)
    expect((error as ConfigError).key).toBe("device_groups[1].devices")
    expect((error as ConfigError).message).toContain("no GPU 5")
    const cpuOnly = resolveGroups("neuron.toml", [{ ...gpus[0]!, id: "cpu", kind: "cpu" }], [[0]])
    expect((cpuOnly as ConfigError).message).toContain("it has no GPU")
  })

  it("refuses overlaps and what node-llama-cpp 3.21.1 cannot set", () => {
    const overlap = checkGroups("neuron.toml", [{ devices: [0, 1] }, { devices: [1, 2] }]) as ConfigError
    expect(overlap.key).toBe("device_groups[1].devices")
    expect(overlap.reason).toContain("already in device_groups[0]")
    expect((checkGroups("neuron.toml", [{ devices: [0, 0] }]) as ConfigError).reason).toContain("twice")
    const split = checkGroups("neuron.toml", [{ devices: [0, 1], tensor_split: [0.6, 0.4] }]) as ConfigError
    expect(split.key).toBe("device_groups[0].tensor_split")
    expect(split.reason).toContain("node-llama-cpp 3.21.1")
    const row = checkGroups("neuron.toml", [{ devices: [0, 1], split_mode: "row" }]) as ConfigError
    expect(row.key).toBe("device_groups[0].split_mode")
    expect(checkGroups("neuron.toml", [{ devices: [0, 1], split_mode: "layer" }])).toEqual([[0, 1]])
  })

  it.effect("reads [[device_groups]] and [simulate] from neuron.toml, and names the key of a bad one", () =>
    Effect.gen(function*() {
      const dir = mkdtempSync(path.join(os.tmpdir(), "cortex-devices-"))
      const good = path.join(dir, "good.toml")
      writeFileSync(
        good,
        "[[device_groups]]\ndevices = [0, 1]\nsplit_mode = \"layer\"\n\n[simulate]\n" +
          "devices = [{ total_mb = 8000 }, { total_mb = 8000, name = \"fake\" }]\n"
      )
      const settings = yield* loadNeuronConfig({ file: good, env: {} })
      expect(settings.deviceGroups).toEqual([[0, 1]])
      expect(settings.simulate).toEqual([{ totalMb: 8000, name: undefined }, { totalMb: 8000, name: "fake" }])
      const bad = path.join(dir, "bad.toml")
      writeFileSync(bad, "[[device_groups]]\ndevices = [0]\n\n[[device_groups]]\ndevices = [0]\n")
      const error = yield* Effect.flip(loadNeuronConfig({ file: bad, env: {} }))
      expect(error.message).toBe(
        `${bad}: device_groups[1].devices: device 0 is already in device_groups[0]; a device belongs to at most one group`
      )
      const typo = path.join(dir, "typo.toml")
      writeFileSync(typo, "[simulate]\ndevices = [{ total = 8000 }]\n")
      const typoError = yield* Effect.flip(loadNeuronConfig({ file: typo, env: {} }))
      expect(typoError.key).toContain("simulate.devices.0")
    }))
})

describe("DeviceSource", () => {
  const specs = [{ totalMb: 8000, utilization: 0.5, temperatureC: 60 }, { totalMb: 8000, name: "spare" }]

  it.scoped("[simulate] in neuron.toml gives declared GPUs: simulated, full, with only the telemetry declared", () =>
    Effect.gen(function*() {
      const source = yield* DeviceSource
      expect(source.simulated).toBe(true)
      expect(source.driver()).toEqual({})
      const [first, second] = source.devices()
      expect(first).toMatchObject({ id: "cuda:0", kind: "cuda", totalMb: 8000, freeMb: 8000, utilization: 0.5 })
      expect(first).not.toHaveProperty("powerW")
      expect(second).toMatchObject({ id: "cuda:1", name: "spare", simulated: true })
      expect(second).not.toHaveProperty("utilization")
    }).pipe(
      Effect.provide(DeviceSource.Default),
      Effect.provide(Layer.succeed(NeuronConfig, { simulate: specs, gpu: "auto" } as unknown as NeuronSettings))
    ))

  it.effect("the Simulated layer declares the same devices whatever the config says", () =>
    Effect.gen(function*() {
      const source = yield* DeviceSource
      expect(source.devices().map((d) => [d.id, d.totalMb, d.simulated])).toEqual([
        ["cuda:0", 8000, true],
        ["cuda:1", 8000, true]
      ])
    }).pipe(Effect.provide(DeviceSource.Simulated(specs))))

  it.scoped("gpu = \"off\" is one CPU device with no GPU figures", () =>
    Effect.gen(function*() {
      const source = yield* DeviceSource
      const devices = source.devices()
      expect(devices.map((d) => d.kind)).toEqual(["cpu"])
      for (const key of ["utilization", "temperatureC", "powerW", "uuid"]) expect(devices[0]).not.toHaveProperty(key)
      expect(source.driver()).toEqual({})
    }).pipe(
      Effect.provide(DeviceSource.Default),
      Effect.provide(Layer.succeed(NeuronConfig, { simulate: undefined, gpu: "off" } as unknown as NeuronSettings))
    ))
})

describe("split by free memory", () => {
  it("splits a load across a group in proportion to free memory, the shares adding up", () => {
    const split = splitByFree(45, [{ id: "cuda:0", freeMb: 30 }, { id: "cuda:1", freeMb: 60 }])
    expect(split[0]!.mb).toBeCloseTo(15)
    expect(split[1]!.mb).toBeCloseTo(30)
    expect(split[0]!.mb + split[1]!.mb).toBeCloseTo(45)
    expect(splitByFree(10, [{ id: "a", freeMb: 0 }, { id: "b", freeMb: 0 }]).map((s) => s.mb)).toEqual([5, 5])
  })
})
