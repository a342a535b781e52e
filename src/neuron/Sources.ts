/**
 * Model sources on the neuron: the `cache_dir` / `[sources]` settings, and the one call to the
 * hub that node-llama-cpp cannot make for us: listing a repository's files with their sizes and
 * LFS sha256 (`GET <endpoint>/api/models/<repo>/tree/main?recursive=true`). node-llama-cpp's
 * resolver asks the hub's `v2/<repo>/manifests/<tag>` for one file per tag; it cannot match a
 * filename substring across a repository, report ambiguity, find the projector beside a model, or
 * say what sha256 the file should have. The downloads themselves are node-llama-cpp's
 * (src/neuron/Puller.ts).
 */
import { Redacted, Schema } from "effect"
import * as path from "node:path"
import { PullFailed } from "../domain/errors.js"
import type { HfRef, RepoFile } from "../domain/modelSource.js"

const opt = <S extends Schema.Schema.Any>(s: S) => Schema.optionalWith(s, { exact: true })
const strict = { parseOptions: { onExcessProperty: "error" as const } }

export const DEFAULT_HF_ENDPOINT = "https://huggingface.co"

export const SourcesTable = Schema.Struct({
  /** Cached downloads beyond this are evicted, least recently used first, unless loaded. */
  max_cache_gb: opt(Schema.Number.pipe(Schema.positive())),
  /** A pull is refused (507) when it would leave less than this free on the cache's disk. */
  min_free_disk_gb: opt(Schema.Number.pipe(Schema.nonNegative())),
  hf: opt(
    Schema.Struct({
      endpoint: opt(
        Schema.String.pipe(Schema.pattern(/^https?:\/\/[^\s]+$/, { message: () => "expected an http(s) URL" }))
      ),
      /** The variable holding the hub token (never the token itself in a file). */
      token_env: opt(Schema.String.pipe(Schema.pattern(/^[A-Za-z_][A-Za-z0-9_]*$/)))
    }).annotations(strict)
  )
}).annotations(strict)
export type SourcesTable = typeof SourcesTable.Type

export interface SourceSettings {
  readonly cacheDir: string
  readonly maxCacheBytes: number | undefined
  readonly minFreeDiskBytes: number
  readonly hf: {
    /** Without a trailing slash. */
    readonly endpoint: string
    readonly tokenEnv: string
    readonly token: Redacted.Redacted<string> | undefined
  }
}

const GB = 1024 ** 3

/** `[sources.hf] endpoint`, else HF_ENDPOINT, else the public hub; the token from `token_env`. */
export const resolveSources = (
  file: { readonly cache_dir?: string; readonly sources?: SourcesTable },
  modelsDir: string,
  base: string,
  env: Record<string, string | undefined>
): SourceSettings => {
  const tokenEnv = file.sources?.hf?.token_env ?? "HF_TOKEN"
  const token = env[tokenEnv]
  const endpoint = file.sources?.hf?.endpoint ??
    (env.HF_ENDPOINT?.match(/^https?:\/\//) ? env.HF_ENDPOINT : undefined) ??
    DEFAULT_HF_ENDPOINT
  return {
    cacheDir: file.cache_dir !== undefined ? path.resolve(base, file.cache_dir) : path.join(modelsDir, ".cache", "hf"),
    maxCacheBytes: file.sources?.max_cache_gb !== undefined ? file.sources.max_cache_gb * GB : undefined,
    minFreeDiskBytes: (file.sources?.min_free_disk_gb ?? 1) * GB,
    hf: {
      endpoint: endpoint.replace(/\/+$/, ""),
      tokenEnv,
      token: token !== undefined && token !== "" ? Redacted.make(token) : undefined
    }
  }
}

export const authHeader = (settings: SourceSettings): Record<string, string> =>
  settings.hf.token ? { authorization: `Bearer ${Redacted.value(settings.hf.token)}` } : {}

const encodeRepo = (repo: string) => repo.split("/").map(encodeURIComponent).join("/")

interface TreeEntry {
  readonly type?: string
  readonly path?: string
  readonly size?: number
  readonly lfs?: { readonly oid?: string; readonly sha256?: string; readonly size?: number }
}

/** Why the hub refused, from its `x-error-message` header or JSON `error`, else the status text. */
const hubReason = async (res: Response) => {
  const header = res.headers.get("x-error-message")
  if (header) return header
  const text = await res.text().catch(() => "")
  try {
    const body = JSON.parse(text) as { error?: unknown }
    if (typeof body.error === "string") return body.error
  } catch {
    // not JSON
  }
  return text.slice(0, 200) || res.statusText
}

/** The repository's files (recursive), with sizes and LFS sha256 where the hub gives them. */
export const listRepo = async (
  settings: SourceSettings,
  ref: HfRef,
  signal?: AbortSignal
): Promise<ReadonlyArray<RepoFile>> => {
  const url = `${settings.hf.endpoint}/api/models/${encodeRepo(ref.repo)}/tree/main?recursive=true`
  let res: Response
  try {
    res = await fetch(url, {
      headers: { accept: "application/json", ...authHeader(settings) },
      signal: signal ? AbortSignal.any([signal, AbortSignal.timeout(30_000)]) : AbortSignal.timeout(30_000)
    })
  } catch (e) {
    throw new PullFailed({
      model: ref.id,
      reason: "unreachable",
      detail: `${settings.hf.endpoint} could not be reached: ${(e as Error).message}`
    })
  }
  if (res.status === 401 || res.status === 403) {
    throw new PullFailed({
      model: ref.id,
      reason: "unauthorized",
      detail: `${settings.hf.endpoint} answered ${res.status} for ${ref.repo} (${await hubReason(res)}); ${
        settings.hf.token ? `check the token in ${settings.hf.tokenEnv}` : `set a token in ${settings.hf.tokenEnv}`
      }`
    })
  }
  if (res.status === 404) {
    throw new PullFailed({
      model: ref.id,
      reason: "not_found",
      detail: `${ref.repo} not found on ${settings.hf.endpoint}: ${await hubReason(res)}`
    })
  }
  if (!res.ok) {
    throw new PullFailed({
      model: ref.id,
      reason: "unreachable",
      detail: `${settings.hf.endpoint} answered ${res.status} listing ${ref.repo}: ${await hubReason(res)}`
    })
  }
  const body = await res.json().catch(() => undefined) as ReadonlyArray<TreeEntry> | undefined
  if (!Array.isArray(body)) {
    throw new PullFailed({
      model: ref.id,
      reason: "unreachable",
      detail: `the listing of ${ref.repo} is not a JSON array`
    })
  }
  return body.filter((e) => e.type === "file" && typeof e.path === "string").map((e) => {
    const sha = e.lfs?.oid ?? e.lfs?.sha256
    return {
      path: e.path!,
      size: e.lfs?.size ?? e.size ?? 0,
      sha256: typeof sha === "string" && /^[0-9a-f]{64}$/i.test(sha) ? sha.toLowerCase() : undefined
    }
  })
}
