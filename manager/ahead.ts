/**
 * Decisions made ahead (`decide_ahead`): for each claimant agent and `decide: manager` service, a short
 * queue of the backends of that agent's next new connections, so that no new connection waits for the
 * manager. Pure: the time is passed in, and the backends are chosen by a `Chooser` (the `Decider`:
 * weighted least connections over the cluster's exact counts).
 *
 * Queues are held by an agent's lane (`holderOf`); below, "agent" is that holder.
 *
 * A queue holds `decide_ahead` of its agent's recent rate of new connections, at least one decision. Its
 * decisions count as pending connections of their backends for every later choice until the agent reports
 * them used (they are open connections then) or they are taken back. The agent reports what it used; once
 * half of a queue is, or it is older than its ttl, the next `refill` makes a new one that replaces it, and
 * what was left of the old one is taken back. A change of the service (a weight, a state, a drain:
 * `invalidate`) takes its queues back at once, so a backend that goes down, drains or gets new feedback
 * stops being chosen within one refill. Uses the agent reports of a queue after it was replaced (or taken
 * back, or expired) count as used all the same.
 */

import type { Lane } from "../cluster/lanes.ts";
import type { QueueUsed } from "../cluster/protocol.ts";
import type { ServiceConfig } from "./config.ts";

export const AHEAD_DEFAULTS = {
  /** The most decisions one queue holds, whatever the rate. */
  maxQueue: 1_024,
  /** A queue holds for this many times `decide_ahead`, and at least `minTtlMs`; unused after, it expires. */
  ttlFactor: 20,
  minTtlMs: 1_000,
  /** Queues an agent held before its present one, per service, whose uses told late still count. */
  formerQueues: 4,
  /** The weight of the latest measured rate in the agent's moving average. */
  rateSmoothing: 0.5,
  /** Reports closer than this are summed before the rate is measured. */
  minRateWindowMs: 20,
} as const;

/**
 * How far ahead the manager decides for a service's claimants, in ms; 0 when every new connection is asked
 * about (`decide_ahead: 0s`), when none is (`decide: agent`), and with client affinity held for a ttl (each
 * client's backend is its own, which a queue cannot know). What the manager queues and what agents take
 * from queues both follow it: the agents get it in their state.
 */
export function decideAheadOf(
  service: Pick<ServiceConfig, "decide" | "decideAheadMs" | "affinity">,
): number {
  if (service.decide !== "manager") return 0;
  if (service.affinity.key === "client_ip" && service.affinity.ttlMs > 0) return 0;
  return service.decideAheadMs;
}

/** The key of an agent's lane among the queues' holders. */
export function holderOf(agent: string, lane: Lane): string {
  return lane === "mesh" ? `${agent}\u0000mesh` : agent;
}

/** The agent and lane of a holder's key. */
export function laneOf(holder: string): { agent: string; lane: Lane } {
  const mesh = holder.endsWith("\u0000mesh");
  return mesh ? { agent: holder.slice(0, -5), lane: "mesh" } : { agent: holder, lane: "listen" };
}

/** Picks backends for new connections, as the manager decides them. */
export interface Chooser {
  /**
   * The backends (ids) of `count` new connections of `service`, in order, each counted as a connection for
   * the next choice; empty when no backend can take one.
   */
  chooseMany(service: string, count: number): string[];
}

/** How much of a queue its agent used so far (a running total), as `used` reports it. */
export type QueueUse = Pick<QueueUsed, "service" | "seq" | "used">;

/** The largest queue number; the next is 1. */
export const MAX_SEQ = 2 ** 31 - 1;

/** A queue as sent to its agent. */
export interface AheadQueue {
  readonly service: string;
  /** Grows with every queue of this agent and service: usage reports name the queue they count. */
  readonly seq: number;
  readonly backends: readonly string[];
  /** How long the agent may use it. */
  readonly ttlMs: number;
}

interface Queue {
  seq: number;
  backends: string[];
  used: number;
  expiresAt: number;
}

/**
 * A queue an agent held before its present one (replaced, expired or taken back), and what its unused
 * decisions were counted as: uses its agent reports late are connections all the same.
 */
interface Former {
  readonly queue: Queue;
  readonly why: "expired" | "takenBack";
}

/** What one agent's queue of one service knows of its agent's rate. */
interface Rate {
  perSecond: number;
  /** Decisions used since `since`, not yet in `perSecond`. */
  count: number;
  since: number;
}

export interface AheadCounts {
  /**
   * Decisions put in queues, used by agents, expired unused, and taken back unused; and decisions agents
   * asked for one connection at a time (their queue was empty).
   */
  made: number;
  asked: number;
  used: number;
  expired: number;
  takenBack: number;
}

