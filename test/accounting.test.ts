/**
 * Keys, the usage ledger and limits (#15), on a real neuron behind real gateways, with the
 * official SDKs: against the embedded store (PGlite) and against a real PostgreSQL server
 * (test/fixtures/postgres.ts) shared by two gateway replicas. Usage rows are awaited through
 * /admin/usage (the ledger writes in batches), never by sleeping.
 */
import Anthropic from "@anthropic-ai/sdk"
import { PgClient } from "@effect/sql-pg"
import * as SqlClient from "@effect/sql/SqlClient"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { PGlite } from "@electric-sql/pglite"
import { Effect, Redacted } from "effect"
import { execFile } from "node:child_process"
import { readdir, readFile, stat } from "node:fs/promises"
import * as path from "node:path"
import { promisify } from "node:util"
import OpenAI from "openai"
import { type GatewayProcess, startGateway } from "./fixtures/gateway.js"
import { CLI, type NeuronProcess, startNeuron, waitFor } from "./fixtures/neuron.js"
import { type PostgresServer, startPostgres } from "./fixtures/postgres.js"

const ADMIN = "admin-secret-0123456789"
process.env.CORTEX_TEST_ADMIN_KEY = ADMIN

// Output at 1 USD a token (input free): a request's cost is its completion tokens, and the tiny
// model always generates max_tokens, so a reservation's estimate is exactly what it settles to.
const MODELS_TOML = `[[models]]
id = "tiny"
sampling = { temperature = 0 }
cost = { input = 0, output = 1000000 }
[[models]]
id = "tiny-b"
limits = { rpm = 2 }
`

const storeToml = (store: string) =>
  `[auth]\nadmin_key_env = "CORTEX_TEST_ADMIN_KEY"\n[store]\n${store}\nrefresh_secs = 0.3\nflush_ms = 100\n`

let neuron: NeuronProcess

const admin = async (gw: GatewayProcess, method: string, route: string, body?: unknown) => {
  const res = await fetch(`${gw.url}${route}`, {
    method,
    headers: {
      authorization: `Bearer ${ADMIN}`,
      ...(body !== undefined ? { "content-type": "application/json" } : {})
    },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {})
  })
  return { status: res.status, body: await res.json() as any }
}

const issue = async (gw: GatewayProcess, body: Record<string, unknown>) => {
  const { body: answer, status } = await admin(gw, "POST", "/admin/keys", body)
  expect(status).toBe(201)
  return answer as { key: { id: string; name: string }; secret: string }
}

const openai = (gw: GatewayProcess, key: string) => new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: key, maxRetries: 0 })
const anthropic = (gw: GatewayProcess, key: string) => new Anthropic({ baseURL: gw.url, apiKey: key, maxRetries: 0 })

const chat = (gw: GatewayProcess, key: string, maxTokens = 2, model = "tiny") =>
  openai(gw, key).chat.completions.create({ model, max_tokens: maxTokens, messages: [{ role: "user", content: "hi" }] })

const usage = async (gw: GatewayProcess, query: string) => {
  const { body, status } = await admin(gw, "GET", `/admin/usage?${query}`)
  expect(status).toBe(200)
  return body.data as Array<Record<string, number | string>>
}

/** The usage totals of a key once the ledger holds `requests` rows for it. */
const usageOnce = (gw: GatewayProcess, keyId: string, requests: number) =>
  waitFor(`${requests} ledger rows for ${keyId}`, async () => {
    const [total] = await usage(gw, `key=${keyId}`)
    return total !== undefined && total.requests === requests ? total : undefined
  })

/** `n` concurrent requests (half OpenAI, half Anthropic); how many were served and what refused the rest. */
const burst = async (gateways: ReadonlyArray<GatewayProcess>, key: string, n: number) => {
  const results = await Promise.all(Array.from({ length: n }, (_, i) => {
    const gw = gateways[i % gateways.length]!
    return i % 2 === 0
      ? chat(gw, key).then(() => "ok", (e) => e instanceof OpenAI.RateLimitError ? e.code : String(e))
      : anthropic(gw, key).messages.create({
        model: "tiny",
        max_tokens: 2,
        messages: [{ role: "user", content: "hi" }]
      })
        .then(() => "ok", (e) => e instanceof Anthropic.RateLimitError ? "anthropic_429" : String(e))
  }))
  return {
    served: results.filter((r) => r === "ok").length,
    refused: results.filter((r) => r === "insufficient_quota" || r === "anthropic_429").length,
    other: results.filter((r) => r !== "ok" && r !== "insufficient_quota" && r !== "anthropic_429")
  }
}

