/**
 * The manager's view of the cluster: every service with its backends' configured weight, operator
 * state, feedback, health and open connections, the effective weight and state that follow from them,
 * and the Maglev table agents serve. Only the manager moves a backend between states; agents learn of
 * every change through a new versioned `ClusterState` (or a delta to it).
 *
 * A backend is `down` while its health is down or its feedback or agent-check says so (`down`, `maint`),
 * else `draining` while an operator, its feedback or its agent-check drains it, else `up`. Only an `up`
 * backend has a weight: its feedback weight (or its configured weight when it has no live feedback),
 * times its agent-check share, times its slow-start share while it ramps. A slow start begins when a
 * backend comes up from another state (or a reload adds it to a service) and its service has `slow_start`;
 * one timer steps every ramp under way (`slow_start.ts`), each step a transition like any other.
 *
 * Every transition (feedback, checks, connect failures, operator state, health, expiry, reload) is
 * validated, then committed: the effective weights and states of the backends it touches are computed
 * first, and applied only if every one is a finite number from 0 to `MAX_EFFECTIVE_WEIGHT`; otherwise it
 * throws and nothing has changed. A transition costs what the backends it touches cost, not what their
 * service has: effective weights and states are in force at once (decisions, `/v1/services`, the answer
 * to a report), and the tables follow.
 *
 * Tables: a service whose effective weights moved by at least `TABLE_DEFAULTS.minSlots` slots' worth
 * (Σ |weight − weight of its newest table| × table size / Σ weights of that table), or one of whose
 * backends changed state or went to or from weight 0, is due; its table is rebuilt from its effective weights at that moment, at most once per
 * `TABLE_DEFAULTS.windowMs`, in slices of at most `TABLE_DEFAULTS.sliceMs` (each its own turn of the event
 * loop), and then published: the new version goes to agents, as a delta of the slots that moved. A
 * config reload or a change of agents publishes the whole state at once, due tables rebuilt first.
 *
 * Invariants: each published table is the table of the weights published with it (`tableWeights`, which
 * is what agents receive), built in canonical order; the effective weights in force differ from them by
 * less than `minSlots` slots' worth, or for at most one window and a rebuild. `version` is the version
 * agents must reach to serve the weights in force: it grows by one per publication, and a change that
 * makes a service due is promised to the next publication not yet under way. Feedback for one service
 * never touches another, even when the same address is a backend of both; a report that expires puts its
 * backend back at its configured weight and state by itself (a timer, stopped by `close()`).
 */
import { decideAheadOf } from "./ahead.ts";
import { setImmediate } from "node:timers";
import { formatDuration } from "../cluster/duration.ts";
import { guard } from "../cluster/guard.ts";
import { DEFAULT_TABLE_SIZE, Permutations, slotsMoved, TableBuilder } from "../cluster/maglev.ts";
import { logger } from "../cluster/log.ts";
import {
  type BackendChange as WireBackendChange,
  type ClusterState,
  encodeFrame,
  encodeTable,
  ProtocolError,
  type ServiceSpec,
} from "../cluster/protocol.ts";
import { movedSlots } from "../cluster/state_delta.ts";
import {
  type AgentCheckReply,
  applyReport,
  type FeedbackRecord,
  feedbackState,
  feedbackWeight,
  isLive,
  liveRaw,
  type LoadPeer,
  type Report,
  ReportError,
} from "../feedback/mod.ts";
import type { BackendConfig, Config, ServiceConfig } from "./config.ts";
import { EventLog, type FeedbackChange } from "./events.ts";
import { type CheckResult, type Health, nextHealth } from "./health_rule.ts";
import { nextRampStep, rampedWeight, rampShare, type SlowStart } from "./slow_start.ts";

const log = logger("manager", "state");

export const STATE_DEFAULTS = {
  /** After a failed expiry turn, the next one comes this much later. */
  expiryRetryMs: 1_000,
} as const;

/** When and how a service's table is rebuilt and published (see the module's comment). */
export const TABLE_DEFAULTS = {
  /**
   * A service's table is rebuilt at most once in this long: the reports of a window share one rebuild and
   * one push to agents, and a change reaches them within it plus the rebuild. A table of 65,537 slots
   * costs 4-9 ms of CPU to build whatever its backends (filling the last slots probes the most), so a
   * service whose weights never rest costs at most 10 of those a second.
   */
  windowMs: 100,
  /** A rebuild gives the event loop back after this long, and goes on in its next turn. */
  sliceMs: 1,
  /**
   * Steps of a table's build between two looks at the clock within a slice (`TableBuilder.fill`): a few
   * hundred microseconds at most, even among the last slots, where most steps pass over taken ones.
   */
  sliceWork: 5_000,
  /** Weight changes worth fewer slots than this are held, until together they are worth this many. */
  minSlots: 1,
} as const;

export type TableSettings = { readonly [Key in keyof typeof TABLE_DEFAULTS]: number };

/**
 * The largest effective weight a backend may have: what a Maglev table takes. Feedback keeps weights far
 * below it (at most 10 × the largest configured weight); a transition that would pass it is refused.
 */
export const MAX_EFFECTIVE_WEIGHT = Number.MAX_SAFE_INTEGER;

/** A backend's state as an operator sets it: `drain` keeps open connections, takes no new ones. */
export type OperatorState = "up" | "drain";
export type BackendState = "up" | "draining" | "down";

export interface BackendRuntime {
  readonly config: BackendConfig;
  /** Its place in its service's `backends` (and in the state agents get). */
  readonly index: number;
  operatorState: OperatorState;
  health: Health;
  /** Passed and failed checks in a row; connect failures the agents report count as failed checks. */
  checks: { successes: number; failures: number };
  /** The last active check, and when it ended (the model's clock, ms). */
  lastCheck: { readonly at: number; readonly ok: boolean; readonly detail: string } | null;
  /** The last agent-check reply, for services checked with `agent-check`. */
  agentCheck: AgentCheckReply | null;
  /** The last feedback report's record; null when there is none or it expired. */
  feedback: FeedbackRecord | null;
  /** The weight and state in force: new decisions, `/v1/services` and the answer to a report use these. */
  effectiveWeight: number;
  state: BackendState;
  /** Its slow start, while one is under way; null otherwise. */
  slowStart: SlowStart | null;
  /** Open connections to this backend, per agent, as the agents last reported them. */
  readonly openByAgent: Map<string, number>;
  /** Connections the agents started to this backend since the manager started, as they reported them. */
  started: number;
}

/** What a feedback report left for one backend: the answer of `POST /v1/feedback`. */
export interface FeedbackOutcome {
  readonly service: string;
  readonly backend: string;
  readonly effectiveWeight: number;
  readonly state: BackendState;
}

