#!/usr/bin/env node
// The CLI runs the compiled JavaScript in dist/ (built by `npm ci` / `npm run build`). In a checkout
// whose sources changed after the last build, it runs the TypeScript sources through tsx instead,
// so a stale dist/ never runs by accident; `CORTEX_FROM_SOURCE=1` forces the sources.
// Commands that start a daemon (or write a model) run dist/cli/main.js; the operator commands run
// the one-file bundle of the same CLI (scripts/build.mjs), which starts several times faster.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const src = path.join(root, "src")
const compiled = path.join(root, "dist", "cli", "main.js")
const bundle = path.join(root, "dist", "cli", "operator.bundle.mjs")
const DAEMONS = new Set(["up", "serve", "neuron", "make-model"])
const command = process.argv.slice(2).find((arg) => !arg.startsWith("-"))

const newestSource = (dir) => {
  let newest = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const file = path.join(dir, entry.name)
    newest = Math.max(newest, entry.isDirectory() ? newestSource(file) : statSync(file).mtimeMs)
  }
  return newest
}

const fresh = () => {
  if (!existsSync(compiled)) return false
  if (!existsSync(src)) return true // an installed package ships dist/ only
  try {
    const stamp = JSON.parse(readFileSync(path.join(root, "dist", "BUILD.json"), "utf8"))
    return typeof stamp.sources_mtime_ms === "number" && newestSource(src) <= stamp.sources_mtime_ms
  } catch {
    return false
  }
}

if (process.env.CORTEX_FROM_SOURCE !== "1" && fresh()) {
  await import(command !== undefined && !DAEMONS.has(command) && existsSync(bundle) ? bundle : compiled)
} else {
  const { register } = await import("tsx/esm/api")
  register()
  await import("../src/cli/main.ts")
}
