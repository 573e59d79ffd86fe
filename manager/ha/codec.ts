/**
 * What several managers keep in etcd under `manager.ha.prefix`, and how each value is written: pure, no
 * I/O. One key per piece of state, so that a change is one small write and a standby follows it key by key:
 *
 * ```
 * PREFIX/leader                      the leading manager (bound to its lease)
 * PREFIX/managers/ID                 each manager that runs (bound to its lease)
 * PREFIX/operator/SERVICE/BACKEND    an operator's state of a backend: up or drain
 * PREFIX/feedback/SERVICE/BACKEND    a backend's last feedback, with the wall-clock time it expires
 * PREFIX/agents                      the agents with a claim, so that claims stay where they are on failover
 * PREFIX/config                      the version of the config the leader runs
 * ```
 *
 * Feedback times are the model's clock (`performance.now`, one per process) inside a manager and wall-clock
 * milliseconds in etcd; `Clock` converts, so a record expires at the same moment whichever manager holds it
 * (as long as the managers' clocks agree, as NTP keeps them). A value that does not parse is left out, never
 * applied.
 */
import { z } from "zod";
import type { FeedbackRecord } from "../../feedback/mod.ts";
import type { Config } from "../config.ts";
import type { OperatorState } from "../state.ts";

/** A manager as the others see it. */
export interface ManagerInfo {
  readonly id: string;
  /** Its admin API, where standbys pass writes. */
  readonly admin: string;
  /** Its cluster port, where agents are sent. */
  readonly cluster: string;
  /** The version of the config it runs (`configVersion`). */
  readonly configVersion: string;
  /** When it started, wall-clock ms. */
  readonly startedAt: number;
}

/** An agent with a claim, as the leader last knew it. */
export interface StoredAgent {
  readonly id: string;
  readonly mesh: string | null;
  readonly remote: string;
  /** Wall-clock ms. */
  readonly joinedAt: number;
  /** Wall-clock ms of its last heartbeat. */
  readonly heardAt: number;
  readonly connections: { readonly served: number; readonly handed_off: number; readonly open: number };
  readonly stateVersion: number;
}

/** The config the leader runs. */
export interface StoredConfig {
  readonly version: string;
  readonly manager: string;
  /** Wall-clock ms. */
  readonly at: number;
}

/** The leader key as read: who leads, and the revision that created the key (the leader's fence). */
export interface LeaderKey {
  readonly info: ManagerInfo;
  readonly createRevision: number;
  readonly lease: string;
}

/** Operator states or feedback records by service, then backend. */
export type ByBackend<T> = Map<string, Map<string, T>>;

/** Everything under the prefix, decoded. */
export interface StoredState {
  leader: LeaderKey | null;
  readonly managers: Map<string, ManagerInfo>;
  readonly operator: ByBackend<OperatorState>;
  /** Records on the model's clock; expired ones are left out. */
  readonly feedback: ByBackend<FeedbackRecord>;
  agents: StoredAgent[];
  config: StoredConfig | null;
}

/** The model's clock and the wall clock read at one moment. */
export interface Clock {
  /** The model's clock, ms. */
  readonly model: number;
  /** `Date.now()`. */
  readonly wall: number;
}

/**
 * The version of a config: the start of the SHA-256 of what every manager of one cluster must agree on (its
 * services, agents' settings, tokens and etcd settings), leaving out what each manager may set its own way
 * (its addresses and TLS files).
 */
export async function configVersion(config: Config): Promise<string> {
  const shared = {
    services: config.services,
    agents: config.agents,
    tokens: config.manager.tokens,
    ha: config.manager.ha,
  };
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(JSON.stringify(shared)));
  return Array.from(new Uint8Array(digest).subarray(0, 8), (byte) => byte.toString(16).padStart(2, "0")).join(
    "",
  );
}

export function clockNow(modelNow: number): Clock {
  return { model: modelNow, wall: Date.now() };
}

/** The keys of one cluster. */
export class Keys {
  readonly prefix: string;

  constructor(prefix: string) {
    this.prefix = prefix;
  }

  /** Every key of the cluster starts with this. */
  get all(): string {
    return `${this.prefix}/`;
  }

  get leader(): string {
    return `${this.prefix}/leader`;
  }

