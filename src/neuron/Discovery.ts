/**
 * What this host has: devices with total and free memory and, for GPUs, their telemetry
 * (utilisation, temperature, power). GPUs come from nvidia-smi (per-device figures that
 * node-llama-cpp cannot give); without it, the host is one CPU device backed by RAM, with no GPU
 * figures invented for it. `DeviceSource.ts` polls this off the request path.
 */
import { execFile } from "node:child_process"
import * as os from "node:os"

export interface Device {
  readonly id: string
  readonly kind: "cpu" | "cuda"
  readonly index: number
  readonly name: string
  readonly totalMb: number
  readonly freeMb: number
  readonly uuid?: string
  /** GPU busy share over the last sample period, 0..1 (absent where the source has none, e.g. MIG). */
  readonly utilization?: number
  readonly temperatureC?: number
  readonly powerW?: number
  /** Declared by `[simulate]` in neuron.toml (tests): its memory is accounted, not measured. */
  readonly simulated?: boolean
}

/** Driver-level facts about the host's GPUs (absent on a CPU host). */
export interface DriverInfo {
  readonly driverVersion?: string
  readonly cudaVersion?: string
}

const MB = 1024 * 1024

const run = (cmd: string, args: ReadonlyArray<string>) =>
  new Promise<string | undefined>((resolve) => {
    execFile(cmd, args, { timeout: 5_000 }, (error, stdout) => resolve(error ? undefined : stdout))
  })

/** The fields asked of nvidia-smi, in the order `parseNvidiaSmi` reads them. */
export const NVIDIA_SMI_QUERY = [
  "index",
  "uuid",
  "name",
  "memory.total",
  "memory.used",
  "memory.free",
  "utilization.gpu",
  "temperature.gpu",
  "power.draw",
  "driver_version"
] as const

/** "[N/A]", "[Not Supported]", "N/A", "" and other non-numbers read as absent. */
const numberOr = (raw: string | undefined): number | undefined => {
  if (raw === undefined) return undefined
  const s = raw.trim()
  if (s === "" || s.startsWith("[") || /^n\/?a$/i.test(s)) return undefined
  const n = Number(s)
  return Number.isFinite(n) ? n : undefined
}

const textOr = (raw: string | undefined): string | undefined => {
  const s = raw?.trim()
  return s === undefined || s === "" || s.startsWith("[") || /^n\/?a$/i.test(s) ? undefined : s
}

export interface NvidiaSmiReading {
  readonly devices: ReadonlyArray<Device>
  readonly driverVersion: string | undefined
}

/**
 * Parse `nvidia-smi --query-gpu=<NVIDIA_SMI_QUERY> --format=csv,noheader,nounits`. A GPU whose
 * index or memory total cannot be read is left out (it cannot be placed on); any other field that
 * reads "[N/A]" or "[Not Supported]" (MIG instances have no utilisation, some boards no power
 * reading) is absent, never zero. Free memory falls back to total − used when only that is given.
 */
export const parseNvidiaSmi = (text: string): NvidiaSmiReading => {
  let driverVersion: string | undefined
  const devices = text.split("\n").map((line) => line.trim()).filter((line) => line.length > 0).flatMap(
    (line): Array<Device> => {
      const [index, uuid, name, total, used, free, util, temp, power, driver] = line.split(",").map((s) => s.trim())
      const i = numberOr(index)
      const totalMb = numberOr(total)
      const usedMb = numberOr(used)
      const freeMb = numberOr(free) ?? (totalMb !== undefined && usedMb !== undefined ? totalMb - usedMb : undefined)
      if (i === undefined || !Number.isInteger(i) || totalMb === undefined || freeMb === undefined) return []
      driverVersion ??= textOr(driver)
      const utilization = numberOr(util)
      const temperatureC = numberOr(temp)
      const powerW = numberOr(power)
      const id = textOr(uuid)
      return [{
        id: `cuda:${i}`,
        kind: "cuda",
        index: i,
        name: textOr(name) ?? `GPU ${i}`,
        totalMb,
        freeMb,
        ...(id !== undefined ? { uuid: id } : {}),
        ...(utilization !== undefined ? { utilization: utilization / 100 } : {}),
        ...(temperatureC !== undefined ? { temperatureC } : {}),
        ...(powerW !== undefined ? { powerW } : {})
      }]
    }
  )
  return { devices, driverVersion }
}

/** The CUDA version from plain `nvidia-smi`'s banner ("CUDA Version: 12.4"), which no query field gives on older drivers. */
export const parseCudaVersion = (banner: string): string | undefined =>
  /CUDA Version:\s*([0-9][0-9.]*)/.exec(banner)?.[1]

export const cpuDevice = (): Device => ({
  id: "cpu",
  kind: "cpu",
  index: 0,
  name: os.cpus()[0]?.model.trim() ?? "cpu",
  totalMb: Math.floor(os.totalmem() / MB),
  freeMb: Math.floor(os.freemem() / MB)
})

/** One nvidia-smi reading of the GPUs; undefined when there is no nvidia-smi or no GPU. */
export const readGpus = async (): Promise<NvidiaSmiReading | undefined> => {
  const out = await run("nvidia-smi", [`--query-gpu=${NVIDIA_SMI_QUERY.join(",")}`, "--format=csv,noheader,nounits"])
  const reading = out ? parseNvidiaSmi(out) : undefined
  return reading && reading.devices.length > 0 ? reading : undefined
}

export const readCudaVersion = async (): Promise<string | undefined> => {
  const banner = await run("nvidia-smi", [])
  return banner ? parseCudaVersion(banner) : undefined
}

export interface HostInfo {
  readonly hostname: string
  readonly os: string
  readonly arch: string
  readonly cpus: number
  readonly totalMemoryMb: number
}

export const hostInfo = (): HostInfo => ({
  hostname: os.hostname(),
  os: `${os.type()} ${os.release()}`,
  arch: os.arch(),
  cpus: os.availableParallelism(),
  totalMemoryMb: Math.floor(os.totalmem() / MB)
})
