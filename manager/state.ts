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
 * Invariants: `snapshot().services[i].table` is always the table of the current effective weights;
 * `version` grows by one on every change an agent must learn of, and only then; feedback for one service
 * never touches another, even when the same address is a backend of both; a report that expires puts its
 * backend back at its configured weight and state by itself (a timer, stopped by `close()`).
 */
import { buildTable, slotsMoved } from "../cluster/maglev.ts";
import { logger } from "../cluster/log.ts";
import { type ClusterState, encodeTable, type ServiceSpec } from "../cluster/protocol.ts";
import {
  type AgentCheckReply,
  applyReport,
  type FeedbackRecord,
  feedbackState,
  feedbackWeight,
  isLive,
  liveRaw,
  type Report,
} from "../feedback/mod.ts";
import type { BackendConfig, Config, ServiceConfig } from "./config.ts";
import { EventLog } from "./events.ts";
import { type CheckResult, nextHealth } from "./health.ts";

const log = logger("manager", "state");

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

export interface AgentView {
  readonly id: string;
  readonly mesh: string | null;
}

export interface ModelOptions {
  readonly seed: number;
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
    this.#now = options.now ?? (() => performance.now());
    this.#applyServices(config.services);
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

  /** Takes a new config; backends that stay keep their operator state and health. */
  reload(config: Config): void {
    this.#config = config;
    this.#applyServices(config.services);
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
      runtime.operatorState = state;
      this.#update([this.#services.get(service) as ServiceRuntime]);
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
    for (const service of this.#services.values()) {
      for (const backend of service.backends) {
        backend.operatorState = operator.get(service.config.name)?.get(backend.config.id) ?? "up";
        backend.feedback = feedback.get(service.config.name)?.get(backend.config.id) ?? null;
      }
    }
    this.#update([...this.#services.values()], { feedbackChanged: true });
  }

  setHealth(service: string, backend: string, health: Health): void {
    const runtime = this.#backend(service, backend);
    if (runtime.health === health) return;
    runtime.health = health;
    runtime.checks = { successes: 0, failures: 0 };
    this.#update([this.#services.get(service) as ServiceRuntime]);
  }

  /**
   * Applies feedback reports in order, all or none: an unknown service or backend throws an
   * `UnknownError` before anything changes. Tables are rebuilt once per service touched. Returns each
   * reported backend once, in the order first reported, with its new effective weight.
   */
  applyFeedback(reports: readonly Report[]): FeedbackOutcome[] {
    const targets = reports.map((report) => ({
      report,
      backend: this.#backend(report.service, report.backend),
    }));
    const now = this.#now();
    const touched = new Set<ServiceRuntime>();
    for (const { report, backend } of targets) {
      const service = this.#services.get(report.service) as ServiceRuntime;
      backend.feedback = applyReport(report, {
        configured: backend.config.weight,
        current: backend.feedback,
        peers: service.backends.filter((peer) => peer !== backend && peer.config.weight > 0).map((peer) => ({
          configured: peer.config.weight,
          raw: liveRaw(peer.feedback, now),
        })),
        settings: service.config.feedback,
        now,
      });
      touched.add(service);
    }
    this.#update([...touched], { feedbackChanged: true });
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

  /** Takes the outcome of one active check of a backend (from the health checker). */
  recordCheck(service: string, backend: string, result: CheckResult): void {
    const runtime = this.#backend(service, backend);
    const serviceRuntime = this.#services.get(service) as ServiceRuntime;
    runtime.lastCheck = { at: this.#now(), ok: result.ok, detail: result.detail };
    if (result.agent) runtime.agentCheck = result.agent;
    this.#track(serviceRuntime, runtime, { ok: result.ok }, result.detail);
    this.#update([serviceRuntime]);
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
    for (const { service, backend, count } of failures) {
      const serviceRuntime = this.#services.get(service);
      const runtime = serviceRuntime?.backends.find((b) => b.config.id === backend);
      if (!serviceRuntime || !runtime || count <= 0) continue;
      let counts = this.connectFailures.get(service);
      if (!counts) this.connectFailures.set(service, counts = new Map());
      counts.set(backend, (counts.get(backend) ?? 0) + count);
      this.#track(
        serviceRuntime,
        runtime,
        { ok: false, count },
        `${count} connect failures seen by ${agent}`,
      );
      touched.add(serviceRuntime);
    }
    this.#update([...touched]);
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
    const services: ServiceSpec[] = this.services().map((service) => {
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
      heartbeatMs: this.#config.agents.heartbeatMs,
      services,
      agents: this.#agents.map((agent) => ({ id: agent.id, mesh: agent.mesh })),
      // With manager.tls, the agents' mesh ports speak TLS with the manager's certificate.
      meshTls: this.#config.manager.tls
        ? { cert: this.#config.manager.tls.cert, key: this.#config.manager.tls.key }
        : null,
    };
  }

  #backend(service: string, backend: string): BackendRuntime {
    const runtime = this.#services.get(service);
    if (!runtime) throw new UnknownError(`Unknown service "${service}"`);
    const found = runtime.backends.find((b) => b.config.id === backend);
    if (!found) throw new UnknownError(`Unknown backend "${backend}" in service "${service}"`);
    return found;
  }

  #applyServices(configs: readonly ServiceConfig[]): void {
    const next = new Map<string, ServiceRuntime>();
    for (const config of configs) {
      const previous = this.#services.get(config.name);
      const backends = config.backends.map((backendConfig): BackendRuntime => {
        const old = previous?.backends.find((b) => b.config.id === backendConfig.id);
        return {
          config: backendConfig,
          operatorState: old?.operatorState ?? "up",
          health: old?.health ?? "unknown",
          checks: old?.checks ?? { successes: 0, failures: 0 },
          lastCheck: old?.lastCheck ?? null,
          agentCheck: config.health.kind === "agent-check" ? old?.agentCheck ?? null : null,
          feedback: old?.feedback ?? null,
          effectiveWeight: 0,
          state: "up",
          openByAgent: old?.openByAgent ?? new Map(),
        };
      });
      const runtime: ServiceRuntime = {
        config,
        backends,
        table: previous?.table ?? new Uint16Array(0),
        tableIds: previous?.tableIds ?? [],
        lastSlotsMoved: 0,
        totalSlotsMoved: previous?.totalSlotsMoved ?? 0,
      };
      this.#rebuild(runtime, { force: true });
      next.set(config.name, runtime);
    }
    this.#services = next;
    this.#scheduleExpiry();
  }

  /** Moves a backend's health track by one outcome, and logs when its health changes. */
  #track(
    service: ServiceRuntime,
    backend: BackendRuntime,
    outcome: { ok: boolean; count?: number },
    detail: string,
  ): void {
    const { rise, fall } = service.config.health;
    const before = backend.health;
    const next = nextHealth({ health: before, ...backend.checks }, outcome, { rise, fall });
    backend.health = next.health;
    backend.checks = { successes: next.successes, failures: next.failures };
    if (before === next.health) return;
    const fields = { service: service.config.name, backend: backend.config.id, detail, rise, fall };
    this.events.add({
      kind: "health",
      severity: next.health === "down" ? "warning" : "info",
      service: fields.service,
      backend: fields.backend,
      message: next.health === "down"
        ? `Backend ${fields.backend} of ${fields.service} is down after ${fall} failed checks: ${detail}`
        : `Backend ${fields.backend} of ${fields.service} is healthy after ${rise} passed checks`,
    });
    if (next.health === "down") {
      log.warn(
        "Backend {backend} of {service} is down after {fall} failed checks in a row: {detail}",
        fields,
      );
    } else if (before === "down") {
      log.info("Backend {backend} of {service} is up again after {rise} passed checks", fields);
    }
  }

