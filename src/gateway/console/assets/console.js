/* global window, document, location, sessionStorage, localStorage, fetch, AbortController, TextDecoder, performance, setTimeout */
// The cortex web console: one ES module, no framework, no build step, nothing loaded from
// elsewhere. Live state comes from GET /ui/events (SSE read with fetch, so the key can go as a
// bearer header); actions use the admin API; the playground calls the gateway's own
// /v1/chat/completions or /v1/messages and renders the stream as it arrives.

const $ = (id) => document.getElementById(id)
const KEY_NAME = "cortex-console-key"

/** Build an element; children are nodes or strings (always text, never parsed as HTML). */
const h = (tag, attrs = {}, ...children) => {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue
    if (k === "class") el.className = v
    // Through the CSSOM: the page's CSP refuses style attributes.
    else if (k === "width") el.style.width = v
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v)
    else el.setAttribute(k, v === true ? "" : String(v))
  }
  for (const c of children.flat()) if (c !== undefined && c !== null && c !== false) el.append(c)
  return el
}

const state = {
  key: sessionStorage.getItem(KEY_NAME) ?? localStorage.getItem(KEY_NAME) ?? "",
  fleet: null,
  requests: [],
  logs: [],
  selected: null,
  busy: new Set()
}
const MAX_REQUESTS = 1000
const MAX_LOGS = 500

const authHeaders = () => (state.key ? { authorization: `Bearer ${state.key}` } : {})

// ---- tabs ----------------------------------------------------------------------------------

const showTab = () => {
  const name = (location.hash || "#fleet").slice(1)
  for (const section of document.querySelectorAll("section.tab")) section.hidden = section.id !== name
  for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.dataset.tab === name)
}
window.addEventListener("hashchange", showTab)

// ---- login ---------------------------------------------------------------------------------

const needKey = (message) => {
  $("login").hidden = false
  document.querySelector("main").hidden = true
  const error = $("login-error")
  error.hidden = !message
  error.textContent = message ?? ""
}

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault()
  state.key = $("login-key").value.trim()
  if ($("login-remember").checked) localStorage.setItem(KEY_NAME, state.key)
  else sessionStorage.setItem(KEY_NAME, state.key)
  $("login").hidden = true
  document.querySelector("main").hidden = false
  connect()
})

$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_NAME)
  localStorage.removeItem(KEY_NAME)
  state.key = ""
  location.reload()
})

// ---- live events ---------------------------------------------------------------------------

let controller = null
let retryMs = 500

const setConn = (text, cls) => {
  const conn = $("conn")
  conn.textContent = text
  conn.className = `conn ${cls}`
}

/** Read an SSE body: calls onEvent(name, data) per event. */
const readEvents = async (body, onEvent) => {
  const reader = body.getReader()
  const decoder = new TextDecoder()
  let buffer = ""
  for (;;) {
    const { done, value } = await reader.read()
    if (done) return
    buffer += decoder.decode(value, { stream: true })
    let i
    while ((i = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, i)
      buffer = buffer.slice(i + 2)
      let name = "message"
      const data = []
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim()
        else if (line.startsWith("data:")) data.push(line.slice(line[5] === " " ? 6 : 5))
      }
      if (data.length > 0) onEvent(name, data.join("\n"))
    }
  }
}

