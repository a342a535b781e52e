/**
 * The download cache on disk: `<cache_dir>/<Org>/<Repo>/<path in the repo>` for the files, and
 * one manifest per model in `<cache_dir>/.manifests/`, written only after every file was verified
 * (size, and sha256 when the hub gave one). A model is listed from its manifest, so a partial
 * download (node-llama-cpp keeps it as `<file>.ipull` to resume) or an unverified file is never
 * listed; a manifest whose files are gone or changed size is ignored.
 */
import { createHash } from "node:crypto"
import { createReadStream } from "node:fs"
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises"
import * as path from "node:path"
import type { ModelFile } from "./ModelStore.js"

export interface CachedFile {
  /** Relative to the cache directory. */
  readonly path: string
  readonly size: number
  readonly sha256: string | null
}

export interface Manifest {
  readonly id: string
  readonly repo: string
  readonly files: ReadonlyArray<CachedFile>
  /** The file to load (a split set's first part), relative to the cache directory. */
  readonly entry: string
  readonly projector: string | null
  readonly pulled_at: string
}

export interface CachedModel extends ModelFile {
  readonly manifest: Manifest
}

const manifestDir = (cacheDir: string) => path.join(cacheDir, ".manifests")

export const manifestPath = (cacheDir: string, id: string) =>
  path.join(manifestDir(cacheDir), `${createHash("sha1").update(id).digest("hex")}.json`)

/** Where a repository file is kept, relative to the cache directory. */
export const relativePath = (repo: string, file: string) => [...repo.split("/"), ...file.split("/")].join("/")

export const sha256Of = (file: string) =>
  new Promise<string>((resolve, reject) => {
    const hash = createHash("sha256")
    createReadStream(file, { highWaterMark: 4 * 1024 * 1024 }).on("data", (d) => hash.update(d)).on("error", reject).on(
      "end",
      () => resolve(hash.digest("hex"))
    )
  })

export const writeManifest = async (cacheDir: string, manifest: Manifest) => {
  const file = manifestPath(cacheDir, manifest.id)
  await mkdir(path.dirname(file), { recursive: true })
  await writeFile(`${file}.tmp`, JSON.stringify(manifest, null, 2))
  await rename(`${file}.tmp`, file)
}

/** The cached model `manifest` describes, when all its files are there with their sizes. */
const check = async (cacheDir: string, manifest: Manifest, mtimeMs: number): Promise<CachedModel | undefined> => {
  let total = 0
  for (const f of manifest.files) {
    const info = await stat(path.join(cacheDir, f.path)).catch(() => undefined)
    if (!info?.isFile() || info.size !== f.size) return undefined
    total += f.size
  }
  return { id: manifest.id, path: path.join(cacheDir, manifest.entry), sizeBytes: total, mtimeMs, manifest }
}

/** Every verified model in the cache. */
export const scanCache = async (cacheDir: string): Promise<Array<CachedModel>> => {
  const names = await readdir(manifestDir(cacheDir)).catch(() => [] as Array<string>)
  const found: Array<CachedModel> = []
  for (const name of names) {
    if (!name.endsWith(".json")) continue
    const file = path.join(manifestDir(cacheDir), name)
    try {
      const [text, info] = await Promise.all([readFile(file, "utf8"), stat(file)])
      const manifest = JSON.parse(text) as Manifest
      const model = await check(cacheDir, manifest, info.mtimeMs)
      if (model) found.push(model)
    } catch {
      // an unreadable manifest lists nothing
    }
  }
  return found
}

/** Delete a cached model: its manifest first (so it is never listed half-deleted), then its files. */
export const removeCached = async (cacheDir: string, manifest: Manifest) => {
  await rm(manifestPath(cacheDir, manifest.id), { force: true })
  for (const f of manifest.files) {
    await rm(path.join(cacheDir, f.path), { force: true })
    await rm(path.join(cacheDir, `${f.path}.ipull`), { force: true })
  }
}