  /**
   * Drops expired feedback, rebuilds the tables of `services`, and tells listeners if any changed; re-arms
   * the expiry timer when feedback records were added or dropped.
   */
  #update(services: readonly ServiceRuntime[], options: { feedbackChanged?: boolean } = {}): void {
    const now = this.#now();
    let changed = false;
    let feedbackChanged = options.feedbackChanged === true;
    for (const service of services) {
      for (const backend of service.backends) {
        if (backend.feedback !== null && !isLive(backend.feedback, now)) {
          backend.feedback = null;
          feedbackChanged = true;
        }
      }
      if (this.#rebuild(service)) changed = true;
    }
    if (feedbackChanged) this.#scheduleExpiry();
    if (changed) this.#changed();
  }

  /**
   * Recomputes the service's effective weights and states; rebuilds its table when any changed (or when
   * `force`d). Returns whether anything agents see changed.
   */
  #rebuild(service: ServiceRuntime, options: { force?: boolean } = {}): boolean {
    const now = this.#now();
    let changed = options.force === true;
    for (const backend of service.backends) {
      const state = stateOf(backend, now);
      const weight = state === "up" ? weightOf(backend, now) : 0;
      if (state !== backend.state || weight !== backend.effectiveWeight) changed = true;
      if (state !== backend.state) {
        const shown = state === "draining" ? "drain" : state;
        const reason = state === "up" ? "" : ` (${reasonOf(backend, now)})`;
        this.events.add({
          kind: "state",
          severity: state === "down" ? "warning" : "info",
          service: service.config.name,
          backend: backend.config.id,
          message: `Backend ${backend.config.id} of ${service.config.name} is ${shown}${reason}`,
        });
      }
      backend.state = state;
      backend.effectiveWeight = weight;
    }
    if (!changed) return false;
    const entries = service.backends.map((backend) => ({
      id: backend.config.id,
      weight: backend.effectiveWeight,
    }));
    const table = buildTable(entries);
    const ids = entries.map((entry) => entry.id);
    const moved = service.table.length === table.length
      ? slotsMoved(service.table, service.tableIds, table, ids)
      : 0;
    service.table = table;
    service.tableIds = ids;
    service.lastSlotsMoved = moved;
    service.totalSlotsMoved += moved;
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
      this.#expire();
    }, Math.ceil(delay));
  }

  #expire(): void {
    const now = this.#now();
    const expired: ServiceRuntime[] = [];
    for (const service of this.#services.values()) {
      const due = service.backends.filter((backend) =>
        backend.feedback !== null && !isLive(backend.feedback, now)
      );
      if (due.length === 0) continue;
      expired.push(service);
      for (const backend of due) {
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
    this.#update(expired, { feedbackChanged: true });
  }

  #changed(): void {
    this.#version++;
    for (const listener of this.#listeners) listener();
  }
}

/** A service or backend name that is not configured. */
export class UnknownError extends Error {
  override readonly name = "UnknownError";
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
function stateOf(backend: BackendRuntime, now: number): BackendState {
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
function weightOf(backend: BackendRuntime, now: number): number {
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
