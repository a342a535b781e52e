/**
 * Service-level tests of the neuron's Loader and Seats over a fake DeviceWorkers (no child
 * process, no model): single-flight loads, the memory pre-flight, a refused reload that keeps
 * the resident model, one estimate per load, crash and restart events, admission, drain.
 * Live clock (`scopedLive`): the services time out with real durations.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Deferred, Effect, Exit, Fiber, Layer, PubSub, Schema, Scope } from "effect"
import { mkdtempSync, writeFileSync } from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import type { DeviceWorker, WorkerCall, WorkerEvent } from "../src/neuron/DeviceWorker.js"
import { WorkerError } from "../src/neuron/DeviceWorker.js"
import { DeviceWorkers } from "../src/neuron/DeviceWorkers.js"
import type { Device } from "../src/neuron/Discovery.js"
import { Loader } from "../src/neuron/Loader.js"
import { ModelRegistry } from "../src/neuron/ModelRegistry.js"
import { NeuronConfig, type NeuronSettings } from "../src/neuron/NeuronConfig.js"
import { Puller } from "../src/neuron/Puller.js"
import { Seats } from "../src/neuron/Seats.js"
import { resolveSources } from "../src/neuron/Sources.js"
import { resolveVision } from "../src/neuron/VisionConfig.js"

const device: Device = { id: "cpu", kind: "cpu", index: 0, name: "fake", totalMb: 1000, freeMb: 1000 }

interface Script {
  /** RAM an estimate reports for a model at a context size. */
  readonly ramMb: (model: string, contextSize: number) => number
  /** Held open until completed, when given: a load in progress. */
  readonly gate?: Deferred.Deferred<void>
}

/** A worker that answers estimate, load and unload from a script and records every job. */
const fakeWorker = (script: Script, events: PubSub.PubSub<WorkerEvent>) => {
  const jobs: Array<WorkerCall> = []
  let alive = true
  let down: WorkerError | undefined
  let restarts = 0
  const answer = (message: WorkerCall): Effect.Effect<unknown> => {
    switch (message._tag) {
      case "estimate":
        return Effect.succeed({
          ramMb: script.ramMb(path.basename(message.path, ".gguf"), message.contextSize),
          vramMb: 0,
          trainContextSize: 8192,
          embeddingSize: null
        })
      case "load":
        return Effect.as(script.gate ? Deferred.await(script.gate) : Effect.void, {
          contextSize: message.contextSize,
          maxTokenBytes: 8,
          trainContextSize: 8192,
          embeddingSize: null,
          estimate: message.estimate ?? { ramMb: 0, vramMb: 0, trainContextSize: 8192, embeddingSize: null },
          gpuLayers: 0,
          loadMs: 1
        })
      default:
        return Effect.succeed(true)
    }
  }
  const worker: DeviceWorker = {
    id: device.id,
    engine: "text",
    devices: [device],
    get alive() {
      return alive
    },
    get pid() {
      return 1
    },
    get restarts() {
      return restarts
    },
    info: undefined,
    get down() {
      return down
    },
    call: () => ({ id: 0, promise: Promise.reject(new Error("not in this fake")) }),
    cancel: () => {},
    request: <A, I>(message: WorkerCall, schema: Schema.Schema<A, I>) =>
      Effect.suspend(() => {
        jobs.push(message)
        return alive
          ? answer(message).pipe(Effect.flatMap(Schema.decodeUnknown(schema)), Effect.orDie)
          : Effect.fail(new WorkerError({ reason: { tag: "Crashed", device: "cpu", detail: "not running" } }))
      }),
    restart: Effect.suspend(() => {
      restarts++
      return PubSub.publish(events, { _tag: "Restarted", worker: device.id })
    }),
    kill: () => {}
  }
  const crash = Effect.suspend(() => {
    alive = false
    down = new WorkerError({ reason: { tag: "Crashed", device: "cpu", detail: "signal SIGKILL" } })
    return PubSub.publish(events, { _tag: "Crashed", worker: device.id, error: down })
  })
  const restart = Effect.suspend(() => {
    alive = true
    down = undefined
    restarts++
    return PubSub.publish(events, { _tag: "Restarted", worker: device.id })
  })
  return { worker, jobs, crash, restart }
}

