/**
 * The agent's side of the cluster protocol: connects to the manager, proves the cluster token (and checks
 * the manager's proof), applies and acknowledges every state and delta it is sent (asking for the whole
 * state when a delta does not apply to the version it has), sends heartbeats, and reconnects with capped
 * exponential backoff and full jitter whenever the link breaks. Nothing on the data path waits for it.
 *
 * Given several managers, it looks for the one that leads: it tries them in turn, and goes where a manager
 * that does not lead sends it (`redirect`). It backs off only once every manager has been tried without a
 * session, so that it finds a new leader within one round.
 */
import { formatHostPort, type HostPort, parseHostPort } from "../cluster/address.ts";
import { constantTimeEqual, proof, randomNonce } from "../cluster/auth.ts";
import { Channel } from "../cluster/channel.ts";
import { guard, guardAsync } from "../cluster/guard.ts";
import type { Lane } from "../cluster/lanes.ts";
import { logger } from "../cluster/log.ts";
import { encodeDecide } from "../cluster/decision_frames.ts";
import { PendingDecisions } from "./pending_decisions.ts";
import {
  type AgentMessage,
  type ClusterState,
  type ConnectionCounts,
  encodeFrame,
  type ManagerMessage,
  parseManagerMessage,
  PROTOCOL_VERSION,
  type QueueUsed,
  type StateDelta,
} from "../cluster/protocol.ts";

const log = logger("agent", "link");

export const LINK_DEFAULTS = {
  connectTimeoutMs: 5_000,
  backoffBaseMs: 100,
  backoffMaxMs: 1_000,
  /** Heartbeat interval until the manager says otherwise. */
  heartbeatMs: 1_000,
  /** The link is dead after this many heartbeat intervals without a word from the manager. */
  missedHeartbeats: 3,
} as const;

/** The manager's answer to a connection request. */
export interface Decision {
  readonly backend: string | null;
  readonly ttlMs: number;
}

/** A queue of decisions the manager made ahead for this agent (protocol `ahead`). */
export type AheadMessage = Extract<ManagerMessage, { type: "ahead" }>;

export interface LinkReport {
  connections: ConnectionCounts;
  backends: Array<{ service: string; backend: string; open: number }>;
}

export interface ManagerLinkOptions {
  /** The managers' cluster ports: one, or several of which one leads. */
  readonly managers: readonly HostPort[];
  readonly token: string;
  readonly agentId: string;
  readonly mesh: string | null;
  /** Connect with TLS, trusting these CA certificates (PEM) besides the system's. */
  readonly tls: { caCerts: string[] } | null;
  readonly onState: (state: ClusterState) => void;
  /**
   * Applies a delta to the state served; false when it does not apply to it (another version), and the
   * link then asks the manager for the whole state.
   */
  readonly onDelta: (delta: StateDelta) => boolean;
  /** A queue of decisions made ahead, replacing the one the agent had for its service. */
  readonly onAhead: (ahead: AheadMessage) => void;
  readonly report: () => LinkReport;
  readonly takeFailures: () => Array<{ service: string; backend: string; count: number }>;
  /** Connections started per backend since it was last asked: each heartbeat carries them. */
  readonly takeStarted: () => Array<{ service: string; backend: string; count: number }>;
}

type ManagerChannel = Channel<ManagerMessage, AgentMessage>;

/** The first protocol version whose managers take `decide` in its compact form. */
const COMPACT_VERSION = 4;

/** What an agent needs of its link to the manager (`ManagerLink`; tests pass their own). */
export interface AgentLink {
  readonly connected: boolean;
  /** The manager joined now, or tried last. */
  readonly manager: HostPort;
  start(): void;
  close(): Promise<void>;
  decide(
    service: string,
    client: { ip: string; port: number },
    timeoutMs: number,
    lane?: Lane,
  ): Promise<Decision | null>;
  sendUsed(queues: QueueUsed[]): void;
  sendOpenCounts(backends: LinkReport["backends"]): void;
}

