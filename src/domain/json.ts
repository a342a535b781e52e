import { Schema } from "effect"

/**
 * Limits on request bodies, checked before anything recursive touches them. JSON.parse itself
 * copes with deep nesting, but every recursive walk after it (Schema decoding and its error
 * formatter, translators, JSON-schema grammars, JSON.stringify) overflows the stack on a
 * 10,000-deep body, which used to surface as a 500 with a stack trace. Real requests nest a
 * few levels (a tool's parameter schema a dozen at most), so the bound costs no client anything.
 */

/** Deepest nesting of arrays and objects accepted in a request body. */
export const MAX_JSON_DEPTH = 64

/** Longest model name accepted (names come from files and profiles; a client's is only looked up). */
export const MAX_MODEL_NAME = 256

/** Longest error message sent back; a message quoting a client's huge value is cut to this. */
export const MAX_ERROR_MESSAGE = 400

/**
 * The first position where `text` (JSON) nests deeper than `max`, or -1. One pass over the
 * characters, skipping strings (brackets inside strings do not count).
 */
export const tooDeepAt = (text: string, max = MAX_JSON_DEPTH): number => {
  let depth = 0
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 0x5c) i++ // backslash: skip the escaped character
      else if (c === 0x22) inString = false
    } else if (c === 0x22) {
      inString = true
    } else if (c === 0x7b || c === 0x5b) {
      if (++depth > max) return i
    } else if (c === 0x7d || c === 0x5d) {
      depth--
    }
  }
  return -1
}

/** `message` cut to `max` characters, saying so. */
export const clip = (message: string, max = MAX_ERROR_MESSAGE): string =>
  message.length <= max ? message : `${message.slice(0, max)}… (${message.length - max} more characters)`

/** Tool names every engine template can carry (no white space: node-llama-cpp refuses it). */
export const TOOL_NAME = /^[A-Za-z0-9_.:-]{1,128}$/

const isObject = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)

/** Keys whose value is one subschema, a list of them, or a map of them (JSON Schema 2020-12). */
const ONE = ["additionalProperties", "not", "contains", "if", "then", "else", "unevaluatedProperties", "propertyNames"]
const MANY = ["oneOf", "anyOf", "allOf", "prefixItems"]
const MAP = ["properties", "$defs", "definitions", "patternProperties"]

/**
 * Where a JSON schema (a tool's parameters, a response format) is malformed, as the path and a
 * message; undefined when its shape is sound. Only the structure is checked: every subschema
 * is an object or a boolean, lists are lists, maps are maps. That is what the grammar builder
 * walks; a `null` subschema used to crash it with a 500.
 */
export const schemaProblem = (
  schema: unknown,
  path: ReadonlyArray<string | number> = []
): { readonly path: ReadonlyArray<string | number>; readonly message: string } | undefined => {
  if (typeof schema === "boolean") return undefined
  if (!isObject(schema)) return { path, message: "a JSON schema must be an object or a boolean" }
  for (const key of ONE) {
    if (key in schema) {
      const problem = schemaProblem(schema[key], [...path, key])
      if (problem) return problem
    }
  }
  if ("items" in schema) {
    const items = schema.items
    const problem = Array.isArray(items)
      ? items.map((s, i) => schemaProblem(s, [...path, "items", i])).find((p) => p !== undefined)
      : schemaProblem(items, [...path, "items"])
    if (problem) return problem
  }
  for (const key of MANY) {
    if (!(key in schema)) continue
    const list = schema[key]
    if (!Array.isArray(list)) return { path: [...path, key], message: "must be an array of schemas" }
    for (let i = 0; i < list.length; i++) {
      const problem = schemaProblem(list[i], [...path, key, i])
      if (problem) return problem
    }
  }
  for (const key of MAP) {
    if (!(key in schema)) continue
    const map = schema[key]
    if (!isObject(map)) return { path: [...path, key], message: "must be an object of schemas" }
    for (const [name, sub] of Object.entries(map)) {
      const problem = schemaProblem(sub, [...path, key, name])
      if (problem) return problem
    }
  }
  if ("enum" in schema && !Array.isArray(schema.enum)) return { path: [...path, "enum"], message: "must be an array" }
  if (
    "required" in schema && !(Array.isArray(schema.required) && schema.required.every((r) => typeof r === "string"))
  ) {
    return { path: [...path, "required"], message: "must be an array of property names" }
  }
  if ("$ref" in schema && typeof schema.$ref !== "string") {
    return { path: [...path, "$ref"], message: "must be a string" }
  }
  const type = schema.type
  if (
    type !== undefined && typeof type !== "string" && !(Array.isArray(type) && type.every((t) => typeof t === "string"))
  ) {
    return { path: [...path, "type"], message: "must be a type name or an array of them" }
  }
  return undefined
}

/** A model name as requests carry it. */
export const ModelName = Schema.String.pipe(Schema.minLength(1), Schema.maxLength(MAX_MODEL_NAME))

/** A tool's name, as every dialect declares it. */
export const ToolName = Schema.String.pipe(
  Schema.pattern(TOOL_NAME, {
    message: () => "a tool name is 1 to 128 letters, digits, '_', '.', ':' or '-' (no spaces)"
  })
)

/** A JSON schema object whose structure the grammar builder can walk. */
export const JsonSchema = Schema.Record({ key: Schema.String, value: Schema.Unknown }).pipe(
  Schema.filter((schema) => {
    const problem = schemaProblem(schema)
    return problem === undefined ? true : { path: problem.path, message: problem.message }
  })
)
