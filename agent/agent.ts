/**
 * The agent role: it serves the services of the state the manager sends (or the last one saved) through a
 * data plane (`data_plane.ts`): the epoll relay where it can be had, else Deno's sockets. Above the plane,
 * once for both: the placement of the flows a plane asks about (handoff to the claimant, the manager's
 * decision, client affinity, the table), the counts and log lines of every flow's events, the open counts
 * the manager is told, the mesh port where other agents hand flows over, and the drain. The manager only
 * ever changes the state the agent serves from; the per-connection path never waits for it.
 */
import { formatHostPort, type HostPort, parseHostPort } from "../cluster/address.ts";
import { TokenSigner } from "../cluster/auth.ts";
import { CLAIM_BUCKETS, claimOwners, NO_AGENT } from "../cluster/claims.ts";
import { ipBytes } from "../cluster/flow_key.ts";
import { type Lane, LANES } from "../cluster/lanes.ts";
import { logger, LogWindow } from "../cluster/log.ts";
import { backendOrder, claimantOf, placeHash, type Placement, preferFirst } from "../cluster/placement.ts";
import {
  type AgentSpec,
  type ClusterState,
  decodeTable,
  type QueueUsed,
  type ServiceSpec,
  type StateDelta,
} from "../cluster/protocol.ts";
import { applyStateDelta, DeltaError } from "../cluster/state_delta.ts";
import { encodeProxyHeader } from "../cluster/proxy_protocol.ts";
import { AffinityCache } from "./affinity.ts";
import { QueuedDecisions } from "./queued_decisions.ts";
import {
  type DataPlane,
  type DataPlaneEvents,
  EVENT_FIELDS,
  FlowEvent,
  type PlacementRequest,
  type PlaneCounters,
  type PlaneService,
  type SocketAddress,
  type Target,
} from "./data_plane.ts";
import {
  type AgentLink,
  type AheadMessage,
  type LinkReport,
  ManagerLink,
  type ManagerLinkOptions,
} from "./manager_link.ts";
import { encodeMeshHeader, type HandedOffFlow, MeshServer } from "./mesh.ts";
import { errnoText } from "./relay/libc.ts";
import { RelayDataPlane } from "./relay/relay_plane.ts";
import { connectTimeoutText } from "./sockets/connect.ts";
import { SocketDataPlane } from "./sockets/socket_plane.ts";
import { loadState, saveState } from "./state_store.ts";
import { closeQuietly } from "../cluster/close_quietly.ts";

const log = logger("agent");
const flowLog = logger("agent", "flow");

export const AGENT_DEFAULTS = {
  /** How often the affinity cache drops what expired. */
  sweepMs: 250,
  /** How long a draining agent waits when no service gives `timeouts.drain`. */
  drainMs: 30_000,
  /** Longest wait to connect to a claimant's mesh port before serving the flow here. */
  meshConnectMs: 1_000,
  /** Open-connection counts are sent to the manager at most this often. */
  openCountsBatchMs: 25,
  /**
   * Uses of the manager's queues of decisions made ahead are told at most this often, and at once when a
   * queue is half used: the manager then sends the next.
   */
  usedBatchMs: 10,
  /** Queues a lane held before its present one, kept until what was taken of them is told. */
  formerQueues: 4,
  /** A draining agent keeps its mesh port open this many heartbeats at least, while the others learn it left. */
  missedHeartbeatsGrace: 3,
  /**
   * A problem of one service that repeats (accept errors, flows placed by the table because their answer
   * came too late) is logged at most once per this window.
   */
  problemLogMs: 10_000,
  /**
   * How much longer than `decision_timeout` a plane on a thread of its own (the epoll relay) waits for the
   * answer to a flow it asked about before placing it by the table: this agent's thread answers every ask
   * within `decision_timeout` unless it stalls, and a loaded machine can delay its turns by 100s of ms.
   */
  askGraceMs: 1_000,
} as const;

export interface AgentOptions {
  readonly id: string;
  /** The managers' cluster ports: one, or several of which one leads. */
  readonly managers: readonly HostPort[];
  readonly token: string;
  /** Where handed-off flows arrive (port 0: any free port); null when this agent takes none. */
  readonly mesh?: HostPort | null;
  readonly stateDir?: string | null;
  readonly tls?: { caCerts: string[] } | null;
  /**
   * What carries connections: the epoll relay (`agent/relay/`, the default; where it cannot be had the
   * agent says why and uses Deno's sockets), or Deno's sockets.
   */
  readonly dataPath?: DataPath;
  /**
   * What the agent is built on, for tests that drive it alone: its link to the manager (a `ManagerLink` by
   * default) and its data plane (the epoll relay by default, with `dataPath: "epoll"`; Deno's sockets
   * still take the mesh's flows).
   */
  readonly seams?: AgentSeams;
}

/** The parts an agent is built on, which a test may replace (`AgentOptions.seams`). */
export interface AgentSeams {
  readonly link?: (options: ManagerLinkOptions) => AgentLink;
  readonly openPlane?: (events: DataPlaneEvents) => Promise<DataPlane>;
}

export const DATA_PATHS = ["epoll", "deno"] as const;
export type DataPath = typeof DATA_PATHS[number];

/** The original endpoints of a flow: the client and the address it connected to. */
interface Endpoints {
  readonly client: SocketAddress;
  readonly destination: SocketAddress;
}

/** A data plane and what the agent keeps of it: its services by index, its flows by slot, its counters. */
interface Plane {
  readonly plane: DataPlane;
  readonly services: Map<number, LiveService>;
  /**
   * Flows the agent placed or saw connect, by slot and generation (`flowKey`): a slot's next flow can be
   * asked about before the end of the one before it is told.
   */
  readonly flows: Map<number, PlaneFlow>;
  /**
   * Flows asked about whose answer the plane stopped waiting for (`FlowEvent.ASK_TIMED_OUT`) before this
   * agent gave it: the plane placed them alone, and the answer, when it comes, is not recorded.
   */
  readonly answersLate: Set<number>;
  /** Flows open in the plane (asked about or connected), as it last said. */
  open: number;
  /** Its counters as last added into the agent's. */
  counted: PlaneCounters | null;
}