export interface ServiceRuntime {
  readonly config: ServiceConfig;
  readonly backends: BackendRuntime[];
  /** The backends by id. */
  readonly byId: ReadonlyMap<string, BackendRuntime>;
  /** The table agents serve (the last published), and the backend id of each entry. */
  table: Uint16Array;
  readonly tableIds: readonly string[];
  /** The effective weights and states the published table was built from, as agents receive them. */
  tableWeights: readonly number[];
  tableStates: readonly BackendState[];
  /** Slots that changed backend at the last publication of this service, and in all since start. */
  lastSlotsMoved: number;
  totalSlotsMoved: number;
}

/** One service's part of a publication: its new table, the slots that moved, the backends that changed. */
export interface ServiceChange {
  readonly service: ServiceRuntime;
  /** The table published (the service's `table` may have moved on by the time it is sent). */
  readonly table: Uint16Array;
  /** The slots whose entries differ from the previous table of this service. */
  readonly moved: Uint32Array;
  readonly backends: WireBackendChange[];
}

/** What agents must learn: a new version, and the services that changed since `base` (null: everything). */
export interface Publication {
  readonly version: number;
  readonly base: number;
  readonly services: readonly ServiceChange[] | null;
}

/** An event as `EventLog.add` takes it. */
type NewEvent = Parameters<EventLog["add"]>[0];

/** What a transition changes of one backend before its effective weight and state are computed again. */
type BackendChange = Partial<
  Pick<BackendRuntime, "operatorState" | "health" | "checks" | "lastCheck" | "agentCheck" | "feedback">
>;

/** A change staged for one backend of a transition. */
interface Staged {
  readonly service: ServiceRuntime;
  change: BackendChange;
}

/** A backend's fields as a transition would leave them. */
type BackendView = Omit<BackendRuntime, "effectiveWeight" | "state" | "slowStart">;

/** What a backend's effective weight, state and slow start are computed from, besides its fields. */
type Before = Pick<BackendRuntime, "state" | "slowStart">;

/** A backend's effective weight and state, and its slow start (null: none under way). */
interface Effective {
  readonly state: BackendState;
  readonly weight: number;
  readonly slowStart: SlowStart | null;
}

/**
 * How far a service's effective weights have moved from those of its newest table (published, or being
 * built): Σ |effective − base| and the count of backends whose state differs. Kept as backends change, so
 * that telling whether the service is due costs nothing per report.
 */
interface Drift {
  base: Float64Array;
  /** Each backend's `servingOf` in the newest table. */
  baseServing: string[];
  baseSum: number;
  weight: number;
  /** Backends whose `servingOf` differs from the table's. */
  serving: number;
}

/** A table being built for one service, from its effective weights when the build began. */
interface Build {
  readonly service: ServiceRuntime;
  readonly weights: number[];
  readonly states: BackendState[];
  readonly builder: TableBuilder;
}

export interface AgentView {
  readonly id: string;
  readonly mesh: string | null;
}

export interface ModelOptions {
  readonly seed: number;
  /** The slots of each service's Maglev table, a prime; `DEFAULT_TABLE_SIZE` unless given. */
  readonly tableSize?: number;
  /** The clock of feedback ages and expiry, in ms; `performance.now` by default. */
  readonly now?: () => number;
  /** `TABLE_DEFAULTS` to override. */
  readonly tables?: Partial<TableSettings>;
}

export class ClusterModel {
  #config: Config;
  #services = new Map<string, ServiceRuntime>();
  #agents: AgentView[] = [];
  readonly #epoch = crypto.randomUUID();
  readonly #seed: number;
  readonly #tableSize: number;
  readonly #now: () => number;
  readonly #tables: TableSettings;
  readonly #listeners = new Set<(publication: Publication) => void>();
  #expiryTimer: ReturnType<typeof setTimeout> | undefined;
  #expiryAt = Infinity;
  /** Backends in slow start, with their service and when (the model's clock) their share next rises. */
  readonly #ramps = new Map<BackendRuntime, { readonly service: ServiceRuntime; readonly next: number }>();
  #rampTimer: ReturnType<typeof setTimeout> | undefined;
  #rampAt = Infinity;
  #closed = false;
  /** The version of the last publication: of the state `snapshot()` gives. */
  #published = 0;
  /** The version of the publication being built, and of the next one, once a change is promised to it. */
  #sealed: number | null = null;
  #next: number | null = null;
  readonly #drift = new Map<ServiceRuntime, Drift>();
  /** Each service's Maglev permutations: from its backends' ids, made once per config. */
  readonly #permutations = new Map<ServiceRuntime, Permutations>();
  /** Services whose effective weights or states moved enough from their newest table's. */
  readonly #due = new Set<ServiceRuntime>();
  /** The tables being built, one slice per turn of the event loop, for the sealed publication. */
  #builds: Build[] | null = null;
  #windowTimer: ReturnType<typeof setTimeout> | undefined;
  #sliceTimer: ReturnType<typeof setImmediate> | undefined;
  /** When the last publication went out (`performance.now`), for the window. */
  #publishedAt = -Infinity;
  /** Recent feedback, state, health, operator, agent and config events, for the dashboard. */
  readonly events = new EventLog();
  /** Feedback reports taken, by service, for `/metrics`. */
  readonly feedbackReports = new Map<string, number>();
  /** Connect failures the agents reported, by service and backend, for `/metrics`. */
  readonly connectFailures = new Map<string, Map<string, number>>();

  constructor(config: Config, options: ModelOptions) {
    this.#config = config;
    this.#seed = options.seed;
    this.#tableSize = options.tableSize ?? DEFAULT_TABLE_SIZE;
    this.#now = options.now ?? (() => performance.now());
    this.#tables = { ...TABLE_DEFAULTS, ...options.tables };
    this.#applyServices(config);
  }

  /** The model's clock, in ms. */
  now(): number {
    return this.#now();
  }

