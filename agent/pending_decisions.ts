/**
 * The manager decisions an agent waits for, each with its own timeout, under one timer.
 *
 * With `decide: manager` every new connection waits for a decision, so this runs thousands of times a
 * second. A timer, a `Map` entry and a closure per decision are replaced by an array in request order
 * (ids only grow) searched by id, and one timer set for the earliest deadline still pending.
 *
 * That timer is not cleared when the last decision is answered: decisions come in bursts, answered
 * together, and clearing it at the end of each burst set a new one at the start of the next (about 3% of
 * the agent's thread). Left, it fires by the last burst's deadline at most, finds nothing, and is not set
 * again until a decision waits.
 */

interface Entry<T> {
  readonly id: number;
  readonly deadline: number;
  readonly resolve: (value: T | null) => void;
  settled: boolean;
}

export class PendingDecisions<T> {
  /** Entries in id order; those before `#head` are settled and dropped. */
  #entries: Entry<T>[] = [];
  #head = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timerAt = Infinity;
  #lastId = -Infinity;

  /** The id of the oldest decision still waited for; with none, the next id. */
  get oldest(): number {
    for (let i = this.#head; i < this.#entries.length; i++) {
      const entry = this.#entries[i] as Entry<T>;
      if (!entry.settled) return entry.id;
    }
    return this.#lastId === -Infinity ? 0 : this.#lastId + 1;
  }

  /** Decisions still waited for. */
  get size(): number {
    let count = 0;
    for (let i = this.#head; i < this.#entries.length; i++) {
      if (!(this.#entries[i] as Entry<T>).settled) count++;
    }
    return count;
  }

  /**
   * Waits for decision `id` (ids must grow from call to call); resolves with what `settle` gives, or
   * null after `timeoutMs`, or at `settleAll`.
   */
  wait(id: number, timeoutMs: number): Promise<T | null> {
    if (id <= this.#lastId) throw new RangeError(`Decision id ${id} does not follow ${this.#lastId}`);
    this.#lastId = id;
    const { promise, resolve } = Promise.withResolvers<T | null>();
    const deadline = performance.now() + timeoutMs;
    this.#entries.push({ id, deadline, resolve, settled: false });
    if (deadline < this.#timerAt) this.#arm(deadline);
    return promise;
  }

  /** Gives decision `id` its answer; false when it is not waited for (answered, timed out or unknown). */
  settle(id: number, value: T): boolean {
    const entry = this.#find(id);
    if (entry === null || entry.settled) return false;
    entry.settled = true;
    entry.resolve(value);
    this.#dropSettled();
    return true;
  }

  /** Resolves every waiting decision with null (the link went down) and clears the timer. */
  settleAll(): void {
    for (let i = this.#head; i < this.#entries.length; i++) {
      const entry = this.#entries[i] as Entry<T>;
      if (!entry.settled) {
        entry.settled = true;
        entry.resolve(null);
      }
    }
    this.#entries = [];
    this.#head = 0;
    this.#disarm();
  }

  #find(id: number): Entry<T> | null {
    let low = this.#head;
    let high = this.#entries.length - 1;
    while (low <= high) {
      const middle = (low + high) >>> 1;
      const entry = this.#entries[middle] as Entry<T>;
      if (entry.id === id) return entry;
      if (entry.id < id) low = middle + 1;
      else high = middle - 1;
    }
    return null;
  }

  /** Drops the settled entries at the head, and compacts the array once most of it is dropped. */
  #dropSettled(): void {
    const entries = this.#entries;
    while (this.#head < entries.length && (entries[this.#head] as Entry<T>).settled) this.#head++;
    if (this.#head === entries.length) {
      this.#entries = [];
      this.#head = 0;
    } else if (this.#head > 1024 && this.#head * 2 > entries.length) {
      this.#entries = entries.slice(this.#head);
      this.#head = 0;
    }
  }

  #expire(): void {
    this.#timer = undefined;
    this.#timerAt = Infinity;
    const now = performance.now();
    let next = Infinity;
    for (let i = this.#head; i < this.#entries.length; i++) {
      const entry = this.#entries[i] as Entry<T>;
      if (entry.settled) continue;
      if (entry.deadline <= now) {
        entry.settled = true;
        entry.resolve(null);
      } else if (entry.deadline < next) {
        next = entry.deadline;
      }
    }
    this.#dropSettled();
    if (next !== Infinity) this.#arm(next);
  }

  #arm(at: number): void {
    this.#disarm();
    this.#timerAt = at;
    this.#timer = setTimeout(() => this.#expire(), Math.max(0, at - performance.now()));
  }

  #disarm(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#timerAt = Infinity;
  }
}
