/**
 * llama.cpp's own `llama-server`, built from the very llama.cpp source node-llama-cpp ships
 * (`node_modules/node-llama-cpp/llama/gitRelease.bundle`), as a peer for the neuron benchmark.
 *
 * Built once, CPU only, Release, only the `llama-server` target, into
 * `${XDG_CACHE_HOME:-~/.cache}/cortex-bench/llama-server-<commit>-<cpu variant>/`, and reused by
 * later runs. The ggml CPU flags mirror node-llama-cpp's prebuilt linux-x64 binaries, which are
 * built with GGML_NATIVE=OFF, GGML_OPENMP=OFF and every x86 CPU variant (GGML_CPU_ALL_VARIANTS,
 * loaded at run time, highest ggml score that this CPU supports): we pick that same variant here
 * from /proc/cpuinfo and build just it, statically, so both sides run the same kernels.
 */
import { spawn } from "node:child_process"
import { existsSync, readFileSync } from "node:fs"
import { mkdir, rm, writeFile } from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"

export interface LlamaServerBinary {
  readonly path: string
  readonly commit: string
  readonly version: string
  /** The ggml CPU variant and the cmake flags it was built with (empty for a given binary). */
  readonly variant: string
  readonly cmakeFlags: ReadonlyArray<string>
  /** Seconds the build took (this run), or null when a cached or given binary was used. */
  readonly buildSeconds: number | null
  readonly cached: boolean
}

export type LlamaServerResolution =
  | { readonly _tag: "ok"; readonly binary: LlamaServerBinary }
  | { readonly _tag: "skip"; readonly reason: string }

// ---------------------------------------------------------------------------------------------
// The CPU variant node-llama-cpp's prebuilt binaries would load on this machine

/** ggml's x86 variants (ggml/src/CMakeLists.txt, GGML_CPU_ALL_VARIANTS) and their features. */
const X86_VARIANTS: ReadonlyArray<readonly [string, ReadonlyArray<string>]> = [
  ["x64", []],
  ["sse42", ["SSE42"]],
  ["sandybridge", ["SSE42", "AVX"]],
  ["ivybridge", ["SSE42", "AVX", "F16C"]],
  ["piledriver", ["SSE42", "AVX", "F16C", "FMA"]],
  ["haswell", ["SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2"]],
  ["skylakex", ["SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512"]],
  ["cannonlake", ["SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI"]],
  ["cascadelake", ["SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI"]],
  ["icelake", ["SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI"]],
  ["cooperlake", ["SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI", "AVX512_BF16"]],
  ["zen4", ["SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"]],
  ["alderlake", ["SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX_VNNI"]],
  ["sapphirerapids", [
    "SSE42",
    "AVX",
    "F16C",
    "FMA",
    "AVX2",
    "BMI2",
    "AVX512",
    "AVX512_VBMI",
    "AVX512_VNNI",
    "AVX512_BF16",
    "AMX_TILE",
    "AMX_INT8"
  ]]
]

/** /proc/cpuinfo flags each ggml feature needs, and its weight in ggml_backend_cpu_x86_score. */
const FEATURES: Record<string, { readonly flags: ReadonlyArray<string>; readonly score: number }> = {
  FMA: { flags: ["fma"], score: 1 },
  F16C: { flags: ["f16c"], score: 1 << 1 },
  SSE42: { flags: ["sse4_2"], score: 1 << 2 },
  BMI2: { flags: ["bmi2"], score: 1 << 3 },
  AVX: { flags: ["avx"], score: 1 << 4 },
  AVX2: { flags: ["avx2"], score: 1 << 5 },
  AVX_VNNI: { flags: ["avx_vnni"], score: 1 << 6 },
  AVX512: { flags: ["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"], score: 1 << 7 },
  AVX512_VBMI: { flags: ["avx512vbmi"], score: 1 << 8 },
  AVX512_BF16: { flags: ["avx512_bf16"], score: 1 << 9 },
  AVX512_VNNI: { flags: ["avx512_vnni"], score: 1 << 10 },
  AMX_TILE: { flags: ["amx_tile"], score: 0 },
  AMX_INT8: { flags: ["amx_int8"], score: 1 << 11 }
}

/** The variant ggml's dynamic loader picks here (highest score among the fully supported ones), or undefined off x86 Linux. */
export const cpuVariant = (): { readonly name: string; readonly features: ReadonlyArray<string> } | undefined => {
  if (process.platform !== "linux" || process.arch !== "x64") return undefined
  let flags: Set<string>
  try {
    const line = readFileSync("/proc/cpuinfo", "utf8").split("\n").find((l) => l.startsWith("flags"))
    if (line === undefined) return undefined
    flags = new Set(line.split(":")[1]!.trim().split(/\s+/))
  } catch {
    return undefined
  }
  let best: { name: string; features: ReadonlyArray<string>; score: number } | undefined
  for (const [name, features] of X86_VARIANTS) {
    if (!features.every((f) => FEATURES[f]!.flags.every((flag) => flags.has(flag)))) continue
    const score = 1 + features.reduce((s, f) => s + FEATURES[f]!.score, 0)
    if (best === undefined || score > best.score) best = { name, features, score }
  }
  return best
}

