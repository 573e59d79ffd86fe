/**
 * The cluster port: agents connect here, prove the cluster token, receive the cluster state and every
 * change to it, and send heartbeats. An agent that misses three heartbeats is dropped. A peer that fails
 * the handshake or sends a bad frame is logged and disconnected, and nothing changes.
 *
 * With several managers, only the leader takes agents and decides: a manager that does not lead sends a
 * proven agent to the leader (`redirect`), and sends its agents there when it stops leading, without
 * answering another decision. A new leader starts from the agents the previous one had (`lead`): they keep
 * their claims while they reconnect, for a grace period.
 */
import { constantTimeEqual, proof, randomNonce } from "../cluster/auth.ts";
import { Channel } from "../cluster/channel.ts";
import { guard, guardAsync } from "../cluster/guard.ts";
import { logger } from "../cluster/log.ts";
import {
  type AgentMessage,
  encodeFrame,
  type ManagerMessage,
  MIN_PROTOCOL_VERSION,
  parseAgentMessage,
  PROTOCOL_VERSION,
  ProtocolError,
} from "../cluster/protocol.ts";
import { encodeDecisions } from "../cluster/decision_frames.ts";
import { serviceDelta } from "../cluster/state_delta.ts";
import { type Lane, LANES } from "../cluster/lanes.ts";
import { laneOf } from "./ahead.ts";
import type { AgentSession } from "./agent_session.ts";
import { Decider } from "./decide.ts";
import type { ManagerRole } from "./role.ts";
import type { ClusterModel, Publication } from "./state.ts";

const log = logger("manager", "cluster");

/** How long a new peer has to finish the handshake. */
export const HANDSHAKE_TIMEOUT_MS = 5_000;
/** An agent is gone after this many missed heartbeats. */
export const MISSED_HEARTBEATS = 3;
/**
 * The largest frame a peer may send before it has proven the cluster token: hello and auth take well
 * under 1 KiB, and a stranger must not make the manager buffer up to `MAX_FRAME_BYTES` for it.
 */
export const HANDSHAKE_MAX_FRAME_BYTES = 16 * 1024;
/**
 * Peers in the handshake at most: each holds buffers (some 90 KiB) for up to `HANDSHAKE_TIMEOUT_MS`, so
 * more are closed at once rather than let a flood of strangers exhaust the manager's memory. Agents with
 * a session are not affected; one refused retries with backoff.
 */
export const MAX_PENDING_HANDSHAKES = 1_000;

type AgentChannel = Channel<AgentMessage, ManagerMessage>;

export interface ClusterServerOptions {
  readonly token: () => string;
  /** Whether this manager leads, and where the leader is; one manager alone always leads. */
  readonly leadership?: Pick<ManagerRole, "leading" | "leaderCluster">;
  /** The agents with a claim changed (joined, left, or ended their grace). */
  readonly onAgentsChanged?: () => void;
}

interface SessionEntry {
  readonly session: AgentSession;
  readonly channel: AgentChannel;
  /** The protocol version the agent speaks. */
  readonly version: number;
  /** Sent to the leader: it is closed once that is written. */
  leaving: boolean;
  /**
   * Queues of decisions made ahead (the services of each lane) that wait for the push of the version
   * they are made in.
   */
  readonly refills: Record<Lane, Set<string>>;
}

/** The first protocol version that takes decisions made ahead and the compact decision frames. */
const AHEAD_VERSION = 4;

const ALWAYS_LEADING: Pick<ManagerRole, "leading" | "leaderCluster"> = {
  leading: () => true,
  leaderCluster: () => null,
};

