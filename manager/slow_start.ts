/**
 * Slow start: a backend that comes up (its health rises, it is undrained, a reload adds it) takes a growing
 * share of its weight over its service's `slow_start`, so that a cold cache or JIT is not handed a full
 * share of new connections at once (HAProxy's `slowstart`, Envoy's slow start mode). Pure: the model
 * (`state.ts`) keeps when each ramp began and steps it with a timer.
 *
 * The share is a step function of the time since the backend came up: it rises linearly in steps of
 * `rampStepMs`, from `minShare` to 1, which it reaches once the whole window has passed. Steps, not a
 * continuous curve, so that a ramp costs its service at most `steps` table rebuilds, each one in the agents'
 * tables before the next.
 */

export const SLOW_START_DEFAULTS = {
  /** A ramp moves in at most this many steps: each changes the backend's weight and so its service's table. */
  steps: 100,
  /** A step lasts at least this long: the table window (`TABLE_DEFAULTS.windowMs`), one rebuild per step. */
  minStepMs: 100,
  /**
   * The least share of its weight a ramping backend has: a trickle, so that a service whose backends all
   * come up together still serves, and a ramping backend is never out of the tables.
   */
  minShare: 0.01,
} as const;

export type SlowStartSettings = { readonly [Key in keyof typeof SLOW_START_DEFAULTS]: number };

/** How long each step of a ramp over `windowMs` lasts. */
export function rampStepMs(windowMs: number, settings: SlowStartSettings = SLOW_START_DEFAULTS): number {
  return Math.max(settings.minStepMs, windowMs / settings.steps);
}

/**
 * The share of its weight a backend has `elapsedMs` after it came up, with a ramp over `windowMs`: 1 once the
 * window has passed (or when there is none), else `minShare` or more, rising by whole steps.
 */
export function rampShare(
  elapsedMs: number,
  windowMs: number,
  settings: SlowStartSettings = SLOW_START_DEFAULTS,
): number {
  if (!(windowMs > 0) || elapsedMs >= windowMs) return 1;
  if (!(elapsedMs > 0)) return settings.minShare;
  const step = rampStepMs(windowMs, settings);
  return Math.max(settings.minShare, (Math.floor(elapsedMs / step) * step) / windowMs);
}

/**
 * When, counted from the moment the backend came up, its share next changes: the start of its next step, or
 * null once the ramp is over (or there is none).
 */
export function nextRampStep(
  elapsedMs: number,
  windowMs: number,
  settings: SlowStartSettings = SLOW_START_DEFAULTS,
): number | null {
  if (!(windowMs > 0) || elapsedMs >= windowMs) return null;
  const step = rampStepMs(windowMs, settings);
  const done = elapsedMs > 0 ? Math.floor(elapsedMs / step) + 1 : 1;
  return Math.min(windowMs, done * step);
}

/**
 * `weight` at `share` of it, to 0.01 as every effective weight is: never above `weight`, and never 0 while
 * `weight` is not, so that a ramping backend keeps its place in the tables.
 */
export function rampedWeight(weight: number, share: number): number {
  if (share >= 1 || !(weight > 0)) return weight;
  const ramped = Math.round(weight * share * 100) / 100;
  return Math.min(weight, Math.max(0.01, ramped));
}

/** A backend's slow start under way: when it began (the model's clock, ms), and the share of its weight in force. */
export interface SlowStart {
  readonly at: number;
  readonly share: number;
}

/** A slow start under way, as `/v1/services`, `/metrics` and the dashboard show it. */
export interface RampView {
  /** The share of its window that has passed, 0..1. */
  readonly progress: number;
  /** The share of its weight the backend has in force. */
  readonly share: number;
  readonly endsInMs: number;
}

/** `slowStart` (null: none under way) of a service whose `slow_start` is `windowMs`, seen at `now`. */
export function rampView(slowStart: SlowStart | null, windowMs: number, now: number): RampView | null {
  if (slowStart === null || !(windowMs > 0)) return null;
  const elapsed = Math.min(windowMs, Math.max(0, now - slowStart.at));
  return { progress: elapsed / windowMs, share: slowStart.share, endsInMs: windowMs - elapsed };
}
