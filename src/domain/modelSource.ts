/**
 * Model sources: a model named by its Hugging Face repository instead of a file in models_dir.
 * Pure parsing, shared by the gateway (models.toml → the id the neurons know the model by) and
 * the neuron (that id → what to download). The id is the reference itself, canonical:
 * `hf:Org/Repo:Q4_K_M` (a repository and a quant, a case-insensitive filename substring) or
 * `hf:Org/Repo/path/model.gguf` (one exact file; a split file's first part names the set).
 */

export interface HfRef {
  /** `Org/Repo`. */
  readonly repo: string
  /** A filename substring to match (case-insensitive), when no exact file is named. */
  readonly quant: string | undefined
  /** The exact path of the file in the repository. */
  readonly file: string | undefined
  /** The canonical id: what the gateway calls `/models/load` with and `/models` lists. */
  readonly id: string
}

export const HF_PREFIX = "hf:"

export const isHfId = (id: string) => id.startsWith(HF_PREFIX)

const SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._-]*$/

/** Why `source` (+ `quant`) is not a model reference, or the reference. */
export const parseHfRef = (source: string, quant?: string): HfRef | { readonly error: string } => {
  if (!isHfId(source)) return { error: `'${source}' is not a source: expected hf:Org/Repo or hf:Org/Repo/file.gguf` }
  const rest = source.slice(HF_PREFIX.length).replace(/^\/+/, "")
  if (rest.includes("#")) return { error: `'${source}': a revision (#...) is not supported; the main branch is used` }
  const [org, repoAndTag, ...path] = rest.split("/")
  if (org === undefined || repoAndTag === undefined || org === "" || repoAndTag === "") {
    return { error: `'${source}' is not a source: expected hf:Org/Repo or hf:Org/Repo/file.gguf` }
  }
  let repoName = repoAndTag
  let tag: string | undefined
  if (path.length === 0 && repoAndTag.includes(":")) {
    const i = repoAndTag.indexOf(":")
    repoName = repoAndTag.slice(0, i)
    tag = repoAndTag.slice(i + 1).trim()
    if (tag === "") tag = undefined
  }
  if (!SEGMENT.test(org) || !SEGMENT.test(repoName)) {
    return { error: `'${source}': '${org}/${repoName}' is not a repository name` }
  }
  const repo = `${org}/${repoName}`
  if (path.length > 0) {
    if (quant !== undefined) return { error: `'${source}' names one file: a quant cannot be given with it` }
    if (path.some((p) => p === "" || p === "." || p === ".." || p.includes("\\") || p.includes("\0"))) {
      return { error: `'${source}': bad file path` }
    }
    const file = path.join("/")
    if (!file.toLowerCase().endsWith(".gguf")) return { error: `'${source}': the file must be a .gguf file` }
    return { repo, quant: undefined, file, id: `${HF_PREFIX}${repo}/${file}` }
  }
  if (tag !== undefined && quant !== undefined && tag.toLowerCase() !== quant.toLowerCase()) {
    return { error: `'${source}' names quant '${tag}' but quant = '${quant}'` }
  }
  const q = (quant ?? tag)?.trim()
  if (q !== undefined && (q === "" || /[/\\\0]/.test(q))) return { error: `quant '${q}' is not a filename part` }
  return { repo, quant: q, file: undefined, id: q !== undefined ? `${HF_PREFIX}${repo}:${q}` : `${HF_PREFIX}${repo}` }
}

export const isRefError = (r: HfRef | { readonly error: string }): r is { readonly error: string } => "error" in r

/** The reference a model id stands for; undefined when the id is not an `hf:` id. */
export const refOfId = (id: string): HfRef | { readonly error: string } | undefined =>
  isHfId(id) ? parseHfRef(id) : undefined

/**
 * The id the neurons know a models.toml profile by: its source (+ quant) when it has one, its
 * `file` (a path under models_dir, or an exact `hf:` file), else its id.
 */
export const neuronIdOf = (
  profile: {
    readonly id: string
    readonly file?: string | undefined
    readonly source?: string | undefined
    readonly quant?: string | undefined
  }
): string => {
  if (profile.source !== undefined) {
    const ref = parseHfRef(profile.source, profile.quant)
    return isRefError(ref) ? profile.source : ref.id
  }
  if (profile.file !== undefined && isHfId(profile.file)) {
    const ref = parseHfRef(profile.file)
    return isRefError(ref) ? profile.file : ref.id
  }
  return profile.file ?? profile.id
}