export class ClusterServer {
  readonly #model: ClusterModel;
  readonly decider: Decider;
  readonly #token: () => string;
  readonly #leadership: Pick<ManagerRole, "leading" | "leaderCluster">;
  readonly #onAgentsChanged: () => void;
  readonly #listener: Deno.Listener;
  readonly #sessions = new Map<string, SessionEntry>();
  /** Agents a previous leader had, keeping their claims until they reconnect or `#graceUntil` passes. */
  readonly #remembered = new Map<string, AgentSession>();
  #graceUntil = 0;
  readonly #pending = new Set<AgentChannel>();
  readonly #sweep: ReturnType<typeof setInterval>;
  readonly #unsubscribe: () => void;
  #accepting: Promise<void>;
  /** Publications not sent yet: sent together at the end of the turn they were made in. */
  #publications: Publication[] = [];
  #busyRefusals = 0;
  #busyLoggedAt = -Infinity;

  constructor(model: ClusterModel, listener: Deno.Listener, options: ClusterServerOptions) {
    this.#model = model;
    this.decider = new Decider(model);
    this.#token = options.token;
    this.#leadership = options.leadership ?? ALWAYS_LEADING;
    this.#onAgentsChanged = options.onAgentsChanged ?? (() => {});
    this.#listener = listener;
    this.#unsubscribe = model.onChange((publication) => this.#schedulePush(publication));
    this.#sweep = setInterval(
      () => guard("agent_sweep", () => this.#dropSilentAgents()),
      Math.max(50, model.config.agents.heartbeatMs / 2),
    );
    this.#accepting = this.#acceptLoop();
  }

  get addr(): Deno.NetAddr {
    return this.#listener.addr as Deno.NetAddr;
  }

