/**
 * One manager among several (`manager.ha`): its role, filled from the election, and the cluster's state kept
 * in step through etcd.
 *
 * - A standby follows what the leader stores (one watch of the prefix): operator states and feedback go into
 *   its model, so that it answers reads as the leader would; the agents and the leader's config version are
 *   kept for its API. It passes writes to the leader (`forward.ts`).
 * - A manager that wins loads everything under the prefix before it leads (`onElected`): drains and unexpired
 *   feedback hold, and the agents the previous leader had keep their claims while they reconnect. Then it
 *   stores its own state once more, deleting what no longer applies (expired feedback, removed backends).
 * - The leader stores each change (`store.ts`), and the agents' list every second while it changes.
 * - A manager that stops leading sends its agents to the leader and reloads its model from etcd.
 *
 * The watch can fail quietly (a member cut off from its peers keeps it open and says nothing): a standby
 * also counts, at every lease renewal, the keys changed since the revision the watch has reached; two
 * counts in a row above zero restart the watch from there.
 */
import { logger } from "../../cluster/log.ts";
import type { AgentSession } from "../agent_session.ts";
import type { Config, HaConfig } from "../config.ts";
import type { ClusterView, ManagerRef, ManagerRole, RoleName, WriteTarget } from "../role.ts";
import type { ClusterModel } from "../state.ts";
import {
  applyKey,
  type ByBackend,
  clockNow,
  configVersion,
  emptyState,
  encodeAgents,
  encodeConfig,
  encodeFeedback,
  encodeOperator,
  Keys,
  type ManagerInfo,
  type StoredAgent,
  type StoredState,
} from "./codec.ts";
import { Election } from "./election.ts";
import { EtcdClient, WatchCompactedError } from "./etcd.ts";
import { passToLeader } from "./forward.ts";
import { loadState, StateWriter } from "./store.ts";

const log = logger("manager", "ha");

export const REPLICA_DEFAULTS = {
  /** The leader stores the agents' list (heartbeats, counts) at most this often. */
  agentsWriteMs: 1_000,
  /** Agents the previous leader had keep their claims this long at least while they reconnect… */
  agentGraceMinMs: 10_000,
  /** …or this many heartbeat intervals, if longer. */
  agentGraceHeartbeats: 10,
  /** Waits between attempts to watch again, doubling up to the second. */
  watchRetryMs: 100,
  watchRetryMaxMs: 1_000,
} as const;

export interface ReplicaOptions {
  readonly config: Config;
  readonly model: ClusterModel;
  /** This manager's name and where the others reach it. */
  readonly self: ManagerRef;
  /** The agents connected to this manager, and those it keeps for a grace period. */
  readonly agentsHere: () => AgentSession[];
  /** This manager now leads: the previous leader's agents keep their claims for `graceMs`. */
  readonly lead: (previous: AgentSession[], graceMs: number) => void;
  /** This manager stopped leading: its agents are sent to the leader. */
  readonly follow: () => void;
  /** With `manager.tls`: the client writes are passed to the leader with. */
  readonly httpClient: Deno.HttpClient | null;
}

export class Replica implements ManagerRole {
  readonly #options: ReplicaOptions;
  readonly #ha: HaConfig;
  readonly #client: EtcdClient;
  readonly #keys: Keys;
  readonly #election: Election;
  readonly #writer: StateWriter;
  readonly #startedAt = Date.now();
  #config: Config;
  #version: string;
  #stored: StoredState = emptyState();
  /** The revision the watch goes on from: every change before it is in `#stored`. */
  #revision = 0;
  #resync = true;
  #watch: AbortController | null = null;
  #following: Promise<void> | null = null;
  #wakeFollow: (() => void) | null = null;
  #closed = false;
  #leaderChanges = 0;
  #lastLeader: string | null = null;
  #agentsTimer: ReturnType<typeof setInterval> | undefined;
  #agentsWritten = "";
  #staleTimer: ReturnType<typeof setInterval> | undefined;
  #staleCounts = 0;
  #warnedVersion = "";

