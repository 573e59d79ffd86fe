/**
 * The manager's view of the cluster: every service with its backends' configured weight, operator
 * state, feedback, health and open connections, the effective weight and state that follow from them,
 * and the Maglev table built from those weights. Only the manager moves a backend between states; agents
 * learn of every change through a new versioned `ClusterState`.
 *
 * A backend is `down` while its health is down or its feedback or agent-check says so (`down`, `maint`),
 * else `draining` while an operator, its feedback or its agent-check drains it, else `up`. Only an `up`
 * backend has a weight: its feedback weight (or its configured weight when it has no live feedback),
 * times its agent-check share.
 *
 * Every transition (feedback, checks, connect failures, operator state, health, expiry, reload) is
 * validated, then committed: its whole effect (new records, effective weights, states and tables) is
 * computed first, and applied only if every effective weight is a finite number from 0 to
 * `MAX_EFFECTIVE_WEIGHT` and every table builds; otherwise it throws and nothing has changed.
 *
 * Invariants: `snapshot().services[i].table` is always the table of the current effective weights;
 * `version` grows by one on every change an agent must learn of, and only then; feedback for one service
 * never touches another, even when the same address is a backend of both; a report that expires puts its
 * backend back at its configured weight and state by itself (a timer, stopped by `close()`).
 */
import { guard } from "../cluster/guard.ts";
import { buildTable, DEFAULT_TABLE_SIZE, slotsMoved } from "../cluster/maglev.ts";
import { logger } from "../cluster/log.ts";
import {
  type ClusterState,
  encodeFrame,
  encodeTable,
  ProtocolError,
  type ServiceSpec,
} from "../cluster/protocol.ts";
import {
  type AgentCheckReply,
  applyReport,
  type FeedbackRecord,
  feedbackState,
  feedbackWeight,
  isLive,
  liveRaw,
  type Report,
  ReportError,
} from "../feedback/mod.ts";
import type { BackendConfig, Config, ServiceConfig } from "./config.ts";
import { EventLog } from "./events.ts";
import { type CheckResult, nextHealth } from "./health.ts";

const log = logger("manager", "state");

export const STATE_DEFAULTS = {
  /** After a failed expiry turn, the next one comes this much later. */
  expiryRetryMs: 1_000,
} as const;

/**
 * The largest effective weight a backend may have: what a Maglev table takes. Feedback keeps weights far
 * below it (at most 10 × the largest configured weight); a transition that would pass it is refused.
 */
export const MAX_EFFECTIVE_WEIGHT = Number.MAX_SAFE_INTEGER;

/** A backend's state as an operator sets it: `drain` keeps open connections, takes no new ones. */
export type OperatorState = "up" | "drain";
export type Health = "up" | "down" | "unknown";
export type BackendState = "up" | "draining" | "down";

export interface BackendRuntime {
  readonly config: BackendConfig;
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
  /** The weight and state in force, as the last rebuild of the service's table computed them. */
  effectiveWeight: number;
  state: BackendState;
  /** Open connections to this backend, per agent, as the agents last reported them. */
  readonly openByAgent: Map<string, number>;
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
  table: Uint16Array;
  tableIds: string[];
  /** Slots that changed backend at the last rebuild, and in all rebuilds since start. */
  lastSlotsMoved: number;
  totalSlotsMoved: number;
}

/** An event as `EventLog.add` takes it. */
type NewEvent = Parameters<EventLog["add"]>[0];

/** What a transition changes of one backend before its service's weights are computed again. */
type BackendChange = Partial<
  Pick<BackendRuntime, "operatorState" | "health" | "checks" | "lastCheck" | "agentCheck" | "feedback">
>;

/** A backend's fields as a transition would leave them. */
type BackendView = Omit<BackendRuntime, "effectiveWeight" | "state">;