export class DecisionQueues {
  readonly #chooser: Chooser;
  /** By agent, then service. */
  readonly #queues = new Map<string, Map<string, Queue>>();
  /**
   * By agent, then service: the queues before the present one, newest first (`formerQueues` at most), for
   * uses told after they went (queues can follow each other faster than their last uses are told).
   */
  readonly #former = new Map<string, Map<string, Former[]>>();
  readonly #rates = new Map<string, Map<string, Rate>>();
  /** Decisions handed out and not used, by service then backend: pending connections. */
  readonly #pending = new Map<string, Map<string, number>>();
  readonly #counts = new Map<string, AheadCounts>();
  /**
   * Queue numbers start anywhere: an agent may still report uses of a queue of the manager it had before (a
   * restart, a new leader), which must not count against this one's. They stay below 2^31, as a relay's
   * flow events carry them (32-bit fields).
   */
  #nextSeq = 1 + Math.floor(Math.random() * 2 ** 30);

  constructor(chooser: Chooser) {
    this.#chooser = chooser;
  }

  /** Decisions handed out and not used yet, for a backend of a service: connections about to open. */
  pending(service: string, backend: string): number {
    return this.#pending.get(service)?.get(backend) ?? 0;
  }

  /** What queues of a service have made, and what became of it, for `/metrics`. */
  counts(): ReadonlyMap<string, Readonly<AheadCounts>> {
    return this.#counts;
  }

  /** The queue an agent holds for a service now, if any (for `/v1/explain`). */
  queue(agent: string, service: string): Readonly<{ seq: number; left: number; next: string | null }> | null {
    const queue = this.#queues.get(agent)?.get(service);
    if (!queue) return null;
    return {
      seq: queue.seq,
      left: queue.backends.length - queue.used,
      next: queue.backends[queue.used] ?? null,
    };
  }

  /**
   * A new queue for `agent`'s flows of `service` when it needs one (none yet, half used, the service
   * changed, or older than its ttl), replacing the one it had; null when the one it has will do. With
   * `aheadMs` 0 the service decides per connection: any queue is taken back, and null.
   */
  refill(agent: string, service: string, options: { aheadMs: number; now: number }): AheadQueue | null {
    const { aheadMs, now } = options;
    const queue = this.#queues.get(agent)?.get(service);
    if (aheadMs <= 0) {
      if (queue) this.#drop(agent, service, queue, "takenBack");
      return null;
    }
    const rate = this.#rateOf(agent, service, now);
    const size = Math.min(
      AHEAD_DEFAULTS.maxQueue,
      Math.max(1, Math.ceil((rate.perSecond * aheadMs) / 1000)),
    );
    if (queue && now < queue.expiresAt && queue.backends.length - queue.used > size / 2) {
      return null;
    }
    if (queue) this.#drop(agent, service, queue, now >= queue.expiresAt ? "expired" : "takenBack");
    const backends = this.#chooser.chooseMany(service, size);
    const ttlMs = Math.max(AHEAD_DEFAULTS.minTtlMs, aheadMs * AHEAD_DEFAULTS.ttlFactor);
    const seq = this.#nextSeq;
    this.#nextSeq = seq >= MAX_SEQ ? 1 : seq + 1;
    const made: Queue = { seq, backends, used: 0, expiresAt: now + ttlMs };
    let byService = this.#queues.get(agent);
    if (!byService) this.#queues.set(agent, byService = new Map());
    byService.set(service, made);
    for (const backend of backends) this.#addPending(service, backend, 1);
    this.#count(service).made += backends.length;
    return { service, seq: made.seq, backends, ttlMs };
  }

  /**
   * `agent` used the first `used` decisions of its queue `seq` of `service` (a running total): the
   * backends of the connections that used them, no longer pending here (the caller counts them as
   * connections until the agent's next open counts have them). Uses reported after their queue was taken
   * back, expired or replaced (an agent that empties its queue asks, and gets a new one before it tells the
   * last uses of the old) are connections all the same: counted as used rather than as left unused, and
   * returned; they were no longer pending.
   */
  used(agent: string, use: QueueUse, now: number): readonly string[] {
    const { service, seq, used } = use;
    const queue = this.#queues.get(agent)?.get(service);
    const inForce = queue?.seq === seq;
    const former = inForce
      ? undefined
      : this.#former.get(agent)?.get(service)?.find((each) => each.queue.seq === seq);
    const target = inForce ? queue : former?.queue;
    if (target === undefined) return [];
    const taken = Math.min(used, target.backends.length) - target.used;
    if (!(taken > 0)) return [];
    const from = target.used;
    target.used += taken;
    this.#rateOf(agent, service, now).count += taken;
    const counts = this.#count(service);
    counts.used += taken;
    if (inForce) {
      for (let i = from; i < from + taken; i++) this.#addPending(service, target.backends[i]!, -1);
    } else counts[former!.why] -= taken;
    return target.backends.slice(from, from + taken);
  }