const settings = (overrides: Partial<NeuronSettings>): NeuronSettings => {
  const modelsDir = mkdtempSync(path.join(os.tmpdir(), "cortex-services-"))
  for (const name of ["a", "b", "big"]) writeFileSync(path.join(modelsDir, `${name}.gguf`), "GGUF")
  return {
    modelsDir,
    threads: 1,
    memoryBudgetMb: 1000,
    prefillChunkTokens: 512,
    contextSize: 2048,
    maxInFlight: 1,
    maxN: 4,
    maxQueueDepth: 1,
    maxWaitSecs: 30,
    maxPerPrincipal: undefined,
    defaultModels: [],
    gpu: "off",
    drainSecs: 5,
    autoLoad: true,
    loadDelayMs: 0,
    sources: resolveSources({}, modelsDir, modelsDir, {}),
    vision: resolveVision(undefined, undefined, modelsDir),
    ...overrides
  } as NeuronSettings
}

/** Loader, Seats and ModelRegistry as they run, over the fake worker. */
const setup = (script: Script, overrides: Partial<NeuronSettings> = {}) =>
  Effect.gen(function*() {
    const events = yield* PubSub.unbounded<WorkerEvent>()
    const fake = fakeWorker(script, events)
    const workers = Layer.succeed(
      DeviceWorkers,
      DeviceWorkers.make({
        devices: () => [device],
        worker: (id) => id === device.id ? fake.worker : undefined,
        workerFor: (id, engine) => id === device.id && engine === "text" ? fake.worker : undefined,
        visionWorker: () => Effect.die("no vision worker in this fake"),
        workers: () => [fake.worker],
        all: () => [fake.worker],
        subscribe: PubSub.subscribe(events),
        engine: () => undefined,
        driver: () => ({})
      })
    )
    const layer = Loader.DefaultWithoutDependencies.pipe(
      Layer.provideMerge(Puller.DefaultWithoutDependencies),
      Layer.provideMerge(Seats.DefaultWithoutDependencies),
      Layer.provideMerge(ModelRegistry.DefaultWithoutDependencies),
      Layer.provideMerge(workers),
      Layer.provideMerge(Layer.succeed(NeuronConfig, settings(overrides)))
    )
    const context = yield* Layer.build(layer)
    return { ...fake, loader: Context.get(context, Loader), seats: Context.get(context, Seats) }
  })

const ram = (mb: number) => () => mb
const loads = (jobs: ReadonlyArray<WorkerCall>) => jobs.filter((j) => j._tag === "load")

describe("Loader", () => {
  it.scopedLive("loads single-flight: concurrent loads of one model make one load job", () =>
    Effect.gen(function*() {
      const gate = yield* Deferred.make<void>()
      const { jobs, loader } = yield* setup({ ramMb: ram(100), gate })
      const first = yield* Effect.fork(loader.load("a"))
      const second = yield* Effect.fork(loader.load("a"))
      yield* Effect.yieldNow()
      yield* Deferred.succeed(gate, undefined)
      const [x, y] = yield* Effect.all([Fiber.join(first), Fiber.join(second)])
      expect(x.status).toBe("loaded")
      expect(y.status).toBe("loaded")
      expect(loads(jobs)).toHaveLength(1)
    }))

  it.scopedLive("estimates once per load: the pre-flight's estimate travels in the load job", () =>
    Effect.gen(function*() {
      const { jobs, loader } = yield* setup({ ramMb: ram(100) })
      yield* loader.load("a", 4096)
      const estimates = jobs.filter((j) => j._tag === "estimate" && j.contextSize === 4096)
      expect(estimates).toHaveLength(1)
      const [load] = loads(jobs)
      expect(load?._tag === "load" && load.estimate?.ramMb).toBe(100)
    }))

  it.scopedLive("refuses a load that does not fit with a typed InsufficientVram and leaves the model available", () =>
    Effect.gen(function*() {
      const { jobs, loader } = yield* setup({ ramMb: (m) => m === "big" ? 1500 : 100 })
      const error = yield* Effect.flip(loader.load("big"))
      expect(error._tag).toBe("InsufficientVram")
      if (error._tag === "InsufficientVram") {
        expect(error.required_mb).toBe(1500)
        expect(error.free_mb).toBe(1000)
      }
      expect(loads(jobs)).toHaveLength(0)
      const e = yield* Effect.flip(loader.resident("big", false))
      expect(e._tag === "ModelUnavailable" && e.state).toBe("not_loaded")
    }))

  it.scopedLive("a refused reload with a larger context keeps the resident model loaded", () =>
    Effect.gen(function*() {
      const { jobs, loader } = yield* setup({ ramMb: (_, ctx) => ctx / 8 }, { memoryBudgetMb: 600 })
      const loaded = yield* loader.load("a", 2048)
      expect(loaded.status).toBe("loaded")
      const error = yield* Effect.flip(loader.load("a", 8192))
      expect(error._tag).toBe("InsufficientVram")
      const still = yield* loader.resident("a", false)
      expect(still.status).toBe("loaded")
      expect(still.loaded?.contextSize).toBe(2048)
      expect(jobs.filter((j) => j._tag === "unload")).toHaveLength(0)
      // One that fits (counting what the resident copy gives back) reloads.
      const bigger = yield* loader.load("a", 4096)
      expect(bigger.context_limit).toBe(4096)
    }))

  it.scopedLive("a crash marks the models recovering; the restart reloads them", () =>
    Effect.gen(function*() {
      const { crash, jobs, loader, restart } = yield* setup({ ramMb: ram(100) })
      const e = yield* loader.resident("a")
      yield* crash
      yield* Effect.sleep("20 millis")
      expect(e.status).toBe("recovering")
      expect(e.error).toMatch(/crashed: signal SIGKILL/)
      yield* restart
      yield* Effect.sleep("20 millis")
      expect(e.status).toBe("loaded")
      expect(loads(jobs)).toHaveLength(2)
    }))
})

