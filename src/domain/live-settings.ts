/**
 * A settings object that reads through to the settings in force now: what the gateway
 * (src/gateway/LiveConfig.ts) and the neuron (src/neuron/NeuronReload.ts) hand their services,
 * so a config reload reaches every reader without rebuilding a service, for one getter call per
 * read. Keys in `fixed` keep their startup value: those are read once at start (bound sockets,
 * thread pools, parsed policies), and showing a new value the process does not use would lie.
 */
export const liveView = <S extends object>(
  startup: S,
  current: () => S,
  fixed: ReadonlySet<string>,
  extraKeys: ReadonlyArray<string> = []
): S => {
  const view = {}
  for (const key of new Set([...Object.keys(startup), ...extraKeys])) {
    Object.defineProperty(view, key, {
      enumerable: true,
      get: fixed.has(key) ? () => startup[key as keyof S] : () => current()[key as keyof S]
    })
  }
  return view as S
}

/** Equal as JSON (settings are plain data; a Redacted prints the same whatever its secret). */
export const sameSettings = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b)
