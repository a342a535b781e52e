/** `cortex make-model --shape vision`: a tiny language model and its matching projector. */
import { Console, Effect } from "effect"
import { imageTokens, TINY_PROJECTOR, writeVisionModel } from "../gguf/ProjectorGenerator.js"

export const makeVisionModel = (out: string, seed: number) =>
  Effect.gen(function*() {
    const started = Date.now()
    const result = yield* Effect.promise(() => writeVisionModel(out, seed))
    yield* Console.log(
      `wrote ${out}: tiny language model, seed ${seed}, ${(result.model.bytes / 1e6).toFixed(1)} MB, ` +
        `sha256 ${result.model.sha256}\n` +
        `wrote ${result.projector}: clip/mlp projector, ${TINY_PROJECTOR.imageSize}x${TINY_PROJECTOR.imageSize} ` +
        `images, ${imageTokens(TINY_PROJECTOR)} tokens per image, ${(result.mmproj.bytes / 1e6).toFixed(2)} MB, ` +
        `sha256 ${result.mmproj.sha256} (${Date.now() - started} ms)`
    )
  })
