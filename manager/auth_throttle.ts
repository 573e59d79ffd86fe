/**
 * Failed authentications per source address: each source may fail a few times a minute at full speed;
 * beyond that every further failure is answered late (up to a second), so guessing tokens is slow, and
 * failures are logged once per source per window with their count instead of once each. The answer stays
 * 401: a throttled client cannot tell a slow refusal from a fast one, and nothing else changes.
 */

export const AUTH_THROTTLE_DEFAULTS = {
  windowMs: 60_000,
  /** Failures per source and window answered without delay. */
  freeFailures: 20,
  /** Each failure past the free ones adds this much delay… */
  delayStepMs: 50,
  /** …up to this. */
  maxDelayMs: 1_000,
  /** Sources remembered at most; the oldest are forgotten first. */
  maxSources: 10_000,
} as const;

export type AuthThrottleOptions = { readonly [K in keyof typeof AUTH_THROTTLE_DEFAULTS]: number };

export interface FailureVerdict {
  /** How long to wait before answering. */
  readonly delayMs: number;
  /** Whether this failure should be logged (the first of its source's window). */
  readonly log: boolean;
  /** Failures of this source in the current window, this one included. */
  readonly count: number;
}

export class AuthThrottle {
  readonly #sources = new Map<string, { windowStart: number; count: number }>();
  readonly #options: AuthThrottleOptions;

  constructor(options: Partial<AuthThrottleOptions> = {}) {
    this.#options = { ...AUTH_THROTTLE_DEFAULTS, ...options };
  }

  /** Records one failed authentication from `source` and says how to answer it. */
  fail(source: string, now = performance.now()): FailureVerdict {
    const { windowMs, freeFailures, delayStepMs, maxDelayMs, maxSources } = this.#options;
    let entry = this.#sources.get(source);
    if (!entry || now - entry.windowStart >= windowMs) {
      this.#sources.delete(source);
      if (this.#sources.size >= maxSources) {
        const oldest = this.#sources.keys().next();
        if (!oldest.done) this.#sources.delete(oldest.value);
      }
      entry = { windowStart: now, count: 0 };
      this.#sources.set(source, entry);
    }
    entry.count++;
    const over = entry.count - freeFailures;
    return {
      delayMs: over > 0 ? Math.min(maxDelayMs, over * delayStepMs) : 0,
      log: entry.count === 1 || entry.count === freeFailures + 1,
      count: entry.count,
    };
  }

  get size(): number {
    return this.#sources.size;
  }
}
