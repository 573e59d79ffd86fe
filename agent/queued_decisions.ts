/**
 * The manager's decisions made ahead for one service, as a data plane holds them (`DataPlane.setDecisions`):
 * the backends of this agent's next new connections, taken one per flow with no round trip, and how many
 * of the queue were taken, which the agent reports back. A new queue replaces the one before (what was
 * left of it the manager took back); past its ttl the queue is no longer taken from. Pure: the time is
 * passed in.
 */

/** A queue as the agent passes it to a data plane. */
export interface Decisions {
  /** The manager's number for this queue: usage is reported against it. */
  readonly seq: number;
  /** Backend indexes, in the order of the service's placement as last set. */
  readonly backends: Uint16Array;
  readonly ttlMs: number;
}

export class QueuedDecisions {
  #seq = 0;
  #backends: Uint16Array = new Uint16Array(0);
  #taken = 0;
  #expiresAt = 0;
  /** Whether `taken` moved since `reported` was last called. */
  #moved = false;

  /** Replaces the queue. */
  set(decisions: Decisions, now: number): void {
    this.#seq = decisions.seq;
    this.#backends = decisions.backends;
    this.#taken = 0;
    this.#expiresAt = now + decisions.ttlMs;
    this.#moved = false;
  }

  /** The next decision (a backend index), or -1 when none is left or the queue expired. */
  take(now: number): number {
    if (this.#taken >= this.#backends.length || now >= this.#expiresAt) return -1;
    this.#moved = true;
    return this.#backends[this.#taken++]!;
  }

  get seq(): number {
    return this.#seq;
  }

  /** Decisions taken from the queue in force. */
  get taken(): number {
    return this.#taken;
  }

  /** Decisions left. */
  get left(): number {
    return this.#backends.length - this.#taken;
  }

  /** Whether decisions were taken since the last call: a report is due. */
  reported(): boolean {
    const moved = this.#moved;
    this.#moved = false;
    return moved;
  }
}
