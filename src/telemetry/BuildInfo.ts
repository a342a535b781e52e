/**
 * What is running: cortex's version and commit, and the inference engine's versions. Read once,
 * lazily (files on disk, no native code), for `cortex --version` and `GET /version`.
 */
import { execFileSync } from "node:child_process"
import { readFileSync } from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { VERSION } from "../domain/contract.js"

export interface BuildInfo {
  readonly version: string
  readonly commit: string
  /** `compiled` when running dist/ (the build step), `source` when running TypeScript through tsx. */
  readonly build: "compiled" | "source"
  readonly node: string
  readonly node_llama_cpp: string
  readonly llama_cpp: string
}

/** The package root: two levels above this file in both src/telemetry and dist/telemetry. */
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")

const readJson = (file: string): Record<string, unknown> | undefined => {
  try {
    return JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>
  } catch {
    return undefined
  }
}

const text = (value: unknown) => (typeof value === "string" && value.length > 0 ? value : undefined)

/** The build stamp written by scripts/build.mjs, or the checkout's HEAD when running from source. */
const commitOf = (compiled: boolean): string => {
  if (compiled) {
    const stamp = text(readJson(path.join(root, "dist", "BUILD.json"))?.commit)
    if (stamp) return stamp
  }
  try {
    return execFileSync("git", ["rev-parse", "--short=12", "HEAD"], {
      cwd: root,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
      timeout: 2_000
    }).trim() || "unknown"
  } catch {
    return "unknown"
  }
}

/** node-llama-cpp's package.json and the llama.cpp release its binaries were built from. */
const engineVersions = () => {
  let dir: string | undefined
  try {
    dir = path.resolve(path.dirname(fileURLToPath(import.meta.resolve("node-llama-cpp"))), "..")
  } catch {
    dir = undefined
  }
  if (dir === undefined) return { node_llama_cpp: "not installed", llama_cpp: "unknown" }
  const pkg = text(readJson(path.join(dir, "package.json"))?.version) ?? "unknown"
  const info = readJson(path.join(dir, "llama", "llama.cpp.info.json"))
  const repo = text(info?.llamaCppGithubRepo)
  const tag = text(info?.tag)
  return { node_llama_cpp: pkg, llama_cpp: tag ? (repo ? `${repo}@${tag}` : tag) : "unknown" }
}

let cached: BuildInfo | undefined

export const buildInfo = (): BuildInfo => {
  if (cached) return cached
  const compiled = !import.meta.url.endsWith(".ts")
  cached = {
    version: VERSION,
    commit: commitOf(compiled),
    build: compiled ? "compiled" : "source",
    node: process.version,
    ...engineVersions()
  }
  return cached
}

/** One line for `cortex --version`. */
export const versionLine = () => {
  const b = buildInfo()
  return `${b.version} (commit ${b.commit}, ${b.build}; node-llama-cpp ${b.node_llama_cpp}, llama.cpp ${b.llama_cpp}; node ${b.node})`
}
