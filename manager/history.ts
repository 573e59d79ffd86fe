/**
 * The manager's recent history, for the dashboard's charts (`GET /v1/history`): the last 15 minutes, sampled
 * every 5 s (`HISTORY_DEFAULTS`), of new connections per second, open connections and effective weight per
 * backend, and decisions, handoffs and served connections per second per agent.
 *
 * Bounded whatever runs: the samples are a ring of `windowMs / intervalMs` slots, each series one typed array
 * of that length, and a series with no value left in the window (a backend removed, an agent gone) is
 * dropped. Rates are the rise of the counters the agents report between two samples (a counter that fell, an
 * agent restarted, counts from 0), over the time between them. No I/O: the caller samples on its timer.
 */
import type { AgentSession } from "./agent_session.ts";
import { openConnections, type ServiceRuntime } from "./state.ts";

export const HISTORY_DEFAULTS = {
  /** A sample every this long... */
  intervalMs: 5_000,
  /** ...kept for this long: 180 samples. */
  windowMs: 15 * 60_000,
} as const;

export type HistorySettings = { readonly [Key in keyof typeof HISTORY_DEFAULTS]: number };

/** One backend at one sample: its counter of connections started, open connections and effective weight. */
export interface BackendSample {
  readonly service: string;
  readonly backend: string;
  readonly started: number;
  readonly open: number;
  readonly weight: number;
}

/** One agent at one sample: the counters its last heartbeat reported. */
export interface AgentSample {
  readonly id: string;
  readonly served: number;
  readonly handedOff: number;
  readonly decided: number;
}

export interface Sample {
  readonly backends: readonly BackendSample[];
  readonly agents: readonly AgentSample[];
}

/** A series' values in sample order, oldest first; null where it had none. */
export type Points = Array<number | null>;

/** `GET /v1/history`. */
export interface HistoryView {
  readonly interval_s: number;
  readonly window_s: number;
  /** When each sample was taken, in ms since the epoch, oldest first. */
  readonly times: number[];
  readonly services: Array<{
    readonly name: string;
    readonly backends: Array<{
      readonly address: string;
      readonly connections_per_s: Points;
      readonly open_connections: Points;
      readonly effective_weight: Points;
    }>;
  }>;
  readonly agents: Array<{
    readonly id: string;
    readonly decisions_per_s: Points;
    readonly handoffs_per_s: Points;
    readonly served_per_s: Points;
  }>;
}

/** What a sample of the running manager is made of: its model's services and its connected agents. */
export function sampleOf(services: readonly ServiceRuntime[], agents: readonly AgentSession[]): Sample {
  return {
    backends: services.flatMap((service) =>
      service.backends.map((backend) => ({
        service: service.config.name,
        backend: backend.config.id,
        started: backend.started,
        open: openConnections(backend),
        weight: backend.effectiveWeight,
      }))
    ),
    agents: agents.map((agent) => ({
      id: agent.id,
      served: agent.connections.served,
      handedOff: agent.connections.handed_off,
      decided: agent.connections.decided ?? 0,
    })),
  };
}

/** Some series sampled together, with the counters their rates are the rise of. */
interface Tracked<Name extends string> {
  readonly series: Record<Name, Float64Array>;
  /** The counters at the last sample this was in, and that sample's number. */
  counters: Record<string, number>;
  lastSeen: number;
}

const BACKEND_SERIES = ["connections", "open", "weight"] as const;
const AGENT_SERIES = ["decisions", "handoffs", "served"] as const;

export class History {
  readonly #settings: HistorySettings;
  readonly #capacity: number;
  readonly #times: Float64Array;
  /** Samples taken since the start; the newest is in slot `(#count - 1) % #capacity`. */
  #count = 0;
  readonly #backends = new Map<
    string,
    Tracked<typeof BACKEND_SERIES[number]> & { service: string; backend: string }
  >();
  readonly #agents = new Map<string, Tracked<typeof AGENT_SERIES[number]>>();