const connect = async () => {
  controller?.abort()
  controller = new AbortController()
  setConn("connecting…", "")
  try {
    const res = await fetch("/ui/events", { headers: authHeaders(), signal: controller.signal })
    if (res.status === 401) {
      setConn("key needed", "down")
      return needKey(state.key ? "That key was refused." : undefined)
    }
    if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`)
    $("logout").hidden = !state.key
    setConn("live", "live")
    retryMs = 500
    await readEvents(res.body, onEvent)
    throw new Error("stream ended")
  } catch (e) {
    if (e.name === "AbortError") return
    setConn(`reconnecting (${e.message})`, "down")
    setTimeout(connect, retryMs)
    retryMs = Math.min(retryMs * 2, 10_000)
  }
}

const onEvent = (name, data) => {
  const value = JSON.parse(data)
  if (name === "hello") {
    state.fleet = value.fleet
    state.requests = value.requests
    state.logs = value.logs
    renderFleet()
    renderModels()
    renderPlaygroundModels()
    renderLog(true)
  } else if (name === "fleet") {
    state.fleet = value
    renderFleet()
    renderModels()
    renderPlaygroundModels()
  } else if (name === "request") {
    state.requests.push(value)
    if (state.requests.length > MAX_REQUESTS) state.requests.shift()
    renderModels()
  } else if (name === "log") {
    state.logs.push(value)
    if (state.logs.length > MAX_LOGS) state.logs.shift()
    appendLog(value)
  }
}

// ---- fleet ---------------------------------------------------------------------------------

const mb = (n) => (n >= 1024 ? `${(n / 1024).toFixed(1)} GiB` : `${Math.round(n)} MiB`)
const ago = (iso) => {
  const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000))
  return s < 60 ? `${s} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`
}
const badge = (text) => h("span", { class: `badge ${text}` }, text)

const act = async (action, body) => {
  const key = `${action}:${body.model}:${body.node ?? ""}`
  state.busy.add(key)
  renderFleet()
  const out = $("action-result")
  out.textContent = `${action} ${body.model}${body.node ? ` on ${body.node}` : ""}…`
  try {
    const res = await fetch(`/admin/${action}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...authHeaders() },
      body: JSON.stringify(body)
    })
    const answer = await res.json().catch(() => ({}))
    out.textContent = res.ok
      ? `${action} ${body.model}: done`
      : `${action} ${body.model} failed: ${answer.error?.message ?? `HTTP ${res.status}`}`
    out.className = res.ok ? "note" : "note error"
  } catch (e) {
    out.textContent = `${action} ${body.model} failed: ${e.message}`
    out.className = "note error"
  } finally {
    state.busy.delete(key)
    renderFleet()
  }
}

const actionButton = (action, label, model, node) => {
  const body = { model, node }
  const busy = state.busy.has(`${action}:${model}:${node ?? ""}`)
  return h("button", {
    type: "button",
    "data-action": action,
    "data-model": model,
    "data-node": node ?? "",
    disabled: busy,
    onclick: () => act(action, body)
  }, busy ? `${label}…` : label)
}

const renderNode = (node, pins) => {
  const health = node.retired ? "draining" : node.healthy ? node.status : node.status === "unknown" ? "unknown" : "down"
  const devices = node.devices.map((d) => {
    const share = d.total_mb > 0 ? d.used_mb / d.total_mb : 0
    return h(
      "div",
      { class: "device", "data-device": d.id },
      h("div", { class: "note" }, `${d.name} (${d.id}): ${mb(d.used_mb)} of ${mb(d.total_mb)} used`),
      h("div", {
        class: `bar${share > 0.85 ? " high" : ""}`,
        role: "meter",
        "aria-valuemin": 0,
        "aria-valuemax": d.total_mb,
        "aria-valuenow": d.used_mb
      }, h("span", { width: `${Math.min(100, share * 100).toFixed(1)}%` }))
    )
  })
  const models = node.models.map((m) => {
    const pinned = pins.get(m.id) === node.name
    const loaded = m.status === "loaded" || m.status === "loading" || m.status === "recovering"
    return h(
      "li",
      { "data-model": m.id },
      h(
        "span",
        { class: "id" },
        m.id,
        pinned ? h("span", { class: "badge pinned", title: "pinned here" }, "pinned") : null
      ),
      h("span", { class: "status badge " + m.status }, m.status),
      m.in_flight + m.queue_depth > 0
        ? h("span", { class: "note" }, `${m.in_flight} running, ${m.queue_depth} queued`)
        : null,
      m.memory_estimate_mb ? h("span", { class: "note" }, mb(m.memory_estimate_mb)) : null,
      m.error ? h("span", { class: "note error" }, m.error) : null,
      h(
        "span",
        { class: "actions" },
        loaded ? actionButton("unload", "Unload", m.id, node.name) : actionButton("load", "Load", m.id, node.name),
        pinned ? actionButton("pin", "Unpin", m.id, null) : actionButton("pin", "Pin here", m.id, node.name)
      )
    )
  })
  return h(
    "article",
    { class: "card", "data-node": node.name },
    h(
      "header",
      {},
      h("h3", {}, node.name, " ", badge(health)),
      h("div", { class: "note" }, node.endpoint),
      node.error ? h("div", { class: "note error" }, node.error) : null
    ),
    devices,
    h("ul", { class: "models-on-node" }, models)
  )
}

