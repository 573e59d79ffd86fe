/**
 * Leader election through etcd. Each manager holds a lease of `lease` seconds, renews it a few times per
 * lease, and registers itself under `managers/ID` bound to it. A manager that sees no leader key campaigns:
 * one transaction creates the key bound to its lease if, and only if, no key is there. The key goes when the
 * leader's lease ends (it stopped renewing, or died) or the leader gives it up, and a standby that watches it
 * campaigns at once.
 *
 * Invariant: two managers never lead at once. A leader counts its lease from when it sent the last renewal
 * etcd answered (etcd restarts the lease's time to live only once it has the request, so the lease on etcd's
 * side ends later still), and stops leading `margin` before that count ends, by the clock, whatever its
 * requests are doing: `leading()` compares the time with that deadline on every call, and a timer steps it
 * down then. The key it held can go only when its lease has ended on etcd's side, after that deadline, so
 * no standby can win before this leader has stopped. A leader that sees its key gone or taken steps down at
 * once too.
 *
 * The leader is `leading()` only once `onElected` (which loads the state a leader needs) has finished.
 */
import { logger } from "../../cluster/log.ts";
import type { Compare, EtcdClient, KeyValue } from "./etcd.ts";
import { decodeManager, encodeManager, type Keys, type LeaderKey, type ManagerInfo } from "./codec.ts";

const log = logger("manager", "ha");

export const ELECTION_DEFAULTS = {
  /** Lease renewals per lease. */
  renewalsPerLease: 3,
  /** A leader stops leading this share of its lease before it could end… */
  marginShare: 1 / 8,
  /** …and at least this long before. */
  marginMinMs: 100,
} as const;

export interface ElectionOptions {
  readonly client: EtcdClient;
  readonly keys: Keys;
  /** The lease, whole seconds. */
  readonly leaseMs: number;
  /** This manager as the others see it (asked again at each registration). */
  readonly self: () => ManagerInfo;
  /**
   * This manager won: loads what a leader needs before it leads. Until it resolves this manager is not
   * `leading()`; if it throws, it is called again at the next renewal.
   */
  readonly onElected: () => Promise<void>;
  /** This manager stopped leading (before `onElected` finished, too). */
  readonly onStepDown: (reason: string) => void;
  /** The leader as this manager knows it changed (null: none known). */
  readonly onLeader: (leader: ManagerInfo | null) => void;
}

export class Election {
  readonly #options: ElectionOptions;
  readonly #marginMs: number;
  readonly #intervalMs: number;
  #lease: { id: string; deadline: number } | null = null;
  /** The info last registered under `managers/ID`, as JSON. */
  #registered: string | null = null;
  /** The creation revision of the leader key while this manager holds it. */
  #fence: number | null = null;
  /** Counts wins, so that a step-down during `onElected` is not undone when it resolves. */
  #term = 0;
  #leading = false;
  /** The leader key as last read or watched (another manager's, or none). */
  #leaderKey: LeaderKey | null = null;
  #known: ManagerInfo | null = null;
  #stepDownTimer: ReturnType<typeof setTimeout> | undefined;
  #wake: (() => void) | null = null;
  #closed = false;
  #running: Promise<void> | null = null;
  #failing = false;

  constructor(options: ElectionOptions) {
    this.#options = options;
    this.#marginMs = Math.max(ELECTION_DEFAULTS.marginMinMs, options.leaseMs * ELECTION_DEFAULTS.marginShare);
    this.#intervalMs = options.leaseMs / ELECTION_DEFAULTS.renewalsPerLease;
  }

  start(): void {
    this.#running ??= this.#run();
  }

  /** Whether this manager leads now: it won, loaded its state, and its lease holds by its own count. */
  leading(): boolean {
    return this.#leading && this.#lease !== null && performance.now() < this.#lease.deadline;
  }

  /** Whether this manager heard from etcd within its lease: otherwise it knows no leader. */
  fresh(): boolean {
    return this.#lease !== null && performance.now() < this.#lease.deadline;
  }