/** The effective weights, states and table that follow for one service, computed before any change. */
interface ServicePlan {
  readonly service: ServiceRuntime;
  readonly states: readonly BackendState[];
  readonly weights: readonly number[];
  /** The new table, its ids and the slots that moved; null when nothing agents see changed. */
  readonly table: { readonly slots: Uint16Array; readonly ids: string[]; readonly moved: number } | null;
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
}

export class ClusterModel {
  #config: Config;
  #services = new Map<string, ServiceRuntime>();
  #agents: AgentView[] = [];
  #version = 0;
  readonly #epoch = crypto.randomUUID();
  readonly #seed: number;
  readonly #tableSize: number;
  readonly #now: () => number;
  readonly #listeners = new Set<() => void>();
  #expiryTimer: ReturnType<typeof setTimeout> | undefined;
  #expiryAt = Infinity;
  #closed = false;
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
    this.#applyServices(config);
  }

  /** The model's clock, in ms. */
  now(): number {
    return this.#now();
  }

  /** Stops the expiry timer; the model still answers, but feedback no longer expires by itself. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#expiryTimer);
    this.#expiryTimer = undefined;
    this.#expiryAt = Infinity;
  }

  get config(): Config {
    return this.#config;
  }

  get version(): number {
    return this.#version;
  }

  services(): readonly ServiceRuntime[] {
    return [...this.#services.values()];
  }

  service(name: string): ServiceRuntime | undefined {
    return this.#services.get(name);
  }

  /** Called after every change agents must learn of. */
  onChange(listener: () => void): () => void {
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
    this.#changed();
  }

  setAgents(agents: AgentView[]): void {
    this.#agents = [...agents].sort((a, b) => a.id.localeCompare(b.id));
    this.#changed();
  }

  setOperatorState(service: string, backend: string, state: OperatorState): BackendRuntime {
    const runtime = this.#backend(service, backend);
    if (runtime.operatorState !== state) {
      this.#transition(
        [this.#services.get(service) as ServiceRuntime],
        new Map([[runtime, { operatorState: state }]]),
      );
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
    const changes = new Map<BackendRuntime, BackendChange>();
    for (const service of this.#services.values()) {
      for (const backend of service.backends) {
        changes.set(backend, {
          operatorState: operator.get(service.config.name)?.get(backend.config.id) ?? "up",
          feedback: feedback.get(service.config.name)?.get(backend.config.id) ?? null,
        });
      }
    }
    // Validated, then committed, as every transition: a stored record that would give no valid weight
    // (written by another version, say) is refused whole, and the model keeps what it had.
    this.#transition([...this.#services.values()], changes, { feedbackChanged: true });
  }

  setHealth(service: string, backend: string, health: Health): void {
    const runtime = this.#backend(service, backend);
    if (runtime.health === health) return;
    this.#transition(
      [this.#services.get(service) as ServiceRuntime],
      new Map([[runtime, { health, checks: { successes: 0, failures: 0 } }]]),
    );
  }

  /**
   * Applies feedback reports in order, all or none: an unknown service or backend throws an
   * `UnknownError`, and a report whose record or effective weight would not be a finite number in bounds
   * a `RejectedReportError` naming it, before anything changes. Tables are rebuilt once per service
   * touched. Returns each reported backend once, in the order first reported, with its new effective weight.
   */
  applyFeedback(reports: readonly Report[]): FeedbackOutcome[] {
    const targets = reports.map((report) => ({
      report,
      backend: this.#backend(report.service, report.backend),
    }));
    const now = this.#now();
    // Each report sees the records of the reports before it, as if they had been applied one by one.
    const staged = new Map<BackendRuntime, BackendChange>();
    const feedbackOf = (backend: BackendRuntime) => staged.get(backend)?.feedback ?? backend.feedback;
    const touched = new Set<ServiceRuntime>();
    targets.forEach(({ report, backend }, index) => {
      const service = this.#services.get(report.service) as ServiceRuntime;
      let record: FeedbackRecord;
      try {
        record = applyReport(report, {
          configured: backend.config.weight,
          current: feedbackOf(backend),
          peers: service.backends.filter((peer) => peer !== backend && peer.config.weight > 0).map((
            peer,
          ) => ({
            configured: peer.config.weight,
            raw: liveRaw(feedbackOf(peer), now),
          })),
          settings: service.config.feedback,
          now,
        });
      } catch (error) {
        if (error instanceof ReportError) throw new RejectedReportError(error.message, index, error.path);
        throw error;
      }
      staged.set(backend, { feedback: record });
      touched.add(service);
    });
    try {
      this.#transition([...touched], staged, { feedbackChanged: true });
    } catch (error) {
      if (!(error instanceof RangeError)) throw error;
      // The last report of the backend that could not be given a valid weight is to blame; for a table that
      // could not be built, the last report.
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
    for (const { report, backend } of targets) {
      this.feedbackReports.set(report.service, (this.feedbackReports.get(report.service) ?? 0) + 1);
      if (outcomes.has(backend)) continue;
      this.events.feedback({
        service: report.service,
        backend: backend.config.id,
        configured: backend.config.weight,
        effectiveWeight: backend.effectiveWeight,
        state: backend.feedback?.state ?? "up",
        reported: describeReport(report),
      });
      outcomes.set(backend, {
        service: report.service,
        backend: backend.config.id,
        effectiveWeight: backend.effectiveWeight,
        state: backend.state,
      });
    }
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
    this.#transition(
      [serviceRuntime],
      new Map([[runtime, {
        ...track,
        lastCheck: { at: this.#now(), ok: result.ok, detail: result.detail },
        ...(result.agent ? { agentCheck: result.agent } : {}),
      }]]),
    );
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
    const touched = new Set<ServiceRuntime>();
    const staged = new Map<BackendRuntime, BackendChange>();
    const seen = new Map<BackendRuntime, { service: ServiceRuntime; before: Health; detail: string }>();
    const counted: Array<{ service: string; backend: string; count: number }> = [];
    for (const { service, backend, count } of failures) {
      const serviceRuntime = this.#services.get(service);
      const runtime = serviceRuntime?.backends.find((b) => b.config.id === backend);
      if (!serviceRuntime || !runtime || !(count > 0 && Number.isSafeInteger(count))) continue;
      const view = { ...runtime, ...staged.get(runtime) };
      staged.set(runtime, this.#track(serviceRuntime, view, { ok: false, count }));
      const detail = `${count} connect failures seen by ${agent}`;
      seen.set(runtime, {
        service: serviceRuntime,
        before: seen.get(runtime)?.before ?? runtime.health,
        detail,
      });
      counted.push({ service, backend, count });
      touched.add(serviceRuntime);
    }
    this.#transition([...touched], staged);
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
      const runtime = this.#services.get(service)?.backends.find((b) => b.config.id === backend);
      if (runtime && open > 0) runtime.openByAgent.set(agent, open);
    }
  }

  forgetAgent(agent: string): void {
    this.reportOpen(agent, []);
  }

  /** The state pushed to every agent. */
  snapshot(): ClusterState {
    return this.#snapshotOf(this.#config, [...this.#services.values()]);
  }

  #snapshotOf(config: Config, runtimes: readonly ServiceRuntime[]): ClusterState {
    const services: ServiceSpec[] = runtimes.map((service) => {
      const { config } = service;
      return {
        name: config.name,
        listen: { host: config.listen.host, port: config.listen.port },
        decide: config.decide,
        decisionTimeoutMs: config.decisionTimeoutMs,
        handoff: config.handoff,
        affinity: { key: config.affinity.key, ttlMs: config.affinity.ttlMs },
        proxyProtocol: config.proxyProtocol,
        timeouts: { ...config.timeouts },
        maxConnections: config.limits.maxConnections,
        backends: service.backends.map((backend) => ({
          id: backend.config.id,
          host: backend.config.address.host,
          port: backend.config.address.port,
          weight: backend.effectiveWeight,
          state: backend.state,
        })),
        table: encodeTable(service.table),
      };
    });
    return {
      version: this.#version,
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
    const found = runtime.backends.find((b) => b.config.id === backend);
    if (!found) throw new UnknownError(`Unknown backend "${backend}" in service "${service}"`);
    return found;
  }

  /**
   * Makes `config` the one in force: every service's runtime, effective weights and table are computed
   * first, and the state agents would get is encoded once to check that it fits in a frame; only then is
   * anything replaced.
   */
  #applyServices(config: Config): void {
    const now = this.#now();
    const next = new Map<string, ServiceRuntime>();
    const plans: ServicePlan[] = [];
    for (const serviceConfig of config.services) {
      const previous = this.#services.get(serviceConfig.name);
      const backends = serviceConfig.backends.map((backendConfig): BackendRuntime => {
        const old = previous?.backends.find((b) => b.config.id === backendConfig.id);
        return {
          config: backendConfig,
          operatorState: old?.operatorState ?? "up",
          health: old?.health ?? "unknown",
          checks: old?.checks ?? { successes: 0, failures: 0 },
          lastCheck: old?.lastCheck ?? null,
          agentCheck: serviceConfig.health.kind === "agent-check" ? old?.agentCheck ?? null : null,
          feedback: old?.feedback ?? null,
          effectiveWeight: 0,
          state: "up",
          openByAgent: old?.openByAgent ?? new Map(),
        };
      });
      const runtime: ServiceRuntime = {
        config: serviceConfig,
        backends,
        table: previous?.table ?? new Uint16Array(0),
        tableIds: previous?.tableIds ?? [],
        lastSlotsMoved: 0,
        totalSlotsMoved: previous?.totalSlotsMoved ?? 0,
      };
      plans.push(this.#plan(runtime, now, new Map(), { force: true }));
      next.set(serviceConfig.name, runtime);
    }
    const events: NewEvent[] = [];
    for (const plan of plans) this.#commit(plan, now, events);
    try {
      encodeFrame({ type: "state", state: this.#snapshotOf(config, [...next.values()]) });
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      throw new RangeError(
        `Cannot take a config of ${config.services.length} services: the state agents need would not fit ` +
          `in one frame (${error.message})`,
      );
    }
    this.#config = config;
    this.#services = next;
    for (const event of events) this.events.add(event);
    this.#scheduleExpiry();
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
   * Validates, then commits, one transition: `changes` to some backends of `services`, and expired
   * feedback dropped. Computes every touched service's effective weights and table first; only when all
   * are valid are the changes and the tables applied. Tells listeners when anything agents see changed,
   * and re-arms the expiry timer when feedback records were added or dropped. Throws a `RangeError` (a
   * `WeightError` for a weight out of bounds) with nothing changed.
   */
  #transition(
    services: readonly ServiceRuntime[],
    changes: Map<BackendRuntime, BackendChange>,
    options: { feedbackChanged?: boolean } = {},
  ): void {
    const now = this.#now();
    let feedbackChanged = options.feedbackChanged === true;
    for (const service of services) {
      for (const backend of service.backends) {
        const change = changes.get(backend);
        const feedback = change !== undefined && "feedback" in change ? change.feedback : backend.feedback;
        if (feedback !== null && feedback !== undefined && !isLive(feedback, now)) {
          changes.set(backend, { ...change, feedback: null });
          feedbackChanged = true;
        }
      }
    }
    const plans = services.map((service) => this.#plan(service, now, changes));
    // Everything is valid: from here on nothing throws.
    for (const [backend, change] of changes) Object.assign(backend, change);
    let changed = false;
    const events: NewEvent[] = [];
    for (const plan of plans) {
      if (this.#commit(plan, now, events)) changed = true;
    }
    for (const event of events) this.events.add(event);
    if (feedbackChanged) this.#scheduleExpiry();
    if (changed) this.#changed();
  }

  /**
   * The effective weights and states of `service`'s backends with `changes` applied, and its new table
   * when any of them changed (or when `force`d). Changes nothing; throws a `WeightError` for a weight that
   * is not a finite number from 0 to `MAX_EFFECTIVE_WEIGHT`, and a `RangeError` when the table cannot be
   * built.
   */
  #plan(
    service: ServiceRuntime,
    now: number,
    changes: ReadonlyMap<BackendRuntime, BackendChange>,
    options: { force?: boolean } = {},
  ): ServicePlan {
    let changed = options.force === true;
    const states: BackendState[] = [];
    const weights: number[] = [];
    for (const backend of service.backends) {
      const view: BackendView = { ...backend, ...changes.get(backend) };
      const state = stateOf(view, now);
      const weight = state === "up" ? weightOf(view, now) : 0;
      if (!(weight >= 0 && weight <= MAX_EFFECTIVE_WEIGHT)) {
        throw new WeightError(
          `Cannot give backend ${backend.config.id} of ${service.config.name} the weight ${weight}: ` +
            `a weight is a number from 0 to ${MAX_EFFECTIVE_WEIGHT}`,
          backend,
        );
      }
      if (state !== backend.state || weight !== backend.effectiveWeight) changed = true;
      states.push(state);
      weights.push(weight);
    }
    if (!changed) return { service, states, weights, table: null };
    const entries = service.backends.map((backend, index) => ({
      id: backend.config.id,
      weight: weights[index]!,
    }));
    const slots = buildTable(entries, { size: this.#tableSize });
    const ids = entries.map((entry) => entry.id);
    const moved = service.table.length === slots.length
      ? slotsMoved(service.table, service.tableIds, slots, ids)
      : 0;
    return { service, states, weights, table: { slots, ids, moved } };
  }

  /**
   * Applies a plan's weights, states and table, and adds the events of the states that changed to
   * `events`; returns whether anything agents see changed.
   */
  #commit(plan: ServicePlan, now: number, events: NewEvent[]): boolean {
    const { service } = plan;
    service.backends.forEach((backend, index) => {
      const state = plan.states[index]!;
      if (state !== backend.state) {
        const shown = state === "draining" ? "drain" : state;
        const reason = state === "up" ? "" : ` (${reasonOf(backend, now)})`;
        events.push({
          kind: "state",
          severity: state === "down" ? "warning" : "info",
          service: service.config.name,
          backend: backend.config.id,
          message: `Backend ${backend.config.id} of ${service.config.name} is ${shown}${reason}`,
        });
      }
      backend.state = state;
      backend.effectiveWeight = plan.weights[index]!;
    });
    if (plan.table === null) return false;
    service.table = plan.table.slots;
    service.tableIds = plan.table.ids;
    service.lastSlotsMoved = plan.table.moved;
    service.totalSlotsMoved += plan.table.moved;
    return true;
  }

  /** Arms one timer for the earliest feedback expiry, so that an expired report changes the table itself. */
  #scheduleExpiry(): void {
    if (this.#closed) return;
    let earliest = Infinity;
    for (const service of this.#services.values()) {
      for (const backend of service.backends) {
        if (backend.feedback !== null) earliest = Math.min(earliest, backend.feedback.expiresAt);
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
    const expired: ServiceRuntime[] = [];
    const changes = new Map<BackendRuntime, BackendChange>();
    for (const service of this.#services.values()) {
      const due = service.backends.filter((backend) =>
        backend.feedback !== null && !isLive(backend.feedback, now)
      );
      if (due.length === 0) continue;
      expired.push(service);
      for (const backend of due) changes.set(backend, { feedback: null });
    }
    this.#transition(expired, changes, { feedbackChanged: true });
    for (const service of expired) {
      for (const backend of service.backends.filter((b) => changes.has(b))) {
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

  #changed(): void {
    this.#version++;
    // The change is made: a listener that fails is its own error, not the transition's.
    for (const listener of this.#listeners) guard("state_listener", listener);
  }
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

/** What a backend is worth in new decisions, as of its service's last rebuild. */
export function effectiveWeight(backend: BackendRuntime): number {
  return backend.effectiveWeight;
}

/** A backend's state in force, as of its service's last rebuild. */
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