const table = (head, rows) =>
  rows.length === 0
    ? h("p", { class: "note" }, "none")
    : h("table", {}, h("thead", {}, h("tr", {}, head.map((t) => h("th", {}, t)))), h("tbody", {}, rows))

const renderFleet = () => {
  const fleet = state.fleet
  if (!fleet) return
  const pins = new Map(fleet.models.filter((m) => m.pinned_on).map((m) => [m.neuron_id, m.pinned_on]))
  $("nodes").replaceChildren(
    ...(fleet.nodes.length > 0
      ? fleet.nodes.map((n) => renderNode(n, pins))
      : [h("p", { class: "note" }, "No neurons configured.")])
  )
  $("loads").replaceChildren(table(
    ["model", "node", "since", "waiting requests"],
    fleet.loads_in_progress.map((l) =>
      h(
        "tr",
        {},
        h("td", {}, l.model),
        h("td", {}, l.node ?? "placing…"),
        h("td", {}, ago(l.since)),
        h("td", {}, String(l.waiters))
      )
    )
  ))
  $("recent-loads").replaceChildren(table(
    ["when", "model", "node", "reason", "evicted", "waited", "load"],
    [...fleet.recent_loads].reverse().map((l) =>
      h(
        "tr",
        {},
        h("td", {}, ago(l.at)),
        h("td", {}, l.model),
        h("td", {}, l.node),
        h("td", {}, l.reason.replaceAll("_", " ")),
        h("td", {}, l.evicted.length > 0 ? l.evicted.join(", ") : "—"),
        h("td", {}, `${l.wait_ms} ms`),
        h("td", {}, `${l.load_ms} ms`)
      )
    )
  ))
}

// ---- models --------------------------------------------------------------------------------

const median = (xs) => {
  if (xs.length === 0) return null
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]
}