  private constructor(options: ReplicaOptions, ha: HaConfig, version: string) {
    this.#options = options;
    this.#ha = ha;
    this.#config = options.config;
    this.#version = version;
    this.#client = new EtcdClient(ha.etcd);
    this.#keys = new Keys(ha.prefix);
    this.#election = new Election({
      client: this.#client,
      keys: this.#keys,
      leaseMs: ha.leaseMs,
      self: () => this.#info(),
      onElected: () => this.#takeOver(),
      onStepDown: (reason) => this.#steppedDown(reason),
      onLeader: (leader) => this.#leaderIs(leader),
    });
    this.#writer = new StateWriter({
      client: this.#client,
      fence: () => this.#election.fence(),
      value: (key) => this.#valueOf(key),
      onFenceLost: () =>
        this.#election.stepDown("etcd refused a write: another manager holds the leader key"),
    });
  }

  /** A replica for `options.config`, which must have `manager.ha`; `start()` joins the election. */
  static async create(options: ReplicaOptions): Promise<Replica> {
    const ha = options.config.manager.ha;
    if (ha === null) throw new TypeError("Cannot run as one of several managers without manager.ha");
    return new Replica(options, ha, await configVersion(options.config));
  }

  start(): void {
    log.info("Manager {id} joins the managers of {prefix} through etcd at {etcd}; lease {lease} s", {
      id: this.#options.self.id,
      prefix: this.#ha.prefix,
      etcd: this.#ha.etcd.join(", "),
      lease: this.#ha.leaseMs / 1_000,
    });
    this.#following ??= this.#follow();
    this.#election.start();
    this.#agentsTimer = setInterval(() => this.#storeAgents(), REPLICA_DEFAULTS.agentsWriteMs);
    this.#staleTimer = setInterval(() => this.#checkWatch(), this.#ha.leaseMs / 3);
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#agentsTimer);
    clearInterval(this.#staleTimer);
    this.#watch?.abort();
    this.#wakeFollow?.();
    await this.#following;
    await this.#writer.close();
    await this.#election.close();
  }

  // ManagerRole

  role(): RoleName {
    return this.#election.leading() ? "leader" : "standby";
  }

  leading(): boolean {
    return this.#election.leading();
  }

  leaderCluster(): string | null {
    return this.#election.leader()?.cluster ?? null;
  }

  writeTarget(): WriteTarget {
    if (this.#election.leading()) return { kind: "self" };
    const leader = this.#election.leader();
    return leader === null ? { kind: "none" } : { kind: "leader", leader: refOf(leader) };
  }

  storeFeedback(backends: Iterable<{ service: string; backend: string }>): Promise<void> {
    return this.#writer.write(
      [...backends].map(({ service, backend }) => this.#keys.feedback(service, backend)),
    );
  }

  storeOperatorState(service: string, backend: string): Promise<void> {
    return this.#writer.write([this.#keys.operator(service, backend)]);
  }

  pass(request: Request, leader: ManagerRef): Promise<Response> {
    return passToLeader(request, {
      leader,
      via: this.#options.self.id,
      client: this.#options.httpClient,
    });
  }

  agents(): AgentSession[] {
    if (this.#election.leading()) return this.#options.agentsHere();
    return this.#stored.agents.map(sessionOf);
  }

  leaderChanges(): number {
    return this.#leaderChanges;
  }

  view(): ClusterView {
    const leader = this.#election.leader();
    const managers = new Map(this.#stored.managers);
    managers.set(this.#options.self.id, this.#info());
    if (leader !== null && !managers.has(leader.id)) managers.set(leader.id, leader);
    return {
      role: this.role(),
      id: this.#options.self.id,
      leader: leader === null ? null : refOf(leader),
      managers: [...managers.values()].sort((a, b) => a.id.localeCompare(b.id)).map((info) => ({
        ...refOf(info),
        role: info.id === leader?.id ? "leader" : "standby",
        config_version: info.configVersion,
      })),
      leader_changes: this.#leaderChanges,
      ha: {
        etcd: this.#ha.etcd,
        prefix: this.#ha.prefix,
        lease_s: this.#ha.leaseMs / 1_000,
        etcd_reachable: this.#election.fresh(),
      },
    };
  }

  stateWrites(): { transactions: number; keys: number; failures: number } {
    return {
      transactions: this.#writer.transactions,
      keys: this.#writer.keysWritten,
      failures: this.#writer.failures,
    };
  }

  /** The agents with a claim changed: a leader stores them. */
  agentsChanged(): void {
    if (!this.#election.leading()) return;
    this.#writer.write([this.#keys.agents]).catch(() => {});
  }

  /** The config was reloaded (the model has it already): registers its version, and a leader stores it. */
  async reloaded(config: Config): Promise<void> {
    this.#config = config;
    this.#version = await configVersion(config);
    this.#election.refresh();
    if (this.#election.leading()) {
      this.#storeAll().catch((error) =>
        log.warn("Cannot store the state after a reload: {error}", { error })
      );
    } else {
      // Backends the new config adds take what the leader stored for them.
      this.#options.model.restore(this.#stored.operator, this.#stored.feedback);
      this.#checkVersion();
    }
  }

  // The election

  #info(): ManagerInfo {
    return { ...this.#options.self, configVersion: this.#version, startedAt: this.#startedAt };
  }

  /** Won: loads everything, then (once leading) stores it back in full. */
  async #takeOver(): Promise<void> {
    const { state, revision } = await loadState(this.#client, {
      keys: this.#keys,
      clock: () => this.#clock(),
    });
    this.#stored = state;
    this.#revision = Math.max(this.#revision, revision + 1);
    this.#resync = false;
    this.#watch?.abort();
    this.#options.model.restore(state.operator, state.feedback);
    const heartbeatMs = this.#config.agents.heartbeatMs;
    const grace = Math.max(
      REPLICA_DEFAULTS.agentGraceMinMs,
      REPLICA_DEFAULTS.agentGraceHeartbeats * heartbeatMs,
    );
    this.#options.lead(state.agents.map(sessionOf), grace);
    if (state.config !== null && state.config.version !== this.#version) {
      log.warn(
        "The previous leader ({manager}) ran config version {stored}; this manager runs {version}, and stores it",
        { manager: state.config.manager, stored: state.config.version, version: this.#version },
      );
    }
    log.info(
      "Loaded the cluster's state from etcd (revision {revision}): {drains} operator drains, {feedback} live feedback records, {agents} agents",
      {
        revision,
        drains: countOf(state.operator, (state) => state === "drain"),
        feedback: countOf(state.feedback, () => true),
        agents: state.agents.length,
      },
    );
  }

  #steppedDown(reason: string): void {
    this.#writer.abandon(`This manager stopped leading: ${reason}`);
    this.#options.follow();
    // What this manager had not stored yet is gone with its lead: take the leader's from etcd again.
    this.#resync = true;
    this.#watch?.abort();
    this.#wakeFollow?.();
  }

  #leaderIs(leader: ManagerInfo | null): void {
    if (leader === null) {
      log.info("No manager leads now, as far as this one knows");
      return;
    }
    if (leader.id !== this.#lastLeader) {
      this.#leaderChanges++;
      this.#lastLeader = leader.id;
    }
    const self = leader.id === this.#options.self.id;
    log.info(self ? "This manager leads ({id})" : "Manager {id} leads; its admin API is {admin}", {
      id: leader.id,
      admin: leader.admin,
      cluster: leader.cluster,
    });
    if (self && this.#election.leading()) {
      this.#storeAll().catch((error) =>
        log.warn("Cannot store the cluster's state after taking over: {error}", { error })
      );
    } else {
      this.#checkVersion();
    }
  }

  // Following etcd

  async #follow(): Promise<void> {
    let delay: number = REPLICA_DEFAULTS.watchRetryMs;
    while (!this.#closed) {
      const abort = new AbortController();
      this.#watch = abort;
      try {
        if (this.#resync) {
          const { state, revision } = await loadState(this.#client, {
            keys: this.#keys,
            clock: () => this.#clock(),
          });
          this.#resync = false;
          this.#stored = state;
          this.#revision = revision + 1;
          this.#applied(new Set(["leader", "operator", "feedback", "config"]));
        }
        const watch = this.#client.watch(this.#keys.all, {
          prefix: true,
          startRevision: this.#revision,
          signal: abort.signal,
        });
        for await (const batch of watch) {
          delay = REPLICA_DEFAULTS.watchRetryMs;
          const clock = this.#clock();
          const kinds = new Set<string>();
          for (const event of batch.events) {
            // Already in `#stored` (read by a load after this watch started).
            if (event.kv.modRevision < this.#revision) continue;
            const kind = applyKey(this.#stored, {
              key: event.kv.key,
              value: event.type === "delete" ? null : event.kv.value,
              createRevision: event.kv.createRevision,
              lease: event.kv.lease,
            }, { keys: this.#keys, clock });
            if (kind !== null) kinds.add(kind);
            this.#revision = event.kv.modRevision + 1;
          }
          this.#applied(kinds);
        }
      } catch (error) {
        if (error instanceof WatchCompactedError) this.#resync = true;
        if (!this.#closed && !abort.signal.aborted) {
          log.debug("Watching etcd failed; watching again in {delay} ms: {error}", {
            delay,
            error: error instanceof Error ? error.message : String(error),
          });
          await this.#sleep(delay);
          delay = Math.min(delay * 2, REPLICA_DEFAULTS.watchRetryMaxMs);
        }
      }
    }
  }

  /** Acts on the kinds of state a watch batch or a load changed. */
  #applied(kinds: ReadonlySet<string>): void {
    if (kinds.has("leader")) this.#election.observe(this.#stored.leader);
    // The leader's model is the source of what it stores: never overwritten by what it stored.
    if (this.#election.leading()) return;
    if (kinds.has("operator") || kinds.has("feedback")) {
      this.#options.model.restore(this.#stored.operator, this.#stored.feedback);
    }
    if (kinds.has("config")) this.#checkVersion();
  }

  /** A standby's check that its watch has not quietly stopped: see the file's comment. */
  async #checkWatch(): Promise<void> {
    if (this.#election.leading() || this.#resync || this.#watch === null) return;
    const revision = this.#revision;
    try {
      const { kvs } = await this.#client.range(this.#keys.all, {
        prefix: true,
        keysOnly: true,
        minModRevision: revision,
      });
      const count = kvs.length;
      if (count === 0 || revision !== this.#revision) {
        this.#staleCounts = 0;
        return;
      }
      if (++this.#staleCounts >= 2) {
        log.warn("The watch of etcd missed {count} changes since revision {revision}; watching again", {
          count,
          revision,
        });
        this.#staleCounts = 0;
        this.#watch?.abort();
      }
    } catch {
      // etcd cannot be reached: the election says so
    }
  }

  #checkVersion(): void {
    const stored = this.#stored.config;
    if (stored === null || stored.version === this.#version) return;
    const pair = `${stored.version}/${this.#version}`;
    if (pair === this.#warnedVersion) return;
    this.#warnedVersion = pair;
    log.warn(
      "The leader ({manager}) runs config version {leader}, this manager {version}: give every manager the same config",
      { manager: stored.manager, leader: stored.version, version: this.#version },
    );
  }

  // Storing

  /** Every backend's operator state and feedback, the agents and the config version; what no longer applies is deleted. */
  async #storeAll(): Promise<void> {
    const keys = new Set<string>([this.#keys.agents, this.#keys.config]);
    for (const service of this.#options.model.services()) {
      for (const backend of service.backends) {
        keys.add(this.#keys.operator(service.config.name, backend.config.id));
        keys.add(this.#keys.feedback(service.config.name, backend.config.id));
      }
    }
    const { kvs } = await this.#client.range(this.#keys.all, { prefix: true });
    for (const kv of kvs) {
      const what = this.#keys.parse(kv.key);
      if (what?.kind === "operator" || what?.kind === "feedback") keys.add(kv.key);
    }
    await this.#writer.write(keys);
    log.debug("Stored the state of {count} keys", { count: keys.size });
  }

  #storeAgents(): void {
    if (!this.#election.leading()) return;
    const value = encodeAgents(this.#options.agentsHere().map(storedOf));
    if (value === this.#agentsWritten) return;
    this.#writer.write([this.#keys.agents]).then(() => this.#agentsWritten = value).catch(() => {});
  }

  /** What the leader stores under `key` now; null deletes it. */
  #valueOf(key: string): string | null {
    const what = this.#keys.parse(key);
    if (what === null) return null;
    switch (what.kind) {
      case "operator":
      case "feedback": {
        const backend = this.#options.model.service(what.service)?.backends.find((b) =>
          b.config.id === what.backend
        );
        if (backend === undefined) return null;
        if (what.kind === "operator") return encodeOperator(backend.operatorState);
        const clock = this.#clock();
        return backend.feedback === null || backend.feedback.expiresAt <= clock.model
          ? null
          : encodeFeedback(backend.feedback, clock);
      }
      case "agents":
        return encodeAgents(this.#options.agentsHere().map(storedOf));
      case "config":
        return encodeConfig({ version: this.#version, manager: this.#options.self.id, at: Date.now() });
      default:
        return null;
    }
  }

  #clock() {
    return clockNow(this.#options.model.now());
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      this.#wakeFollow = done;
      function done() {
        clearTimeout(timer);
        resolve();
      }
    });
  }
}

function refOf(info: ManagerRef): ManagerRef {
  return { id: info.id, admin: info.admin, cluster: info.cluster };
}

/** An agent as stored, for the API and for its claim on a new leader. */
function sessionOf(agent: StoredAgent): AgentSession {
  return {
    id: agent.id,
    mesh: agent.mesh,
    remote: agent.remote,
    joinedAt: agent.joinedAt,
    lastHeartbeat: performance.now() - Math.max(0, Date.now() - agent.heardAt),
    ackedVersion: agent.stateVersion,
    // No state is sent to an agent remembered so: it is in session with another manager.
    sentVersion: Number.MAX_SAFE_INTEGER,
    connections: { ...agent.connections },
  };
}

function storedOf(session: AgentSession): StoredAgent {
  return {
    id: session.id,
    mesh: session.mesh,
    remote: session.remote,
    joinedAt: session.joinedAt,
    heardAt: Math.round(Date.now() - Math.max(0, performance.now() - session.lastHeartbeat)),
    connections: { ...session.connections },
    stateVersion: session.ackedVersion,
  };
}

function countOf<T>(map: ByBackend<T>, test: (value: T) => boolean): number {
  let count = 0;
  for (const backends of map.values()) for (const value of backends.values()) if (test(value)) count++;
  return count;
}