  /** `agent` asked about one new connection of `service` (its queue was empty): it counts in its rate. */
  asked(agent: string, service: string, now: number): void {
    this.#rateOf(agent, service, now).count++;
    this.#count(service).asked++;
  }

  /**
   * The service changed: every queue of it is taken back at once, and counts no longer; the next `refill`
   * makes a new one. The agents that held one, which need a new one now.
   */
  invalidate(service: string): string[] {
    const agents: string[] = [];
    for (const [agent, byService] of this.#queues) {
      const queue = byService.get(service);
      if (queue) {
        this.#drop(agent, service, queue, "takenBack");
        agents.push(agent);
      }
    }
    return agents;
  }

  /** Queues older than their ttl no longer count: their agent had no use for them. */
  expire(now: number): void {
    for (const [agent, byService] of this.#queues) {
      for (const [service, queue] of byService) {
        if (now >= queue.expiresAt) this.#drop(agent, service, queue, "expired");
      }
    }
  }

  /** An agent that left: its queues, of both lanes, are taken back. */
  forgetAgent(agent: string): void {
    for (const holder of [holderOf(agent, "listen"), holderOf(agent, "mesh")]) {
      for (const [service, queue] of this.#queues.get(holder) ?? []) {
        this.#drop(holder, service, queue, "takenBack");
      }
      this.#queues.delete(holder);
      this.#former.delete(holder);
      this.#rates.delete(holder);
    }
  }

  /** A service that is gone. */
  forgetService(service: string): void {
    for (const [agent, byService] of this.#queues) {
      const queue = byService.get(service);
      if (queue) this.#drop(agent, service, queue, "takenBack");
      this.#rates.get(agent)?.delete(service);
    }
    for (const byService of this.#former.values()) byService.delete(service);
    this.#pending.delete(service);
    this.#counts.delete(service);
  }

  /** A queue goes: what was left of it is pending no longer, counted as `why`, and it is kept as former. */
  #drop(agent: string, service: string, queue: Queue, why: "expired" | "takenBack"): void {
    this.#release(service, queue);
    this.#count(service)[why] += queue.backends.length - queue.used;
    this.#queues.get(agent)?.delete(service);
    let byService = this.#former.get(agent);
    if (!byService) this.#former.set(agent, byService = new Map());
    const formers = byService.get(service) ?? [];
    formers.unshift({ queue, why });
    formers.length = Math.min(formers.length, AHEAD_DEFAULTS.formerQueues);
    byService.set(service, formers);
  }

  /** What was left of a queue is pending no longer. */
  #release(service: string, queue: Queue): void {
    for (let i = queue.used; i < queue.backends.length; i++) {
      this.#addPending(service, queue.backends[i]!, -1);
    }
  }

  #addPending(service: string, backend: string, delta: number): void {
    let byBackend = this.#pending.get(service);
    if (!byBackend) this.#pending.set(service, byBackend = new Map());
    const next = (byBackend.get(backend) ?? 0) + delta;
    if (next <= 0) byBackend.delete(backend);
    else byBackend.set(backend, next);
  }

  /** The agent's rate for a service, brought up to date: decisions used per second, smoothed. */
  #rateOf(agent: string, service: string, now: number): Rate {
    let byService = this.#rates.get(agent);
    if (!byService) this.#rates.set(agent, byService = new Map());
    let rate = byService.get(service);
    if (!rate) byService.set(service, rate = { perSecond: 0, count: 0, since: now });
    const elapsed = now - rate.since;
    if (elapsed >= AHEAD_DEFAULTS.minRateWindowMs) {
      const measured = (rate.count * 1000) / elapsed;
      rate.perSecond += AHEAD_DEFAULTS.rateSmoothing * (measured - rate.perSecond);
      rate.count = 0;
      rate.since = now;
    }
    return rate;
  }

  #count(service: string): AheadCounts {
    let counts = this.#counts.get(service);
    if (!counts) this.#counts.set(service, counts = { made: 0, used: 0, expired: 0, takenBack: 0, asked: 0 });
    return counts;
  }
}
