/** The models directory: a model's id is its GGUF path under models_dir without `.gguf`. */
import { readdir, stat } from "node:fs/promises"
import * as path from "node:path"

export interface ModelFile {
  readonly id: string
  readonly path: string
  readonly sizeBytes: number
  readonly mtimeMs: number
  /**
   * The multimodal projector (mmproj GGUF) that makes this a vision model, served by the vision
   * engine: `[models."<id>"] mmproj` in neuron.toml, else `<id>.mmproj.gguf` beside it, else the
   * one `mmproj-*.gguf` in its folder.
   */
  readonly projector?: string
}

/** Projector files are not models: `<name>.mmproj.gguf` and `mmproj-*.gguf` / `mmproj.gguf`. */
export const isProjectorFile = (name: string) => /\.mmproj\.gguf$/i.test(name) || /^mmproj([-_.].*)?\.gguf$/i.test(name)

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

export const scanModels = async (
  modelsDir: string,
  projectors: Readonly<Record<string, string>> = {}
): Promise<Array<ModelFile>> => {
  const found: Array<ModelFile> = []
  const walk = async (dir: string, depth: number): Promise<void> => {
    if (depth > 8) return
    let entries
    try {
      entries = await readdir(dir, { withFileTypes: true })
    } catch {
      return
    }
    const names = new Set(entries.filter((e) => e.isFile()).map((e) => e.name))
    const shared = [...names].filter((n) => /^mmproj([-_.].*)?\.gguf$/i.test(n))
    for (const entry of entries) {
      if (entry.name.startsWith(".")) continue
      const full = path.join(dir, entry.name)
      if (entry.isDirectory()) await walk(full, depth + 1)
      else if (entry.isFile() && entry.name.toLowerCase().endsWith(".gguf") && !isProjectorFile(entry.name)) {
        const info = await stat(full).catch(() => undefined)
        if (info) {
          const id = modelIdFor(modelsDir, full)
          const sibling = entry.name.replace(/\.gguf$/i, ".mmproj.gguf")
          const projector = projectors[id] ??
            (names.has(sibling)
              ? path.join(dir, sibling)
              : shared.length === 1
              ? path.join(dir, shared[0]!)
              : undefined)
          found.push({
            id,
            path: full,
            sizeBytes: info.size,
            mtimeMs: info.mtimeMs,
            ...(projector !== undefined ? { projector } : {})
          })
        }
      }
    }
  }
  await walk(modelsDir, 0)
  return found.sort((a, b) => a.id.localeCompare(b.id))
}
