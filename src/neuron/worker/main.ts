/**
 * Entry point of a device worker: a child process forked by the neuron (DeviceWorker.ts).
 * It owns every engine object for its device (harness.ts: node-llama-cpp, or llama.node for vision). If llama.cpp aborts, only this process
 * dies; the neuron sees the exit and recovers.
 */
import { Schema } from "effect"
import { coalescer } from "./coalesce.js"
import { isWorkerEngineKind, type WorkerEngine } from "./harness.js"
import { type FromWorker, type GenerationResult, ToWorker, WorkerError, type WorkerFailure } from "./protocol.js"

const send = (message: FromWorker) => {
  process.send?.(message)
}

const threads = Math.max(1, Number(process.env.CORTEX_WORKER_THREADS ?? "1"))
const gpu = process.env.CORTEX_WORKER_GPU === "1"
const decode = Schema.decodeUnknownSync(ToWorker)

const kind = process.env.CORTEX_WORKER_ENGINE
// Each engine is imported only by the workers that run it: a text worker never loads llama.node.
const engine: WorkerEngine = !isWorkerEngineKind(kind) || kind === "text"
  ? await (await import("./engine.js")).Engine.create({ gpu, threads })
  : await (await import("./vision-engine.js")).VisionEngine.create({ gpu, threads })
const running = new Map<number, AbortController>()

const fail = (id: number, error: unknown) => {
  const failure: WorkerFailure = error instanceof WorkerError && error.failure
    ? error.failure
    : { tag: "Failed", message: (error as Error)?.message ?? String(error) }
  send({ _tag: "failure", id, failure })
}

const handle = async (message: ToWorker): Promise<void> => {
  switch (message._tag) {
    case "load": {
      const info = await engine.load(
        message.model,
        message.path,
        message.contextSize,
        message.sequences,
        message.batchSize,
        message.gpuLayers,
        message.estimate,
        message.projector
      )
      return send({ _tag: "result", id: message.id, value: info })
    }
    case "unload":
      return send({ _tag: "result", id: message.id, value: await engine.unload(message.model) })
    case "estimate":
      return send({
        _tag: "result",
        id: message.id,
        value: await engine.estimate(message.path, message.contextSize, message.sequences, message.batchSize)
      })
    case "generate": {
      const controller = new AbortController()
      running.set(message.id, controller)
      const pieces = message.stream ? coalescer(message.id, message.coalesceMs ?? 0, send) : undefined
      let result: GenerationResult
      try {
        result = await engine.generate(
          message.model,
          message.job,
          message.params,
          message.budget,
          controller.signal,
          {
            chunk: pieces ? pieces.push : () => {},
            prefilled: (promptTokens, cachedTokens) =>
              send({ _tag: "prefilled", id: message.id, promptTokens, cachedTokens })
          },
          message.choices,
          message.parallel
        )
      } finally {
        // What is held goes out before the result, or before the failure the caller sends.
        pieces?.flush()
        running.delete(message.id)
      }
      return send({ _tag: "result", id: message.id, value: result })
    }
    case "embed":
      return send({ _tag: "result", id: message.id, value: await engine.embed(message.model, message.inputs) })
    case "tokenize":
      return send({
        _tag: "result",
        id: message.id,
        value: await engine.countPromptTokens(
          message.model,
          message.job,
          message.tools ? { tools: message.tools, toolChoice: message.toolChoice ?? "auto" } : undefined
        )
      })
    case "cancel":
      running.get(message.id)?.abort()
      return
    case "memory":
      return send({ _tag: "result", id: message.id, value: await engine.memory() })
    case "shutdown":
      for (const controller of running.values()) controller.abort()
      await engine.dispose()
      send({ _tag: "result", id: message.id, value: true })
      process.exit(0)
  }
}

process.on("message", (raw) => {
  let message: ToWorker
  try {
    message = decode(raw)
  } catch (e) {
    const id = typeof (raw as { id?: unknown })?.id === "number" ? (raw as { id: number }).id : -1
    return fail(id, new Error(`bad IPC message: ${(e as Error).message}`))
  }
  handle(message).catch((e) => fail(message.id, e))
})

// The neuron is gone: nothing left to serve.
process.on("disconnect", () => process.exit(0))

send({ _tag: "ready", info: await engine.info() })
