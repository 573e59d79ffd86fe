/**
 * Decisions: the manager's answer to an agent's connection request. The preferred backend is the one
 * with the fewest open connections per unit of effective weight (weighted least connections), counting
 * the agents' exact reports plus the decisions made since each agent's last report; with
 * `affinity.key: client_ip`, a client keeps its backend for the affinity ttl while that backend is up.
 */
import { heapify, siftDown } from "../cluster/index_heap.ts";
import type { Lane } from "../cluster/lanes.ts";
import { Histogram } from "../cluster/prometheus.ts";
import {
  type AheadQueue,
  type Chooser,
  decideAheadOf,
  DecisionQueues,
  holderOf,
  type QueueUse,
} from "./ahead.ts";
import type { BackendRuntime, ClusterModel, ServiceRuntime } from "./state.ts";
import { effectiveWeight, openConnections } from "./state.ts";
import { DECISION_BUCKETS_S } from "./metrics.ts";

export const DECIDE_DEFAULTS = {
  /**
   * How much of the count of recent decisions per backend survives each new decision of the service (a
   * memory of about 100 decisions, whatever the rate). Open connections alone would send every
   * short-lived connection to the heaviest backend (all have 0 open); counting recently started ones too
   * spreads them in proportion to weight, while long-held connections still dominate.
   */
  recentDecay: 0.99,
  /** At most this many clients are remembered for affinity; the oldest are forgotten first. */
  maxAffinityEntries: 1_000_000,
} as const;

export interface Decision {
  /** The preferred backend's id, or null when no backend can take new connections. */
  readonly backend: string | null;
  readonly ttlMs: number;
  /** Why this backend, in words an operator reads in `/v1/explain`. */
  readonly reason: string;
}

/** A new flow the manager is asked about. */
export interface FlowToDecide {
  readonly service: string;
  readonly clientIp: string;
  /** The agent's lane whose queue of decisions made ahead was empty, if it named one. */
  readonly lane?: Lane | undefined;
}

export class Decider implements Chooser {
  readonly #model: ClusterModel;
  /** Decisions made ahead for claimants (`decide_ahead`): pending connections until used. */
  readonly ahead: DecisionQueues = new DecisionQueues(this);
  /** Decisions made for each agent since its last open-count report, by service and backend. */
  readonly #pending = new Map<string, Map<string, number>>();
  readonly #affinity = new Map<string, { backend: string; expires: number }>();
  /** Recent decisions per service and backend, fading by `recentDecay` with every decision of the service. */
  readonly #recent = new Map<string, Map<string, number>>();
  /** Seconds each decision took, by service, for `/metrics`. */
  readonly seconds = new Map<string, Histogram>();
  /**
   * Flows decided by service and chosen backend (`none` when no backend could take it), for `/metrics`: those
   * asked about, and those that took a decision made ahead, as their agents report it.
   */
  readonly counts = new Map<string, Map<string, number>>();

  constructor(model: ClusterModel) {
    this.#model = model;
  }

  /**
   * Decides a new flow of `agent` and records the decision as a pending open connection of it; with
   * decisions made ahead, it counts in the rate of the lane it names (whose queue was empty).
   */
  decide(agent: string, flow: FlowToDecide, now = performance.now()): Decision {
    const { service, clientIp, lane = "listen" } = flow;
    const started = performance.now();
    const decision = this.#decide(agent, service, clientIp, now, lane);
    if (!this.#model.service(service)) return decision;
    let histogram = this.seconds.get(service);
    if (!histogram) this.seconds.set(service, histogram = new Histogram(DECISION_BUCKETS_S));
    histogram.observe((performance.now() - started) / 1000);
    this.#countDecided(service, [decision.backend ?? "none"]);
    return decision;
  }

  /** Counts decisions of `service` by the backend chosen, for `/metrics`. */
  #countDecided(service: string, backends: readonly string[]): void {
    if (backends.length === 0) return;
    let counts = this.counts.get(service);
    if (!counts) this.counts.set(service, counts = new Map());
    for (const backend of backends) counts.set(backend, (counts.get(backend) ?? 0) + 1);
  }