export class ManagerLink implements AgentLink {
  readonly #options: ManagerLinkOptions;
  #closed = false;
  #channel: ManagerChannel | null = null;
  readonly #decisions = new PendingDecisions<Decision>();
  #nextDecision = 1;
  /** Decisions asked for in this task, sent together once it ends. */
  #requests: Array<
    { id: number; service: string; client: { ip: string; port: number }; lane?: Lane }
  > = [];
  #wake: (() => void) | null = null;
  #running: Promise<void> | null = null;
  #connected = false;
  /** Whether the manager joined speaks the compact form of decisions (protocol 4 on). */
  #compact = false;
  /** The manager tried last (and joined, while connected). */
  #manager: HostPort;
  /** Where a manager that does not lead sent this agent, tried next. */
  #sentTo: HostPort | null = null;

  constructor(options: ManagerLinkOptions) {
    if (options.managers.length === 0) throw new RangeError("Cannot link to no manager");
    this.#options = options;
    this.#manager = options.managers[0] as HostPort;
  }

  /** The manager joined now, or tried last. */
  get manager(): HostPort {
    return this.#manager;
  }

  get connected(): boolean {
    return this.#connected;
  }

  /**
   * Asks the manager for the preferred backend of a new flow (`lane`: the queue of decisions made ahead it
   * found empty, which the manager then refills); resolves null when the link is down or no
   * answer comes within `timeoutMs` (the caller then falls back to its table).
   */
  decide(
    service: string,
    client: { ip: string; port: number },
    timeoutMs: number,
    lane?: Lane,
  ): Promise<Decision | null> {
    const channel = this.#channel;
    if (!channel || !this.#connected) return Promise.resolve(null);
    const id = this.#nextDecision++;
    const decision = this.#decisions.wait(id, timeoutMs);
    if (this.#requests.length === 0) queueMicrotask(this.#sendRequests);
    this.#requests.push(lane === undefined ? { id, service, client } : { id, service, client, lane });
    return decision;
  }

  /**
   * The decisions asked for since the last call, in one frame, on the channel they were asked on: no new
   * one can open within a task. A failed write closes the channel; the session then ends and answers every
   * waiter with null, as it has already should the channel have closed first.
   */
  readonly #sendRequests = () => {
    const requests = this.#requests;
    this.#requests = [];
    // Unanswered, each waiter falls back to its table at its timeout.
    guard("manager_link", () => {
      if (!this.#connected || !this.#channel) return;
      if (!this.#compact) this.#channel.post({ type: "decide", requests });
      else {
        // Ids on the wire are 32-bit: the answers' are brought back to the waiters' (see `#answered`).
        for (const request of requests) request.id %= 2 ** 32;
        this.#channel.postFrame(encodeDecide(requests));
      }
    }, this.#where());
  };

  /** The decision a compact answer's 32-bit id is for: the waiting one with those low bits. */
  #answered(wireId: number): number {
    if (!this.#compact) return wireId;
    const oldest = this.#decisions.oldest;
    return oldest + ((wireId - (oldest % 2 ** 32)) >>> 0);
  }

  /** Tells the manager how much of each queue of decisions made ahead was used (running totals). */
  sendUsed(queues: QueueUsed[]): void {
    if (this.#connected) this.#channel?.post({ type: "used", queues });
  }

  /** Sends this agent's open connections per backend, when connected. */
  sendOpenCounts(backends: LinkReport["backends"]): void {
    if (this.#connected) this.#channel?.post({ type: "open_counts", backends });
  }

  start(): void {
    this.#running ??= guardAsync("manager_link", () => this.#run(), this.#where()).then(() => {});
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#channel?.close();
    this.#wake?.();
    await this.#running;
  }

  async #run(): Promise<void> {
    const { managers } = this.#options;
    let attempt = 0;
    let warned = false;
    /** The next of `managers` to try, and how many were tried since the last session. */
    let next = 0;
    let tried = 0;
    while (!this.#closed) {
      const sentTo = this.#sentTo;
      this.#sentTo = null;
      let manager: HostPort;
      if (sentTo !== null) {
        manager = sentTo;
      } else {
        manager = managers[next % managers.length] as HostPort;
        next = (next + 1) % managers.length;
      }
      this.#manager = manager;
      tried++;
      let joined = false;
      try {
        await this.#session(manager, () => {
          joined = true;
          attempt = 0;
          warned = false;
        });
        if (!this.#closed && joined) {
          log.warn("Lost the manager at {manager}; serving from the last state", this.#where());
        }
      } catch (error) {
        if (this.#closed) break;
        if (error instanceof Redirect) {
          log.debug("The manager at {manager} does not lead; it names {leader} as the leader", {
            ...this.#where(),
            leader: error.leader === null ? "no manager" : formatHostPort(error.leader),
          });
          // Followed at once, unless it names a manager that was just tried.
          if (
            error.leader !== null && !sameAddress(error.leader, manager) && !sameAddress(error.leader, sentTo)
          ) {
            this.#sentTo = error.leader;
          }
        } else {
          const fields = { ...this.#where(), reason: error instanceof Error ? error.message : String(error) };
          if (!warned) log.warn("Cannot reach the manager at {manager}: {reason}; retrying", fields);
          else log.debug("Still cannot reach the manager at {manager}: {reason}", fields);
          warned = true;
        }
      }
      if (this.#closed) break;
      if (joined) tried = 0;
      // Every manager tried without a session (or sent on more often than there are managers): back off
      // before the next round.
      if (joined || tried > managers.length || (this.#sentTo === null && tried >= managers.length)) {
        tried = 0;
        const ceiling = Math.min(LINK_DEFAULTS.backoffMaxMs, LINK_DEFAULTS.backoffBaseMs * 2 ** attempt);
        attempt = Math.min(attempt + 1, 16);
        await this.#sleep(ceiling / 2 + Math.random() * ceiling / 2);
      }
    }
  }

  async #session(manager: HostPort, onReady: () => void): Promise<void> {
    const { tls } = this.#options;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), LINK_DEFAULTS.connectTimeoutMs);
    let conn: Deno.Conn;
    try {
      conn = tls
        ? await Deno.connectTls({ hostname: manager.host, port: manager.port, caCerts: tls.caCerts })
        : await Deno.connect({ hostname: manager.host, port: manager.port, signal: abort.signal });
    } finally {
      clearTimeout(timer);
    }
    const channel: ManagerChannel = new Channel(conn, { parse: parseManagerMessage, encode: encodeFrame });
    this.#channel = channel;
    let heartbeat: ReturnType<typeof setInterval> | undefined;
    let watchdog: ReturnType<typeof setInterval> | undefined;
    let handshake: ReturnType<typeof setTimeout> | undefined = setTimeout(() => {
      log.warn("The manager at {manager} did not finish the handshake in time", this.#where());
      channel.close();
    }, LINK_DEFAULTS.connectTimeoutMs);
    try {
      if (this.#closed) return;
      const messages = channel.messages();
      const agentNonce = randomNonce();
      const { token, agentId } = this.#options;
      await channel.send({ type: "hello", version: PROTOCOL_VERSION, agent: agentId, nonce: agentNonce });
      const challenge = await next(messages);
      if (challenge?.type === "error") throw new Error(challenge.error);
      if (challenge?.type !== "challenge") {
        throw new Error(`Expected a challenge, got ${challenge?.type ?? "nothing"}`);
      }
      const parts = { agentNonce, managerNonce: challenge.nonce, agent: agentId };
      if (!constantTimeEqual(challenge.proof, await proof(token, { role: "manager", ...parts }))) {
        throw new Error("The manager could not prove the cluster token");
      }
      await channel.send({
        type: "auth",
        proof: await proof(token, { role: "agent", ...parts }),
        mesh: this.#options.mesh,
      });
      const welcome = await next(messages);
      if (welcome?.type === "redirect") throw new Redirect(welcome.leader);
      if (welcome?.type === "error") throw new Error(welcome.error);
      if (welcome?.type !== "welcome") throw new Error(`Expected welcome, got ${welcome?.type ?? "nothing"}`);

      clearTimeout(handshake);
      handshake = undefined;
      this.#compact = challenge.version >= COMPACT_VERSION;
      onReady();
      this.#connected = true;
      log.info("Joined the manager at {manager} as {agent}", { ...this.#where(), agent: agentId });
      let lastHeard = performance.now();
      // Asked for the whole state: deltas until it comes cannot apply, and are dropped without asking again.
      let resyncing = false;
      const interval = welcome.heartbeatMs;
      const context = { ...this.#where(), agent: agentId };
      heartbeat = setInterval(() =>
        guard("manager_link", () => {
          const { connections, backends } = this.#options.report();
          const started = this.#options.takeStarted();
          channel.send({ type: "heartbeat", connections, backends, started }).catch(() => channel.close());
          const failures = this.#options.takeFailures();
          if (failures.length > 0) {
            channel.send({ type: "connect_failures", failures }).catch(() => channel.close());
          }
        }, context), interval);
      watchdog = setInterval(() =>
        guard("manager_link", () => {
          if (performance.now() - lastHeard > interval * LINK_DEFAULTS.missedHeartbeats) {
            log.warn("No word from the manager for {count} heartbeats; reconnecting", {
              count: LINK_DEFAULTS.missedHeartbeats,
            });
            channel.close();
          }
        }, context), interval);

      for await (const message of messages) {
        lastHeard = performance.now();
        if (message.type === "decisions") {
          for (const { id, backend, ttlMs } of message.decisions) {
            this.#decisions.settle(this.#answered(id), { backend, ttlMs });
          }
        } else if (message.type === "ahead") {
          guard("manager_link", () => this.#options.onAhead(message), context);
        } else if (message.type === "state") {
          resyncing = false;
          // A state this agent fails to apply is not acknowledged; it goes on serving the last one.
          const applied = guard("manager_link", () => {
            this.#options.onState(message.state);
            return true;
          }, { ...context, version: message.state.version });
          if (applied) await channel.send({ type: "ack", version: message.state.version });
        } else if (message.type === "redirect") {
          log.info("The manager at {manager} stopped leading; it names {leader} as the leader", {
            ...this.#where(),
            leader: message.leader ?? "no manager",
          });
          const leader = parseLeader(message.leader);
          if (leader !== null && !sameAddress(leader, manager)) this.#sentTo = leader;
          return;
        } else if (message.type === "delta") {
          if (resyncing) continue;
          const { base, version } = message.delta;
          // A delta this agent fails to apply leaves it at the version it has: it asks for the whole state.
          const applied = guard("manager_link", () => this.#options.onDelta(message.delta), {
            ...context,
            base,
            version,
          });
          if (applied === true) {
            await channel.send({ type: "ack", version });
          } else {
            resyncing = true;
            log.info("Cannot apply the delta from version {base} to {version}; asking for the whole state", {
              ...context,
              base,
              version,
            });
            await channel.send({ type: "resync" });
          }
        } else if (message.type === "error") {
          throw new Error(`The manager closed the link: ${message.error}`);
        }
      }
    } finally {
      this.#connected = false;
      this.#decisions.settleAll();
      clearTimeout(handshake);
      clearInterval(heartbeat);
      clearInterval(watchdog);
      channel.close();
      this.#channel = null;
    }
  }

  #where(): { manager: string } {
    return { manager: formatHostPort(this.#manager) };
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.#wake = done;
    });
  }
}

/** A manager that does not lead sent this agent elsewhere (to no manager when it knows no leader). */
class Redirect extends Error {
  readonly leader: HostPort | null;

  constructor(leader: string | null) {
    super(`The manager does not lead; it names ${leader ?? "no manager"} as the leader`);
    this.leader = parseLeader(leader);
  }
}

/** A leader's address as a manager named it; null for none, or one that cannot be dialled (0.0.0.0). */
function parseLeader(text: string | null): HostPort | null {
  if (text === null) return null;
  try {
    const address = parseHostPort(text);
    return address.host === "0.0.0.0" || address.host === "::" ? null : address;
  } catch {
    return null;
  }
}

function sameAddress(a: HostPort, b: HostPort | null): boolean {
  return b !== null && a.host === b.host && a.port === b.port;
}

async function next<T>(messages: AsyncGenerator<T>): Promise<T | undefined> {
  const result = await messages.next();
  return result.done ? undefined : result.value;
}
