/**
 * Client affinity on the agent: the backend the manager chose for a client, held for the decision's ttl,
 * so every later connection of that client goes there too, also while the manager is unreachable.
 */

export const AFFINITY_DEFAULTS = {
  /** At most this many clients are remembered; the oldest are forgotten first. */
  maxEntries: 100_000,
} as const;

export class AffinityCache {
  readonly #entries = new Map<string, { backend: string; expires: number }>();
  readonly #maxEntries: number;

  constructor(options: { maxEntries?: number } = {}) {
    this.#maxEntries = options.maxEntries ?? AFFINITY_DEFAULTS.maxEntries;
  }

  get size(): number {
    return this.#entries.size;
  }

  get(service: string, clientIp: string, now = performance.now()): string | undefined {
    const key = `${service}\u0000${clientIp}`;
    const entry = this.#entries.get(key);
    if (!entry) return undefined;
    if (entry.expires <= now) {
      this.#entries.delete(key);
      return undefined;
    }
    return entry.backend;
  }

  set(service: string, clientIp: string, backend: string, ttlMs: number, now = performance.now()): void {
    const key = `${service}\u0000${clientIp}`;
    this.#entries.delete(key);
    if (this.#entries.size >= this.#maxEntries) {
      const oldest = this.#entries.keys().next();
      if (!oldest.done) this.#entries.delete(oldest.value);
    }
    this.#entries.set(key, { backend, expires: now + ttlMs });
  }

  /** Forgets every expired entry. */
  sweep(now = performance.now()): void {
    for (const [key, entry] of this.#entries) {
      if (entry.expires <= now) this.#entries.delete(key);
    }
  }
}