// ---------------------------------------------------------------------------------------------
// Build

const cacheRoot = () => path.join(process.env["XDG_CACHE_HOME"] ?? path.join(os.homedir(), ".cache"), "cortex-bench")

/** Run a command; resolve with its output, reject with the tail of it. `onLine` sees each line. */
const run = (
  cmd: string,
  argv: ReadonlyArray<string>,
  options: { readonly cwd?: string; readonly onLine?: (line: string) => void; readonly timeoutMs?: number } = {}
) =>
  new Promise<string>((resolve, reject) => {
    const child = spawn(cmd, [...argv], { cwd: options.cwd, stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    let partial = ""
    const timer = options.timeoutMs === undefined
      ? undefined
      : setTimeout(() => child.kill("SIGKILL"), options.timeoutMs)
    const keep = (data: Buffer) => {
      const text = data.toString("utf8")
      out = (out + text).slice(-20_000)
      if (options.onLine) {
        const parts = (partial + text).split("\n")
        partial = parts.pop() ?? ""
        for (const line of parts) options.onLine(line)
      }
    }
    child.stdout.on("data", keep)
    child.stderr.on("data", keep)
    child.once("error", (e) => {
      if (timer) clearTimeout(timer)
      reject(new Error(`${cmd}: ${e.message}`))
    })
    child.once("exit", (code, signal) => {
      if (timer) clearTimeout(timer)
      if (code === 0) resolve(out)
      else {reject(
          new Error(`${cmd} ${argv.join(" ")} exited with ${code ?? signal}:\n${out.split("\n").slice(-25).join("\n")}`)
        )}
    })
  })

/** `llama-server --version`, or undefined when the binary does not run. */
const versionOf = async (binary: string): Promise<string | undefined> => {
  try {
    const out = await run(binary, ["--version"], { timeoutMs: 30_000 })
    return out.split("\n").find((l) => l.startsWith("version:"))?.trim() ?? out.trim().split("\n").at(-1)
  } catch {
    return undefined
  }
}

/** A binary given with `--llama-server PATH`. */
export const givenLlamaServer = async (binary: string): Promise<LlamaServerResolution> => {
  const version = await versionOf(binary)
  if (version === undefined) return { _tag: "skip", reason: `--llama-server ${binary} does not run --version` }
  return {
    _tag: "ok",
    binary: {
      path: binary,
      commit: "unknown",
      version,
      variant: "given",
      cmakeFlags: [],
      buildSeconds: null,
      cached: true
    }
  }
}

/**
 * The cached llama-server for node-llama-cpp's llama.cpp, built now when missing. Never throws:
 * anything that stops the build comes back as a reason to skip that column.
 */
export const buildLlamaServer = async (
  root: string,
  log: (line: string) => void,
  jobs = 2
): Promise<LlamaServerResolution> => {
  try {
    return await buildOrReuse(root, log, jobs)
  } catch (e) {
    return { _tag: "skip", reason: e instanceof Error ? e.message : String(e) }
  }
}

const buildOrReuse = async (
  root: string,
  log: (line: string) => void,
  jobs: number
): Promise<LlamaServerResolution> => {
  const bundle = path.join(root, "node_modules/node-llama-cpp/llama/gitRelease.bundle")
  if (!existsSync(bundle)) return { _tag: "skip", reason: `no llama.cpp source bundle at ${bundle}` }
  let heads: string
  try {
    heads = await run("git", ["bundle", "list-heads", bundle])
  } catch (e) {
    return { _tag: "skip", reason: `cannot read the llama.cpp bundle with git: ${(e as Error).message.split("\n")[0]}` }
  }
  const commit = heads.trim().split(/\s+/)[0] ?? ""
  if (!/^[0-9a-f]{40}$/.test(commit)) return { _tag: "skip", reason: `no commit in ${bundle}: ${heads.trim()}` }

  const variant = cpuVariant()
  const cpuFlags = variant === undefined
    // Off x86 Linux there is no variant list to mirror: the compiler's own idea of this CPU.
    ? ["-DGGML_NATIVE=ON"]
    : [
      "-DGGML_NATIVE=OFF",
      ...Object.keys(FEATURES).filter((f) => f !== "AMX_TILE" || variant.features.includes("AMX_TILE"))
        .map((f) => `-DGGML_${f}=${variant.features.includes(f) ? "ON" : "OFF"}`)
    ]
  const variantName = variant?.name ?? "native"
  const cmakeFlags = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_BACKEND_DL=OFF",
    "-DGGML_OPENMP=OFF",
    ...cpuFlags,
    "-DGGML_CUDA=OFF",
    "-DGGML_VULKAN=OFF",
    "-DGGML_METAL=OFF",
    "-DGGML_CCACHE=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON"
  ]
  const dir = path.join(cacheRoot(), `llama-server-${commit.slice(0, 12)}-${variantName}`)
  const binary = path.join(dir, "build/bin/llama-server")
  const infoFile = path.join(dir, "build-info.json")

  if (existsSync(binary)) {
    const version = await versionOf(binary)
    if (version !== undefined) {
      let buildSeconds: number | null = null
      try {
        buildSeconds = (JSON.parse(readFileSync(infoFile, "utf8")) as { buildSeconds?: number }).buildSeconds ?? null
      } catch {
        // an older cache without its info file
      }
      log(`llama-server: cached ${binary} (${version}${buildSeconds === null ? "" : `, built in ${buildSeconds} s`})`)
      return {
        _tag: "ok",
        binary: { path: binary, commit, version, variant: variantName, cmakeFlags, buildSeconds: null, cached: true }
      }
    }
    log(`llama-server: cached ${binary} does not run --version; building it again`)
  }

  for (const tool of ["cmake", "c++"]) {
    try {
      await run(tool, ["--version"], { timeoutMs: 30_000 })
    } catch {
      return {
        _tag: "skip",
        reason: `${tool} is not installed (apt-get install cmake g++ to get the llama-server column)`
      }
    }
  }
  const started = performance.now()
  const elapsed = () => `${Math.round((performance.now() - started) / 1000)} s`
  await rm(dir, { recursive: true, force: true })
  await mkdir(dir, { recursive: true })
  const src = path.join(dir, "src")
  log(`llama-server: building llama.cpp ${commit.slice(0, 12)} (the source node-llama-cpp ships) into ${dir}`)
  log(`llama-server: CPU variant ${variantName}; cmake ${cmakeFlags.join(" ")}`)
  log(`llama-server: this takes several minutes on 2 cores (once; later runs reuse it)`)
  await run("git", ["clone", "--quiet", bundle, src])
  await run("git", ["-c", "advice.detachedHead=false", "checkout", "--quiet", commit], { cwd: src })
  await run("cmake", ["-S", src, "-B", path.join(dir, "build"), ...cmakeFlags], { timeoutMs: 300_000 })
  log(`llama-server: configured (${elapsed()}); compiling with -j${jobs}`)
  let lastShown = 0
  let lastPercent = ""
  await run("cmake", ["--build", path.join(dir, "build"), "--target", "llama-server", "-j", String(jobs)], {
    timeoutMs: 60 * 60_000,
    onLine: (line) => {
      const m = /^\[\s*(\d+)%\]/.exec(line)
      if (m) lastPercent = `${m[1]}%`
      if (performance.now() - lastShown > 15_000) {
        lastShown = performance.now()
        log(`llama-server: building ${lastPercent} (${elapsed()})`)
      }
    }
  })
  const buildSeconds = Math.round((performance.now() - started) / 1000)
  const version = await versionOf(binary)
  if (version === undefined) return { _tag: "skip", reason: `the build finished but ${binary} does not run --version` }
  await writeFile(
    infoFile,
    JSON.stringify({ commit, variant: variantName, cmakeFlags, buildSeconds, version }, null, 2)
  )
  // The sources and objects are not needed any more; the binary is static.
  await rm(src, { recursive: true, force: true })
  log(`llama-server: built in ${buildSeconds} s (${version})`)
  return {
    _tag: "ok",
    binary: { path: binary, commit, version, variant: variantName, cmakeFlags, buildSeconds, cached: false }
  }
}

// ---------------------------------------------------------------------------------------------
// Which compiler built a binary (its .comment section), to print beside the flags

const compilerIn = (file: string): string | undefined => {
  try {
    const m = /(GCC: \([^)\n]*\) [\d.]+|clang version [\d.]+)/.exec(readFileSync(file).toString("latin1"))
    return m?.[1]
  } catch {
    return undefined
  }
}

/** The compiler of a llama-server binary, when it says. */
export const llamaServerCompiler = (binary: string) => compilerIn(binary)

/** The compiler of node-llama-cpp's prebuilt CPU binaries for this platform, when installed and it says. */
export const prebuiltCompiler = (root: string): string | undefined => {
  const dir = path.join(root, "node_modules/@node-llama-cpp", `${process.platform}-${process.arch}`, "bins")
  const base = path.join(dir, `${process.platform}-${process.arch}`, "libggml-base.so")
  return existsSync(base) ? compilerIn(base) : undefined
}
