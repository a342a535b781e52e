/**
 * What this host has: devices with total and free memory. GPUs come from nvidia-smi (per-device
 * figures that node-llama-cpp cannot give); without it, the host is one CPU device backed by RAM.
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
}

const MB = 1024 * 1024

const run = (cmd: string, args: ReadonlyArray<string>) =>
  new Promise<string | undefined>((resolve) => {
    execFile(cmd, args, { timeout: 5_000 }, (error, stdout) => resolve(error ? undefined : stdout))
  })

/** Parse `nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits`. */
export const parseNvidiaSmi = (text: string): Array<Device> =>
  text.split("\n").map((line) => line.trim()).filter((line) => line.length > 0).flatMap((line) => {
    const [index, name, total, free] = line.split(",").map((s) => s.trim())
    const i = Number(index)
    const totalMb = Number(total)
    const freeMb = Number(free)
    if (!Number.isInteger(i) || !Number.isFinite(totalMb) || !Number.isFinite(freeMb) || !name) return []
    return [{ id: `cuda:${i}`, kind: "cuda" as const, index: i, name, totalMb, freeMb }]
  })

export const cpuDevice = (): Device => ({
  id: "cpu",
  kind: "cpu",
  index: 0,
  name: os.cpus()[0]?.model.trim() ?? "cpu",
  totalMb: Math.floor(os.totalmem() / MB),
  freeMb: Math.floor(os.freemem() / MB)
})

export const discoverDevices = async (gpu: "auto" | "off"): Promise<Array<Device>> => {
  if (gpu === "auto") {
    const out = await run("nvidia-smi", [
      "--query-gpu=index,name,memory.total,memory.free",
      "--format=csv,noheader,nounits"
    ])
    const gpus = out ? parseNvidiaSmi(out) : []
    if (gpus.length > 0) return gpus
  }
  return [cpuDevice()]
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