  get agents(): string {
    return `${this.prefix}/agents`;
  }

  get config(): string {
    return `${this.prefix}/config`;
  }

  manager(id: string): string {
    return `${this.prefix}/managers/${encodeURIComponent(id)}`;
  }

  operator(service: string, backend: string): string {
    return `${this.prefix}/operator/${encodeURIComponent(service)}/${encodeURIComponent(backend)}`;
  }

  feedback(service: string, backend: string): string {
    return `${this.prefix}/feedback/${encodeURIComponent(service)}/${encodeURIComponent(backend)}`;
  }

  /** What a key of this cluster is, or null for a key it does not know. */
  parse(
    key: string,
  ):
    | { kind: "leader" | "agents" | "config" }
    | { kind: "manager"; id: string }
    | { kind: "operator" | "feedback"; service: string; backend: string }
    | null {
    if (!key.startsWith(this.all)) return null;
    const parts = key.slice(this.all.length).split("/");
    try {
      const [kind, a, b] = parts.map(decodeURIComponent);
      if (parts.length === 1 && (kind === "leader" || kind === "agents" || kind === "config")) {
        return { kind };
      }
      if (parts.length === 2 && kind === "managers" && a) return { kind: "manager", id: a };
      if (parts.length === 3 && (kind === "operator" || kind === "feedback") && a && b) {
        return { kind, service: a, backend: b };
      }
    } catch {
      // a part that is not URI-encoded: not ours
    }
    return null;
  }
}

const text = z.string().min(1).max(1000);
const wallTime = z.number().finite().nonnegative();

const ManagerInfoSchema = z.object({
  id: text,
  admin: text,
  cluster: text,
  config_version: z.string().max(200),
  started_at: wallTime,
});

const FeedbackSchema = z.object({
  source: z.enum(["weight", "load", "state"]),
  reported_weight: z.number().finite().nullable(),
  load: z.object({
    utilization: z.number().finite(),
    qps: z.number().finite().optional(),
    eps: z.number().finite().optional(),
  }).nullable(),
  raw: z.number().finite().nullable(),
  target: z.number().finite().nullable(),
  weight: z.number().finite().nonnegative().nullable(),
  state: z.enum(["up", "drain", "down"]),
  reported_at: wallTime,
  expires_at: wallTime,
});

const counter = z.number().int().nonnegative();
const AgentsSchema = z.array(z.object({
  id: z.string().min(1).max(128),
  mesh: z.string().max(300).nullable(),
  remote: z.string().max(300),
  joined_at: wallTime,
  heard_at: wallTime,
  connections: z.object({ served: counter, handed_off: counter, open: counter }),
  state_version: z.number().int(),
})).max(10_000);

const ConfigSchema = z.object({ version: z.string().max(200), manager: text, at: wallTime });

export function encodeManager(info: ManagerInfo): string {
  return JSON.stringify({
    id: info.id,
    admin: info.admin,
    cluster: info.cluster,
    config_version: info.configVersion,
    started_at: info.startedAt,
  });
}

export function decodeManager(value: string): ManagerInfo | null {
  const parsed = parse(ManagerInfoSchema, value);
  return parsed === null ? null : {
    id: parsed.id,
    admin: parsed.admin,
    cluster: parsed.cluster,
    configVersion: parsed.config_version,
    startedAt: parsed.started_at,
  };
}

export function encodeOperator(state: OperatorState): string {
  return state;
}

export function decodeOperator(value: string): OperatorState | null {
  return value === "up" || value === "drain" ? value : null;
}

/** A feedback record for etcd: its times as wall-clock ms. */
export function encodeFeedback(record: FeedbackRecord, clock: Clock): string {
  const toWall = (at: number) => Math.round(clock.wall + (at - clock.model));
  return JSON.stringify({
    source: record.source,
    reported_weight: record.reportedWeight,
    load: record.load,
    raw: record.raw,
    target: record.target,
    weight: record.weight,
    state: record.state,
    reported_at: toWall(record.reportedAt),
    expires_at: toWall(record.expiresAt),
  });
}