interface LiveService {
  spec: ServiceSpec;
  table: Uint16Array;
  readonly listenKey: string;
  /** The plane it listens on, its index there and the address bound, once listening. */
  listening: { plane: Plane; index: number; bound: Deno.NetAddr } | null;
  /** While a listener is being opened. */
  opening: boolean;
  /** Its index on Deno's sockets for flows handed to this agent over the mesh, once one came. */
  meshIndex: number | null;
  /** Where it listened before the agent began to drain: its open flows are known by that index. */
  draining: { plane: Plane; index: number } | null;
  /** Accept errors, logged at most once per window. */
  readonly acceptErrors: LogWindow;
  /** Flows a plane placed by the table because their answer came too late, logged at most once per window. */
  readonly answersLate: LogWindow;
  /** The manager's queues of decisions made ahead (`decide_ahead`), by lane. */
  readonly ahead: Record<Lane, AheadLane | null>;
  /**
   * The queues each lane held before, newest first (`AGENT_DEFAULTS.formerQueues` at most), until the
   * manager is told what was taken of them: a queue emptied asks for the next, which can come before the
   * last uses of the old one were told.
   */
  readonly aheadFormer: Record<Lane, AheadLane[]>;
}

/**
 * A queue of decisions the manager made ahead for one lane of a service: the flows this agent accepts and
 * claims (`listen`: its plane holds the queue and takes from it), or those other agents hand it (`mesh`: the
 * agent takes from it as it places them).
 */
interface AheadLane {
  readonly seq: number;
  readonly size: number;
  /** The queue, for the lane the agent takes from itself; null where the plane holds it. */
  readonly queue: QueuedDecisions | null;
  /** Decisions taken so far (a running total), and how many of those the manager was told of. */
  taken: number;
  told: number;
}

/** A flow of a plane, from the agent's answer (or its connect) to its end. */
interface PlaneFlow {
  readonly service: LiveService;
  /** For a flow the agent placed (asked): its id and endpoints, for its log lines. */
  readonly asked: { id: number; endpoints: Endpoints } | null;
  /** The backend ids of the targets the agent answered with (null: the plane placed it). */
  readonly targets: readonly string[] | null;
  /** A handoff: its first target is the claimant's mesh port (`targets[0]` its id), the others backends. */
  readonly handoff: { mesh: string } | null;
  /** The agent that handed this flow here, if one did. */
  readonly handedOffBy: string | null;
  /** Connected: the backend's load (null for a handoff), until it ends. */
  connected: boolean;
  load: BackendLoad | null;
}

/** Open connections to one backend of a service, as reported to the manager. */
interface BackendLoad {
  /** `service` NUL `backend`: its key in the agent's map. */
  readonly key: string;
  readonly service: string;
  readonly backend: string;
  open: number;
}

/** Counters an agent exposes in its heartbeat and on its admin `/metrics`. */
export interface AgentCounters {
  served: number;
  handedOff: number;
  handoffFailures: number;
  decisions: number;
  decisionFallbacks: number;
  rejected: number;
  noBackend: number;
  acceptErrors: number;
  bytesUp: number;
  bytesDown: number;
  connectFailures: Map<string, number>;
  connectionsByBackend: Map<string, number>;
}

export class Agent {
  readonly #options: AgentOptions;
  readonly #services = new Map<string, LiveService>();
  readonly #openByBackend = new Map<string, BackendLoad>();
  readonly #pendingFailures = new Map<string, { service: string; backend: string; count: number }>();
  /** Connections started per backend since the last heartbeat, which tells the manager. */
  readonly #startedSince = new Map<string, { service: string; backend: string; count: number }>();
  readonly counters: AgentCounters = {
    served: 0,
    handedOff: 0,
    handoffFailures: 0,
    decisions: 0,
    decisionFallbacks: 0,
    rejected: 0,
    noBackend: 0,
    acceptErrors: 0,
    bytesUp: 0,
    bytesDown: 0,
    connectFailures: new Map(),
    connectionsByBackend: new Map(),
  };
  readonly #signer: TokenSigner;
  /** Loggers whose every line carries this agent's id. */
  readonly #log: ReturnType<typeof logger>;
  readonly #flowLog: ReturnType<typeof logger>;
  readonly #affinity = new AffinityCache();
  /** The epoll relay, when it serves this agent; Deno's sockets always (the mesh's flows, and the rest). */
  #relay: Plane | null = null;
  readonly #sockets: Plane;
  readonly #socketPlane: SocketDataPlane;
  #link: AgentLink | null = null;
  #mesh: MeshServer | null = null;
  #claimOwners: Uint16Array | null = null;
  /** The certificate the mesh port serves TLS with now ("" for plain TCP). */
  #meshCert = "";
  #meshSwitch: Promise<void> = Promise.resolve();
  #claimAgents = "";
  #openCountsTimer: ReturnType<typeof setTimeout> | undefined;
  #usedTimer: ReturnType<typeof setTimeout> | undefined;
  #state: ClusterState | null = null;
  #nextFlowId = 1;
  /** Flows connected now, on every plane. */
  #connected = 0;
  #sweep: ReturnType<typeof setInterval> | undefined;
  #draining = false;
  #saving: Promise<void> = Promise.resolve();
  readonly #listenErrors = new Map<string, string>();
  /** The newest state not yet saved, while a save is under way: only the newest of a burst is written. */
  #unsaved: ClusterState | null = null;

  constructor(options: AgentOptions) {
    this.#options = options;
    this.#signer = new TokenSigner(options.token);
    this.#log = log.with({ agent: options.id });
    this.#flowLog = flowLog.with({ agent: options.id });
    this.#socketPlane = new SocketDataPlane(this.#handlersOf(() => this.#sockets));
    this.#sockets = planeRecord(this.#socketPlane);
  }

  get id(): string {
    return this.#options.id;
  }

  get draining(): boolean {
    return this.#draining;
  }

  get connectedToManager(): boolean {
    return this.#link?.connected ?? false;
  }

  /** Where this agent takes handed-off flows, once listening. */
  get meshAddr(): Deno.NetAddr | null {
    return this.#mesh?.addr ?? null;
  }

  /** Mesh connections refused for a bad or missing header. */
  get meshRefused(): number {
    return this.#mesh?.refused ?? 0;
  }

  get state(): ClusterState | null {
    return this.#state;
  }

  /** Connections open through this agent now (connected to a backend or a claimant). */
  get openConnections(): number {
    return this.#connected;
  }

  /** Bytes forwarded so far, up (client to backend) and down: finished flows' and open flows' alike. */
  bytesForwarded(): { up: number; down: number } {
    const open = this.#socketPlane.openBytes();
    return { up: this.counters.bytesUp + open.up, down: this.counters.bytesDown + open.down };
  }

  /** The address each service listens on, once its listener is open. */
  listenAddrs(): Map<string, Deno.NetAddr> {
    const addrs = new Map<string, Deno.NetAddr>();
    for (const [name, service] of this.#services) {
      if (service.listening) addrs.set(name, service.listening.bound);
    }
    return addrs;
  }

