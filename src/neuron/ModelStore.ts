/** The models directory: a model's id is its GGUF path under models_dir without `.gguf`. */
import { readdir, stat } from "node:fs/promises"
import * as path from "node:path"

export interface ModelFile {
  readonly id: string
  readonly path: string
  readonly sizeBytes: number
  readonly mtimeMs: number
}

export const modelIdFor = (modelsDir: string, file: string) =>
  path.relative(modelsDir, file).split(path.sep).join("/").replace(/\.gguf$/i, "")

/**
 * Whether `id` could name a file under models_dir at all: a relative path of plain segments.
 * An absolute path, `.`/`..`, a backslash, a NUL or an absurd length cannot, and is answered
 * 404 without scanning the directory again.
 */
export const isModelId = (id: string) =>
  id.length > 0 && id.length <= 1024 && !/[\0\\]/.test(id) &&
  id.split("/").every((segment) => segment !== "" && segment !== "." && segment !== "..")

export const scanModels = async (modelsDir: string): Promise<Array<ModelFile>> => {
  const found: Array<ModelFile> = []
  const walk = async (dir: string, depth: number): Promise<void> => {
    if (depth > 8) return
    let entries
    try {
      entries = await readdir(dir, { withFileTypes: true })
    } catch {
      return
    }
    for (const entry of entries) {
      if (entry.name.startsWith(".")) continue
      const full = path.join(dir, entry.name)
      if (entry.isDirectory()) await walk(full, depth + 1)
      else if (entry.isFile() && entry.name.toLowerCase().endsWith(".gguf")) {
        const info = await stat(full).catch(() => undefined)
        if (info) {
          found.push({ id: modelIdFor(modelsDir, full), path: full, sizeBytes: info.size, mtimeMs: info.mtimeMs })
        }
      }
    }
  }
  await walk(modelsDir, 0)
  return found.sort((a, b) => a.id.localeCompare(b.id))
}