const sparkline = (values, width = 120, height = 24) => {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg")
  svg.setAttribute("class", "spark")
  svg.setAttribute("width", String(width))
  svg.setAttribute("height", String(height))
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`)
  if (values.length > 0) {
    const max = Math.max(...values) || 1
    const step = values.length > 1 ? width / (values.length - 1) : 0
    const points = values.map((v, i) =>
      `${(i * step).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`
    )
    if (values.length === 1) points.push(`${width},${points[0].split(",")[1]}`)
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline")
    line.setAttribute("points", points.join(" "))
    svg.append(line)
  }
  return svg
}

const statsOf = (id) => {
  const list = state.requests.filter((r) => r.model === id)
  const ttft = list.map((r) => r.ttft_ms).filter((v) => v !== null)
  const rate = list.map((r) => r.tokens_per_second).filter((v) => v !== null)
  return { list, ttft, rate, errors: list.filter((r) => r.status >= 400).length }
}

const fmt = (v, unit, digits = 0) => (v === null ? "—" : `${v.toFixed(digits)} ${unit}`)

const renderModels = () => {
  const fleet = state.fleet
  if (!fleet) return
  const rows = fleet.models.map((m) => {
    const s = statsOf(m.id)
    return h(
      "tr",
      {
        "data-model-row": m.id,
        class: state.selected === m.id ? "selected" : "",
        onclick: () => {
          state.selected = state.selected === m.id ? null : m.id
          renderModels()
        }
      },
      h(
        "td",
        {},
        h("strong", {}, m.id),
        m.aliases.length > 0 ? h("div", { class: "note" }, `aliases: ${m.aliases.join(", ")}`) : null
      ),
      h(
        "td",
        {},
        m.locations.length > 0
          ? m.locations.map((l) => h("div", {}, `${l.node} `, badge(l.status)))
          : h("span", { class: "note" }, "on no node")
      ),
      h("td", {}, m.pinned_on ?? "—"),
      h(
        "td",
        { "data-stat": "requests" },
        String(s.list.length),
        s.errors > 0 ? h("span", { class: "note error" }, ` (${s.errors} failed)`) : null
      ),
      h("td", {}, sparkline(s.ttft.slice(-50)), h("div", { class: "note" }, `median ${fmt(median(s.ttft), "ms")}`)),
      h(
        "td",
        {},
        sparkline(s.rate.slice(-50)),
        h("div", { class: "note" }, `median ${fmt(median(s.rate), "tok/s", 1)}`)
      )
    )
  })
  $("model-list").replaceChildren(
    table(["model", "where", "pinned on", "requests", "time to first token", "decode speed"], rows)
  )
  const selected = fleet.models.find((m) => m.id === state.selected)
  if (!selected) return $("model-detail").replaceChildren()
  const s = statsOf(selected.id)
  $("model-detail").replaceChildren(
    h("h2", {}, `${selected.id}: recent requests through this gateway`),
    h(
      "div",
      { class: "row" },
      h("div", {}, h("div", { class: "note" }, "time to first token (ms)"), sparkline(s.ttft.slice(-200), 300, 48)),
      h("div", {}, h("div", { class: "note" }, "decode speed (tok/s)"), sparkline(s.rate.slice(-200), 300, 48))
    ),
    h(
      "div",
      { class: "scroll" },
      table(
        ["when", "node", "route", "status", "TTFT", "tok/s", "tokens in / out", "duration"],
        [...s.list].reverse().slice(0, 50).map((r) =>
          h(
            "tr",
            {},
            h("td", {}, new Date(r.at).toLocaleTimeString()),
            h("td", {}, r.node),
            h("td", {}, r.route),
            h("td", {}, String(r.status), r.error ? h("div", { class: "note error" }, r.error) : null),
            h("td", {}, fmt(r.ttft_ms, "ms")),
            h("td", {}, fmt(r.tokens_per_second, "", 1)),
            h("td", {}, `${r.prompt_tokens ?? "—"} / ${r.completion_tokens ?? "—"}`),
            h("td", {}, `${r.duration_ms} ms`)
          )
        )
      )
    )
  )
}

// ---- log -----------------------------------------------------------------------------------

const LEVELS = { TRACE: 0, DEBUG: 0, INFO: 1, WARN: 2, ERROR: 2, FATAL: 2 }

const logItem = (line) =>
  h("li", { class: `lvl-${line.level}` }, `${new Date(line.at).toLocaleTimeString()} ${line.level} ${line.message}`)

const visible = (line) => (LEVELS[line.level] ?? 1) >= Number($("log-level").value)

const renderLog = () => {
  $("log-lines").replaceChildren(...state.logs.filter(visible).map(logItem))
  follow()
}

const appendLog = (line) => {
  const list = $("log-lines")
  if (visible(line)) list.append(logItem(line))
  while (list.children.length > MAX_LOGS) list.firstElementChild.remove()
  follow()
}

const follow = () => {
  if ($("log-follow").checked && !$("log").hidden) window.scrollTo(0, document.body.scrollHeight)
}

$("log-level").addEventListener("change", renderLog)

// ---- playground ----------------------------------------------------------------------------

const conversation = []
let playing = null

const renderPlaygroundModels = () => {
  const select = $("pg-model")
  const ids = state.fleet.models.flatMap((m) => [m.id, ...m.aliases])
  const current = select.value
  const existing = [...select.options].map((o) => o.value)
  if (existing.join("\n") === ids.join("\n")) return
  select.replaceChildren(...ids.map((id) => h("option", { value: id }, id)))
  if (ids.includes(current)) select.value = current
}

const bubble = (role, text) => {
  const el = h("div", { class: `msg ${role}` }, text)
  $("pg-transcript").append(el)
  return el
}

/** The text pieces of a streamed answer, in either dialect. */
const pieces = {
  openai: (event) => {
    if (event.error) throw new Error(event.error.message ?? "stream error")
    const delta = event.choices?.[0]?.delta
    return { text: delta?.content ?? "", usage: event.usage ? event.usage.completion_tokens : undefined }
  },
  anthropic: (event) => {
    if (event.type === "error") throw new Error(event.error?.message ?? "stream error")
    if (event.type === "content_block_delta" && event.delta?.type === "text_delta") return { text: event.delta.text }
    if (event.type === "message_delta") return { text: "", usage: event.usage?.output_tokens }
    return { text: "" }
  }
}

const request = (dialect, model, max, system) => {
  if (dialect === "anthropic") {
    return {
      url: "/v1/messages",
      headers: { "anthropic-version": "2023-06-01" },
      body: { model, max_tokens: max, stream: true, messages: conversation, ...(system ? { system } : {}) }
    }
  }
  return {
    url: "/v1/chat/completions",
    headers: {},
    body: {
      model,
      max_tokens: max,
      stream: true,
      stream_options: { include_usage: true },
      messages: system ? [{ role: "system", content: system }, ...conversation] : conversation
    }
  }
}

$("pg-form").addEventListener("submit", async (e) => {
  e.preventDefault()
  const text = $("pg-input").value.trim()
  if (!text || playing) return
  const dialect = $("pg-dialect").value
  const model = $("pg-model").value
  conversation.push({ role: "user", content: text })
  bubble("user", text)
  $("pg-input").value = ""
  const answer = bubble("assistant streaming", "")
  answer.dataset.dialect = dialect
  playing = new AbortController()
  $("pg-send").disabled = true
  $("pg-stop").disabled = false
  const started = performance.now()
  let first = null
  let tokens
  let reply = ""
  try {
    const req = request(dialect, model, Number($("pg-max").value) || 128, $("pg-system").value.trim())
    const res = await fetch(req.url, {
      method: "POST",
      headers: { "content-type": "application/json", ...authHeaders(), ...req.headers },
      body: JSON.stringify(req.body),
      signal: playing.signal
    })
    if (!res.ok) {
      const body = await res.json().catch(() => ({}))
      throw new Error(body.error?.message ?? `HTTP ${res.status}`)
    }
    await readEvents(res.body, (_name, data) => {
      if (data === "[DONE]") return
      const piece = pieces[dialect](JSON.parse(data))
      if (piece.usage !== undefined) tokens = piece.usage
      if (piece.text) {
        first ??= performance.now()
        reply += piece.text
        answer.textContent = reply
      }
    })
    conversation.push({ role: "assistant", content: reply })
    answer.dataset.done = "true"
  } catch (err) {
    conversation.pop()
    answer.classList.add("error")
    answer.textContent = err.name === "AbortError"
      ? `${reply} [stopped]`
      : `${reply}${reply ? "\n" : ""}Error: ${err.message}`
    answer.dataset.done = "error"
  } finally {
    answer.classList.remove("streaming")
    const secs = (performance.now() - started) / 1000
    $("pg-stats").textContent = [
      first !== null ? `first token after ${Math.round(first - started)} ms` : null,
      tokens !== undefined ? `${tokens} tokens in ${secs.toFixed(1)} s` : null
    ].filter(Boolean).join(", ")
    playing = null
    $("pg-send").disabled = false
    $("pg-stop").disabled = true
  }
})

$("pg-stop").addEventListener("click", () => playing?.abort())
$("pg-clear").addEventListener("click", () => {
  conversation.length = 0
  $("pg-transcript").replaceChildren()
  $("pg-stats").textContent = ""
})
$("pg-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("pg-form").requestSubmit()
})

showTab()
connect()