/** A feedback record from etcd, on the model's clock; null when it does not parse or has expired. */
export function decodeFeedback(value: string, clock: Clock): FeedbackRecord | null {
  const parsed = parse(FeedbackSchema, value);
  if (parsed === null || parsed.expires_at <= clock.wall) return null;
  const toModel = (at: number) => clock.model + (at - clock.wall);
  const load = parsed.load === null ? null : {
    utilization: parsed.load.utilization,
    ...(parsed.load.qps !== undefined ? { qps: parsed.load.qps } : {}),
    ...(parsed.load.eps !== undefined ? { eps: parsed.load.eps } : {}),
  };
  return {
    source: parsed.source,
    reportedWeight: parsed.reported_weight,
    load,
    raw: parsed.raw,
    target: parsed.target,
    weight: parsed.weight,
    state: parsed.state,
    reportedAt: toModel(parsed.reported_at),
    expiresAt: toModel(parsed.expires_at),
  };
}

export function encodeAgents(agents: readonly StoredAgent[]): string {
  return JSON.stringify(agents.map((agent) => ({
    id: agent.id,
    mesh: agent.mesh,
    remote: agent.remote,
    joined_at: agent.joinedAt,
    heard_at: agent.heardAt,
    connections: agent.connections,
    state_version: agent.stateVersion,
  })));
}

export function decodeAgents(value: string): StoredAgent[] | null {
  const parsed = parse(AgentsSchema, value);
  return parsed === null ? null : parsed.map((agent) => ({
    id: agent.id,
    mesh: agent.mesh,
    remote: agent.remote,
    joinedAt: agent.joined_at,
    heardAt: agent.heard_at,
    connections: agent.connections,
    stateVersion: agent.state_version,
  }));
}

export function encodeConfig(config: StoredConfig): string {
  return JSON.stringify(config);
}

export function decodeConfig(value: string): StoredConfig | null {
  return parse(ConfigSchema, value);
}

export function emptyState(): StoredState {
  return {
    leader: null,
    managers: new Map(),
    operator: new Map(),
    feedback: new Map(),
    agents: [],
    config: null,
  };
}

/**
 * Applies one key's value (null: deleted) to `state`; returns what kind of state it was, or null for a key or
 * value that is not understood (left out).
 */
export function applyKey(
  state: StoredState,
  kv: { key: string; value: string | null; createRevision: number; lease: string },
  options: { keys: Keys; clock: Clock },
): "leader" | "manager" | "operator" | "feedback" | "agents" | "config" | null {
  const what = options.keys.parse(kv.key);
  if (what === null) return null;
  const { clock } = options;
  const value = kv.value;
  switch (what.kind) {
    case "leader": {
      const info = value === null ? null : decodeManager(value);
      state.leader = info === null ? null : { info, createRevision: kv.createRevision, lease: kv.lease };
      return value === null || info !== null ? "leader" : null;
    }
    case "manager": {
      const info = value === null ? null : decodeManager(value);
      if (info === null) state.managers.delete(what.id);
      else state.managers.set(what.id, info);
      return value === null || info !== null ? "manager" : null;
    }
    case "operator": {
      const operator = value === null ? null : decodeOperator(value);
      setIn(state.operator, { ...what, value: operator });
      return value === null || operator !== null ? "operator" : null;
    }
    case "feedback": {
      const record = value === null ? null : decodeFeedback(value, clock);
      setIn(state.feedback, { ...what, value: record });
      return "feedback";
    }
    case "agents": {
      const agents = value === null ? [] : decodeAgents(value);
      if (agents === null) return null;
      state.agents = agents;
      return "agents";
    }
    case "config": {
      state.config = value === null ? null : decodeConfig(value);
      return "config";
    }
  }
}

function setIn<T>(
  map: ByBackend<T>,
  { service, backend, value }: { service: string; backend: string; value: T | null },
): void {
  let backends = map.get(service);
  if (value === null) {
    backends?.delete(backend);
    if (backends?.size === 0) map.delete(service);
    return;
  }
  if (!backends) map.set(service, backends = new Map());
  backends.set(backend, value);
}

function parse<T>(schema: z.ZodType<T>, value: string): T | null {
  try {
    const result = schema.safeParse(JSON.parse(value));
    return result.success ? result.data : null;
  } catch {
    return null;
  }
}
