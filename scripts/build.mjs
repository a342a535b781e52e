#!/usr/bin/env node
// The build step (`npm run build`, run by `npm ci` through `prepare` and by `npm pack`): compile
// src/ to dist/ with tsc, copy the non-TypeScript assets next to the code that reads them, and
// stamp the build so bin/cortex.js can tell a fresh dist/ from one older than the sources.
import { execFileSync } from "node:child_process"
import { copyFileSync, existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const src = path.join(root, "src")
const dist = path.join(root, "dist")
const started = Date.now()

const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc")
execFileSync(process.execPath, [tsc, "-p", path.join(root, "tsconfig.build.json")], { stdio: "inherit" })

let newest = 0
let assets = 0
const walk = (dir) => {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const from = path.join(dir, entry.name)
    if (entry.isDirectory()) walk(from)
    else {
      newest = Math.max(newest, statSync(from).mtimeMs)
      if (!entry.name.endsWith(".ts")) {
        const to = path.join(dist, path.relative(src, from))
        mkdirSync(path.dirname(to), { recursive: true })
        copyFileSync(from, to)
        assets += 1
      }
    }
  }
}
walk(src)

// The operator commands (status, models, load, pull, wait-ready, --version…) run from one bundled
// file: loading @effect/cli and effect as ~800 separate modules costs most of a `cortex status`.
// The daemon commands keep the unbundled dist/ (bin/cortex.js routes them there), so one process
// never mixes the bundle's copy of effect with node_modules' one; their modules stay external here.
const esbuild = await import("esbuild")
await esbuild.build({
  entryPoints: [path.join(dist, "cli", "main.js")],
  outfile: path.join(dist, "cli", "operator.bundle.mjs"),
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  packages: "bundle",
  external: ["../layers/*", "../gateway/*", "../neuron/*", "../gguf/*", "node-llama-cpp"],
  // CommonJS dependencies (yaml, ini) call require() for Node's built-ins.
  banner: { js: 'import { createRequire as __cortexRequire } from "node:module"; const require = __cortexRequire(import.meta.url);' },
  logLevel: "warning"
})

let commit = "unknown"
try {
  commit = execFileSync("git", ["rev-parse", "--short=12", "HEAD"], { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim()
} catch {
  // Not a checkout (an unpacked tarball): keep "unknown".
}
writeFileSync(
  path.join(dist, "BUILD.json"),
  JSON.stringify({ commit, built_at: new Date().toISOString(), sources_mtime_ms: newest }, null, 2) + "\n"
)
if (!existsSync(path.join(dist, "cli", "main.js"))) throw new Error("build produced no dist/cli/main.js")
console.log(`cortex build: dist/ from src/ (${assets} asset file(s), commit ${commit}) in ${Date.now() - started} ms`)
