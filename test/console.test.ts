/**
 * The web console in a real browser: headless Chromium (Debian's `chromium` package, or
 * CORTEX_CHROMIUM) driven by playwright-core, against a real gateway (require_auth on) in front
 * of a real neuron. It logs in with a key, sees the node and its models, loads a model from the
 * UI and sees its status change live, watches a change made elsewhere arrive by SSE, streams a
 * playground answer in both dialects, and saves screenshots under .tmp/console/.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { existsSync } from "node:fs"
import { mkdir } from "node:fs/promises"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { type Browser, chromium, type Page } from "playwright-core"
import { postJson, waitFor } from "./fixtures/neuron.js"
import { type Stack, startStack } from "./fixtures/stack.js"

const CHROMIUM = process.env.CORTEX_CHROMIUM ?? "/usr/bin/chromium"
const OUT = fileURLToPath(new URL("../.tmp/console/", import.meta.url))
const KEY = "sk-console-test-0123"
const auth = { authorization: `Bearer ${KEY}` }
const found = existsSync(CHROMIUM)
if (!found) {
  console.warn(
    `test/console.test.ts skipped: no Chromium at ${CHROMIUM} (apt-get install chromium, or set CORTEX_CHROMIUM)`
  )
}

let stack: Stack
let browser: Browser
let page: Page

const nodeModel = (model: string) => page.locator(`article[data-node="local"] li[data-model="${model}"]`)

describe.skipIf(!found)("web console", () => {
  beforeAll(async () => {
    await mkdir(OUT, { recursive: true })
    stack = await startStack(
      { models: ["tiny", "tiny-b"], defaultModels: ["tiny"] },
      {
        modelsToml: `[[models]]\nid = "tiny"\n\n[[models]]\nid = "tiny-b"\n\n[aliases]\nsmall = "tiny"\n`,
        extraToml: `[auth]\nrequire_auth = true\nkeys = [{ key = "${KEY}", name = "ops" }]\n`
      }
    )
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] })
    page = await browser.newPage({ viewport: { width: 1100, height: 760 } })
  })

  afterAll(async () => {
    await browser?.close()
    await stack?.stop()
  })

  it("serves its own assets with content types and caching, nothing from elsewhere, and data only with a key", async () => {
    const url = stack.gateway.url
    const html = await fetch(`${url}/ui`)
    expect(html.status).toBe(200)
    expect(html.headers.get("content-type")).toBe("text/html; charset=utf-8")
    expect(html.headers.get("cache-control")).toBe("no-cache")
    expect(html.headers.get("content-security-policy")).toContain("default-src 'self'")
    const text = await html.text()
    expect(text).not.toMatch(/https?:\/\//)
    const js = await fetch(`${url}/ui/assets/console.js`)
    expect(js.headers.get("content-type")).toBe("text/javascript; charset=utf-8")
    expect(js.headers.get("cache-control")).toBe("public, max-age=3600")
    const etag = js.headers.get("etag")!
    expect((await js.text()).match(/https?:\/\/(?!www\.w3\.org\/2000\/svg)/)).toBeNull()
    expect((await fetch(`${url}/ui/assets/console.js`, { headers: { "if-none-match": etag } })).status).toBe(304)
    expect((await fetch(`${url}/ui/assets/console.css`)).headers.get("content-type")).toBe("text/css; charset=utf-8")
    expect((await fetch(`${url}/ui/assets/..%2Fcortex.toml`)).status).toBe(404)
    expect((await fetch(`${url}/ui/events`)).status).toBe(401)
    expect((await postJson(`${url}/admin/pin`, { model: "tiny", node: "local" })).status).toBe(401)
  })

  it("asks for the key, then shows the node, its devices and models", async () => {
    await page.goto(`${stack.gateway.url}/ui`)
    await page.locator("#login-key").fill(KEY)
    await page.locator("#login-form button[type=submit]").click()
    await page.locator("#conn.live").waitFor()
    const node = page.locator("article[data-node=\"local\"]")
    await node.waitFor()
    await expect.poll(() => node.locator("h3 .badge").textContent()).toBe("ok")
    expect(await node.locator(".device .bar").count()).toBeGreaterThan(0)
    // The bar is as wide as the share of memory in use (a CSP-refused style would fill it).
    const [bar, fill] = await Promise.all([
      node.locator(".device .bar").first().boundingBox(),
      node.locator(".device .bar > span").first().boundingBox()
    ])
    const used = Number(await node.locator(".device .bar").first().getAttribute("aria-valuenow"))
    const total = Number(await node.locator(".device .bar").first().getAttribute("aria-valuemax"))
    expect(Math.abs(fill!.width / bar!.width - used / total)).toBeLessThan(0.02)
    await expect.poll(() => nodeModel("tiny").locator(".status").textContent()).toBe("loaded")
    expect(await nodeModel("tiny-b").locator(".status").textContent()).toBe("available")
  })

  it("loads a model from the UI and shows its status change live", async () => {
    const statuses = new Set<string>()
    const watch = setInterval(async () => {
      const s = await nodeModel("tiny-b").locator(".status").textContent().catch(() => null)
      if (s) statuses.add(s)
    }, 50)
    await nodeModel("tiny-b").locator("button[data-action=\"load\"]").click()
    await expect.poll(() => nodeModel("tiny-b").locator(".status").textContent(), { timeout: 60_000 }).toBe("loaded")
    clearInterval(watch)
    expect(statuses.has("available")).toBe(true)

    // Changes made elsewhere (the admin API, a request) arrive by the event stream.
    const unload = await postJson(`${stack.gateway.url}/admin/unload`, { model: "tiny-b", node: "local" }, auth)
    expect(unload.status).toBe(200)
    await expect.poll(() => nodeModel("tiny-b").locator(".status").textContent(), { timeout: 30_000 }).toBe("available")
    const cold = await postJson(`${stack.gateway.url}/v1/chat/completions`, {
      model: "tiny-b",
      max_tokens: 2,
      messages: [{ role: "user", content: "hi" }]
    }, auth)
    expect(cold.status).toBe(200)
    await expect.poll(() => nodeModel("tiny-b").locator(".status").textContent(), { timeout: 30_000 }).toBe("loaded")
    // The cold load shows in the recent loads, with its reason.
    await expect.poll(() => page.locator("#recent-loads tbody tr").first().textContent()).toMatch(/tiny-b.*local.*load/)

    // Pin from the UI: the model is marked pinned on the node.
    await nodeModel("tiny").locator("button[data-action=\"pin\"]").click()
    await nodeModel("tiny").locator(".badge.pinned").waitFor()
    expect(await nodeModel("tiny").locator("button[data-action=\"pin\"]").textContent()).toBe("Unpin")
  })

  for (const dialect of ["openai", "anthropic"] as const) {
    it(`streams a playground answer through ${dialect === "openai" ? "/v1/chat/completions" : "/v1/messages"}`, async () => {
      await page.goto(`${stack.gateway.url}/ui#playground`)
      await page.locator("#conn.live").waitFor()
      await page.locator("#pg-model option[value=\"small\"]").waitFor({ state: "attached" })
      await page.locator("#pg-model").selectOption("small")
      await page.locator("#pg-dialect").selectOption(dialect)
      await page.locator("#pg-max").fill("24")
      // Count the answer's updates as they land: a streamed answer grows event by event.
      await page.evaluate(() => {
        // Runs in the page (this file's lib has no DOM types).
        const w = globalThis as any
        w.updates = 0
        new w.MutationObserver((records: Array<unknown>) => (w.updates += records.length)).observe(
          w.document.getElementById("pg-transcript"),
          {
            subtree: true,
            childList: true,
            characterData: true
          }
        )
      })
      await page.locator("#pg-input").fill("Hello there")
      const route = dialect === "openai" ? "/v1/chat/completions" : "/v1/messages"
      const response = page.waitForResponse((r) => r.url().endsWith(route))
      await page.locator("#pg-send").click()
      // The page asked for a stream and got one.
      const answered = await response
      expect(JSON.parse(answered.request().postData()!)).toMatchObject({ model: "small", stream: true })
      expect(answered.headers()["content-type"]).toContain("text/event-stream")
      const answer = page.locator(`.msg.assistant[data-dialect="${dialect}"]`).last()
      await answer.and(page.locator("[data-done]")).waitFor({ timeout: 60_000 })
      expect(await answer.getAttribute("data-done")).toBe("true")
      expect((await answer.textContent())!.length).toBeGreaterThan(0)
      expect(await page.evaluate(() => (globalThis as any).updates)).toBeGreaterThan(3)
      expect(await page.locator("#pg-stats").textContent()).toMatch(/24 tokens/)
      await page.screenshot({ path: path.join(OUT, `console-playground-${dialect}.png`) })
    })
  }

  it("shows per-model requests and the log tail, and fits a phone screen", async () => {
    await page.goto(`${stack.gateway.url}/ui#models`)
    await page.locator("#conn.live").waitFor()
    const row = page.locator("tr[data-model-row=\"tiny\"]")
    await expect.poll(() => row.locator("[data-stat=\"requests\"]").textContent()).toMatch(/^[2-9]/)
    await row.click()
    await page.locator("#model-detail table").waitFor()
    expect(await page.locator("#model-detail svg.spark polyline").count()).toBe(2)
    await page.screenshot({ path: path.join(OUT, "console-models.png") })

    await page.goto(`${stack.gateway.url}/ui#log`)
    await expect.poll(() => page.locator("#log-lines").textContent()).toContain("loading tiny-b on local")
    expect(await page.locator("#log-lines").textContent()).toContain("admin: load tiny-b on local")
    await page.screenshot({ path: path.join(OUT, "console-log.png") })

    await page.goto(`${stack.gateway.url}/ui#fleet`)
    await nodeModel("tiny").waitFor()
    await page.screenshot({ path: path.join(OUT, "console.png") })
    await page.setViewportSize({ width: 390, height: 844 })
    await page.screenshot({ path: path.join(OUT, "console-phone.png"), fullPage: true })
    expect(await page.evaluate(() => (globalThis as any).document.documentElement.scrollWidth)).toBeLessThanOrEqual(390)
    await waitFor("screenshots", async () => existsSync(path.join(OUT, "console-phone.png")) || undefined)
  })
})