const expectRateLimited = (e: unknown, limit: "requests" | "tokens" | "usd" | "concurrent") => {
  expect(e).toBeInstanceOf(OpenAI.RateLimitError)
  const error = e as InstanceType<typeof OpenAI.RateLimitError>
  expect(Number(error.headers.get("retry-after"))).toBeGreaterThanOrEqual(1)
  expect(error.headers.get(`x-ratelimit-remaining-${limit}`)).toBe("0")
  expect(error.headers.get(`x-ratelimit-limit-${limit}`)).not.toBeNull()
  expect(error.code).toBe(limit === "usd" ? "insufficient_quota" : "rate_limit_exceeded")
}

const expectAnthropicRateLimited = (e: unknown) => {
  expect(e).toBeInstanceOf(Anthropic.RateLimitError)
  const error = e as InstanceType<typeof Anthropic.RateLimitError>
  expect((error.error as any).error.type).toBe("rate_limit_error")
  expect(Number(error.headers.get("retry-after"))).toBeGreaterThanOrEqual(1)
}

beforeAll(async () => {
  neuron = await startNeuron({ models: ["tiny", "tiny-b"], defaultModels: ["tiny", "tiny-b"] })
}, 180_000)

afterAll(async () => {
  await neuron?.stop()
})

/** What every store must do, on one gateway in front of it (undefined: skipped, the store is missing). */
const sharedTests = (gateway: () => GatewayProcess | undefined) => {
  it("keys: issued, rotated (the old secret stops working) and revoked, in both dialects", async (ctx) => {
    const gw = gateway()
    if (!gw) return ctx.skip()
    const { key, secret } = await issue(gw, { name: "lifecycle" })
    expect((await chat(gw, secret)).usage?.completion_tokens).toBe(2)
    const listed = await admin(gw, "GET", "/admin/keys")
    expect(listed.body.data.find((k: { id: string }) => k.id === key.id)?.name).toBe("lifecycle")
    expect(JSON.stringify(listed.body)).not.toContain(secret)
    const rotated = await admin(gw, "POST", `/admin/keys/lifecycle/rotate`)
    expect(rotated.status).toBe(200)
    const fresh = rotated.body.secret as string
    expect(await chat(gw, secret).catch((e) => e)).toBeInstanceOf(OpenAI.AuthenticationError)
    expect(
      (await anthropic(gw, fresh).messages.create({
        model: "tiny",
        max_tokens: 2,
        messages: [{ role: "user", content: "x" }]
      })).usage.output_tokens
    ).toBe(2)
    expect((await admin(gw, "POST", `/admin/keys/${key.id}/revoke`)).status).toBe(200)
    expect(await chat(gw, fresh).catch((e) => e)).toBeInstanceOf(OpenAI.AuthenticationError)
    const refused = await anthropic(gw, fresh).messages
      .create({ model: "tiny", max_tokens: 2, messages: [{ role: "user", content: "x" }] }).catch((e) => e)
    expect(refused).toBeInstanceOf(Anthropic.AuthenticationError)
    expect((await admin(gw, "POST", `/admin/keys/${key.id}/revoke`)).status).toBe(404)
    // An expired key is refused like a revoked one.
    const expired = await issue(gw, { name: "expired", expires_at: "2020-01-01" })
    expect(await chat(gw, expired.secret).catch((e) => e)).toBeInstanceOf(OpenAI.AuthenticationError)
  }, 120_000)

  it("429 at each limit, in both dialects, with Retry-After and x-ratelimit-* headers", async (ctx) => {
    const gw = gateway()
    if (!gw) return ctx.skip()
    // Requests per minute.
    const rpm = await issue(gw, { name: "rpm", rpm: 2 })
    await chat(gw, rpm.secret)
    await chat(gw, rpm.secret)
    expectRateLimited(await chat(gw, rpm.secret).catch((e) => e), "requests")
    expectAnthropicRateLimited(
      await anthropic(gw, rpm.secret).messages.create({
        model: "tiny",
        max_tokens: 2,
        messages: [{ role: "user", content: "x" }]
      })
        .catch((e) => e)
    )
    // Tokens per minute: the estimate (prompt + max output) does not fit.
    const tpm = await issue(gw, { name: "tpm", tpm: 100 })
    await chat(gw, tpm.secret, 8)
    expectRateLimited(await chat(gw, tpm.secret, 200).catch((e) => e), "tokens")
    expectAnthropicRateLimited(
      await anthropic(gw, tpm.secret).messages.create({
        model: "tiny",
        max_tokens: 200,
        messages: [{ role: "user", content: "x" }]
      })
        .catch((e) => e)
    )
    // Spend: a prepaid balance of 3 USD; each request costs 2.
    const spend = await issue(gw, { name: "spend", budget_usd: 3, window: "balance" })
    await chat(gw, spend.secret)
    expectRateLimited(await chat(gw, spend.secret).catch((e) => e), "usd")
    expectAnthropicRateLimited(
      await anthropic(gw, spend.secret).messages.create({
        model: "tiny",
        max_tokens: 2,
        messages: [{ role: "user", content: "x" }]
      })
        .catch((e) => e)
    )
    // Concurrent requests: one long stream holds the only seat.
    const conc = await issue(gw, { name: "conc", concurrent: 1 })
    const holder = new AbortController()
    const held = await fetch(`${gw.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${conc.secret}`, "content-type": "application/json" },
      body: JSON.stringify({
        model: "tiny",
        stream: true,
        max_tokens: 3000,
        messages: [{ role: "user", content: "go" }]
      }),
      signal: holder.signal
    })
    const reader = held.body!.getReader()
    await reader.read()
    expectRateLimited(await chat(gw, conc.secret).catch((e) => e), "concurrent")
    expectAnthropicRateLimited(
      await anthropic(gw, conc.secret).messages.create({
        model: "tiny",
        max_tokens: 2,
        messages: [{ role: "user", content: "x" }]
      })
        .catch((e) => e)
    )
    holder.abort()
    await reader.cancel().catch(() => undefined)
    // The seat comes back once the stream is settled.
    await waitFor("the seat back", () => chat(gw, conc.secret).then(() => true, () => undefined))
    // A model's own limit (models.toml limits.rpm = 2), whoever asks.
    await chat(gw, "anyone", 2, "tiny-b")
    await chat(gw, "anyone", 2, "tiny-b")
    const modelLimited = await chat(gw, "anyone", 2, "tiny-b").catch((e) => e)
    expectRateLimited(modelLimited, "requests")
    expect(modelLimited.message).toContain("model 'tiny-b'")
  }, 180_000)

  it("32 concurrent requests against a budget that allows 10: exactly 10 served", async (ctx) => {
    const gw = gateway()
    if (!gw) return ctx.skip()
    const { key, secret } = await issue(gw, { name: "ten", budget_usd: 21, window: "month" })
    const result = await burst([gw], secret, 32)
    expect(result.other).toEqual([])
    expect(result.served).toBe(10)
    expect(result.refused).toBe(22)
    const total = await usageOnce(gw, key.id, 32)
    expect(total.cost_usd).toBe(20)
    expect(total.completion_tokens).toBe(20)
    expect(total.errors).toBe(22)
  }, 180_000)

  it("the ledger's rows match the usage the clients received", async (ctx) => {
    const gw = gateway()
    if (!gw) return ctx.skip()
    const { key, secret } = await issue(gw, { name: "ledger" })
    const o = openai(gw, secret)
    const a = anthropic(gw, secret)
    let prompt = 0
    let completion = 0
    const one = await o.chat.completions.create({
      model: "tiny",
      max_tokens: 3,
      messages: [{ role: "user", content: "one" }]
    })
    prompt += one.usage!.prompt_tokens
    completion += one.usage!.completion_tokens
    const stream = await o.chat.completions.create({
      model: "tiny",
      max_tokens: 4,
      stream: true,
      stream_options: { include_usage: true },
      messages: [{ role: "user", content: "two two" }]
    })
    for await (const chunk of stream) {
      if (chunk.usage) {
        prompt += chunk.usage.prompt_tokens
        completion += chunk.usage.completion_tokens
      }
    }
    const message = await a.messages.create({
      model: "tiny",
      max_tokens: 5,
      messages: [{ role: "user", content: "three" }]
    })
    prompt += message.usage.input_tokens + (message.usage.cache_read_input_tokens ?? 0)
    completion += message.usage.output_tokens
    const final = await a.messages.stream({
      model: "tiny",
      max_tokens: 6,
      messages: [{ role: "user", content: "four" }]
    })
      .finalMessage()
    prompt += final.usage.input_tokens + (final.usage.cache_read_input_tokens ?? 0)
    completion += final.usage.output_tokens
    expect(completion).toBe(3 + 4 + 5 + 6)
    const total = await usageOnce(gw, key.id, 4)
    expect(total.prompt_tokens).toBe(prompt)
    expect(total.completion_tokens).toBe(completion)
    expect(total.cost_usd).toBe(completion)
    expect(total.errors).toBe(0)
    const byModel = await usage(gw, `key=${key.id}&by=model`)
    expect(byModel.map((r) => r.group)).toEqual(["tiny"])
    const byDay = await usage(gw, `key=${key.id}&by=day`)
    expect(byDay[0]?.group).toBe(new Date().toISOString().slice(0, 10))
    // cortex usage reads the same.
    const printed = await promisify(execFile)(process.execPath, [CLI, "usage", "--key", key.id, "--json"], {
      env: { ...process.env, CORTEX_ENDPOINT: gw.url, CORTEX_ADMIN_KEY: ADMIN }
    })
    expect(JSON.parse(printed.stdout).data[0].completion_tokens).toBe(completion)
  }, 120_000)
}