  #decide(agent: string, service: string, clientIp: string, now: number, lane: Lane): Decision {
    const decision = this.preview(service, clientIp, now);
    const runtime = this.#model.service(service);
    if (runtime && decideAheadOf(runtime.config) > 0) this.ahead.asked(holderOf(agent, lane), service, now);
    if (decision.backend === null) return decision;
    this.#addPending(agent, service, decision.backend);
    this.#addRecent(service, [decision.backend]);
    if (runtime && runtime.config.affinity.key === "client_ip" && decision.ttlMs > 0) {
      const affinityKey = `${service}\u0000${clientIp}`;
      this.#affinity.delete(affinityKey);
      if (this.#affinity.size >= DECIDE_DEFAULTS.maxAffinityEntries) {
        const oldest = this.#affinity.keys().next();
        if (!oldest.done) this.#affinity.delete(oldest.value);
      }
      this.#affinity.set(affinityKey, { backend: decision.backend, expires: now + decision.ttlMs });
    }
    return decision;
  }

  /**
   * New connections of a service: each fades the service's recent decisions by `recentDecay` and counts
   * its own (the decay of many at once, then their counts: as many one by one, near enough).
   */
  #addRecent(service: string, backends: readonly string[]): void {
    if (backends.length === 0) return;
    let recent = this.#recent.get(service);
    if (!recent) this.#recent.set(service, recent = new Map());
    const decay = DECIDE_DEFAULTS.recentDecay ** backends.length;
    for (const [backend, count] of recent) recent.set(backend, count * decay);
    for (const backend of backends) recent.set(backend, (recent.get(backend) ?? 0) + 1);
  }

  /** A connection of `agent` to `backend`, counted until the agent's next open counts have it. */
  #addPending(agent: string, service: string, backend: string): void {
    const key = `${service}\u0000${backend}`;
    let pending = this.#pending.get(agent);
    if (!pending) this.#pending.set(agent, pending = new Map());
    pending.set(key, (pending.get(key) ?? 0) + 1);
  }

  /**
   * A new queue of decisions made ahead for `agent`'s flows of `service` when it needs one (see
   * `DecisionQueues.refill`), at the service's `decide_ahead`; null when the one it has will do, or the
   * service decides per connection.
   */
  refill(agent: string, queue: { service: string; lane?: Lane }, now = performance.now()): AheadQueue | null {
    const { service, lane = "listen" } = queue;
    const runtime = this.#model.service(service);
    return this.ahead.refill(holderOf(agent, lane), service, {
      aheadMs: runtime ? decideAheadOf(runtime.config) : 0,
      now,
    });
  }

  /**
   * `agent` used the first `used` decisions of its queue `seq` (a running total): connections now, counted
   * as decided for it until its next open counts, and among the flows decided by backend.
   */
  used(agent: string, use: QueueUse & { readonly lane?: Lane }, now = performance.now()): void {
    const backends = this.ahead.used(holderOf(agent, use.lane ?? "listen"), use, now);
    for (const backend of backends) this.#addPending(agent, use.service, backend);
    this.#addRecent(use.service, backends);
    this.#countDecided(use.service, backends);
  }

  /** The decision a new flow of this client would get now, without recording it. */
  preview(service: string, clientIp: string, now = performance.now()): Decision {
    const runtime = this.#model.service(service);
    if (!runtime) return { backend: null, ttlMs: 0, reason: `unknown service "${service}"` };
    const affinity = runtime.config.affinity;
    const ttlMs = affinity.key === "client_ip" ? affinity.ttlMs : 0;
    if (ttlMs > 0) {
      const held = this.#affinity.get(`${service}\u0000${clientIp}`);
      if (held && held.expires > now) {
        const backend = runtime.backends.find((b) => b.config.id === held.backend);
        if (backend && effectiveWeight(backend) > 0) {
          const left = Math.round(held.expires - now);
          return {
            backend: held.backend,
            ttlMs: left,
            reason: `client affinity: chosen before, ${left} ms left`,
          };
        }
      }
    }
    let best: BackendRuntime | null = null;
    let bestScore = Infinity;
    let bestOpen = 0;
    let bestRecent = 0;
    for (const backend of runtime.backends) {
      const weight = effectiveWeight(backend);
      if (weight <= 0) continue;
      const open = this.openCount(runtime, backend);
      const recent = this.#recent.get(service)?.get(backend.config.id) ?? 0;
      const score = (open + recent + 1) / weight;
      if (score < bestScore) {
        best = backend;
        bestScore = score;
        bestOpen = open;
        bestRecent = recent;
      }
    }
    if (best === null) return { backend: null, ttlMs: 0, reason: "no backend is up with a weight above 0" };
    return {
      backend: best.config.id,
      ttlMs,
      reason: `weighted least connections: ${bestOpen} open and ${bestRecent.toFixed(1)} recently started ` +
        `at effective weight ${effectiveWeight(best)}, the lowest load per weight`,
    };
  }

  /**
   * Open connections of a backend across the cluster: reported, plus decided since the last reports, plus
   * decided ahead and not yet used.
   */
  openCount(service: ServiceRuntime, backend: BackendRuntime): number {
    const key = `${service.config.name}\u0000${backend.config.id}`;
    let pending = this.ahead.pending(service.config.name, backend.config.id);
    for (const counts of this.#pending.values()) pending += counts.get(key) ?? 0;
    return openConnections(backend) + pending;
  }

  /**
   * The backends of `count` new connections of `service` (a queue decided ahead), by weighted least
   * connections over the open counts and recent decisions, as `decide` would choose them one by one, each
   * pick counted for the next: a min-heap of load per weight, so a queue of a thousand over a thousand
   * backends is a few thousand steps. The picks become recent decisions as they are used (`used`): those
   * taken back unused must not weigh on their backends.
   */
  chooseMany(service: string, count: number): string[] {
    const runtime = this.#model.service(service);
    if (!runtime || count <= 0) return [];
    const eligible = runtime.backends.filter((backend) => effectiveWeight(backend) > 0);
    if (eligible.length === 0) return [];
    const recent = this.#recent.get(service);
    const load = new Float64Array(eligible.length);
    const picked = new Uint32Array(eligible.length);
    const score = new Float64Array(eligible.length);
    const heap = new Uint32Array(eligible.length);
    eligible.forEach((backend, i) => {
      load[i] = this.openCount(runtime, backend) + (recent?.get(backend.config.id) ?? 0);
      score[i] = (load[i]! + 1) / effectiveWeight(backend);
      heap[i] = i;
    });
    heapify(heap, score);
    const picks = new Array<string>(count);
    for (let n = 0; n < count; n++) {
      const i = heap[0]!;
      picks[n] = eligible[i]!.config.id;
      picked[i] = picked[i]! + 1;
      score[i] = (load[i]! + picked[i]! + 1) / effectiveWeight(eligible[i]!);
      siftDown(heap, score, 0);
    }
    return picks;
  }

  /** An agent's exact open counts replace what it reported before and what was decided for it since. */
  reportOpen(agent: string, counts: ReadonlyArray<{ service: string; backend: string; open: number }>): void {
    this.#pending.delete(agent);
    this.#model.reportOpen(agent, counts);
  }

  forgetAgent(agent: string): void {
    this.#pending.delete(agent);
    this.ahead.forgetAgent(agent);
  }

  /** Forgets expired affinity entries and the decisions of services that are gone. */
  sweep(now = performance.now()): void {
    for (const name of this.#recent.keys()) {
      if (!this.#model.service(name)) this.#recent.delete(name);
    }
    for (const name of this.ahead.counts().keys()) {
      if (!this.#model.service(name)) this.ahead.forgetService(name);
    }
    this.ahead.expire(now);
    for (const name of this.seconds.keys()) {
      if (!this.#model.service(name)) {
        this.seconds.delete(name);
        this.counts.delete(name);
      }
    }
    for (const [key, entry] of this.#affinity) {
      if (entry.expires <= now) this.#affinity.delete(key);
    }
  }
}