  /** The agents with a claim: those connected, and those a previous leader had that may still reconnect. */
  agents(): AgentSession[] {
    return [...this.#sessions.values()].map((entry) => entry.session).concat([...this.#remembered.values()])
      .sort((a, b) => a.id.localeCompare(b.id));
  }

  /**
   * This manager now leads: the agents the previous leader had keep their claims for `graceMs`, so that
   * claims do not move while they find this manager.
   */
  lead(previous: readonly AgentSession[], graceMs: number): void {
    this.#remembered.clear();
    for (const agent of previous) {
      if (!this.#sessions.has(agent.id)) this.#remembered.set(agent.id, agent);
    }
    this.#graceUntil = performance.now() + graceMs;
    if (this.#remembered.size > 0) {
      log.info("Keeping the claims of {count} agents for {grace} ms while they reconnect: {agents}", {
        count: this.#remembered.size,
        grace: graceMs,
        agents: [...this.#remembered.keys()].join(", "),
      });
    }
    this.#publishAgents();
  }

  /** This manager stopped leading: every agent is sent to the leader (or told none is known). */
  follow(): void {
    this.#remembered.clear();
    if (this.#sessions.size > 0) {
      log.info("Sending {count} agents to the leader at {leader}", {
        count: this.#sessions.size,
        leader: this.#leadership.leaderCluster() ?? "(none known)",
      });
    }
    for (const entry of this.#sessions.values()) this.#sendAway(entry);
  }

  async close(): Promise<void> {
    clearInterval(this.#sweep);
    this.#unsubscribe();
    try {
      this.#listener.close();
    } catch {
      // already closed
    }
    for (const channel of this.#pending) channel.close();
    for (const { channel } of this.#sessions.values()) channel.close();
    await this.#accepting;
  }

  async #acceptLoop(): Promise<void> {
    const serving: Promise<void>[] = [];
    try {
      for await (const conn of this.#listener) {
        if (this.#pending.size >= MAX_PENDING_HANDSHAKES) {
          this.#refuseBusy(conn);
          continue;
        }
        // A session's own errors end it (the agent reconnects); what escapes it is counted, never thrown.
        const task = guardAsync("agent_session", () => this.#serve(conn), { remote: remoteOf(conn) }).then(
          () => {
            serving.splice(serving.indexOf(task), 1);
          },
        );
        serving.push(task);
      }
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) {
        log.error("Cluster listener failed: {error}", { error });
      }
    }
    await Promise.allSettled(serving);
  }

  /** Closes a peer that came while `MAX_PENDING_HANDSHAKES` others were in the handshake; logs now and then. */
  #refuseBusy(conn: Deno.Conn): void {
    try {
      conn.close();
    } catch {
      // already closed
    }
    this.#busyRefusals++;
    const now = performance.now();
    if (now - this.#busyLoggedAt >= 10_000) {
      log.warn("Refused {count} peers: {pending} others are in the handshake, the most allowed", {
        count: this.#busyRefusals,
        pending: MAX_PENDING_HANDSHAKES,
      });
      this.#busyLoggedAt = now;
      this.#busyRefusals = 0;
    }
  }

  async #serve(conn: Deno.Conn): Promise<void> {
    const codec = { parse: parseAgentMessage, encode: encodeFrame };
    let channel: AgentChannel = new Channel(conn, codec, { maxFrameBytes: HANDSHAKE_MAX_FRAME_BYTES });
    const remote = formatAddr(channel.remoteAddr);
    this.#pending.add(channel);
    const timer = setTimeout(() => {
      log.warn("Peer {remote} did not finish the handshake in time; closing", { remote });
      channel.close();
    }, HANDSHAKE_TIMEOUT_MS);
    let agentId: string | null = null;
    try {
      const messages = channel.messages();
      const hello = await nextMessage(messages);
      if (hello?.type !== "hello") {
        throw new HandshakeError(`expected hello, got ${hello?.type ?? "nothing"}`);
      }
      if (hello.version < MIN_PROTOCOL_VERSION || hello.version > PROTOCOL_VERSION) {
        throw new HandshakeError(
          `protocol version ${hello.version} is not one of ${MIN_PROTOCOL_VERSION} to ${PROTOCOL_VERSION}`,
        );
      }
      const managerNonce = randomNonce();
      const parts = { agentNonce: hello.nonce, managerNonce, agent: hello.agent };
      await channel.send({
        type: "challenge",
        version: hello.version,
        nonce: managerNonce,
        proof: await proof(this.#token(), { role: "manager", ...parts }),
      });
      const auth = await nextMessage(messages);
      if (auth?.type !== "auth") throw new HandshakeError(`expected auth, got ${auth?.type ?? "nothing"}`);
      const expected = await proof(this.#token(), { role: "agent", ...parts });
      if (!constantTimeEqual(auth.proof, expected)) throw new HandshakeError("wrong cluster token");
      clearTimeout(timer);
      this.#pending.delete(channel);
      // Proven: from now on frames may be as large as the protocol allows (a heartbeat lists every
      // backend). The agent sends nothing more until our welcome, so the handshake channel holds no byte.
      channel = new Channel(conn, codec);
      if (!this.#leadership.leading()) {
        const leader = this.#leadership.leaderCluster();
        log.debug("Sent agent {agent} at {remote} to the leader at {leader}", {
          agent: hello.agent,
          remote,
          leader: leader ?? "(none known)",
        });
        await channel.send(redirect(hello.version, leader)).catch(() => {});
        return;
      }

      agentId = hello.agent;
      const existing = this.#sessions.get(agentId);
      if (existing) {
        log.info("Agent {agent} reconnected from {remote}; closing its old session", {
          agent: agentId,
          remote,
        });
        this.#sessions.delete(agentId);
        existing.channel.close();
      }
      const now = performance.now();
      const session: AgentSession = {
        id: agentId,
        mesh: auth.mesh,
        remote,
        joinedAt: Date.now(),
        lastHeartbeat: now,
        ackedVersion: -1,
        // Nothing is pushed to it before its first state, which holds every change made until then.
        sentVersion: Number.MAX_SAFE_INTEGER,
        connections: { served: 0, handed_off: 0, open: 0 },
      };
      const entry: SessionEntry = {
        session,
        channel,
        version: hello.version,
        leaving: false,
        refills: { listen: new Set(), mesh: new Set() },
      };
      this.#sessions.set(agentId, entry);
      this.#remembered.delete(agentId);
      log.info("Agent {agent} joined from {remote}", { agent: agentId, remote, mesh: auth.mesh });
      this.#model.events.add({
        kind: "agent",
        agent: agentId,
        message: `Agent ${agentId} joined from ${remote}`,
      });
      await channel.send({ type: "welcome", heartbeatMs: this.#model.config.agents.heartbeatMs });
      this.#publishAgents();
      await this.#sendState(session, channel);

      // Each read is handled whole before the next: the decisions it asks for go out in one write.
      for await (const batch of channel.batches()) {
        for (const message of batch) {
          if (!SESSION_MESSAGES.has(message.type)) {
            throw new ProtocolError(`Unexpected ${message.type} after the handshake`);
          }
          // A message the manager fails to handle is its own error: counted, and the session goes on.
          guard("agent_session", () => this.#handle(entry, message), {
            agent: entry.session.id,
            message: message.type,
          });
        }
      }
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      if (agentId === null) {
        log.warn("Refused peer {remote}: {reason}", { remote, reason });
        const message = error instanceof HandshakeError ? `Refused: ${reason}` : reason;
        await channel.send({ type: "error", error: message }).catch(() => {});
      } else if (!channel.closed) {
        log.warn("Closing agent {agent} at {remote}: {reason}", {
          agent: agentId ?? "(unauthenticated)",
          remote,
          reason,
        });
        await channel.send({ type: "error", error: reason }).catch(() => {});
      }
    } finally {
      clearTimeout(timer);
      this.#pending.delete(channel);
      channel.close();
      if (agentId !== null && this.#sessions.get(agentId)?.channel === channel) {
        this.#sessions.delete(agentId);
        this.decider.forgetAgent(agentId);
        this.#model.forgetAgent(agentId);
        log.info("Agent {agent} left", { agent: agentId });
        this.#model.events.add({ kind: "agent", agent: agentId, message: `Agent ${agentId} left` });
        this.#publishAgents();
      }
    }
  }

  #handle(entry: SessionEntry, message: AgentMessage): void {
    if (entry.leaving) return;
    const { session, channel } = entry;
    if (!this.#leadership.leading()) {
      // No decision, nor anything else, from a manager that does not lead.
      this.#sendAway(entry);
      return;
    }
    switch (message.type) {
      case "heartbeat":
        session.lastHeartbeat = performance.now();
        session.connections = message.connections;
        this.decider.reportOpen(session.id, message.backends);
        if (message.started) this.#model.reportStarted(message.started);
        channel.send({ type: "heartbeat" }).catch(() => channel.close());
        break;
      case "decide": {
        const now = performance.now();
        const decisions = message.requests.map(({ id, service, client, lane }) => {
          const { backend, ttlMs } = this.decider.decide(
            session.id,
            { service, clientIp: client.ip, lane },
            now,
          );
          return { id, backend, ttlMs };
        });
        if (entry.version >= AHEAD_VERSION) channel.postFrame(encodeDecisions(decisions));
        else channel.post({ type: "decisions", decisions });
        // An agent that asks naming a lane has no queue left there: it gets one, sized to its rate (the
        // other asks of the batch find it made).
        for (const { service, lane } of message.requests) {
          if (lane !== undefined) this.#refill(entry, service, lane);
        }
        break;
      }
      case "used": {
        const now = performance.now();
        for (const queue of message.queues) this.decider.used(session.id, queue, now);
        for (const { service, lane } of message.queues) this.#refill(entry, service, lane);
        break;
      }
      case "open_counts":
        this.decider.reportOpen(session.id, message.backends);
        break;
      case "ack":
        session.ackedVersion = message.version;
        break;
      case "resync":
        log.info("Agent {agent} could not apply a delta to version {version}; sending the whole state", {
          agent: session.id,
          version: session.ackedVersion,
        });
        this.#sendState(session, channel).catch(() => channel.close());
        break;
      case "connect_failures":
        for (const failure of message.failures) {
          log.debug("Agent {agent} could not connect to {backend} of {service} {count} times", {
            agent: session.id,
            ...failure,
          });
        }
        this.#model.reportConnectFailures(session.id, message.failures);
        break;
      default:
        throw new Error(`Unexpected ${message.type} after the handshake`);
    }
  }

  /**
   * Sends `entry`'s agent a new queue of decisions made ahead for `service` when it needs one, as indexes
   * into the service's backends of the version the agent was sent last; after the push, when one is due.
   */
  #refill(entry: SessionEntry, service: string, lane: Lane): void {
    if (entry.version < AHEAD_VERSION || entry.leaving) return;
    const version = this.#model.version;
    if (entry.session.sentVersion !== version) {
      entry.refills[lane].add(service);
      return;
    }
    const queue = this.decider.refill(entry.session.id, { service, lane });
    const runtime = this.#model.service(service);
    if (queue === null || runtime === undefined) return;
    const indexes = new Map<string, number>();
    runtime.backends.forEach((backend, index) => indexes.set(backend.config.id, index));
    entry.channel.post({
      type: "ahead",
      service,
      lane,
      seq: queue.seq,
      version,
      backends: queue.backends.map((id) => indexes.get(id)!),
      ttlMs: queue.ttlMs,
    });
  }

  #dropSilentAgents(): void {
    this.decider.sweep();
    const limit = this.#model.config.agents.heartbeatMs * MISSED_HEARTBEATS;
    const now = performance.now();
    if (!this.#leadership.leading()) {
      this.follow();
      return;
    }
    if (this.#remembered.size > 0 && now >= this.#graceUntil) {
      log.warn("Agents {agents} did not reconnect within the grace period; dropping their claims", {
        agents: [...this.#remembered.keys()].join(", "),
      });
      this.#remembered.clear();
      this.#publishAgents();
    }
    for (const { session, channel } of this.#sessions.values()) {
      if (now - session.lastHeartbeat > limit) {
        log.warn("Agent {agent} missed {count} heartbeats; dropping it", {
          agent: session.id,
          count: MISSED_HEARTBEATS,
        });
        this.#model.events.add({
          kind: "agent",
          severity: "warning",
          agent: session.id,
          message: `Agent ${session.id} missed ${MISSED_HEARTBEATS} heartbeats; dropping it`,
        });
        channel.close();
      }
    }
  }