  constructor(settings: Partial<HistorySettings> = {}) {
    this.#settings = { ...HISTORY_DEFAULTS, ...settings };
    this.#capacity = Math.max(2, Math.ceil(this.#settings.windowMs / this.#settings.intervalMs));
    this.#times = new Float64Array(this.#capacity);
  }

  /** The most samples it keeps. */
  get capacity(): number {
    return this.#capacity;
  }

  /** Takes one sample at `at` (ms since the epoch). */
  record(at: number, sample: Sample): void {
    const slot = this.#count % this.#capacity;
    const previous = this.#count > 0 ? this.#times[(this.#count - 1) % this.#capacity]! : NaN;
    const seconds = (at - previous) / 1000;
    this.#times[slot] = at;
    const rate = (tracked: Tracked<string>, name: string, value: number) => {
      const before = tracked.lastSeen === this.#count - 1 ? tracked.counters[name] : undefined;
      tracked.counters[name] = value;
      if (before === undefined || !(seconds > 0)) return NaN;
      return (value >= before ? value - before : value) / seconds;
    };
    for (const entry of sample.backends) {
      const key = `${entry.service}\u0000${entry.backend}`;
      let tracked = this.#backends.get(key);
      if (tracked === undefined) {
        tracked = { ...this.#track(BACKEND_SERIES), service: entry.service, backend: entry.backend };
        this.#backends.set(key, tracked);
      }
      tracked.series.connections[slot] = rate(tracked, "started", entry.started);
      tracked.series.open[slot] = entry.open;
      tracked.series.weight[slot] = entry.weight;
      tracked.lastSeen = this.#count;
    }
    for (const entry of sample.agents) {
      let tracked = this.#agents.get(entry.id);
      if (tracked === undefined) {
        tracked = this.#track(AGENT_SERIES);
        this.#agents.set(entry.id, tracked);
      }
      tracked.series.decisions[slot] = rate(tracked, "decided", entry.decided);
      tracked.series.handoffs[slot] = rate(tracked, "handedOff", entry.handedOff);
      tracked.series.served[slot] = rate(tracked, "served", entry.served);
      tracked.lastSeen = this.#count;
    }
    for (const map of [this.#backends, this.#agents] as const) {
      for (const [key, tracked] of map) {
        if (tracked.lastSeen === this.#count) continue;
        if (tracked.lastSeen <= this.#count - this.#capacity) map.delete(key);
        else for (const values of Object.values<Float64Array>(tracked.series)) values[slot] = NaN;
      }
    }
    this.#count++;
  }

  /** Every series in the window, oldest sample first, as `GET /v1/history` answers. */
  view(): HistoryView {
    const first = Math.max(0, this.#count - this.#capacity);
    const slots = Array.from({ length: this.#count - first }, (_, i) => (first + i) % this.#capacity);
    const points = (values: Float64Array, digits: number): Points =>
      slots.map((slot) => {
        const value = values[slot]!;
        return Number.isNaN(value) ? null : Math.round(value * 10 ** digits) / 10 ** digits;
      });
    const services = new Map<string, HistoryView["services"][number]>();
    for (const { service, backend, series } of this.#backends.values()) {
      let entry = services.get(service);
      if (entry === undefined) services.set(service, entry = { name: service, backends: [] });
      entry.backends.push({
        address: backend,
        connections_per_s: points(series.connections, 2),
        open_connections: points(series.open, 0),
        effective_weight: points(series.weight, 2),
      });
    }
    return {
      interval_s: this.#settings.intervalMs / 1000,
      window_s: this.#settings.windowMs / 1000,
      times: slots.map((slot) => this.#times[slot]!),
      services: [...services.values()],
      agents: [...this.#agents].map(([id, { series }]) => ({
        id,
        decisions_per_s: points(series.decisions, 2),
        handoffs_per_s: points(series.handoffs, 2),
        served_per_s: points(series.served, 2),
      })),
    };
  }

  /** New series for `names`, with no value in any slot. */
  #track<const Name extends string>(names: readonly Name[]): Tracked<Name> {
    const series = {} as Record<Name, Float64Array>;
    for (const name of names) series[name] = new Float64Array(this.#capacity).fill(NaN);
    return { series, counters: {}, lastSeen: -1 };
  }
}
