/**
 * The manager's view of the cluster: every service with its backends' configured weight, operator
 * state, health and open connections, the effective weights that follow from them, and the Maglev table
 * built from those weights. Only the manager moves a backend between states; agents learn of every
 * change through a new versioned `ClusterState`.
 *
 * Invariant: `snapshot().services[i].table` is always the table of the current effective weights, and
 * `version` grows by one on every change an agent must learn of.
 */
import { buildTable, slotsMoved } from "../cluster/maglev.ts";
import { type ClusterState, encodeTable, type ServiceSpec } from "../cluster/protocol.ts";
import type { BackendConfig, Config, ServiceConfig } from "./config.ts";

/** A backend's state as an operator sets it: `drain` keeps open connections, takes no new ones. */
export type OperatorState = "up" | "drain";
export type Health = "up" | "down" | "unknown";

export interface BackendRuntime {
  readonly config: BackendConfig;
  operatorState: OperatorState;
  health: Health;
  /** Open connections to this backend, per agent, as the agents last reported them. */
  readonly openByAgent: Map<string, number>;
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

export class ClusterModel {
  #config: Config;
  #services = new Map<string, ServiceRuntime>();
  #agents: AgentView[] = [];
  #version = 0;
  readonly #epoch = crypto.randomUUID();
  readonly #seed: number;
  readonly #listeners = new Set<() => void>();

  constructor(config: Config, options: { seed: number }) {
    this.#config = config;
    this.#seed = options.seed;
    this.#applyServices(config.services);
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
      this.#rebuild(this.#services.get(service) as ServiceRuntime);
      this.#changed();
    }
    return runtime;
  }

  setHealth(service: string, backend: string, health: Health): void {
    const runtime = this.#backend(service, backend);
    if (runtime.health === health) return;
    runtime.health = health;
    this.#rebuild(this.#services.get(service) as ServiceRuntime);
    this.#changed();
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
          weight: effectiveWeight(backend),
          state: backendState(backend),
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
      this.#rebuild(runtime);
      next.set(config.name, runtime);
    }
    this.#services = next;
  }

  #rebuild(service: ServiceRuntime): void {
    const entries = service.backends.map((backend) => ({
      id: backend.config.id,
      weight: effectiveWeight(backend),
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

/** What a backend is worth in new decisions: its configured weight while up and not failing checks. */
export function effectiveWeight(backend: BackendRuntime): number {
  if (backend.operatorState !== "up" || backend.health === "down") return 0;
  return backend.config.weight;
}

export function backendState(backend: BackendRuntime): "up" | "draining" | "down" {
  if (backend.health === "down") return "down";
  return backend.operatorState === "drain" ? "draining" : "up";
}

export function openConnections(backend: BackendRuntime): number {
  let total = 0;
  for (const open of backend.openByAgent.values()) total += open;
  return total;
}