  /** Serves from the saved state (if any) at once, then joins the manager. */
  async start(): Promise<void> {
    this.#sweep = setInterval(() => this.#affinity.sweep(performance.now()), AGENT_DEFAULTS.sweepMs);
    if ((this.#options.dataPath ?? "epoll") === "epoll") await this.#openRelay();
    if (this.#options.stateDir) {
      try {
        const saved = await loadState(this.#options.stateDir);
        if (saved) {
          this.#log.info(
            "Serving from the saved state of {dir} (version {version}) until the manager answers",
            { dir: this.#options.stateDir, version: saved.version },
          );
          this.applyState(saved, { persist: false });
        }
      } catch (error) {
        this.#log.error("Cannot load the saved state: {error}", { error });
      }
    }
    let advertised: string | null = null;
    if (this.#options.mesh) {
      const { host, port } = this.#options.mesh;
      const listener = Deno.listen({ hostname: host, port });
      this.#mesh = new MeshServer(listener, this.#signer, (conn, flow) => this.#adopt(conn, flow));
      advertised = formatHostPort({ host, port: this.#mesh.addr.port });
      this.#log.info("Agent {agent} takes handed-off flows on {mesh}", {
        agent: this.#options.id,
        mesh: advertised,
      });
    }
    const link = this.#options.seams?.link ?? ((options: ManagerLinkOptions) => new ManagerLink(options));
    this.#link = link({
      managers: this.#options.managers,
      token: this.#options.token,
      agentId: this.#options.id,
      mesh: advertised,
      tls: this.#options.tls ?? null,
      onState: (state) => this.applyState(state, { persist: true }),
      onDelta: (delta) => this.applyDelta(delta),
      onAhead: (ahead) => this.#takeDecisions(ahead),
      report: () => this.#report(),
      takeFailures: () => {
        const failures = [...this.#pendingFailures.values()];
        this.#pendingFailures.clear();
        return failures;
      },
      takeStarted: () => {
        const started = [...this.#startedSince.values()];
        this.#startedSince.clear();
        return started;
      },
    });
    this.#link.start();
  }

  /** Makes `state` the one served: opens, updates and closes service listeners to match. */
  applyState(state: ClusterState, options: { persist: boolean }): void {
    const agentIds = state.agents.map((agent) => agent.id);
    const claimKey = agentIds.join("\u0000");
    if (claimKey !== this.#claimAgents || this.#claimOwners === null) {
      this.#claimOwners = agentIds.length > 0 ? claimOwners(agentIds) : null;
      this.#claimAgents = claimKey;
      this.#log.info("Claims split among {count} agents: {agents}", {
        count: agentIds.length,
        agents: agentIds,
      });
    }
    this.#state = state;
    const seen = new Set<string>();
    for (const spec of state.services) {
      seen.add(spec.name);
      let table: Uint16Array;
      try {
        table = decodeTable(spec.table, spec.backends.length);
      } catch (error) {
        this.#log.error("Ignoring service {service} from state {version}: {error}", {
          service: spec.name,
          version: state.version,
          error,
        });
        continue;
      }
      const listenKey = formatHostPort(spec.listen);
      const existing = this.#services.get(spec.name);
      if (existing && existing.listenKey === listenKey && (existing.listening || existing.opening)) {
        // The manager took back the queues of a state it publishes anew: none is taken from until the next.
        this.#dropDecisions(existing);
        existing.spec = spec;
        existing.table = table;
        continue;
      }
      if (existing) this.#closeListener(existing);
      const live: LiveService = {
        spec,
        table,
        listenKey,
        listening: null,
        opening: false,
        meshIndex: existing?.meshIndex ?? null,
        draining: null,
        acceptErrors: new LogWindow(AGENT_DEFAULTS.problemLogMs),
        answersLate: new LogWindow(AGENT_DEFAULTS.problemLogMs),
        ahead: { listen: null, mesh: null },
        aheadFormer: { listen: [], mesh: [] },
      };
      this.#services.set(spec.name, live);
      if (!this.#draining) this.#openListener(live, state);
    }
    for (const [name, service] of this.#services) {
      if (!seen.has(name)) {
        this.#log.info("Service {service} was removed; closing its listener", { service: name });
        this.#closeListener(service);
        this.#services.delete(name);
      }
    }
    this.#applyMeshTls(state.meshTls);
    for (const service of this.#services.values()) this.#updatePlane(service);
    this.#log.debug("Serving state {version} with {services} services", {
      version: state.version,
      services: state.services.length,
    });
    if (options.persist) this.#save(state);
  }

  /**
   * Applies a delta from the manager to the state served: the services it names get their new backends'
   * weights and states and their new tables, the others are left as they are. Returns false, with nothing
   * changed, when it does not apply to this state (another version or epoch, a service not served here, a
   * table whose hash differs): the manager then sends the whole state.
   */
  applyDelta(delta: StateDelta): boolean {
    const state = this.#state;
    if (state === null) return false;
    const tables = new Map<string, Uint16Array>();
    for (const [name, service] of this.#services) tables.set(name, service.table);
    let next: ReturnType<typeof applyStateDelta>;
    try {
      next = applyStateDelta(state, tables, delta);
    } catch (error) {
      if (!(error instanceof DeltaError)) throw error;
      this.#log.info("{error}", { error: error.message, version: state.version });
      return false;
    }
    this.#state = next.state;
    for (const { name } of delta.services) {
      const service = this.#services.get(name);
      const spec = next.state.services.find((each) => each.name === name);
      if (service === undefined || spec === undefined) continue;
      // The manager took back the queues of a service it changed: none is taken from until the next.
      this.#dropDecisions(service);
      service.spec = spec;
      service.table = next.tables.get(name) ?? service.table;
      this.#updatePlane(service);
    }
    this.#log.debug("Serving state {version}: {services} services changed", {
      version: delta.version,
      services: delta.services.length,
    });
    this.#save(next.state);
    return true;
  }

  /** Saves `state` to the state folder, if there is one; a burst of states saves only its newest. */
  #save(state: ClusterState): void {
    const dir = this.#options.stateDir;
    if (!dir) return;
    const pending = this.#unsaved !== null;
    this.#unsaved = state;
    if (pending) return;
    this.#saving = this.#saving.then(async () => {
      const newest = this.#unsaved;
      this.#unsaved = null;
      if (newest !== null) await saveState(dir, newest);
    }).catch((error) => {
      this.#log.error("Cannot save the state to {dir}: {error}", { dir, error });
    });
  }

  /**
   * Stops accepting, leaves the cluster, and lets each service's open connections finish for up to its own
   * `timeouts.drain`, when what is left of them is closed; then closes everything.
   */
  async drain(): Promise<void> {
    if (this.#draining) return;
    this.#draining = true;
    for (const service of this.#services.values()) this.#closeListener(service, { keepIndex: true });
    // Leave the cluster at once, so the manager moves this agent's claim and the others stop handing
    // flows to it; flows handed off before they learn of it are still served (see #adopt).
    await this.#link?.close();
    const started = performance.now();
    const services = [...this.#services.values()];
    const drainMs = Math.max(0, ...services.map((service) => service.spec.timeouts.drainMs)) ||
      (services.length === 0 ? 0 : AGENT_DEFAULTS.drainMs);
    this.#log.info("Draining {open} open connections for up to {drainMs} ms", {
      open: this.#open(),
      drainMs,
    });
    // Other agents hand flows to this one until they learn that it left: keep the mesh port open for a
    // few heartbeats even when nothing is open, within timeouts.drain.
    const grace = started +
      Math.min(drainMs, AGENT_DEFAULTS.missedHeartbeatsGrace * (this.#state?.heartbeatMs ?? 1_000));
    const pending = new Set(services);
    while ((this.#open() > 0 || performance.now() < grace) && pending.size > 0) {
      for (const service of pending) {
        if (performance.now() < started + service.spec.timeouts.drainMs) continue;
        pending.delete(service);
        this.#endFlows(service);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await this.close();
  }

  /** Closes everything at once: listeners, open connections, the manager link. */
  async close(): Promise<void> {
    this.#draining = true;
    clearInterval(this.#sweep);
    for (const service of this.#services.values()) this.#closeListener(service);
    clearTimeout(this.#openCountsTimer);
    this.#openCountsTimer = undefined;
    clearTimeout(this.#usedTimer);
    this.#usedTimer = undefined;
    await this.#meshSwitch;
    await this.#mesh?.close();
    await this.#link?.close();
    await Promise.all([this.#relay, this.#sockets].map((plane) => plane?.plane.stop()));
    clearTimeout(this.#openCountsTimer);
    this.#openCountsTimer = undefined;
    clearTimeout(this.#usedTimer);
    this.#usedTimer = undefined;
    await this.#saving;
  }

  /** Flows open in every plane: asked about, connecting or connected. */
  #open(): number {
    return (this.#relay?.open ?? 0) + this.#sockets.open;
  }

  /** The agent's handlers of a plane's events, for the plane `plane()` gives once it is made. */
  #handlersOf(plane: () => Plane): DataPlaneEvents {
    return {
      place: (request) => void this.#place(plane(), request),
      flows: (events, counters, open) => {
        const record = plane();
        record.open = open;
        this.#flowEvents(record, events, counters);
      },
    };
  }

  /** Starts the epoll relay; where it cannot be had, says why and keeps to Deno's sockets. */
  async #openRelay(): Promise<void> {
    const open = this.#options.seams?.openPlane ?? ((events: DataPlaneEvents) => RelayDataPlane.open(events));
    const opened = await open(this.#handlersOf(() => this.#relay!))
      .catch((error) => ({ unavailable: errorText(error) }));
    if (!("unavailable" in opened)) {
      this.#relay = planeRecord(opened);
      this.#log.info("Serving connections through the epoll relay");
      return;
    }
    this.#log.warn("Cannot serve connections through the epoll relay ({reason}); using Deno's sockets", {
      reason: opened.unavailable,
    });
  }

  /** Serves the mesh port with TLS when the manager says so (manager.tls), plain TCP otherwise. */
  #applyMeshTls(tls: ClusterState["meshTls"]): void {
    const cert = tls ? `${tls.cert}\u0000${tls.key}` : "";
    const mesh = this.#mesh;
    if (!mesh || !this.#options.mesh || cert === this.#meshCert) return;
    this.#meshCert = cert;
    const hostname = this.#options.mesh.host;
    const port = mesh.addr.port;
    const where = { mesh: `${hostname}:${port}`, protocol: tls ? "TLS" : "TCP" };
    this.#meshSwitch = this.#meshSwitch.then(() =>
      mesh.replaceListener(() =>
        tls
          ? Deno.listenTls({ hostname, port, cert: tls.cert, key: tls.key })
          : Deno.listen({ hostname, port })
      )
    ).then(
      () => this.#log.info("Mesh port {mesh} now speaks {protocol}", where),
      (error) =>
        this.#log.error("Cannot serve the mesh port {mesh} with {protocol}: {error}", {
          ...where,
          error: errorText(error),
        }),
    );
  }

  /**
   * Listens for a service on the relay when it can serve it (IP literals, no TLS mesh), else on Deno's
   * sockets.
   */
  #openListener(service: LiveService, state: ClusterState): void {
    const plane = this.#relay !== null && relayCanServe(service.spec, state) ? this.#relay : this.#sockets;
    const { spec } = service;
    service.opening = true;
    let opening: Promise<{ index: number; port: number }>;
    try {
      opening = plane.plane.listen(this.#planeService(service));
    } catch (error) {
      opening = Promise.reject(error);
    }
    opening.then(({ index, port }) => {
      service.opening = false;
      if (this.#services.get(spec.name) !== service || this.#draining) {
        void plane.plane.unlisten(index);
        return;
      }
      const bound = { transport: "tcp" as const, hostname: spec.listen.host, port };
      service.listening = { plane, index, bound };
      plane.services.set(index, service);
      // The state may have moved on while the listener opened.
      this.#updatePlane(service);
      this.#log.info("Service {service} listening on {bound}", {
        service: spec.name,
        listen: service.listenKey,
        bound: formatHostPort({ host: spec.listen.host, port }),
        data_path: plane.plane.kind,
      });
      if (this.#listenErrors.delete(spec.name)) {
        this.#log.info("Service {service} can listen on {listen} again", {
          service: spec.name,
          listen: service.listenKey,
        });
      }
    }, (error) => {
      service.opening = false;
      // Tried again with every new state: said once, until it changes or the listener opens.
      const text = `Cannot listen on ${service.listenKey} for service ${spec.name}: ${errorText(error)}`;
      const repeated = this.#listenErrors.get(spec.name) === text;
      this.#listenErrors.set(spec.name, text);
      const fields = { listen: service.listenKey, service: spec.name, error: errorText(error) };
      if (repeated) this.#log.debug("Cannot listen on {listen} for service {service}: {error}", fields);
      else this.#log.error("Cannot listen on {listen} for service {service}: {error}", fields);
    });
  }

  /** Why a service cannot listen, by service name, until it can. */
  listenErrors(): ReadonlyMap<string, string> {
    return this.#listenErrors;
  }

  /** Stops accepting for a service; with `keepIndex`, its flows are still known by it (a drain ends them). */
  #closeListener(service: LiveService, options: { keepIndex?: boolean } = {}): void {
    const listening = service.listening;
    if (listening === null) return;
    void listening.plane.plane.unlisten(listening.index);
    if (options.keepIndex) service.draining = listening;
    service.listening = null;
  }

  /** Closes what is still open of a service whose drain is over, saying how much that was. */
  #endFlows(service: LiveService): void {
    const ended = [
      service.draining,
      service.meshIndex === null ? null : { plane: this.#sockets, index: service.meshIndex },
    ];
    let open = 0;
    for (const plane of [this.#relay, this.#sockets]) {
      for (const flow of plane?.flows.values() ?? []) if (flow.service === service && flow.connected) open++;
    }
    if (open > 0) {
      this.#log.warn("Closing {open} connections of {service} still open after its drain of {drainMs} ms", {
        open,
        service: service.spec.name,
        drainMs: service.spec.timeouts.drainMs,
      });
    }
    for (const where of ended) if (where) where.plane.plane.endFlows(where.index);
  }

  /** A service as a plane serves it, with the placement of the state served now. */
  #planeService(service: LiveService): PlaneService {
    const { spec } = service;
    return {
      name: spec.name,
      listen: spec.listen,
      maxConnections: spec.maxConnections,
      connectTimeoutMs: spec.timeouts.connectMs,
      idleTimeoutMs: spec.timeouts.idleMs,
      proxyProtocol: spec.proxyProtocol,
      placement: this.#placementOf(service),
      askTimeoutMs: askTimeoutMs(spec),
    };
  }

  /** How a plane places a service's flows alone, and which it must ask about. */
  #placementOf(service: LiveService): Placement<HostPort> {
    const { spec } = service;
    const state = this.#state;
    // With decisions made ahead, a flow this agent claims takes the next of the manager's queue, unasked;
    // at debug the agent places every flow (for its log line), from the same queue, which it then holds.
    const logsFlows = this.#logsEveryFlow();
    const decided = this.#decidesAhead(spec) && !logsFlows;
    const askAll = (spec.decide === "manager" && !this.#decidesAhead(spec)) ||
      (spec.affinity.key === "client_ip" && spec.affinity.ttlMs > 0) ||
      logsFlows;
    let askBuckets: Uint8Array | null = null;
    if (askAll) askBuckets = new Uint8Array(CLAIM_BUCKETS).fill(1);
    else if (spec.handoff === "claimant" && this.#claimOwners !== null && state !== null) {
      const owners = this.#claimOwners;
      askBuckets = new Uint8Array(owners.length);
      for (let bucket = 0; bucket < owners.length; bucket++) {
        const owner = state.agents[owners[bucket]!];
        if (owner && this.#takesHandoffs(owner)) askBuckets[bucket] = 1;
      }
    }
    return {
      backends: spec.backends.map((backend) => ({ host: backend.host, port: backend.port })),
      table: service.table,
      seed: state?.seed ?? 0,
      placeBy: spec.affinity.key === "client_ip" ? "client_ip" : "flow",
      askBuckets,
      decided,
    };
  }

  /** Whether new flows of a service take decisions the manager made ahead: it decides ahead for them. */
  #decidesAhead(spec: ServiceSpec): boolean {
    return spec.decide === "manager" && spec.decideAheadMs > 0;
  }

  /**
   * Whether the flow log is at debug: planes then ask the agent about every flow, for its line, and the
   * agent holds both lanes' queues of decisions made ahead (the decisions are the same).
   */
  #logsEveryFlow(): boolean {
    return this.#flowLog.isEnabledFor("debug");
  }

  /**
   * A queue of decisions the manager made ahead for a service: to its plane, or to the agent for the mesh
   * lane (and for both when it logs every flow), when it was made for the state served (its backends are
   * indexes into that state's).
   */
  #takeDecisions(ahead: AheadMessage): void {
    const service = this.#services.get(ahead.service);
    const listening = service?.listening;
    if (!service || this.#state?.version !== ahead.version) return;
    if (ahead.lane === "listen" && !listening) return;
    const count = service.spec.backends.length;
    if (ahead.backends.some((index) => index >= count)) {
      this.#log.warn("Ignoring decisions made ahead for {service}: a backend index beyond its {count}", {
        service: ahead.service,
        count,
      });
      return;
    }
    const decisions = { seq: ahead.seq, backends: Uint16Array.from(ahead.backends), ttlMs: ahead.ttlMs };
    let queue: QueuedDecisions | null = null;
    if (ahead.lane === "mesh" || this.#logsEveryFlow()) {
      queue = new QueuedDecisions();
      queue.set(decisions, performance.now());
    } else listening!.plane.plane.setDecisions(listening!.index, decisions);
    this.#retire(service, ahead.lane);
    service.ahead[ahead.lane] = { seq: ahead.seq, size: ahead.backends.length, queue, taken: 0, told: 0 };
  }

  /** A service forgets its queues of decisions made ahead; flows ask until the next come. */
  #dropDecisions(service: LiveService): void {
    this.#retire(service, "mesh");
    if (service.ahead.listen === null) return;
    this.#retire(service, "listen");
    const listening = service.listening;
    listening?.plane.plane.setDecisions(listening.index, { seq: 0, backends: new Uint16Array(0), ttlMs: 0 });
  }

  /**
   * A lane's queue is no longer taken from: it becomes the lane's former one, whose uses the plane may still
   * report (it tells what was taken of a queue before taking the next), and the manager is told of.
   */
  #retire(service: LiveService, lane: Lane): void {
    const current = service.ahead[lane];
    if (current === null) return;
    const formers = service.aheadFormer[lane];
    formers.unshift(current);
    if (formers.length > AGENT_DEFAULTS.formerQueues) {
      // The oldest is told of before it is forgotten, if it has uses untold.
      const oldest = formers.at(-1)!;
      if (oldest.taken > oldest.told) this.#tellUsed();
      formers.pop();
    }
    service.ahead[lane] = null;
  }

  /**
   * `taken` decisions of a lane's queue are taken (a running total): the manager is told at once when half
   * of the queue is, else within `usedBatchMs`.
   */
  #decisionsTaken(lane: AheadLane, taken: number): void {
    if (taken <= lane.taken) return;
    this.counters.decisions += taken - lane.taken;
    lane.taken = taken;
    if (this.#draining) return;
    if (lane.taken - lane.told >= lane.size / 2 || lane.taken >= lane.size) {
      clearTimeout(this.#usedTimer);
      this.#usedTimer = undefined;
      this.#tellUsed();
    } else {
      this.#usedTimer ??= setTimeout(() => {
        this.#usedTimer = undefined;
        this.#tellUsed();
      }, AGENT_DEFAULTS.usedBatchMs);
    }
  }

  /** Tells the manager what was taken of its queues since it was last told. */
  #tellUsed(): void {
    const queues: QueueUsed[] = [];
    for (const service of this.#services.values()) {
      for (const name of LANES) {
        for (const lane of [...service.aheadFormer[name], service.ahead[name]]) {
          if (lane === null || lane.taken === lane.told) continue;
          lane.told = lane.taken;
          queues.push({ service: service.spec.name, seq: lane.seq, used: lane.taken, lane: name });
        }
      }
    }
    if (queues.length > 0) this.#link?.sendUsed(queues);
  }

  #updatePlane(service: LiveService): void {
    const listening = service.listening;
    if (listening !== null) listening.plane.plane.update(listening.index, this.#planeService(service));
  }

  /**
   * A flow another agent handed to this one over the mesh: served here, as this agent's own, on Deno's
   * sockets (it arrived on them). A draining agent still serves it: it was accepted by another agent
   * before that one learnt this one left.
   */
  #adopt(conn: Deno.Conn, flow: HandedOffFlow): Promise<void> {
    const service = this.#services.get(flow.service);
    if (!service || service.table.length === 0) {
      this.#flowLog.warn("Cannot serve flow of {service} handed off by {sender}: {reason}", {
        service: flow.service,
        sender: flow.sender,
        reason: service ? "no backend" : "unknown service",
      });
      if (service) this.counters.rejected++;
      closeQuietly(conn);
      return Promise.resolve();
    }
    const sockets = this.#socketPlane;
    const index = sockets.define(this.#planeService(service), service.meshIndex ?? undefined);
    service.meshIndex = index;
    this.#sockets.services.set(index, service);
    const adopted = sockets.adopt(index, conn, {
      client: flow.client,
      destination: flow.destination,
      initial: flow.initial,
      handedOffBy: flow.sender,
    });
    if (!adopted) {
      this.#flowLog.warn("Cannot serve flow of {service} handed off by {sender}: {reason}", {
        service: flow.service,
        sender: flow.sender,
        reason: "at max_connections",
      });
    }
    return Promise.resolve();
  }

  /**
   * Where a flow a plane could not place alone goes: to its claimant (handoff), else to this agent's
   * backends in order, the preferred first (the affinity cache's, or the manager's decision).
   */
  async #place(plane: Plane, request: PlacementRequest): Promise<void> {
    const service = plane.services.get(request.service);
    if (service === undefined) {
      plane.answersLate.delete(flowKey(request.slot, request.generation));
      plane.plane.placed(request, [], null);
      return;
    }
    const { spec, table } = service;
    const endpoints: Endpoints = { client: request.client, destination: request.destination };
    const place = this.#placeHash(spec, endpoints);
    const handedOffBy = request.handedOffBy ?? null;
    const owner = handedOffBy === null ? this.#handoffClaimant(spec, place) : null;
    const key = flowKey(request.slot, request.generation);
    const flow = (targets: readonly string[], handoff: { mesh: string } | null): void => {
      // The plane stopped waiting and placed the flow alone: it ignores this answer, and the flow is its own.
      if (plane.answersLate.delete(key)) return;
      plane.flows.set(key, {
        service,
        asked: { id: this.#nextFlowId++, endpoints },
        targets,
        handoff,
        handedOffBy,
        connected: false,
        load: null,
      });
    };
    if (owner !== null) {
      const mesh = parseHostPort(owner.mesh);
      const meshHeader = await encodeMeshHeader(this.#signer, {
        service: spec.name,
        sender: this.#options.id,
        client: endpoints.client,
        destination: endpoints.destination,
      });
      // Should the claimant be unreachable, the flow is served here, from the table.
      const order = backendOrder(table, place, spec.backends.length);
      const local = order.map((index) => spec.backends[index]!);
      const header = proxyHeader(spec, endpoints);
      // With manager.tls the mesh speaks TLS with the manager's certificate: it is verified as the manager's.
      const tls = this.#state?.meshTls
        ? {
          hostname: (this.#link?.manager ?? this.#options.managers[0])?.host ?? "",
          caCerts: this.#options.tls?.caCerts ?? [],
        }
        : null;
      flow([owner.id, ...local.map((backend) => backend.id)], { mesh: owner.mesh });
      plane.plane.placed(
        request,
        [{ ...mesh, ...(tls ? { tls } : {}) }, ...this.#targets(service, spec, order, false)],
        [meshHeader, ...local.map(() => header)],
        // A claimant that does not answer soon is passed over for a backend.
        Math.min(spec.timeouts.connectMs, AGENT_DEFAULTS.meshConnectMs),
      );
      return;
    }
    const order = await this.#backendOrder(service, spec, table, endpoints, place, handedOffBy !== null);
    flow(order.map((index) => spec.backends[index]!.id), null);
    plane.plane.placed(
      request,
      this.#targets(service, spec, order, handedOffBy !== null),
      proxyHeader(spec, endpoints),
    );
  }

  /**
   * Backends of `spec` as a plane's targets: by index (the plane has their addresses) while `spec` is the
   * service's, whose placement went to the plane before this answer; else (or `byAddress`) by address.
   */
  #targets(service: LiveService, spec: ServiceSpec, order: number[], byAddress: boolean): Target[] {
    if (service.spec === spec && !byAddress) return order;
    return order.map((index) => ({ host: spec.backends[index]!.host, port: spec.backends[index]!.port }));
  }

  /** A plane's flow events into this agent's counts and log lines, and its counters into this agent's. */
  #flowEvents(plane: Plane, events: readonly number[], counters: PlaneCounters): void {
    const last = plane.counted;
    this.counters.rejected += counters.rejected - (last?.rejected ?? 0);
    this.counters.acceptErrors += counters.acceptErrors - (last?.acceptErrors ?? 0);
    this.counters.bytesUp += counters.bytesUp - (last?.bytesUp ?? 0);
    this.counters.bytesDown += counters.bytesDown - (last?.bytesDown ?? 0);
    plane.counted = { ...counters };
    for (let i = 0; i < events.length; i += EVENT_FIELDS) {
      const kind = events[i]!;
      const service = plane.services.get(events[i + 1]!);
      const errno = events[i + 5]!;
      if (kind === FlowEvent.ACCEPT_FAILED) {
        if (service) this.#acceptFailed(service, errnoText(errno));
        continue;
      }
      if (kind === FlowEvent.ASK_TIMED_OUT) {
        this.#askTimedOut(plane, flowKey(events[i + 2]!, events[i + 3]!), service);
        continue;
      }
      if (kind === FlowEvent.DECIDED) {
        if (!service) continue;
        const seq = events[i + 3];
        const current = service.ahead.listen;
        const lane = current?.seq === seq
          ? current
          : service.aheadFormer.listen.find((each) => each.seq === seq);
        if (lane) this.#decisionsTaken(lane, events[i + 4]!);
        continue;
      }
      const key = flowKey(events[i + 2]!, events[i + 3]!);
      const choice = events[i + 4]!;
      let flow = plane.flows.get(key);
      if (kind === FlowEvent.ENDED) {
        if (flow !== undefined) {
          plane.flows.delete(key);
          this.#ended(flow);
        }
        continue;
      }
      if (flow === undefined) {
        // A flow the plane placed alone, by the table.
        if (!service) continue;
        flow = {
          service,
          asked: null,
          targets: null,
          handoff: null,
          handedOffBy: null,
          connected: false,
          load: null,
        };
        if (kind === FlowEvent.CONNECTED) plane.flows.set(key, flow);
      }
      const spec = flow.service.spec;
      const backendId = flow.targets ? flow.targets[choice] : spec.backends[choice]?.id;
      switch (kind) {
        case FlowEvent.CONNECTED:
          this.#connectedTo(flow, backendId, choice);
          break;
        case FlowEvent.FAILED:
        case FlowEvent.FAILED_LOCALLY:
          if (flow.handoff && choice === 0) {
            this.counters.handoffFailures++;
            this.#flowLog.warn(
              "Cannot hand a flow of {service} to claimant {agent} at {mesh}: {error}; serving it here",
              {
                service: spec.name,
                agent: backendId ?? null,
                mesh: flow.handoff.mesh,
                error: errnoText(errno),
              },
            );
            break;
          }
          if (kind === FlowEvent.FAILED && backendId !== undefined) this.#connectFailed(spec.name, backendId);
          if (flow.asked && backendId !== undefined && this.#flowLog.isEnabledFor("debug")) {
            const backend = spec.backends.find((each) => each.id === backendId);
            this.#flowLog.debug("Flow {flow} of {service}: backend {backend} failed: {error}", {
              flow: flow.asked.id,
              service: spec.name,
              backend: backendId,
              error: errno === ETIMEDOUT && backend
                ? connectTimeoutText(backend, spec.timeouts.connectMs)
                : errnoText(errno),
            });
          }
          break;
        case FlowEvent.NO_BACKEND:
          plane.flows.delete(key);
          this.counters.noBackend++;
          this.#flowLog.warn("Flow {flow} of {service} from {client}: no backend could be reached", {
            flow: flow.asked?.id ?? null,
            service: spec.name,
            client: flow.asked ? endpointText(flow.asked.endpoints.client) : null,
          });
          break;
        case FlowEvent.IDLE:
          this.#flowLog.info("Flow {flow} of {service} to {backend} idle for {idleMs} ms; closing", {
            flow: flow.asked?.id ?? null,
            service: spec.name,
            backend: flow.load?.backend ?? backendId ?? null,
            idleMs: spec.timeouts.idleMs,
          });
          break;
      }
    }
  }

  /**
   * The plane placed a flow alone, by the table: the answer this agent owed it did not come in time. An
   * answer given meanwhile is forgotten (the flow's events now name the table's backends); one still to
   * come is not recorded.
   */
  #askTimedOut(plane: Plane, key: number, service: LiveService | undefined): void {
    if (!plane.flows.delete(key)) plane.answersLate.add(key);
    this.counters.decisionFallbacks++;
    const unlogged = service?.answersLate.due() ?? null;
    if (service === undefined || unlogged === null) return;
    this.#log.warn(
      "A flow of {service} had no answer from this agent's thread within {waitMs} ms; the data plane placed it by the table ({unlogged} more since the last report)",
      {
        service: service.spec.name,
        waitMs: askTimeoutMs(service.spec),
        unlogged,
      },
    );
  }

  /** A flow reached its backend (or claimant): the counts, and its log line. */
  #connectedTo(flow: PlaneFlow, backendId: string | undefined, choice: number): void {
    const spec = flow.service.spec;
    const asked = flow.asked;
    const debug = asked !== null && this.#flowLog.isEnabledFor("debug");
    flow.connected = true;
    this.#connected++;
    if (flow.handoff && choice === 0) {
      this.counters.handedOff++;
      if (debug) {
        this.#flowLog.debug("Flow {flow} of {service} from {client} handed off to {agent}", {
          flow: asked.id,
          service: spec.name,
          client: endpointText(asked.endpoints.client),
          agent: backendId ?? null,
        });
      }
      return;
    }
    if (backendId === undefined) return;
    flow.load = this.#served(spec.name, backendId);
    if (debug) {
      this.#flowLog.debug("Flow {flow} of {service} from {client} served by {agent} via {backend}", {
        flow: asked.id,
        service: spec.name,
        client: endpointText(asked.endpoints.client),
        destination: endpointText(asked.endpoints.destination),
        agent: this.#options.id,
        backend: backendId,
        handed_off_by: flow.handedOffBy,
      });
    }
  }

  #ended(flow: PlaneFlow): void {
    if (flow.connected) {
      flow.connected = false;
      this.#connected--;
    }
    const load = flow.load;
    if (load === null) return;
    flow.load = null;
    // A load is in the map exactly while it has open flows.
    if (--load.open === 0) this.#openByBackend.delete(load.key);
    this.#openCountsChanged();
  }

  /** The hash that places a flow: the 5-tuple's, or the client address's alone with client_ip affinity. */
  #placeHash(spec: ServiceSpec, endpoints: Endpoints): number {
    const placeBy = spec.affinity.key === "client_ip" ? "client_ip" : "flow";
    return placeHash(placeBy, endpoints.client, endpoints.destination, this.#state?.seed ?? 0);
  }

  /** The claimant a flow of `spec` at `place` is handed to, or null when this agent serves it. */
  #handoffClaimant(spec: ServiceSpec, place: number): MeshAgent | null {
    if (spec.handoff !== "claimant") return null;
    const owner = claimantOf(this.#claimOwners, place);
    const agent = owner === NO_AGENT ? null : this.#state?.agents[owner] ?? null;
    return agent !== null && this.#takesHandoffs(agent) ? agent : null;
  }

  /** Whether flows another agent claims go to it: it is not this one, and it has a mesh port. */
  #takesHandoffs(owner: AgentSpec): owner is MeshAgent {
    return owner.id !== this.#options.id && owner.mesh !== null;
  }

  /**
   * The backends to try for a flow, in order (indexes into `spec.backends`): the table's candidates from
   * the flow's place, with the preferred one first: the affinity cache's, else the manager's decision
   * (`decide: manager`): the next of the manager's decisions made ahead for the flow's lane, when this agent
   * holds that queue (the mesh lane's; both at debug), with no round trip; else asked, and the affinity
   * cache then keeps it.
   */
  async #backendOrder(
    service: LiveService,
    spec: ServiceSpec,
    table: Uint16Array,
    endpoints: Endpoints,
    place: number,
    handedOff: boolean,
  ): Promise<number[]> {
    let preferred = -1;
    const affinity = spec.affinity.key === "client_ip" && spec.affinity.ttlMs > 0;
    if (affinity) preferred = this.#indexOf(spec, this.#affinity.get(spec.name, endpoints.client.ip));
    // The lane whose queue of decisions made ahead this flow takes from, or found empty: the manager
    // refills it then.
    const lane = this.#decidesAhead(spec) ? (handedOff ? "mesh" : "listen") : undefined;
    // The plane takes from the listen lane's queue itself, unless this agent logs every flow.
    const queued = lane === undefined ? null : service.ahead[lane];
    if (preferred < 0 && queued?.queue) {
      const taken = queued.queue.take(performance.now());
      if (taken >= 0 && spec.backends[taken]!.weight > 0) preferred = taken;
      this.#decisionsTaken(queued, queued.queue.taken);
    }
    if (preferred < 0 && spec.decide === "manager") {
      const decision = await this.#link?.decide(spec.name, endpoints.client, spec.decisionTimeoutMs, lane) ??
        null;
      if (decision === null) this.counters.decisionFallbacks++;
      else {
        this.counters.decisions++;
        preferred = this.#indexOf(spec, decision.backend);
        if (affinity && preferred >= 0 && decision.ttlMs > 0 && decision.backend !== null) {
          this.#affinity.set(spec.name, endpoints.client.ip, decision.backend, decision.ttlMs);
        }
      }
    }
    const order = backendOrder(table, place, spec.backends.length);
    return preferred >= 0 ? preferFirst(order, preferred) : order;
  }

  /** Counts a flow served by `backend`, open until its load is released. */
  #served(service: string, backend: string): BackendLoad {
    const backendKey = `${service}\u0000${backend}`;
    this.counters.served++;
    this.counters.connectionsByBackend.set(
      backendKey,
      (this.counters.connectionsByBackend.get(backendKey) ?? 0) + 1,
    );
    const started = this.#startedSince.get(backendKey);
    if (started) started.count++;
    else this.#startedSince.set(backendKey, { service, backend, count: 1 });
    let load = this.#openByBackend.get(backendKey);
    if (load === undefined) {
      load = { key: backendKey, service, backend, open: 0 };
      this.#openByBackend.set(backendKey, load);
    }
    load.open++;
    this.#openCountsChanged();
    return load;
  }

  #indexOf(spec: ServiceSpec, backend: string | null | undefined): number {
    if (backend === null || backend === undefined) return -1;
    return spec.backends.findIndex((b) => b.id === backend && b.weight > 0);
  }

  /** Tells the manager the new open counts, coalesced over a short window. */
  #openCountsChanged(): void {
    // A draining agent has left the manager; the flows a closing plane ends are told to no one.
    if (this.#openCountsTimer !== undefined || this.#draining) return;
    this.#openCountsTimer = setTimeout(() => {
      this.#openCountsTimer = undefined;
      this.#link?.sendOpenCounts(this.#report().backends);
    }, AGENT_DEFAULTS.openCountsBatchMs);
  }

  #connectFailed(service: string, backend: string): void {
    const key = `${service}\u0000${backend}`;
    this.counters.connectFailures.set(key, (this.counters.connectFailures.get(key) ?? 0) + 1);
    const pending = this.#pendingFailures.get(key);
    if (pending) pending.count++;
    else this.#pendingFailures.set(key, { service, backend, count: 1 });
  }

  /** Logs a failed accept, at most one line per window: they can fail thousands of times a second. */
  #acceptFailed(service: LiveService, error: string): void {
    const unlogged = service.acceptErrors.due();
    if (unlogged === null) return;
    this.#log.error(
      "Cannot accept for service {service}: {error}; pausing accepts and retrying ({unlogged} more since the last report)",
      { service: service.spec.name, error, unlogged },
    );
  }

  #report(): LinkReport {
    const backends: LinkReport["backends"] = [];
    for (const load of this.#openByBackend.values()) {
      backends.push({ service: load.service, backend: load.backend, open: load.open });
    }
    return {
      connections: {
        served: this.counters.served,
        handed_off: this.counters.handedOff,
        open: this.#connected,
        decided: this.counters.decisions,
      },
      backends,
    };
  }
}

