/**
 * The manager's `/metrics` page, read from its state at scrape time and written with the shared writer
 * (`cluster/prometheus.ts`), and the bounds of its decision-time histogram.
 */
import { addInternalErrors, Exposition, type Histogram, type Sample } from "../cluster/prometheus.ts";
import type { AheadCounts } from "./ahead.ts";
import type { AgentSession } from "./agent_session.ts";
import type { RoleName } from "./role.ts";
import { rampView } from "./slow_start.ts";
import type { ServiceRuntime } from "./state.ts";

/** Upper bounds (seconds) of the manager's decision-time histogram: 10 µs to 25 ms. */
export const DECISION_BUCKETS_S: readonly number[] = [
  0.00001,
  0.000025,
  0.00005,
  0.0001,
  0.00025,
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
];

/** The loops of the manager that run their turns through `guard`. */
export const MANAGER_GUARDED = [
  "health_check",
  "feedback_expiry",
  "slow_start",
  "table_rebuild",
  "history",
  "agent_session",
  "agent_sweep",
  "state_push",
  "state_listener",
  "reload",
  "unhandled",
] as const;

/** What the manager's `/metrics` is made of, read at scrape time. */
export interface ManagerMetricsSource {
  readonly services: readonly ServiceRuntime[];
  readonly agents: readonly AgentSession[];
  /** Each live agent's share of the flow-hash space. */
  readonly claims: ReadonlyMap<string, number>;
  /** The decider's time per decision, by service. */
  readonly decisionSeconds: ReadonlyMap<string, Histogram>;
  /** Decisions made ahead (`decide_ahead`) by service, and what became of them. */
  readonly decisionsAhead: ReadonlyMap<string, Readonly<AheadCounts>>;
  /** Decisions per service and backend. */
  readonly decisions: ReadonlyMap<string, ReadonlyMap<string, number>>;
  /** Feedback reports taken, by service. */
  readonly feedbackReports: ReadonlyMap<string, number>;
  /** Connect failures the agents reported, by service and backend. */
  readonly connectFailures: ReadonlyMap<string, ReadonlyMap<string, number>>;
  readonly version: number;
  /** Failed turns of the manager's loops, by where (`cluster/guard.ts`). */
  readonly internalErrors: ReadonlyMap<string, number>;
  /** The model's clock (ms), which feedback ages are measured on. */
  readonly modelNow: number;
  /** `performance.now()`, which heartbeats are stamped with. */
  readonly now: number;
  /** This manager's role among managers, the changes of leader it has seen, and its writes to etcd. */
  readonly role?: {
    readonly name: RoleName;
    readonly leaderChanges: number;
    readonly stateWrites:
      | { readonly transactions: number; readonly keys: number; readonly failures: number }
      | null;
  };
}

const ROLES: readonly RoleName[] = ["single", "leader", "standby"];

const BACKEND_STATES = [["up", "up"], ["draining", "drain"], ["down", "down"]] as const;
const HEALTHS = ["up", "down", "unknown"] as const;