  /**
   * Stops the expiry and slow-start timers and any table being built; the model still answers, but feedback
   * no longer expires and ramps no longer step by themselves, and due tables are rebuilt only by
   * `flushTables()`.
   */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#expiryTimer);
    this.#expiryTimer = undefined;
    this.#expiryAt = Infinity;
    clearTimeout(this.#rampTimer);
    this.#rampTimer = undefined;
    this.#rampAt = Infinity;
    this.#cancelBuilds();
    clearTimeout(this.#windowTimer);
    this.#windowTimer = undefined;
  }

  get config(): Config {
    return this.#config;
  }

  /** The version agents must reach to serve the effective weights in force (see the module's comment). */
  get version(): number {
    return this.#next ?? this.#sealed ?? this.#published;
  }

  /** Whether a table is being built, across turns of the event loop, for the next publication. */
  get rebuilding(): boolean {
    return this.#builds !== null;
  }

  services(): readonly ServiceRuntime[] {
    return [...this.#services.values()];
  }

  service(name: string): ServiceRuntime | undefined {
    return this.#services.get(name);
  }

  /** One backend of one service, or undefined when either is not configured. */
  backend(service: string, backend: string): BackendRuntime | undefined {
    return this.#services.get(service)?.byId.get(backend);
  }

  /** Called with every publication: each change agents must learn of. */
  onChange(listener: (publication: Publication) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Takes a new config; backends that stay keep their operator state and health. Throws a `RangeError`,
   * with nothing changed, when its tables cannot be built or its state would not fit in a frame.
   */
  reload(config: Config): void {
    this.#applyServices(config);
    this.events.add({ kind: "config", message: `Config reloaded: ${config.services.length} services` });
    this.#publishAll();
  }

  setAgents(agents: AgentView[]): void {
    this.#agents = [...agents].sort((a, b) => a.id.localeCompare(b.id));
    this.#publishAll();
  }

  /**
   * Rebuilds every due table now, in this turn, and publishes them: for tests and tools that want the
   * tables of the weights in force without waiting for the window.
   */
  flushTables(): void {
    this.#cancelBuilds();
    if (this.#due.size === 0) return;
    const builds = this.#startBuilds();
    for (const build of builds) build.builder.fill(Infinity);
    this.#publish(builds, { whole: false });
  }

  setOperatorState(service: string, backend: string, state: OperatorState): BackendRuntime {
    const runtime = this.#backend(service, backend);
    if (runtime.operatorState !== state) {
      this.#transition(this.#stage(service, runtime, { operatorState: state }));
    }
    return runtime;
  }

  /**
   * Makes every backend's operator state and feedback those given (several managers: a standby following
   * the leader's, a new leader taking over the stored ones); a backend not named is up with no feedback.
   * Names the model does not know are skipped.
   */
  restore(
    operator: ReadonlyMap<string, ReadonlyMap<string, OperatorState>>,
    feedback: ReadonlyMap<string, ReadonlyMap<string, FeedbackRecord>>,
  ): void {
    const staged = new Map<BackendRuntime, Staged>();
    for (const service of this.#services.values()) {
      for (const backend of service.backends) {
        staged.set(backend, {
          service,
          change: {
            operatorState: operator.get(service.config.name)?.get(backend.config.id) ?? "up",
            feedback: feedback.get(service.config.name)?.get(backend.config.id) ?? null,
          },
        });
      }
    }
    // Validated, then committed, as every transition: a stored record that would give no valid weight
    // (written by another version, say) is refused whole, and the model keeps what it had.
    this.#transition(staged, { feedbackChanged: true });
  }

  setHealth(service: string, backend: string, health: Health): void {
    const runtime = this.#backend(service, backend);
    if (runtime.health === health) return;
    this.#transition(this.#stage(service, runtime, { health, checks: { successes: 0, failures: 0 } }));
  }

  /**
   * Applies feedback reports in order, all or none: an unknown service or backend throws an
   * `UnknownError`, and a report whose record or effective weight would not be a finite number in bounds
   * a `RejectedReportError` naming it, before anything changes. Returns each reported backend once, in the
   * order first reported, with its new effective weight, in force at once.
   *
   * A weight or state report costs the same whatever the size of its service; a load report is normalised
   * among its service's backends, which it reads once per call and service.
   */
  applyFeedback(reports: readonly Report[]): FeedbackOutcome[] {
    const targets = reports.map((report) => ({
      report,
      backend: this.#backend(report.service, report.backend),
      service: this.#services.get(report.service) as ServiceRuntime,
    }));
    const now = this.#now();
    // Each report sees the records of the reports before it, as if they had been applied one by one.
    const staged = new Map<BackendRuntime, Staged>();
    const feedbackOf = (backend: BackendRuntime) => {
      const change = staged.get(backend)?.change;
      return change !== undefined && "feedback" in change ? change.feedback ?? null : backend.feedback;
    };
    // The load signal of each backend of a service, made at the first load report for it: each report
    // updates its own entry, and a load report's own entry is left out of its normalisation.
    const loadPeers = new Map<ServiceRuntime, { list: LoadPeer[]; of: Map<BackendRuntime, MutablePeer> }>();
    const peersOf = (service: ServiceRuntime) => {
      let peers = loadPeers.get(service);
      if (peers === undefined) {
        const of = new Map<BackendRuntime, MutablePeer>();
        for (const peer of service.backends) {
          if (peer.config.weight > 0) {
            of.set(peer, { configured: peer.config.weight, raw: liveRaw(feedbackOf(peer), now) });
          }
        }
        peers = { list: [...of.values()], of };
        loadPeers.set(service, peers);
      }
      return peers;
    };
    targets.forEach(({ report, backend, service }, index) => {
      const peers = report.load !== undefined ? peersOf(service) : loadPeers.get(service);
      const own = peers?.of.get(backend);
      if (own !== undefined) own.raw = null;
      let record: FeedbackRecord;
      try {
        record = applyReport(report, {
          configured: backend.config.weight,
          current: feedbackOf(backend),
          peers: report.load !== undefined ? peers?.list ?? [] : [],
          settings: service.config.feedback,
          now,
        });
      } catch (error) {
        if (error instanceof ReportError) throw new RejectedReportError(error.message, index, error.path);
        throw error;
      }
      if (own !== undefined) own.raw = liveRaw(record, now);
      const entry = staged.get(backend);
      if (entry === undefined) staged.set(backend, { service, change: { feedback: record } });
      else entry.change = { ...entry.change, feedback: record };
    });
    try {
      this.#transition(staged, { feedbackChanged: true });
    } catch (error) {
      if (!(error instanceof RangeError)) throw error;
      // The last report of the backend that could not be given a valid weight is to blame; otherwise, the
      // last report.
      const backend = error instanceof WeightError ? error.backend : null;
      const found = targets.findLastIndex((target) => target.backend === backend);
      const index = found < 0 ? targets.length - 1 : found;
      const report = targets[index]!.report;
      const field = report.weight !== undefined
        ? "weight"
        : report.load !== undefined
        ? "utilization"
        : "state";
      throw new RejectedReportError(error.message, index, field);
    }
    const outcomes = new Map<BackendRuntime, FeedbackOutcome>();
    const told: FeedbackChange[] = [];
    for (const { report, backend } of targets) {
      this.feedbackReports.set(report.service, (this.feedbackReports.get(report.service) ?? 0) + 1);
      if (outcomes.has(backend)) continue;
      told.push({
        service: report.service,
        backend: backend.config.id,
        configured: backend.config.weight,
        effectiveWeight: backend.effectiveWeight,
        state: backend.feedback?.state ?? "up",
        reported: () => describeReport(report),
      });
      outcomes.set(backend, {
        service: report.service,
        backend: backend.config.id,
        effectiveWeight: backend.effectiveWeight,
        state: backend.state,
      });
    }
    this.events.feedbackAll(told);
    return [...outcomes.values()];
  }

  /**
   * Takes the outcome of one active check of a backend (from the health checker). Throws a `RangeError`,
   * with nothing changed, for an agent-check share that is not a number from 0 to 100.
   */
  recordCheck(service: string, backend: string, result: CheckResult): void {
    const runtime = this.#backend(service, backend);
    const share = result.agent?.share;
    if (share !== undefined && !(share >= 0 && share <= 100)) {
      throw new RangeError(`Expected an agent-check share from 0 to 100 %, got ${share}`);
    }
    const serviceRuntime = this.#services.get(service) as ServiceRuntime;
    const track = this.#track(serviceRuntime, runtime, { ok: result.ok });
    const before = runtime.health;
    this.#transition(this.#stage(service, runtime, {
      ...track,
      lastCheck: { at: this.#now(), ok: result.ok, detail: result.detail },
      ...(result.agent ? { agentCheck: result.agent } : {}),
    }));
    this.#announceHealth(serviceRuntime, runtime, before, result.detail);
  }

  /**
   * Takes one agent's count of connections to backends that failed since its last report: each counts as
   * a failed check, so `fall` of them in a row, cluster-wide, take the backend down until `rise` active
   * checks pass. Backends the model does not know (an agent serving an older state) are skipped.
   */
  reportConnectFailures(
    agent: string,
    failures: ReadonlyArray<{ service: string; backend: string; count: number }>,
  ): void {
    const staged = new Map<BackendRuntime, Staged>();
    const seen = new Map<BackendRuntime, { service: ServiceRuntime; before: Health; detail: string }>();
    const counted: Array<{ service: string; backend: string; count: number }> = [];
    for (const { service, backend, count } of failures) {
      const serviceRuntime = this.#services.get(service);
      const runtime = serviceRuntime?.byId.get(backend);
      if (!serviceRuntime || !runtime || !(count > 0 && Number.isSafeInteger(count))) continue;
      const entry = staged.get(runtime);
      const view = { ...runtime, ...entry?.change };
      const change = { ...entry?.change, ...this.#track(serviceRuntime, view, { ok: false, count }) };
      staged.set(runtime, { service: serviceRuntime, change });
      const detail = `${count} connect failures seen by ${agent}`;
      seen.set(runtime, {
        service: serviceRuntime,
        before: seen.get(runtime)?.before ?? runtime.health,
        detail,
      });
      counted.push({ service, backend, count });
    }
    this.#transition(staged);
    for (const { service, backend, count } of counted) {
      let counts = this.connectFailures.get(service);
      if (!counts) this.connectFailures.set(service, counts = new Map());
      counts.set(backend, Math.min(Number.MAX_SAFE_INTEGER, (counts.get(backend) ?? 0) + count));
    }
    for (const [backend, { service, before, detail }] of seen) {
      this.#announceHealth(service, backend, before, detail);
    }
  }

  /** Replaces one agent's report of its open connections per backend. */
  reportOpen(agent: string, counts: ReadonlyArray<{ service: string; backend: string; open: number }>): void {
    for (const service of this.#services.values()) {
      for (const backend of service.backends) backend.openByAgent.delete(agent);
    }
    for (const { service, backend, open } of counts) {
      const runtime = this.backend(service, backend);
      if (runtime && open > 0) runtime.openByAgent.set(agent, open);
    }
  }

  /**
   * Adds one agent's count of the connections it started to backends since its last report; backends the
   * model does not know (an agent serving an older state) are skipped.
   */
  reportStarted(counts: ReadonlyArray<{ service: string; backend: string; count: number }>): void {
    for (const { service, backend, count } of counts) {
      const runtime = this.backend(service, backend);
      if (runtime && count > 0 && Number.isSafeInteger(count)) {
        runtime.started = Math.min(Number.MAX_SAFE_INTEGER, runtime.started + count);
      }
    }
  }

  forgetAgent(agent: string): void {
    this.reportOpen(agent, []);
  }

  /** The epoch of the states this model publishes: versions count within it. */
  get epoch(): string {
    return this.#epoch;
  }

  /** The state agents are sent: the last publication's. */
  snapshot(): ClusterState {
    return this.#snapshotOf(this.#config, [...this.#services.values()], this.#published);
  }

  #snapshotOf(config: Config, runtimes: readonly ServiceRuntime[], version: number): ClusterState {
    const services: ServiceSpec[] = runtimes.map((service) => {
      const { config } = service;
      return {
        name: config.name,
        listen: { host: config.listen.host, port: config.listen.port },
        decide: config.decide,
        decisionTimeoutMs: config.decisionTimeoutMs,
        // Agents take decisions made ahead as the manager makes them: not for affinity with a ttl.
        decideAheadMs: decideAheadOf(config),
        handoff: config.handoff,
        affinity: { key: config.affinity.key, ttlMs: config.affinity.ttlMs },
        proxyProtocol: config.proxyProtocol,
        timeouts: { ...config.timeouts },
        maxConnections: config.limits.maxConnections,
        backends: service.backends.map((backend, index) => ({
          id: backend.config.id,
          host: backend.config.address.host,
          port: backend.config.address.port,
          weight: service.tableWeights[index]!,
          state: service.tableStates[index]!,
        })),
        table: tableText(service),
      };
    });
    return {
      version,
      epoch: this.#epoch,
      seed: this.#seed,
      heartbeatMs: config.agents.heartbeatMs,
      services,
      agents: this.#agents.map((agent) => ({ id: agent.id, mesh: agent.mesh })),
      // With manager.tls, the agents' mesh ports speak TLS with the manager's certificate.
      meshTls: config.manager.tls ? { cert: config.manager.tls.cert, key: config.manager.tls.key } : null,
    };
  }

  #backend(service: string, backend: string): BackendRuntime {
    const runtime = this.#services.get(service);
    if (!runtime) throw new UnknownError(`Unknown service "${service}"`);
    const found = runtime.byId.get(backend);
    if (!found) throw new UnknownError(`Unknown backend "${backend}" in service "${service}"`);
    return found;
  }

  /** One backend's change, staged for `#transition`. */
  #stage(service: string, backend: BackendRuntime, change: BackendChange): Map<BackendRuntime, Staged> {
    return new Map([[backend, { service: this.#services.get(service) as ServiceRuntime, change }]]);
  }

  /**
   * Makes `config` the one in force: every service's runtime, effective weights and table are computed
   * first, and the state agents would get is encoded once to check that it fits in a frame; only then is
   * anything replaced. Tables being built for the old services are dropped: these are built here.
   */
  #applyServices(config: Config): void {
    const now = this.#now();
    const next = new Map<string, ServiceRuntime>();
    const events: NewEvent[] = [];
    const plans: Array<{
      runtime: ServiceRuntime;
      previous: ServiceRuntime | undefined;
      states: BackendState[];
      weights: number[];
      slowStarts: Array<SlowStart | null>;
      permutations: Permutations;
    }> = [];
    for (const serviceConfig of config.services) {
      const previous = this.#services.get(serviceConfig.name);
      const backends = serviceConfig.backends.map((backendConfig, index): BackendRuntime => {
        const old = previous?.byId.get(backendConfig.id);
        return {
          config: backendConfig,
          index,
          operatorState: old?.operatorState ?? "up",
          health: old?.health ?? "unknown",
          checks: old?.checks ?? { successes: 0, failures: 0 },
          lastCheck: old?.lastCheck ?? null,
          agentCheck: serviceConfig.health.kind === "agent-check" ? old?.agentCheck ?? null : null,
          feedback: old?.feedback ?? null,
          effectiveWeight: 0,
          state: old?.state ?? "up",
          slowStart: null,
          openByAgent: old?.openByAgent ?? new Map(),
          started: old?.started ?? 0,
        };
      });
      const states: BackendState[] = [];
      const weights: number[] = [];
      const slowStarts: Array<SlowStart | null> = [];
      for (const backend of backends) {
        // A backend a reload adds to a service comes up; those of the first config, or of a new service, were
        // up already as far as anyone knows (and would all ramp together, which changes no share).
        const old = previous?.byId.get(backend.config.id);
        const before = old ?? (previous === undefined ? { state: "up" as const, slowStart: null } : null);
        const { state, weight, slowStart } = this.#effective(serviceConfig, backend, backend, now, before);
        states.push(state);
        weights.push(weight);
        slowStarts.push(slowStart);
      }
      const ids = backends.map((backend) => backend.config.id);
      const permutations = new Permutations(ids, { size: this.#tableSize });
      const builder = new TableBuilder(permutations, weights);
      builder.fill(Infinity);
      const slots = builder.table;
      const moved = previous !== undefined && previous.table.length === slots.length
        ? slotsMoved(previous.table, previous.tableIds, slots, ids)
        : 0;
      const runtime: ServiceRuntime = {
        config: serviceConfig,
        backends,
        byId: new Map(backends.map((backend) => [backend.config.id, backend])),
        table: slots,
        tableIds: ids,
        tableWeights: weights,
        tableStates: states,
        lastSlotsMoved: moved,
        totalSlotsMoved: (previous?.totalSlotsMoved ?? 0) + moved,
      };
      plans.push({ runtime, previous, states, weights, slowStarts, permutations });
      next.set(serviceConfig.name, runtime);
    }
    try {
      encodeFrame({ type: "state", state: this.#snapshotOf(config, [...next.values()], this.version) });
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      throw new RangeError(
        `Cannot take a config of ${config.services.length} services: the state agents need would not fit ` +
          `in one frame (${error.message})`,
      );
    }
    // Everything is valid: from here on nothing throws.
    this.#ramps.clear();
    for (const { runtime, states, weights, slowStarts, previous } of plans) {
      runtime.backends.forEach((backend, index) => {
        const state = states[index]!;
        const slowStart = slowStarts[index]!;
        if (state !== backend.state) {
          events.push(stateEvent(runtime, backend, { state, slowStart }, now));
        } else if (slowStart !== null && previous?.byId.get(backend.config.id) === undefined) {
          events.push(slowStartEvent(runtime, backend, "added"));
        }
        backend.state = state;
        backend.effectiveWeight = weights[index]!;
        backend.slowStart = slowStart;
        this.#trackRamp(runtime, backend, now);
      });
    }
    this.#cancelBuilds();
    this.#due.clear();
    this.#drift.clear();
    this.#permutations.clear();
    for (const { runtime, permutations } of plans) {
      this.#drift.set(runtime, driftOf(runtime));
      this.#permutations.set(runtime, permutations);
    }
    this.#config = config;
    this.#services = next;
    for (const event of events) this.events.add(event);
    this.#scheduleExpiry();
    this.#armRamps();
  }

  /**
   * The effective state and weight of `backend` as `view` would leave it, and its slow start, which goes on
   * from `before` (null: a backend just added, which comes up); or a `WeightError`.
   */
  #effective(
    service: ServiceConfig,
    backend: BackendRuntime,
    view: BackendView,
    now: number,
    before: Before | null,
  ): Effective {
    const state = stateOf(view, now);
    const full = state === "up" ? weightOf(view, now) : 0;
    if (!(full >= 0 && full <= MAX_EFFECTIVE_WEIGHT)) {
      throw new WeightError(
        `Cannot give backend ${backend.config.id} of ${service.name} the weight ${full}: ` +
          `a weight is a number from 0 to ${MAX_EFFECTIVE_WEIGHT}`,
        backend,
      );
    }
    const at = slowStartFrom(service.slowStartMs, before, state, now);
    if (at === null) return { state, weight: full, slowStart: null };
    const share = rampShare(now - at, service.slowStartMs);
    return { state, weight: rampedWeight(full, share), slowStart: { at, share } };
  }

  /** Keeps `backend` among the ramps the timer steps while its slow start is under way, at its next step. */
  #trackRamp(service: ServiceRuntime, backend: BackendRuntime, now: number): void {
    const at = backend.slowStart?.at ?? null;
    const next = at === null ? null : nextRampStep(now - at, service.config.slowStartMs);
    if (at === null || next === null) this.#ramps.delete(backend);
    else this.#ramps.set(backend, { service, next: at + next });
  }

  /** Arms one timer for the earliest step of any slow start under way. */
  #armRamps(): void {
    if (this.#closed) return;
    let earliest = Infinity;
    for (const { next } of this.#ramps.values()) earliest = Math.min(earliest, next);
    if (earliest === this.#rampAt) return;
    clearTimeout(this.#rampTimer);
    this.#rampTimer = undefined;
    this.#rampAt = earliest;
    if (earliest === Infinity) return;
    const delay = Math.min(Math.max(0, earliest - this.#now()), 2 ** 31 - 1);
    this.#rampTimer = setTimeout(() => {
      this.#rampTimer = undefined;
      this.#rampAt = Infinity;
      const stepped = guard("slow_start", () => {
        this.#stepRamps();
        return true;
      });
      // A failed turn changed nothing; the next one tries again a little later.
      if (stepped === undefined && !this.#closed) {
        this.#rampAt = -Infinity;
        this.#rampTimer = setTimeout(() => {
          this.#rampTimer = undefined;
          this.#rampAt = Infinity;
          this.#armRamps();
        }, STATE_DEFAULTS.expiryRetryMs);
      }
    }, Math.ceil(delay));
  }

  /**
   * Moves every slow start whose step has come to its next share: one transition, validated then committed
   * as any other, whose weights make their services' tables due.
   */
  #stepRamps(): void {
    const now = this.#now();
    const staged = new Map<BackendRuntime, Staged>();
    for (const [backend, { service, next }] of this.#ramps) {
      if (next <= now) staged.set(backend, { service, change: {} });
    }
    if (staged.size > 0) this.#transition(staged);
    this.#armRamps();
  }

  /**
   * A backend's health track after one more outcome: the fields a transition changes. Pure; the change
   * of health is announced by `#announceHealth` once the transition is committed.
   */
  #track(
    service: ServiceRuntime,
    backend: Pick<BackendRuntime, "health" | "checks">,
    outcome: { ok: boolean; count?: number },
  ): BackendChange {
    const { rise, fall } = service.config.health;
    const next = nextHealth({ health: backend.health, ...backend.checks }, outcome, { rise, fall });
    return { health: next.health, checks: { successes: next.successes, failures: next.failures } };
  }

  /** Logs and records a backend's change of health from `before`, if it changed. */
  #announceHealth(service: ServiceRuntime, backend: BackendRuntime, before: Health, detail: string): void {
    if (before === backend.health) return;
    const { rise, fall } = service.config.health;
    const fields = { service: service.config.name, backend: backend.config.id, detail, rise, fall };
    this.events.add({
      kind: "health",
      severity: backend.health === "down" ? "warning" : "info",
      service: fields.service,
      backend: fields.backend,
      message: backend.health === "down"
        ? `Backend ${fields.backend} of ${fields.service} is down after ${fall} failed checks: ${detail}`
        : `Backend ${fields.backend} of ${fields.service} is healthy after ${rise} passed checks`,
    });
    if (backend.health === "down") {
      log.warn(
        "Backend {backend} of {service} is down after {fall} failed checks in a row: {detail}",
        fields,
      );
    } else if (before === "down") {
      log.info("Backend {backend} of {service} is up again after {rise} passed checks", fields);
    }
  }

  /**
   * Validates, then commits, one transition: `staged` changes to some backends (a record that has
   * expired by now is dropped). Computes the effective weight and state of every staged backend first;
   * only when all are valid are the changes applied, in force at once. A service whose weights or states
   * moved enough becomes due for a new table. Re-arms the expiry timer when feedback records were added or
   * dropped. Throws a `RangeError` (a `WeightError` for a weight out of bounds) with nothing changed.
   */
  #transition(
    staged: ReadonlyMap<BackendRuntime, Staged>,
    options: { feedbackChanged?: boolean } = {},
  ): void {
    const now = this.#now();
    let feedbackChanged = options.feedbackChanged === true;
    const plans: Array<{ backend: BackendRuntime; service: ServiceRuntime; change: BackendChange }> = [];
    const effective: Effective[] = [];
    for (const [backend, { service, change }] of staged) {
      let view: BackendView = { ...backend, ...change };
      let final = change;
      if (view.feedback !== null && !isLive(view.feedback, now)) {
        final = { ...change, feedback: null };
        view = { ...view, feedback: null };
        feedbackChanged = true;
      }
      effective.push(this.#effective(service.config, backend, view, now, backend));
      plans.push({ backend, service, change: final });
    }
    // Everything is valid: from here on nothing throws.
    let earliest = Infinity;
    let ramped = false;
    plans.forEach(({ backend, service, change }, i) => {
      Object.assign(backend, change);
      if (backend.feedback !== null) earliest = Math.min(earliest, backend.feedback.expiresAt);
      const { state, weight, slowStart } = effective[i]!;
      if (slowStart !== null || backend.slowStart !== null) {
        if (slowStart === null && state === "up") this.events.add(slowStartEvent(service, backend, "over"));
        backend.slowStart = slowStart;
        this.#trackRamp(service, backend, now);
        ramped = true;
      }
      if (state === backend.state && weight === backend.effectiveWeight) return;
      if (state !== backend.state) this.events.add(stateEvent(service, backend, { state, slowStart }, now));
      const before = { weight: backend.effectiveWeight, state: backend.state };
      backend.state = state;
      backend.effectiveWeight = weight;
      this.#moved(service, backend, before);
    });
    if (feedbackChanged) this.#scheduleExpiry(earliest);
    if (ramped) this.#armRamps();
  }

  /** Counts a backend's change toward its service's drift; the service is due once that is enough. */
  #moved(service: ServiceRuntime, backend: BackendRuntime, before: { weight: number; state: BackendState }) {
    const drift = this.#drift.get(service);
    if (drift === undefined || this.#due.has(service)) return;
    const i = backend.index;
    const base = drift.base[i]!;
    drift.weight = Math.max(
      0,
      drift.weight + Math.abs(backend.effectiveWeight - base) - Math.abs(before.weight - base),
    );
    const baseServing = drift.baseServing[i];
    drift.serving += (servingOf(backend.state, backend.effectiveWeight) !== baseServing ? 1 : 0) -
      (servingOf(before.state, before.weight) !== baseServing ? 1 : 0);
    const worth = drift.baseSum > 0
      ? (drift.weight * this.#tableSize) / drift.baseSum
      : drift.weight > 0
      ? Infinity
      : 0;
    if (drift.serving > 0 || worth >= this.#tables.minSlots) this.#markDue(service);
  }

  /** Promises `service`'s next table to the next publication not under way, and arms the window. */
  #markDue(service: ServiceRuntime): void {
    this.#due.add(service);
    this.#next ??= (this.#sealed ?? this.#published) + 1;
    this.#armWindow();
  }

  #armWindow(): void {
    if (this.#closed || this.#windowTimer !== undefined || this.#builds !== null || this.#due.size === 0) {
      return;
    }
    const wait = Math.max(0, this.#publishedAt + this.#tables.windowMs - performance.now());
    this.#windowTimer = setTimeout(() => {
      this.#windowTimer = undefined;
      const done = guard("table_rebuild", () => {
        if (this.#builds === null && this.#due.size > 0) {
          this.#builds = this.#startBuilds();
          this.#buildSlice();
        }
        return true;
      });
      if (done === undefined) this.#abandonBuilds();
    }, Math.ceil(wait));
  }

  /**
   * Seals the next publication: takes the due services, each with a builder of the table of its effective
   * weights now, which become the base its drift is measured from.
   */
  #startBuilds(): Build[] {
    this.#sealed = this.#next ?? (this.#sealed ?? this.#published) + 1;
    this.#next = null;
    const builds: Build[] = [];
    for (const service of this.#due) {
      const weights = service.backends.map((backend) => backend.effectiveWeight);
      const states = service.backends.map((backend) => backend.state);
      const permutations = this.#permutations.get(service) as Permutations;
      builds.push({ service, weights, states, builder: new TableBuilder(permutations, weights) });
      this.#drift.set(service, driftOf({ tableWeights: weights, tableStates: states }));
    }
    this.#due.clear();
    return builds;
  }

  /** Fills the tables being built for at most `sliceMs`; publishes them when complete, else goes on later. */
  #buildSlice(): void {
    const builds = this.#builds;
    if (builds === null) return;
    const until = performance.now() + this.#tables.sliceMs;
    for (const { builder } of builds) {
      while (!builder.fill(this.#tables.sliceWork)) {
        if (performance.now() >= until) {
          this.#sliceTimer = setImmediate(() => {
            this.#sliceTimer = undefined;
            const done = guard("table_rebuild", () => {
              this.#buildSlice();
              return true;
            });
            if (done === undefined) this.#abandonBuilds();
          });
          return;
        }
      }
    }
    this.#builds = null;
    this.#publish(builds, { whole: false });
  }

  /** After a slice that failed (an internal error): its services are due again, for the next window. */
  #abandonBuilds(): void {
    this.#cancelBuilds();
    this.#publishedAt = performance.now();
    this.#armWindow();
  }

  /** Drops the tables being built: their services are due again, and their version is the next's. */
  #cancelBuilds(): void {
    if (this.#sliceTimer !== undefined) clearImmediate(this.#sliceTimer);
    this.#sliceTimer = undefined;
    for (const { service } of this.#builds ?? []) this.#due.add(service);
    this.#builds = null;
    this.#next ??= this.#sealed;
    this.#sealed = null;
  }

  /**
   * Publishes every change agents have not learnt yet, the whole state: due tables are rebuilt first, in
   * this turn (a reload or a change of agents, which are rare).
   */
  #publishAll(): void {
    this.#cancelBuilds();
    const builds = this.#due.size > 0 ? this.#startBuilds() : [];
    for (const build of builds) build.builder.fill(Infinity);
    this.#publish(builds, { whole: true });
  }

  /** Makes built tables the ones agents serve, under the sealed (or next) version, and tells listeners. */
  #publish(builds: readonly Build[], options: { whole: boolean }): void {
    const base = this.#published;
    const version = this.#sealed ?? this.#next ?? base + 1;
    if (this.#next !== null && this.#next <= version) this.#next = null;
    this.#sealed = null;
    const changes: ServiceChange[] = [];
    for (const { service, weights, states, builder } of builds) {
      if (this.#services.get(service.config.name) !== service) continue;
      const moved = movedSlots(service.table, builder.table);
      const backends: WireBackendChange[] = [];
      for (let i = 0; i < weights.length; i++) {
        if (weights[i] !== service.tableWeights[i] || states[i] !== service.tableStates[i]) {
          backends.push({ index: i, weight: weights[i]!, state: states[i]! });
        }
      }
      service.table = builder.table;
      service.tableWeights = weights;
      service.tableStates = states;
      tableTexts.delete(service);
      service.lastSlotsMoved = moved.length;
      service.totalSlotsMoved += moved.length;
      changes.push({ service, table: builder.table, moved, backends });
    }
    this.#published = version;
    this.#publishedAt = performance.now();
    const publication: Publication = { version, base, services: options.whole ? null : changes };
    // The change is made: a listener that fails is its own error, not the transition's.
    for (const listener of this.#listeners) guard("state_listener", () => listener(publication));
    this.#armWindow();
  }

  /**
   * Arms one timer for the earliest feedback expiry, so that an expired report changes the table itself.
   * With `candidate` (the earliest expiry of records just added), only when it comes before the one armed;
   * else after looking at every record.
   */
  #scheduleExpiry(candidate?: number): void {
    if (this.#closed) return;
    let earliest = Infinity;
    if (candidate !== undefined) {
      if (candidate >= this.#expiryAt) return;
      earliest = candidate;
    } else {
      for (const service of this.#services.values()) {
        for (const backend of service.backends) {
          if (backend.feedback !== null) earliest = Math.min(earliest, backend.feedback.expiresAt);
        }
      }
    }
    if (earliest === this.#expiryAt) return;
    clearTimeout(this.#expiryTimer);
    this.#expiryTimer = undefined;
    this.#expiryAt = earliest;
    if (earliest === Infinity) return;
    const delay = Math.min(Math.max(0, earliest - this.#now()), 2 ** 31 - 1);
    this.#expiryTimer = setTimeout(() => {
      this.#expiryTimer = undefined;
      this.#expiryAt = Infinity;
      const expired = guard("feedback_expiry", () => {
        this.#expire();
        return true;
      });
      // A failed turn changed nothing; the next one tries again a little later.
      if (expired === undefined && !this.#closed) {
        this.#expiryAt = this.#now() + STATE_DEFAULTS.expiryRetryMs;
        this.#expiryTimer = setTimeout(() => this.#retryExpiry(), STATE_DEFAULTS.expiryRetryMs);
      }
    }, Math.ceil(delay));
  }

  #retryExpiry(): void {
    this.#expiryTimer = undefined;
    this.#expiryAt = Infinity;
    this.#scheduleExpiry();
  }

  #expire(): void {
    const now = this.#now();
    const staged = new Map<BackendRuntime, Staged>();
    for (const service of this.#services.values()) {
      for (const backend of service.backends) {
        if (backend.feedback !== null && !isLive(backend.feedback, now)) {
          staged.set(backend, { service, change: { feedback: null } });
        }
      }
    }
    this.#transition(staged);
    this.#scheduleExpiry();
    for (const [backend, { service }] of staged) {
      this.events.forgetFeedback(service.config.name, backend.config.id);
      this.events.add({
        kind: "feedback",
        service: service.config.name,
        backend: backend.config.id,
        message: `Feedback for ${backend.config.id} of ${service.config.name} expired; ` +
          `back to its configured weight ${backend.config.weight}`,
      });
      log.info("Feedback for {backend} of {service} expired; back to its configured weight {weight}", {
        service: service.config.name,
        backend: backend.config.id,
        weight: backend.config.weight,
      });
    }
  }
}

/** A load peer whose signal a batch of reports updates as it goes. */
interface MutablePeer {
  readonly configured: number;
  raw: number | null;
}

/** The base64 text of each service's published table, made once when a whole state is first sent. */
const tableTexts = new WeakMap<ServiceRuntime, string>();

function tableText(service: ServiceRuntime): string {
  let text = tableTexts.get(service);
  if (text === undefined) {
    text = encodeTable(service.table);
    tableTexts.set(service, text);
  }
  return text;
}

/** A drift of nothing from the weights and states of a table. */
function driftOf(table: Pick<ServiceRuntime, "tableWeights" | "tableStates">): Drift {
  const base = Float64Array.from(table.tableWeights);
  let baseSum = 0;
  for (const weight of base) baseSum += weight;
  const baseServing = table.tableStates.map((state, i) => servingOf(state, base[i]!));
  return { base, baseServing, baseSum, weight: 0, serving: 0 };
}

/**
 * A backend's state, and whether it takes new flows at all: a change of either makes its service due
 * whatever the weights, so that a backend drained, down or at weight 0 leaves the agents' tables at once.
 */
function servingOf(state: BackendState, weight: number): string {
  return state === "up" && weight > 0 ? "serving" : state;
}

/** The event of a backend's change of state (to `up`, with the slow start it begins, if any). */
function stateEvent(
  service: ServiceRuntime,
  backend: BackendRuntime,
  to: Pick<Effective, "state" | "slowStart">,
  now: number,
): NewEvent {
  const { state } = to;
  const shown = state === "draining" ? "drain" : state;
  const reason = state !== "up"
    ? ` (${reasonOf(backend, now)})`
    : to.slowStart !== null
    ? `, ramping to its full weight over ${formatDuration(service.config.slowStartMs)} (slow start)`
    : "";
  return {
    kind: "state",
    severity: state === "down" ? "warning" : "info",
    service: service.config.name,
    backend: backend.config.id,
    message: `Backend ${backend.config.id} of ${service.config.name} is ${shown}${reason}`,
  };
}

/** The event of a backend's slow start: begun by a reload that added it, or over. */
function slowStartEvent(service: ServiceRuntime, backend: BackendRuntime, what: "added" | "over"): NewEvent {
  const { name, slowStartMs } = service.config;
  const id = backend.config.id;
  return {
    kind: "state",
    severity: "info",
    service: name,
    backend: id,
    message: what === "added"
      ? `Backend ${id} of ${name} was added, ramping to its full weight over ${
        formatDuration(slowStartMs)
      } (slow start)`
      : `Backend ${id} of ${name} has its full weight: its slow start of ${
        formatDuration(slowStartMs)
      } is over`,
  };
}

/**
 * When the slow start of a backend that is now in `state` began (the model's clock), or null when none is
 * under way: one begins as it comes up from another state (or is added: `before` null), and is over once
 * `windowMs` has passed.
 */
function slowStartFrom(
  windowMs: number,
  before: Before | null,
  state: BackendState,
  now: number,
): number | null {
  if (state !== "up" || !(windowMs > 0)) return null;
  const at = before === null || before.state !== "up" ? now : before.slowStart?.at ?? null;
  return at !== null && now - at < windowMs ? at : null;
}

/** A service or backend name that is not configured. */
export class UnknownError extends Error {
  override readonly name = "UnknownError";
}

/**
 * A feedback report the model refused: its record or the effective weight it leads to would not be a
 * finite number in bounds. `index` is its place in the request, `field` the field to blame.
 */
export class RejectedReportError extends Error {
  override readonly name = "RejectedReportError";
  constructor(message: string, readonly index: number, readonly field: string) {
    super(message);
  }
}

/** A transition that would give `backend` an effective weight out of bounds; nothing was changed. */
class WeightError extends RangeError {
  override readonly name = "WeightError";
  constructor(message: string, readonly backend: BackendRuntime) {
    super(message);
  }
}

/** What a backend is worth in new decisions now. */
export function effectiveWeight(backend: BackendRuntime): number {
  return backend.effectiveWeight;
}

/** A backend's state in force. */
export function backendState(backend: BackendRuntime): BackendState {
  return backend.state;
}

/** The state that follows at `now` from health, feedback, agent-check and operator. */
function stateOf(backend: BackendView, now: number): BackendState {
  const reported = feedbackState(backend.feedback, now);
  const agent = backend.agentCheck?.admin ?? "ready";
  if (backend.health === "down" || reported === "down" || agent === "maint") return "down";
  if (backend.operatorState === "drain" || reported === "drain" || agent === "drain") return "draining";
  return "up";
}

/** Why a backend is out of new decisions, in a few words, for its state-change event. */
function reasonOf(backend: BackendRuntime, now: number): string {
  const reported = feedbackState(backend.feedback, now);
  if (backend.health === "down") return "health checks failed";
  if (reported === "down" || reported === "drain") return `feedback says ${reported}`;
  if (backend.agentCheck?.admin === "maint") return "agent-check says maint";
  if (backend.operatorState === "drain") return "drained by an operator";
  if (backend.agentCheck?.admin === "drain") return "agent-check says drain";
  return "no reason known";
}

/** What a report said, in words, for its feedback event. */
function describeReport(report: Report): string {
  const parts: string[] = [];
  if (report.weight !== undefined) parts.push(`weight ${report.weight}%`);
  if (report.load !== undefined) {
    parts.push(`utilization ${report.load.utilization}`);
    if (report.load.qps !== undefined) parts.push(`qps ${report.load.qps}`);
    if (report.load.eps !== undefined) parts.push(`eps ${report.load.eps}`);
  }
  if (parts.length === 0 && report.state !== undefined) parts.push(`state ${report.state}`);
  return parts.join(", ");
}

/** The weight of an `up` backend at `now`: feedback (or configured) × agent-check share, to 0.01. */
function weightOf(backend: BackendView, now: number): number {
  if (backend.config.weight === 0) return 0;
  const share = backend.agentCheck?.share ?? 100;
  const weight = (feedbackWeight(backend.feedback, backend.config.weight, now) * share) / 100;
  return Math.round(weight * 100) / 100;
}

export function openConnections(backend: BackendRuntime): number {
  let total = 0;
  for (const open of backend.openByAgent.values()) total += open;
  return total;
}
