/**
 * neuron.toml's vision settings: `[vision]` (image limits and the memory guard) and the
 * per-model `[models."<id>"] mmproj = "…"` (a projector that is not beside the model's GGUF).
 */
import { Schema } from "effect"
import * as path from "node:path"
import type { ImageLimits } from "../domain/images.js"

const opt = <S extends Schema.Schema.Any>(s: S) => Schema.optionalWith(s, { exact: true })

export const VisionTable = Schema.Struct({
  /** Largest decoded image, bytes (default 20 MiB). */
  max_image_bytes: opt(Schema.Int.pipe(Schema.positive())),
  /** Largest width × height (default 50 megapixels: a 4k×4k photo passes and is resized by the encoder). */
  max_image_pixels: opt(Schema.Int.pipe(Schema.positive())),
  /** Most images in one request (default 8). */
  max_images: opt(Schema.Int.pipe(Schema.between(1, 256))),
  /** Memory guard: what encoding one image needs, MB, on top of the prompt's KV (default 128). */
  encoder_mb: opt(Schema.Number.pipe(Schema.nonNegative()))
}).annotations({ parseOptions: { onExcessProperty: "error" } })

export const ModelSettingsTable = Schema.Record({
  key: Schema.String,
  value: Schema.Struct({
    /** The multimodal projector GGUF for this model (relative to models_dir, or absolute). */
    mmproj: opt(Schema.String.pipe(Schema.minLength(1)))
  }).annotations({ parseOptions: { onExcessProperty: "error" } })
})

export interface VisionSettings {
  readonly limits: ImageLimits
  readonly encoderMb: number
  /** Model id → projector path (absolute). */
  readonly projectors: Readonly<Record<string, string>>
}

export const resolveVision = (
  vision: typeof VisionTable.Type | undefined,
  models: typeof ModelSettingsTable.Type | undefined,
  modelsDir: string
): VisionSettings => ({
  limits: {
    maxBytes: vision?.max_image_bytes ?? 20 * 1024 * 1024,
    maxPixels: vision?.max_image_pixels ?? 50_000_000,
    maxImages: vision?.max_images ?? 8,
    // What the vision engine's decoder (stb_image) reads.
    formats: ["png", "jpeg", "gif"]
  },
  encoderMb: vision?.encoder_mb ?? 128,
  projectors: Object.fromEntries(
    Object.entries(models ?? {}).flatMap(([id, m]) =>
      m.mmproj !== undefined ? [[id, path.resolve(modelsDir, m.mmproj)] as const] : []
    )
  )
})