  #publishAgents(): void {
    this.#model.setAgents(this.agents().map((session) => ({ id: session.id, mesh: session.mesh })));
    this.#onAgentsChanged();
  }

  /** Sends one agent to the leader, then closes its session. */
  #sendAway(entry: SessionEntry): void {
    if (entry.leaving) return;
    entry.leaving = true;
    entry.channel.send(redirect(entry.version, this.#leadership.leaderCluster()))
      .catch(() => {})
      .finally(() => entry.channel.close());
  }

  /** Sends the whole state the model publishes now; deltas go on from its version. */
  #sendState(session: AgentSession, channel: AgentChannel): Promise<void> {
    const state = this.#model.snapshot();
    session.sentVersion = state.version;
    return channel.send({ type: "state", state });
  }

  /** Coalesces the publications of one turn into one push. */
  #schedulePush(publication: Publication): void {
    this.#publications.push(publication);
    if (this.#publications.length > 1) return;
    queueMicrotask(() => {
      const publications = this.#publications;
      this.#publications = [];
      guard("state_push", () => this.#push(publications));
    });
  }

  /**
   * Sends each agent what it lacks of `publications`: their deltas, from the one whose base is the version
   * it was last sent, or else the whole state. Each frame is encoded once, for every agent it goes to.
   */
  #push(publications: readonly Publication[]): void {
    const latest = publications.at(-1)?.version;
    if (latest === undefined) return;
    // Queues of decisions made ahead of a service that changed are replaced after the push.
    const changed = new Set<string>();
    for (const publication of publications) {
      if (publication.services === null) {
        for (const name of this.decider.ahead.counts().keys()) changed.add(name);
      } else for (const change of publication.services) changed.add(change.service.config.name);
    }
    for (const service of changed) {
      for (const holder of this.decider.ahead.invalidate(service)) {
        const { agent, lane } = laneOf(holder);
        this.#sessions.get(agent)?.refills[lane].add(service);
      }
    }

    let stateFrame: Uint8Array | null = null;
    const deltaFrames = new Map<Publication, Uint8Array | null>();
    const deltaFrame = (publication: Publication): Uint8Array | null => {
      let frame = deltaFrames.get(publication);
      if (frame === undefined) {
        frame = encodeDelta(publication, this.#model.epoch);
        deltaFrames.set(publication, frame);
      }
      return frame;
    };
    for (const { session, channel } of this.#sessions.values()) {
      if (session.sentVersion >= latest) continue;
      const first = publications.findIndex((publication) => publication.base === session.sentVersion);
      const frames = first < 0 ? null : publications.slice(first).map(deltaFrame);
      if (frames !== null && frames.every((frame) => frame !== null)) {
        for (const frame of frames) channel.sendFrame(frame as Uint8Array).catch(() => channel.close());
      } else {
        stateFrame ??= encodeFrame({ type: "state", state: this.#model.snapshot() });
        channel.sendFrame(stateFrame).catch(() => channel.close());
      }
      session.sentVersion = latest;
    }
    for (const entry of this.#sessions.values()) {
      for (const lane of LANES) {
        const services = [...entry.refills[lane]];
        entry.refills[lane].clear();
        for (const service of services) this.#refill(entry, service, lane);
      }
    }
  }
}

class HandshakeError extends Error {}

/** What an agent may send once it has a session. */
const SESSION_MESSAGES: ReadonlySet<AgentMessage["type"]> = new Set([
  "heartbeat",
  "decide",
  "used",
  "open_counts",
  "ack",
  "resync",
  "connect_failures",
]);

/**
 * The frame of a publication's delta; null when it has none (the whole state changed) or it would not fit
 * in a frame (the whole state is sent then).
 */
function encodeDelta(publication: Publication, epoch: string): Uint8Array | null {
  if (publication.services === null) return null;
  try {
    return encodeFrame({
      type: "delta",
      delta: {
        base: publication.base,
        version: publication.version,
        epoch,
        services: publication.services.map((change) =>
          serviceDelta(change.service.config.name, {
            after: change.table,
            moved: change.moved,
            backends: change.backends,
          })
        ),
      },
    });
  } catch (error) {
    if (error instanceof ProtocolError) return null;
    throw error;
  }
}

function remoteOf(conn: Deno.Conn): string {
  try {
    return formatAddr(conn.remoteAddr);
  } catch {
    return "unknown";
  }
}

/** What sends an agent of `version` to the leader: `redirect`, or for an agent of version 2 an `error`. */
function redirect(version: number, leader: string | null): ManagerMessage {
  if (version >= 3) return { type: "redirect", leader };
  return {
    type: "error",
    error: leader === null
      ? "This manager does not lead, and knows no leader now"
      : `This manager does not lead; the leader's cluster port is ${leader}`,
  };
}

async function nextMessage<T>(messages: AsyncGenerator<T>): Promise<T | undefined> {
  const next = await messages.next();
  return next.done ? undefined : next.value;
}

export function formatAddr(addr: Deno.Addr): string {
  if (addr.transport === "tcp" || addr.transport === "udp") {
    return addr.hostname.includes(":") ? `[${addr.hostname}]:${addr.port}` : `${addr.hostname}:${addr.port}`;
  }
  return addr.transport;
}
