/**
 * Connecting to a backend, bounded by the service's connect timeout.
 *
 * An `AbortController` and a timer for every connect cost about a tenth of the agent's new connections
 * per second, so connects share them: the connects that start within one short slot join one group,
 * whose signal is aborted once the last of them has had its full timeout. A connect is therefore given
 * up between `timeoutMs` and `timeoutMs` plus one slot (at most `CONNECT_DEFAULTS.maxSlotMs`), never
 * before its timeout.
 */

export const CONNECT_DEFAULTS = {
  /** The longest slot: how late past its timeout a connect may be given up. */
  maxSlotMs: 50,
  /** A slot is this fraction of the timeout when that is shorter, so short timeouts stay precise. */
  slotFraction: 1 / 10,
} as const;

/** Connects that started within one slot and share one deadline. */
interface DeadlineGroup {
  readonly timeoutMs: number;
  readonly controller: AbortController;
  /** New connects join this group until then. */
  readonly joinUntil: number;
  /** Connects of this group still under way. */
  pending: number;
  timer: ReturnType<typeof setTimeout> | undefined;
}

/** Opens backend connections with shared connect deadlines; `close` clears every timer it holds. */
export class Connector {
  /** The group new connects join, by timeout. */
  readonly #open = new Map<number, DeadlineGroup>();
  /** Every group whose timer is still set. */
  readonly #armed = new Set<DeadlineGroup>();
  #closed = false;

  /** Connects to `backend`; rejects with `Deno.errors.TimedOut` when it takes longer than `timeoutMs`. */
  async connect(
    backend: { readonly host: string; readonly port: number },
    timeoutMs: number,
  ): Promise<Deno.TcpConn> {
    if (this.#closed) throw new Deno.errors.Interrupted("The connector is closed");
    const group = this.#join(timeoutMs);
    group.pending++;
    try {
      return await Deno.connect({
        hostname: backend.host,
        port: backend.port,
        signal: group.controller.signal,
      });
    } catch (error) {
      if (this.#closed) throw new Deno.errors.Interrupted("The connector was closed");
      if (group.controller.signal.aborted) {
        throw new Deno.errors.TimedOut(connectTimeoutText(backend, timeoutMs));
      }
      throw error;
    } finally {
      group.pending--;
      // Nobody waits on a group that takes no more connects: its timer has nothing left to bound.
      if (group.pending === 0 && performance.now() >= group.joinUntil) this.#disarm(group);
    }
  }

  /** Clears every timer; connects still under way are aborted (they fail as interrupted). */
  close(): void {
    this.#closed = true;
    for (const group of this.#armed) {
      this.#disarm(group);
      group.controller.abort();
    }
  }

  #join(timeoutMs: number): DeadlineGroup {
    const now = performance.now();
    const current = this.#open.get(timeoutMs);
    if (current !== undefined && now < current.joinUntil) return current;
    if (current !== undefined && current.pending === 0) this.#disarm(current);
    const slotMs = Math.max(
      1,
      Math.min(CONNECT_DEFAULTS.maxSlotMs, timeoutMs * CONNECT_DEFAULTS.slotFraction),
    );
    const group: DeadlineGroup = {
      timeoutMs,
      controller: new AbortController(),
      joinUntil: now + slotMs,
      pending: 0,
      timer: undefined,
    };
    // The last member joins just before joinUntil: it too gets its full timeout.
    group.timer = setTimeout(() => {
      group.timer = undefined;
      this.#disarm(group);
      group.controller.abort();
    }, Math.ceil(timeoutMs + slotMs));
    this.#armed.add(group);
    this.#open.set(timeoutMs, group);
    return group;
  }

  #disarm(group: DeadlineGroup): void {
    if (group.timer !== undefined) clearTimeout(group.timer);
    group.timer = undefined;
    this.#armed.delete(group);
    if (this.#open.get(group.timeoutMs) === group) this.#open.delete(group.timeoutMs);
  }
}

/** What a connect given up after its timeout says, on either data path. */
export function connectTimeoutText(backend: { host: string; port: number }, timeoutMs: number): string {
  return `Cannot connect to ${backend.host}:${backend.port} within ${timeoutMs} ms`;
}