/** The manager's `/metrics` page. */
export function managerMetrics(source: ManagerMetricsSource): string {
  const { services, agents } = source;
  const perBackend = (value: (backend: ServiceRuntime["backends"][number]) => number | null) =>
    services.flatMap((service) =>
      service.backends.flatMap((backend): Sample[] => {
        const v = value(backend);
        return v === null ? [] : [[{ service: service.config.name, backend: backend.config.id }, v]];
      })
    );
  const nested = (map: ReadonlyMap<string, ReadonlyMap<string, number>>) =>
    [...map].flatMap(([service, backends]) =>
      [...backends].map(([backend, count]): Sample => [{ service, backend }, count])
    );
  const page = new Exposition()
    .histogram(
      "switchyard_decision_seconds",
      "Time the manager took to decide one flow an agent asked about (decide: manager).",
      [...source.decisionSeconds].map(([service, histogram]) => [{ service }, histogram] as const),
    )
    .counter(
      "switchyard_decisions_total",
      "Flows the manager decided, by the backend it chose: asked about one at a time, or taken from its " +
        "queues made ahead (counted as the agents report their use).",
      nested(source.decisions),
    )
    .counter(
      "switchyard_decisions_ahead_total",
      "Decisions the manager made ahead for its claimants (decide_ahead), by what became of them: made, " +
        "used by a new connection, expired or taken back unused, and asked for one connection at a time.",
      [...source.decisionsAhead].flatMap(([service, counts]) =>
        (["made", "used", "expired", "taken_back", "asked"] as const).map((outcome): Sample => [
          { service, outcome },
          outcome === "taken_back" ? counts.takenBack : counts[outcome],
        ])
      ),
    )
    .gauge("switchyard_agents_live", "Agents connected to the manager now.", agents.length)
    .gauge(
      "switchyard_agent_claim_ratio",
      "Each live agent's share of the flow-hash space; the shares add up to 1.",
      agents.map((agent): Sample => [{ agent: agent.id }, source.claims.get(agent.id) ?? 0]),
    )
    .gauge(
      "switchyard_agent_heartbeat_age_seconds",
      "Seconds since each agent's last heartbeat.",
      agents.map((agent): Sample => [{ agent: agent.id }, round((source.now - agent.lastHeartbeat) / 1000)]),
    )
    .counter(
      "switchyard_agent_reported_served_total",
      "Connections each agent forwarded to a backend itself, as its last heartbeat reported.",
      agents.map((agent): Sample => [{ agent: agent.id }, agent.connections.served]),
    )
    .counter(
      "switchyard_agent_reported_handoffs_total",
      "Connections each agent relayed to their claimant, as its last heartbeat reported.",
      agents.map((agent): Sample => [{ agent: agent.id }, agent.connections.handed_off]),
    )
    .counter(
      "switchyard_agent_reported_decisions_total",
      "Decisions of the manager each agent took for its flows, as its last heartbeat reported.",
      agents.map((agent): Sample => [{ agent: agent.id }, agent.connections.decided ?? 0]),
    )
    .gauge(
      "switchyard_agent_reported_open_connections",
      "Connections open through each agent, as its last heartbeat reported.",
      agents.map((agent): Sample => [{ agent: agent.id }, agent.connections.open]),
    )
    .gauge(
      "switchyard_backend_weight",
      "Each backend's configured weight.",
      perBackend((backend) => backend.config.weight),
    )
    .gauge(
      "switchyard_backend_effective_weight",
      "The weight each backend has in new decisions: feedback, health, state and agent-check applied.",
      perBackend((backend) => backend.effectiveWeight),
    )
    .gauge(
      "switchyard_backend_slow_start_ratio",
      "The share of its weight each backend has in its slow start (slow_start); 1 when none is under way.",
      services.flatMap((service) =>
        service.backends.map((backend): Sample => [
          { service: service.config.name, backend: backend.config.id },
          rampView(backend.slowStart, service.config.slowStartMs, source.modelNow)?.share ?? 1,
        ])
      ),
    )
    .gauge(
      "switchyard_backend_state",
      "1 for the state each backend is in (up, drain or down), 0 for the others.",
      services.flatMap((service) =>
        service.backends.flatMap((backend) =>
          BACKEND_STATES.map(([state, shown]): Sample => [
            { service: service.config.name, backend: backend.config.id, state: shown },
            backend.state === state ? 1 : 0,
          ])
        )
      ),
    )
    .gauge(
      "switchyard_backend_health",
      "1 for each backend's health as checked (up, down or unknown), 0 for the others.",
      services.flatMap((service) =>
        service.backends.flatMap((backend) =>
          HEALTHS.map((health): Sample => [
            { service: service.config.name, backend: backend.config.id, health },
            backend.health === health ? 1 : 0,
          ])
        )
      ),
    )
    .gauge(
      "switchyard_backend_open_connections",
      "Connections open to each backend, as the agents last reported them.",
      perBackend((backend) => {
        let open = 0;
        for (const count of backend.openByAgent.values()) open += count;
        return open;
      }),
    )
    .counter(
      "switchyard_backend_connections_total",
      "Connections the agents started to each backend since this manager started, as they reported them.",
      perBackend((backend) => backend.started),
    )
    .gauge(
      "switchyard_feedback_age_seconds",
      "Seconds since each backend's live feedback report; absent when it has none.",
      perBackend((backend) =>
        backend.feedback === null ? null : round((source.modelNow - backend.feedback.reportedAt) / 1000)
      ),
    )
    .counter(
      "switchyard_feedback_reports_total",
      "Feedback reports taken, by service.",
      [...source.feedbackReports].map(([service, count]): Sample => [{ service }, count]),
    )
    .counter(
      "switchyard_backend_connect_failures_total",
      "Failed connection attempts to each backend, as the agents reported them.",
      nested(source.connectFailures),
    )
    .counter(
      "switchyard_table_slots_moved_total",
      "Maglev table slots that changed backend since the manager started, by service.",
      services.map((service): Sample => [{ service: service.config.name }, service.totalSlotsMoved]),
    )
    .gauge(
      "switchyard_state_version",
      "The version of the cluster state; agents acknowledge the versions they serve.",
      source.version,
    )
    .gauge(
      "switchyard_manager_role",
      "1 for this manager's role (single, leader or standby), 0 for the others.",
      ROLES.map((role): Sample => [{ role }, (source.role?.name ?? "single") === role ? 1 : 0]),
    )
    .counter(
      "switchyard_manager_leader_changes_total",
      "Changes of the leading manager this manager has seen (manager.ha).",
      source.role?.leaderChanges ?? 0,
    )
    .counter(
      "switchyard_manager_state_writes_total",
      "Transactions of state (feedback, drains, agents) this manager stored in etcd as leader (manager.ha).",
      source.role?.stateWrites?.transactions ?? 0,
    )
    .counter(
      "switchyard_manager_state_write_failures_total",
      "Transactions of state etcd did not take from this manager (tried again while it leads).",
      source.role?.stateWrites?.failures ?? 0,
    );
  return addInternalErrors(page, source.internalErrors, { known: MANAGER_GUARDED }).text();
}

function round(value: number): number {
  return Math.round(value * 1000) / 1000;
}