describe("embedded store (PGlite)", () => {
  let gw: GatewayProcess
  let dataDir: string

  beforeAll(async () => {
    gw = await startGateway({
      neurons: [{ name: "n1", url: neuron.url }],
      modelsToml: MODELS_TOML,
      extraToml: storeToml(`path = "cortex-data"`)
    })
    dataDir = gw.logs().match(/embedded store (\S+),/)?.[1] ?? ""
  }, 180_000)

  afterAll(async () => {
    await gw?.stop()
  })

  sharedTests(() => gw)

  it("cortex keys create prints the secret once; list, revoke and rotate take effect", async () => {
    const env = { ...process.env, CORTEX_ENDPOINT: gw.url, CORTEX_ADMIN_KEY: ADMIN }
    const created = await promisify(execFile)(process.execPath, [
      CLI,
      "keys",
      "create",
      "--name",
      "cli-team",
      "--models",
      "tiny",
      "--rpm",
      "100",
      "--budget-usd",
      "50",
      "--window",
      "30d",
      "--expires",
      "2099-01-01"
    ], { env })
    const secret = created.stdout.match(/ck-[0-9a-f]{16}-\S+/)?.[0]
    expect(secret).toBeDefined()
    const listed = await promisify(execFile)(process.execPath, [CLI, "keys", "list"], { env })
    expect(listed.stdout).toContain("cli-team")
    expect(listed.stdout).not.toContain(secret!)
    expect((await chat(gw, secret!)).usage?.completion_tokens).toBe(2)
    // A model the key may not use: 403 in the caller's dialect.
    const denied = await chat(gw, secret!, 2, "tiny-b").catch((e) => e)
    expect(denied).toBeInstanceOf(OpenAI.PermissionDeniedError)

    const { key: rotating, secret: before } = await issue(gw, { name: "rotating" })
    const rotated = await admin(gw, "POST", `/admin/keys/${rotating.id}/rotate`)
    expect(rotated.status).toBe(200)
    const after = rotated.body.secret as string
    expect(after).not.toBe(before)
    expect(await chat(gw, before).catch((e) => e)).toBeInstanceOf(OpenAI.AuthenticationError)
    expect((await chat(gw, after)).usage?.completion_tokens).toBe(2)

    const revoked = await promisify(execFile)(process.execPath, [CLI, "keys", "revoke", rotating.id], { env })
    expect(revoked.stdout).toContain("revoked")
    expect(await chat(gw, after).catch((e) => e)).toBeInstanceOf(OpenAI.AuthenticationError)
    const anthropicRefused = await anthropic(gw, after).messages
      .create({ model: "tiny", max_tokens: 2, messages: [{ role: "user", content: "x" }] }).catch((e) => e)
    expect(anthropicRefused).toBeInstanceOf(Anthropic.AuthenticationError)
    // The admin API is behind the admin key, not an ordinary one.
    expect((await fetch(`${gw.url}/admin/keys`, { headers: { authorization: `Bearer ${secret}` } })).status).toBe(401)
  }, 120_000)

  it("stores only a keyed hash: the secret is nowhere in the data files", async () => {
    const { secret } = await issue(gw, { name: "at-rest" })
    await gw.stop()
    const files: Array<string> = []
    const walk = async (dir: string): Promise<void> => {
      for (const entry of await readdir(dir, { withFileTypes: true })) {
        const p = path.join(dir, entry.name)
        if (entry.isDirectory()) await walk(p)
        else files.push(p)
      }
    }
    await walk(dataDir)
    expect(files.length).toBeGreaterThan(0)
    const random = secret.slice("ck-".length + 17)
    for (const file of files) {
      if ((await stat(file)).size > 64 * 1024 * 1024) continue
      expect((await readFile(file)).includes(random)).toBe(false)
    }
    const db = await PGlite.create(dataDir)
    const rows = (await db.query<Record<string, unknown>>("SELECT * FROM cortex_keys WHERE name = 'at-rest'")).rows
    await db.close()
    expect(rows).toHaveLength(1)
    expect(JSON.stringify(rows)).not.toContain(random)
    expect(rows[0]!.hash).toMatch(/^[0-9a-f]{64}$/)
  }, 120_000)
})

