/**
 * Histogram buckets shared by the gateway's and the neuron's metrics, so a dashboard can put
 * their series side by side. Explicit buckets on every histogram (lesson 4: without them an
 * exporter made summaries and dashboards went blank).
 */
import { MetricBoundaries } from "effect"

/** Request durations and TTFT. */
export const seconds = MetricBoundaries.fromIterable([
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
  120,
  300
])
/** Model loads and unloads. */
export const loadSeconds = MetricBoundaries.fromIterable([0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600])
/** Decode speed. */
export const tokensPerSecond = MetricBoundaries.fromIterable([
  1,
  5,
  10,
  20,
  40,
  60,
  80,
  100,
  150,
  200,
  300,
  500,
  1000,
  2500
])
/** Prefill speed (an order of magnitude above decode). */
export const prefillTokensPerSecond = MetricBoundaries.fromIterable([
  10,
  25,
  50,
  100,
  250,
  500,
  1000,
  2000,
  4000,
  8000,
  16000,
  32000
])