// ---- choosing files from a repository listing ---------------------------------------------

export interface RepoFile {
  readonly path: string
  readonly size: number
  /** The sha256 the hub gives for an LFS file, when it does. */
  readonly sha256: string | undefined
}

/** The files a reference resolves to: the model (one file, or every part of a split set) and a projector. */
export interface Selection {
  readonly parts: ReadonlyArray<RepoFile>
  readonly projector: RepoFile | undefined
}

const SPLIT = /-(\d{5})-of-(\d{5})\.gguf$/i

const isProjector = (path: string) => /mmproj/i.test(path.split("/").pop() ?? "")

/** A split part's set name (the path without -0000i-of-0000n), or the path itself. */
const setKey = (path: string) => path.replace(SPLIT, ".gguf")

/** Every model file set in a listing (projectors apart), each set's parts in order. */
const modelSets = (files: ReadonlyArray<RepoFile>): Map<string, Array<RepoFile>> => {
  const sets = new Map<string, Array<RepoFile>>()
  for (const f of files) {
    if (!f.path.toLowerCase().endsWith(".gguf") || isProjector(f.path)) continue
    const key = setKey(f.path)
    sets.set(key, [...(sets.get(key) ?? []), f].sort((a, b) => a.path.localeCompare(b.path)))
  }
  return sets
}

export type SelectionFailure =
  | { readonly _tag: "NoMatch"; readonly detail: string }
  | { readonly _tag: "Ambiguous"; readonly detail: string }
  | { readonly _tag: "Incomplete"; readonly detail: string }

/** The projector that goes with a model: an mmproj file in the model's folder, else anywhere; F16 first. */
const projectorFor = (files: ReadonlyArray<RepoFile>, modelPath: string): RepoFile | undefined => {
  const dir = modelPath.includes("/") ? modelPath.slice(0, modelPath.lastIndexOf("/") + 1) : ""
  const all = files.filter((f) => f.path.toLowerCase().endsWith(".gguf") && isProjector(f.path))
  const near = all.filter((f) => f.path.startsWith(dir) && !f.path.slice(dir.length).includes("/"))
  const pool = near.length > 0 ? near : all
  return [...pool].sort((a, b) =>
    Number(!/f16/i.test(a.path)) - Number(!/f16/i.test(b.path)) || a.path.localeCompare(b.path)
  )[0]
}

const checkComplete = (parts: ReadonlyArray<RepoFile>): SelectionFailure | undefined => {
  const m = parts[0]?.path.match(SPLIT)
  if (!m) return undefined
  const expected = Number(m[2])
  return parts.length === expected
    ? undefined
    : { _tag: "Incomplete", detail: `split set ${setKey(parts[0]!.path)} has ${parts.length} of ${expected} parts` }
}

/** The files `ref` names in `files`: by exact path, or the one set whose name contains the quant. */
export const selectFiles = (ref: HfRef, files: ReadonlyArray<RepoFile>): Selection | SelectionFailure => {
  const sets = modelSets(files)
  let parts: ReadonlyArray<RepoFile>
  if (ref.file !== undefined) {
    const exact = files.find((f) => f.path === ref.file)
    if (!exact) return { _tag: "NoMatch", detail: `${ref.repo} has no file ${ref.file}` }
    parts = SPLIT.test(exact.path) ? sets.get(setKey(exact.path)) ?? [exact] : [exact]
  } else {
    const names = [...sets.keys()]
    const matching = ref.quant === undefined
      ? names
      : names.filter((n) => (n.split("/").pop() ?? n).toLowerCase().includes(ref.quant!.toLowerCase()))
    if (matching.length === 0) {
      return {
        _tag: "NoMatch",
        detail: ref.quant === undefined
          ? `${ref.repo} has no GGUF model file`
          : `no GGUF file in ${ref.repo} matches quant '${ref.quant}' (files: ${names.join(", ") || "none"})`
      }
    }
    if (matching.length > 1) {
      return {
        _tag: "Ambiguous",
        detail: ref.quant === undefined
          ? `${ref.repo} has several GGUF models; name a quant: ${matching.join(", ")}`
          : `quant '${ref.quant}' matches several files in ${ref.repo}: ${matching.join(", ")}`
      }
    }
    parts = sets.get(matching[0]!)!
  }
  const incomplete = checkComplete(parts)
  if (incomplete) return incomplete
  return { parts, projector: projectorFor(files, parts[0]!.path) }
}

export const isSelectionFailure = (s: Selection | SelectionFailure): s is SelectionFailure => "_tag" in s
