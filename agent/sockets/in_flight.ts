/**
 * Counts tasks under way (connections being set up) and lets `close` wait until none is. A `Set` of
 * their promises did the same with a `finally` closure, a derived promise and a set entry per task,
 * churned at every new connection (see slot_list.ts for what such churn costs).
 */
export class InFlight {
  #count = 0;
  #idle: PromiseWithResolvers<void> | null = null;
  readonly #onError: (error: unknown) => void;
  readonly #settled = (): void => {
    if (--this.#count === 0 && this.#idle !== null) {
      this.#idle.resolve();
      this.#idle = null;
    }
  };
  readonly #rejected = (error: unknown): void => {
    this.#settled();
    this.#onError(error);
  };

  /** `onError` gets the error of any task that rejects (a task is not expected to). */
  constructor(onError: (error: unknown) => void) {
    this.#onError = onError;
  }

  get size(): number {
    return this.#count;
  }

  /** Counts `task` until it settles. */
  track(task: Promise<unknown>): void {
    this.#count++;
    task.then(this.#settled, this.#rejected);
  }

  /** Resolves once no task is under way (at once when none is). */
  whenIdle(): Promise<void> {
    if (this.#count === 0) return Promise.resolve();
    this.#idle ??= Promise.withResolvers<void>();
    return this.#idle.promise;
  }
}