  /** The leader as this manager knows it: itself, another, or null when none leads or it cannot tell. */
  leader(): ManagerInfo | null {
    if (this.leading()) return this.#options.self();
    if (this.#fence !== null || !this.fresh()) return null;
    return this.#leaderKey?.info ?? null;
  }

  /** The condition of every write a leader makes: its leader key is still the one it created. */
  fence(): Compare[] | null {
    return this.leading() && this.#fence !== null
      ? [{ key: this.#options.keys.leader, createRevision: this.#fence }]
      : null;
  }

  /** The leader key as a watch saw it change: campaigns at once when it is gone, steps down if it is not ours. */
  observe(key: LeaderKey | null): void {
    if (this.#fence !== null) {
      if (key === null || key.createRevision !== this.#fence) {
        this.stepDown(key === null ? "the leader key was deleted" : "another manager holds the leader key");
      }
      return;
    }
    this.#setLeaderKey(key);
    if (key === null) this.#wake?.();
  }

  /** Registers this manager again (its config version changed). */
  refresh(): void {
    this.#registered = null;
    this.#wake?.();
  }

  /** Stops leading now, if it does; campaigns again at the next renewal. */
  stepDown(reason: string): void {
    if (this.#fence === null) return;
    const wasLeading = this.#leading;
    this.#fence = null;
    this.#leading = false;
    clearTimeout(this.#stepDownTimer);
    log.warn("Stepped down: {reason}", { reason, led: wasLeading });
    this.#options.onStepDown(reason);
    this.#setLeaderKey(null);
  }

  /** Stops renewing; a leader gives the lead up at once (its lease is revoked, which deletes its keys). */
  async close(): Promise<void> {
    this.#closed = true;
    this.#wake?.();
    await this.#running;
    const lease = this.#lease;
    this.stepDown("this manager is stopping");
    clearTimeout(this.#stepDownTimer);
    if (lease !== null) {
      await this.#options.client.revoke(lease.id, { timeoutMs: 1_000 }).catch((error) => {
        log.warn("Cannot revoke lease {lease} while stopping: {error}", { lease: lease.id, error });
      });
    }
  }

  async #run(): Promise<void> {
    while (!this.#closed) {
      const started = performance.now();
      try {
        await this.#round();
        if (this.#failing) log.info("etcd answers again");
        this.#failing = false;
      } catch (error) {
        if (!this.#failing) log.warn("Cannot reach etcd: {error}", { error: messageOf(error) });
        else log.debug("Still cannot reach etcd: {error}", { error: messageOf(error) });
        this.#failing = true;
      }
      if (this.#closed) break;
      // A new lease is asked for at once; otherwise the next renewal is one interval after this one began.
      const wait = this.#lease === null && !this.#failing
        ? 0
        : started + this.#intervalMs - performance.now();
      await this.#sleep(wait);
    }
  }

  async #round(): Promise<void> {
    const { client } = this.#options;
    const timeoutMs = Math.max(200, this.#intervalMs);
    if (this.#lease === null) {
      const sent = performance.now();
      const granted = await client.grant(this.#options.leaseMs / 1_000, { timeoutMs });
      this.#lease = { id: granted.id, deadline: sent + granted.ttlS * 1_000 - this.#marginMs };
      this.#registered = null;
      log.debug("Got lease {lease} of {ttl} s", { lease: granted.id, ttl: granted.ttlS });
    } else {
      const sent = performance.now();
      const ttlS = await client.keepAlive(this.#lease.id, { timeoutMs });
      if (this.#closed) return;
      if (ttlS <= 0) {
        log.warn("Lease {lease} has ended in etcd", { lease: this.#lease.id });
        this.#lease = null;
        this.stepDown("its lease ended in etcd");
        return;
      }
      this.#lease.deadline = Math.max(this.#lease.deadline, sent + ttlS * 1_000 - this.#marginMs);
    }
    this.#armStepDown();
    const lease = this.#lease;
    const self = this.#options.self();
    const info = encodeManager(self);
    if (this.#registered !== info) {
      await client.put(this.#options.keys.manager(self.id), info, { lease: lease.id, timeoutMs });
      this.#registered = info;
    }
    if (this.#fence !== null) {
      await this.#confirm(timeoutMs);
    } else {
      // A read first: a campaign is a write through etcd's log, made only when the lead is free (or ours).
      const { kvs } = await client.range(this.#options.keys.leader, { timeoutMs });
      const kv = kvs[0];
      if (kv === undefined || kv.lease === lease.id) await this.#campaign(lease.id, info, timeoutMs);
      else if (this.#lease?.id === lease.id && this.#fence === null) this.#learn(kv);
    }
    if (this.#fence !== null && !this.#leading) await this.#takeOver();
  }

  /** As leader: the key must still be the one this manager created. */
  async #confirm(timeoutMs: number): Promise<void> {
    const fence = this.#fence;
    const { kvs } = await this.#options.client.range(this.#options.keys.leader, { timeoutMs });
    if (this.#fence !== fence) return;
    const key = kvs[0];
    if (key === undefined) this.stepDown("the leader key was deleted");
    else if (key.createRevision !== fence) this.stepDown("another manager holds the leader key");
  }

  /** Creates the leader key if there is none; otherwise learns who holds it. */
  async #campaign(lease: string, info: string, timeoutMs: number): Promise<void> {
    const leaderKey = this.#options.keys.leader;
    const result = await this.#options.client.txn(
      [{ key: leaderKey, createRevision: 0 }],
      [{ put: leaderKey, value: info, lease }],
      { failure: [{ range: leaderKey }], timeoutMs },
    );
    if (this.#closed || this.#lease?.id !== lease) return;
    if (result.succeeded) {
      this.#won(result.revision);
      return;
    }
    const kv = result.ranges[0]?.[0];
    if (kv !== undefined && kv.lease === lease && decodeManager(kv.value)?.id === this.#options.self().id) {
      // Ours already: an earlier attempt whose answer was lost, or a lead this manager stepped down from
      // while etcd could not be reached, and which its lease kept. Nobody else can have led since.
      this.#won(kv.createRevision);
      return;
    }
    this.#learn(kv);
  }

  /** Another manager's leader key as read (or none). */
  #learn(kv: KeyValue | undefined): void {
    const holder = kv === undefined ? null : decodeManager(kv.value);
    this.#setLeaderKey(
      kv === undefined || holder === null
        ? null
        : { info: holder, createRevision: kv.createRevision, lease: kv.lease },
    );
  }

  #won(createRevision: number): void {
    this.#fence = createRevision;
    this.#term++;
    this.#leaderKey = null;
    log.info("Won the election (leader key revision {revision}); loading the cluster's state", {
      revision: createRevision,
    });
  }

  /** Loads what the leader needs, then leads, unless it stepped down meanwhile. */
  async #takeOver(): Promise<void> {
    const term = this.#term;
    await this.#options.onElected();
    if (this.#term !== term || this.#fence === null || this.#closed) return;
    this.#leading = true;
    this.#armStepDown();
    this.#known = null;
    this.#announce(this.#options.self());
  }

  #armStepDown(): void {
    clearTimeout(this.#stepDownTimer);
    if (this.#fence === null || this.#lease === null) return;
    const lease = this.#lease;
    this.#stepDownTimer = setTimeout(() => {
      if (this.#lease === lease && performance.now() >= lease.deadline) {
        this.stepDown("its lease could not be renewed in time");
      } else {
        this.#armStepDown();
      }
    }, Math.max(0, lease.deadline - performance.now()) + 1);
  }

  #setLeaderKey(key: LeaderKey | null): void {
    if (key !== null && key.lease === this.#lease?.id) {
      // Bound to this manager's own lease, yet it does not lead (it stepped down while etcd could not be
      // reached, and its lease outlived that): the next campaign takes it back.
      this.#leaderKey = null;
      this.#wake?.();
      return;
    }
    this.#leaderKey = key;
    this.#announce(key?.info ?? null);
  }

  #announce(leader: ManagerInfo | null): void {
    if (leader?.id === this.#known?.id && leader?.admin === this.#known?.admin) return;
    this.#known = leader;
    this.#options.onLeader(leader);
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, Math.max(0, ms));
      const wake = () => done();
      this.#wake = wake;
      function done() {
        clearTimeout(timer);
        resolve();
      }
    });
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
