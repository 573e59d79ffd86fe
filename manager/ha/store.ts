/**
 * The managers' state in etcd: loading all of it, and the leader's writes.
 *
 * Writes are batched: a change marks its key, and at most one transaction starts per `batchMs` with every
 * key marked since, each with its value as of that moment (so a backend reported on 100 times in one batch
 * is written once, with its latest record). Each transaction holds only while the writer's leader key is
 * still the one it created (`fence`): a manager that lost the lead cannot write. A caller waits until its
 * keys are stored, so that an answer of the API means the change survives a failover; a write etcd did not
 * take is tried again, and its callers wait on, until it is stored or this manager stops leading.
 */
import { logger } from "../../cluster/log.ts";
import { applyKey, type Clock, emptyState, type Keys, type StoredState } from "./codec.ts";
import type { Compare, EtcdClient } from "./etcd.ts";

const log = logger("manager", "ha");

export const STORE_DEFAULTS = {
  /** At most one write transaction starts per this long; what changes meanwhile goes in the next. */
  batchMs: 50,
  /** Operations per transaction: etcd's default `--max-txn-ops`. */
  maxOpsPerTxn: 128,
  /** How long one transaction may take. */
  timeoutMs: 1_000,
} as const;

/** A write refused because this manager does not lead (any more). */
export class NotLeaderError extends Error {
  override readonly name = "NotLeaderError";
}

/** Everything under the prefix, and the revision it was read at. */
export async function loadState(
  client: EtcdClient,
  options: { keys: Keys; clock: () => Clock },
): Promise<{ state: StoredState; revision: number; stale: string[] }> {
  const { keys } = options;
  const { kvs, revision } = await client.range(keys.all, { prefix: true });
  const state = emptyState();
  const now = options.clock();
  const stale: string[] = [];
  for (const kv of kvs) {
    const kind = applyKey(state, kv, { keys, clock: now });
    // An expired or unreadable record is left out: the leader deletes it.
    const what = keys.parse(kv.key);
    if (what?.kind === "feedback" && state.feedback.get(what.service)?.get(what.backend) === undefined) {
      stale.push(kv.key);
    } else if (kind === null && what !== null) {
      log.warn("Left out {key} from etcd: its value does not parse", { key: kv.key });
    }
  }
  return { state, revision, stale };
}

export interface StateWriterOptions {
  readonly client: EtcdClient;
  /** The condition of every write; null when this manager does not lead. */
  readonly fence: () => Compare[] | null;
  /** The value of a key now; null deletes it. */
  readonly value: (key: string) => string | null;
  /** etcd refused a write because the leader key changed. */
  readonly onFenceLost: () => void;
  readonly batchMs?: number;
}

export class StateWriter {
  readonly #options: StateWriterOptions;
  readonly #batchMs: number;
  #dirty = new Set<string>();
  #waiters: Array<PromiseWithResolvers<void>> = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  #writing: Promise<void> | null = null;
  #lastStart = -Infinity;
  #closed = false;
  /** Transactions that etcd took, and keys written by them. */
  transactions = 0;
  keysWritten = 0;
  /** Transactions that failed (etcd did not answer, or refused). */
  failures = 0;

  constructor(options: StateWriterOptions) {
    this.#options = options;
    this.#batchMs = options.batchMs ?? STORE_DEFAULTS.batchMs;
  }

  /** Marks keys to write; resolves once they are stored, rejects with `NotLeaderError` if they cannot be. */
  write(keys: Iterable<string>): Promise<void> {
    if (this.#closed) return Promise.reject(new NotLeaderError("This manager is stopping"));
    if (this.#options.fence() === null) {
      return Promise.reject(new NotLeaderError("This manager does not lead"));
    }
    for (const key of keys) this.#dirty.add(key);
    const done = Promise.withResolvers<void>();
    this.#waiters.push(done);
    this.#schedule();
    return done.promise;
  }

  /** Drops what is not written yet, rejecting its callers: this manager stopped leading. */
  abandon(reason: string): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#dirty.clear();
    for (const waiter of this.#waiters.splice(0)) waiter.reject(new NotLeaderError(reason));
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.abandon("This manager is stopping");
    await this.#writing;
  }

  #schedule(): void {
    if (this.#writing !== null || this.#timer !== undefined || this.#dirty.size === 0) return;
    const delay = Math.max(0, this.#lastStart + this.#batchMs - performance.now());
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#writing = this.#flush().finally(() => {
        this.#writing = null;
        this.#schedule();
      });
    }, delay);
  }

  async #flush(): Promise<void> {
    const keys = [...this.#dirty];
    const waiters = this.#waiters;
    this.#dirty = new Set();
    this.#waiters = [];
    this.#lastStart = performance.now();
    try {
      for (let i = 0; i < keys.length; i += STORE_DEFAULTS.maxOpsPerTxn) {
        const fence = this.#options.fence();
        if (fence === null) throw new NotLeaderError("This manager no longer leads");
        const operations = keys.slice(i, i + STORE_DEFAULTS.maxOpsPerTxn).map((key) => {
          const value = this.#options.value(key);
          return value === null ? { delete: key } : { put: key, value };
        });
        const result = await this.#options.client.txn(fence, operations, {
          timeoutMs: STORE_DEFAULTS.timeoutMs,
        });
        if (!result.succeeded) {
          this.#options.onFenceLost();
          throw new NotLeaderError("This manager no longer holds the leader key");
        }
        this.transactions++;
        this.keysWritten += operations.length;
      }
      for (const waiter of waiters) waiter.resolve();
    } catch (error) {
      this.failures++;
      if (error instanceof NotLeaderError || this.#closed || this.#options.fence() === null) {
        const reason = error instanceof NotLeaderError
          ? error
          : new NotLeaderError("This manager stopped leading");
        for (const waiter of waiters) waiter.reject(reason);
        return;
      }
      // etcd did not take it: try again, its callers still waiting, until it does or the lead is lost.
      log.warn("Cannot store {count} keys in etcd; trying again: {error}", {
        count: keys.length,
        error: error instanceof Error ? error.message : String(error),
      });
      for (const key of keys) this.#dirty.add(key);
      this.#waiters.unshift(...waiters);
    }
  }
}