describe("Seats", () => {
  const caller = { principal: "p" }

  it.scopedLive("admits, queues, refuses a full queue, and starts the queued one when a seat frees", () =>
    Effect.gen(function*() {
      const { loader, seats } = yield* setup({ ramMb: ram(100) })
      const e = yield* loader.resident("a")
      const firstScope = yield* Scope.make()
      const first = yield* seats.take(e, caller, 1, Date.now()).pipe(Scope.extend(firstScope))
      expect(first.model).toBe("a")
      const queued = yield* Effect.fork(Effect.scoped(seats.take(e, { principal: "q" }, 1, Date.now())))
      yield* Effect.sleep("10 millis")
      expect(seats.totals()).toEqual({ inFlight: 1, queued: 1 })
      const full = yield* Effect.flip(Effect.scoped(seats.take(e, { principal: "r" }, 1, Date.now())))
      expect(full._tag === "Overloaded" && full.reason).toBe("queue_full")
      yield* Scope.close(firstScope, Exit.void)
      const second = yield* Fiber.join(queued)
      expect(second.model).toBe("a")
      expect(seats.totals()).toEqual({ inFlight: 0, queued: 0 })
    }))

  it.scopedLive("a crash answers the queued request at once as recovering, and a new one too", () =>
    Effect.gen(function*() {
      const { crash, loader, seats } = yield* setup({ ramMb: ram(100) })
      const e = yield* loader.resident("a")
      yield* seats.take(e, caller, 1, Date.now())
      const queued = yield* Effect.fork(Effect.scoped(seats.take(e, { principal: "q" }, 1, Date.now())))
      yield* Effect.sleep("10 millis")
      yield* crash
      const error = yield* Effect.flip(Fiber.join(queued))
      expect(error._tag === "ModelUnavailable" && error.state).toBe("recovering")
      const fresh = yield* Effect.flip(Effect.scoped(seats.take(e, { principal: "r" }, 1, Date.now())))
      expect(fresh._tag === "ModelUnavailable" && fresh.state).toBe("recovering")
    }))

  it.scopedLive("drain refuses new requests and returns when the running one gives its seat back", () =>
    Effect.gen(function*() {
      const { loader, seats } = yield* setup({ ramMb: ram(100) })
      const e = yield* loader.resident("a")
      const running = yield* Scope.make()
      yield* seats.take(e, caller, 1, Date.now()).pipe(Scope.extend(running))
      const drain = yield* Effect.fork(seats.drain)
      yield* Effect.sleep("20 millis")
      expect(drain.unsafePoll()).toBeNull()
      const refused = yield* Effect.flip(loader.resident("a"))
      expect(refused._tag).toBe("ShuttingDown")
      yield* Scope.close(running, Exit.void)
      yield* Fiber.join(drain).pipe(Effect.timeout("1 second"))
      expect(seats.isDraining()).toBe(true)
    }))
})