describe("PostgreSQL, two gateway replicas", () => {
  let server: PostgresServer | undefined
  let a: GatewayProcess
  let b: GatewayProcess

  beforeAll(async () => {
    const started = await startPostgres()
    if ("skip" in started) {
      console.log(`skipping the PostgreSQL tests: ${started.skip}`)
      return
    }
    server = started
    const options = {
      neurons: [{ name: "n1", url: neuron.url }],
      modelsToml: MODELS_TOML,
      extraToml: storeToml(`url = "${server.url}"`)
    }
    a = await startGateway(options)
    b = await startGateway(options)
  }, 240_000)

  afterAll(async () => {
    await a?.stop()
    await b?.stop()
    await server?.destroy()
  })

  sharedTests(() => server ? a : undefined)

  it("two replicas enforce one budget together: 32 requests across both, exactly 10 served", async (ctx) => {
    if (!server) return ctx.skip()
    const { key, secret } = await issue(a, { name: "shared", budget_usd: 21, window: "rolling:3600" })
    // The key issued on A authenticates on B once B reloads its keys.
    await waitFor("B knows the key", () => chat(b, secret).then(() => true, () => undefined))
    const result = await burst([a, b], secret, 32)
    expect(result.other).toEqual([])
    // B's first request spent 2 of the 21: 9 more fit.
    expect(result.served).toBe(9)
    expect(result.refused).toBe(23)
    const onA = await usageOnce(a, key.id, 33)
    const onB = await usageOnce(b, key.id, 33)
    expect(onB).toEqual(onA)
    expect(onA.cost_usd).toBe(20)
  }, 180_000)

  it("a key revoked on one replica is refused by the other within seconds", async (ctx) => {
    if (!server) return ctx.skip()
    const { key, secret } = await issue(a, { name: "revoked-across" })
    await waitFor("B knows the key", () => chat(b, secret).then(() => true, () => undefined))
    expect((await admin(a, "POST", `/admin/keys/${key.id}/revoke`)).status).toBe(200)
    await waitFor(
      "B refuses the key",
      () => chat(b, secret).then(() => undefined, (e) => e instanceof OpenAI.AuthenticationError ? true : undefined),
      30_000
    )
  }, 120_000)

  it("stores only a keyed hash", async (ctx) => {
    if (!server) return ctx.skip()
    const { secret } = await issue(a, { name: "pg-at-rest" })
    const rows = await Effect.runPromise(
      Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT * FROM cortex_keys WHERE name = 'pg-at-rest'`).pipe(
        Effect.provide(PgClient.layer({ url: Redacted.make(server.url) }))
      )
    )
    expect(rows).toHaveLength(1)
    expect(JSON.stringify(rows)).not.toContain(secret.slice("ck-".length + 17))
  }, 60_000)

  it(
    "the database down mid-run: inference goes on, the buffer bound holds, rows are written once it is back",
    async (ctx) => {
      if (!server) return ctx.skip()
      const c = await startGateway({
        neurons: [{ name: "n1", url: neuron.url }],
        modelsToml: MODELS_TOML,
        extraToml: storeToml(`url = "${server.url}"\nledger_buffer = 4`)
      })
      try {
        const { key, secret } = await issue(c, { name: "outage" })
        await server.stop()
        for (let i = 0; i < 10; i++) {
          const answer = i % 2 === 0
            ? (await chat(c, secret)).usage?.completion_tokens
            : (await anthropic(c, secret).messages.create({
              model: "tiny",
              max_tokens: 2,
              messages: [{ role: "user", content: "x" }]
            })).usage.output_tokens
          expect(answer).toBe(2)
        }
        const metrics = await (await fetch(c.metricsUrl)).text()
        expect(metrics).toMatch(/cortex_ledger_dropped_total(\{[^}]*\})? 6/)
        await server.start()
        const total = await usageOnce(c, key.id, 4)
        expect(total.completion_tokens).toBe(8)
        expect((await fetch(`${c.url}/health`)).status).toBe(200)
        expect(c.logs()).toMatch(/ledger: the store is back/)
      } finally {
        await c.stop()
      }
    },
    240_000
  )
})