/** How long a plane on a thread of its own waits for the answer to a flow of `spec` it asked about. */
function askTimeoutMs(spec: ServiceSpec): number {
  return spec.decisionTimeoutMs + AGENT_DEFAULTS.askGraceMs;
}

/** A plane as the agent keeps it: no service, no flow yet. */
function planeRecord(plane: DataPlane): Plane {
  return { plane, services: new Map(), flows: new Map(), answersLate: new Set(), open: 0, counted: null };
}

/** A flow's key in its plane's map: its slot and its generation there, in one number. */
function flowKey(slot: number, generation: number): number {
  return slot * 0x1_0000_0000 + generation;
}

/**
 * Whether the epoll relay can serve a service as the agent would: it takes IP literals (no name to
 * resolve), and speaks no TLS (the mesh with manager.tls).
 */
function relayCanServe(spec: ServiceSpec, state: ClusterState): boolean {
  return !state.meshTls && isIpLiteral(spec.listen.host) &&
    spec.backends.every((backend) => isIpLiteral(backend.host));
}

function isIpLiteral(host: string): boolean {
  try {
    ipBytes(host);
    return true;
  } catch {
    return false;
  }
}

function proxyHeader(spec: ServiceSpec, endpoints: Endpoints): Uint8Array | null {
  return spec.proxyProtocol === "none"
    ? null
    : encodeProxyHeader(spec.proxyProtocol, endpoints.client, endpoints.destination);
}

const ETIMEDOUT = 110;

/** An agent with a mesh port, where flows it claims are handed. */
type MeshAgent = AgentSpec & { readonly mesh: string };

function endpointText(endpoint: SocketAddress): string {
  return formatHostPort({ host: endpoint.ip, port: endpoint.port });
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
