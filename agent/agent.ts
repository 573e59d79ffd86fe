/**
 * The agent role, the data plane: one listener per service (with `reusePort`, so several agents on one
 * machine share a service's port), a backend per new connection from the service's Maglev table and the
 * connection's 5-tuple, and the byte pump. The manager only ever changes the state the agent serves
 * from; the per-connection path never waits for it, and the last state is kept on disk.
 */
import { formatHostPort, type HostPort, parseHostPort } from "../cluster/address.ts";
import { TokenSigner } from "../cluster/auth.ts";
import { CLAIM_BUCKETS, claimBucket, claimOwners } from "../cluster/claims.ts";
import { hashClientIp, hashFlowKey, ipBytes } from "../cluster/flow_key.ts";
import { logger } from "../cluster/log.ts";
import { candidates } from "../cluster/maglev.ts";
import { type AgentSpec, type ClusterState, decodeTable, type ServiceSpec } from "../cluster/protocol.ts";
import { encodeProxyHeader, type ProxyAddress } from "../cluster/proxy_protocol.ts";
import { AffinityCache } from "./affinity.ts";
import { Connector, connectTimeoutText } from "./connect.ts";
import { InFlight } from "./in_flight.ts";
import { SlotList } from "./slot_list.ts";
import { type LinkReport, ManagerLink } from "./manager_link.ts";
import { encodeMeshHeader, type HandedOffFlow, MeshServer } from "./mesh.ts";
import { coarseClock, pump, type PumpEnd, type PumpStats } from "./pump.ts";
import { loadState, saveState } from "./state_store.ts";
import { RelayDataPlane } from "./uring/data_plane.ts";
import type { Placement } from "./uring/placement.ts";
import { FlowEvent, type PlacementRequest, type RelayCounters, type SocketAddress } from "./uring/relay.ts";

const log = logger("agent");
const flowLog = logger("agent", "flow");

export const AGENT_DEFAULTS = {
  /** How often idle connections are looked for, and the coarse clock advanced. */
  sweepMs: 250,
  /** How long a draining agent waits when no service gives `timeouts.drain`. */
  drainMs: 30_000,
  /** Longest wait to connect to a claimant's mesh port before serving the flow here. */
  meshConnectMs: 1_000,
  /** Open-connection counts are sent to the manager at most this often. */
  openCountsBatchMs: 25,
  /** A draining agent keeps its mesh port open this many heartbeats at least, while the others learn it left. */
  missedHeartbeatsGrace: 3,
  /** The longest pause of a listener after accept errors (such as running out of file descriptors). */
  acceptPauseMaxMs: 1_000,
  /** Accept errors of one service are logged at most once per this window. */
  acceptErrorLogMs: 10_000,
} as const;

/** The original endpoints of a flow: the client and the address it connected to. */
interface Endpoints {
  readonly client: ProxyAddress;
  readonly destination: ProxyAddress;
}

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
   * What carries connections: the io_uring relay (`agent/uring/`, the default; where it cannot be had the
   * agent says why and uses Deno's sockets), or Deno's sockets.
   */
  readonly dataPath?: DataPath;
}

export const DATA_PATHS = ["uring", "deno"] as const;
export type DataPath = typeof DATA_PATHS[number];

interface LiveService {
  spec: ServiceSpec;
  table: Uint16Array;
  readonly listenKey: string;
  listener: Deno.Listener | null;
  accepting: Promise<void> | null;
  open: number;
  /** Its index in the io_uring relay while the relay accepts for it, and the address bound. */
  relay: { index: number; bound: Deno.NetAddr } | null;
  /** Accept errors: when one was last logged, and how many since (at most one line per window). */
  acceptErrors: { lastLogged: number; unlogged: number };
}

/** A flow of the io_uring relay, from its connect to its end. */
interface RelayFlow {
  readonly service: LiveService;
  /** For a flow the agent placed (asked): its id and endpoints, for its log lines. */
  readonly asked: { id: number; endpoints: Endpoints } | null;
  /** The backend ids of the targets the agent answered with (null: the relay placed it). */
  readonly targets: readonly string[] | null;
  /** A handoff: its first target is the claimant's mesh port (`targets[0]` its id), the others backends. */
  readonly handoff: { mesh: string } | null;
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

/**
 * One proxied connection while its two pumps run. It holds only what its life needs: everything used
 * to set it up (endpoints, candidates, log text) is dropped once the pumps start, so an idle flow is
 * small. Its pumps report their end to `ended`, the agent's; no promise chain is kept per flow.
 */
class Flow implements PumpEnd {
  readonly up: PumpStats;
  readonly down: PumpStats;
  /** Pumps still running. */
  running = 2;
  closed = false;
  failed = false;
  /** Its index in the agent's list of open flows. */
  slot = -1;

  constructor(
    readonly id: number,
    readonly service: LiveService,
    /** The backend's load, or null for a flow relayed to its claimant. */
    readonly load: BackendLoad | null,
    readonly client: Deno.Conn,
    readonly upstream: Deno.Conn,
    readonly idleMs: number,
    readonly ended: (flow: Flow, error: unknown) => void,
  ) {
    const now = coarseClock.now;
    this.up = { lastActive: now, bytes: 0 };
    this.down = { lastActive: now, bytes: 0 };
  }

  pumpEnded(error: unknown): void {
    this.ended(this, error);
  }
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
  readonly #flows = new SlotList<Flow>();
  readonly #openByBackend = new Map<string, BackendLoad>();
  readonly #pendingFailures = new Map<string, { service: string; backend: string; count: number }>();
  /** Connections being set up (until their pumps start or they are refused). */
  readonly #handlers = new InFlight((error) =>
    this.#flowLog.error("A connection failed to set up: {error}", { error: errorText(error) })
  );
  /** Bound once: what every flow's pumps call when they end. */
  readonly #pumpEnded = (flow: Flow, error: unknown): void => this.#flowPumpEnded(flow, error);
  /** Backend and mesh connects, with shared connect deadlines. */
  readonly #connector = new Connector();
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
  #link: ManagerLink | null = null;
  #mesh: MeshServer | null = null;
  #claimOwners: Uint16Array | null = null;
  /** The certificate the mesh port serves TLS with now ("" for plain TCP). */
  #meshCert = "";
  #meshSwitch: Promise<void> = Promise.resolve();
  #claimAgents = "";
  #openCountsTimer: ReturnType<typeof setTimeout> | undefined;
  #state: ClusterState | null = null;
  #nextFlowId = 1;
  #sweep: ReturnType<typeof setInterval> | undefined;
  #draining = false;
  #saving: Promise<void> = Promise.resolve();
  /** The io_uring relay, when it serves this agent's listeners (`SWITCHYARD_DATA_PATH=uring`). */
  #plane: RelayDataPlane | null = null;
  /** Services by their relay index. */
  readonly #relayServices = new Map<number, LiveService>();
  /** Relay flows asked of the agent, by slot and generation, until connected or given up. */
  readonly #relayAsked = new Map<number, RelayFlow>();
  /** Connected relay flows, by slot and generation. */
  readonly #relayFlows = new Map<number, RelayFlow>();
  /** The relay's counters as last added into this agent's. */
  #relayCounters: RelayCounters | null = null;
  /** The relay's open flows as it last said (those it accepted before the agent heard of them too). */
  #relayOpen = 0;

  constructor(options: AgentOptions) {
    this.#options = options;
    this.#signer = new TokenSigner(options.token);
    this.#log = log.with({ agent: options.id });
    this.#flowLog = flowLog.with({ agent: options.id });
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

  get openConnections(): number {
    return this.#flows.size + this.#relayFlows.size;
  }

  /** Bytes forwarded so far, up (client to backend) and down: finished flows' and open flows' alike. */
  bytesForwarded(): { up: number; down: number } {
    let up = this.counters.bytesUp;
    let down = this.counters.bytesDown;
    this.#flows.forEach((flow) => {
      up += flow.up.bytes;
      down += flow.down.bytes;
    });
    return { up, down };
  }

  /** The address each service listens on, once its listener is open. */
  listenAddrs(): Map<string, Deno.NetAddr> {
    const addrs = new Map<string, Deno.NetAddr>();
    for (const [name, service] of this.#services) {
      if (service.listener) addrs.set(name, service.listener.addr as Deno.NetAddr);
      else if (service.relay) addrs.set(name, service.relay.bound);
    }
    return addrs;
  }

  /** Serves from the saved state (if any) at once, then joins the manager. */
  async start(): Promise<void> {
    this.#sweep = setInterval(() => this.#sweepIdle(), AGENT_DEFAULTS.sweepMs);
    if ((this.#options.dataPath ?? "uring") === "uring") await this.#openPlane();
    if (this.#options.stateDir) {
      try {
        const saved = await loadState(this.#options.stateDir);
        if (saved) {
          this.#log.info(
            "Serving from the saved state of {dir} (version {version}) until the manager answers",
            {
              dir: this.#options.stateDir,
              version: saved.version,
            },
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
      this.#mesh = new MeshServer(listener, this.#signer, (conn, flow) => this.#serveHandedOff(conn, flow));
      advertised = formatHostPort({ host, port: this.#mesh.addr.port });
      this.#log.info("Agent {agent} takes handed-off flows on {mesh}", {
        agent: this.#options.id,
        mesh: advertised,
      });
    }
    this.#link = new ManagerLink({
      managers: this.#options.managers,
      token: this.#options.token,
      agentId: this.#options.id,
      mesh: advertised,
      tls: this.#options.tls ?? null,
      onState: (state) => this.applyState(state, { persist: true }),
      report: () => this.#report(),
      takeFailures: () => {
        const failures = [...this.#pendingFailures.values()];
        this.#pendingFailures.clear();
        return failures;
      },
    });
    this.#link.start();
  }

  /** Makes `state` the one served: opens, updates and closes service listeners to match. */
  applyState(state: ClusterState, options: { persist: boolean }): void {
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
      if (existing && existing.listenKey === listenKey && (existing.listener || existing.relay)) {
        existing.spec = spec;
        existing.table = table;
        if (existing.relay) this.#postPlacement(existing, state);
        continue;
      }
      if (existing) this.#closeListener(existing);
      const live: LiveService = {
        spec,
        table,
        listenKey,
        listener: null,
        accepting: null,
        open: existing?.open ?? 0,
        relay: null,
        acceptErrors: { lastLogged: -Infinity, unlogged: 0 },
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
    for (const service of this.#services.values()) if (service.relay) this.#postPlacement(service, state);
    this.#log.debug("Serving state {version} with {services} services", {
      version: state.version,
      services: state.services.length,
    });
    if (options.persist && this.#options.stateDir) {
      const dir = this.#options.stateDir;
      this.#saving = this.#saving.then(() => saveState(dir, state)).catch((error) => {
        this.#log.error("Cannot save the state to {dir}: {error}", { dir, error });
      });
    }
  }

  /**
   * Stops accepting, lets open connections finish for up to `timeouts.drain` (the longest of the
   * services), then closes what is left and leaves the cluster.
   */
  async drain(): Promise<void> {
    if (this.#draining) return;
    this.#draining = true;
    for (const service of this.#services.values()) this.#closeListener(service);
    // Leave the cluster at once, so the manager moves this agent's claim and the others stop handing
    // flows to it; flows handed off before they learn of it are still served (see #serveHandedOff).
    await this.#link?.close();
    const drainMs = Math.max(0, ...[...this.#services.values()].map((s) => s.spec.timeouts.drainMs)) ||
      (this.#services.size === 0 ? 0 : AGENT_DEFAULTS.drainMs);
    this.#log.info("Draining {open} open connections for up to {drainMs} ms", {
      open: this.#flows.size,
      drainMs,
    });
    const started = performance.now();
    const deadline = started + drainMs;
    // Other agents hand flows to this one until they learn that it left: keep the mesh port open for a
    // few heartbeats even when nothing is open, within timeouts.drain.
    const grace = started +
      Math.min(drainMs, AGENT_DEFAULTS.missedHeartbeatsGrace * (this.#state?.heartbeatMs ?? 1_000));
    while (
      (this.#flows.size > 0 || this.#relayOpen > 0 || this.#relayAsked.size > 0 ||
        this.#handlers.size > 0 || performance.now() < grace) &&
      performance.now() < deadline
    ) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    if (this.#flows.size > 0) {
      this.#log.warn("Closing {open} connections still open after the drain", { open: this.#flows.size });
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
    await this.#meshSwitch;
    await this.#mesh?.close();
    await this.#link?.close();
    this.#connector.close();
    // Setups wait on connects and decisions, never on flows: once they are done (the connector and the
    // link are closed, so at once), no flow starts any more, and closing every flow ends its pumps.
    await this.#handlers.whenIdle();
    for (const flow of this.#flows.snapshot()) closeFlow(flow);
    while (this.#flows.size > 0) await new Promise((resolve) => setTimeout(resolve, 5));
    await Promise.allSettled([...this.#services.values()].map((s) => s.accepting));
    if (this.#plane) {
      const { counters } = await this.#plane.stop();
      this.#relayFlowsUpdate([], counters);
      for (const flow of this.#relayFlows.values()) this.#relayFlowEnded(flow);
      this.#relayFlows.clear();
      this.#relayAsked.clear();
    }
    await this.#saving;
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

  #openListener(service: LiveService, state: ClusterState): void {
    const { listen } = service.spec;
    if (this.#plane && relayCanServe(service.spec, state)) {
      this.#openRelayListener(service, state);
      return;
    }
    try {
      service.listener = Deno.listen({ hostname: listen.host, port: listen.port, reusePort: true });
    } catch (error) {
      this.#log.error("Cannot listen on {listen} for service {service}: {error}", {
        listen: service.listenKey,
        service: service.spec.name,
        error,
      });
      return;
    }
    const bound = service.listener.addr as Deno.NetAddr;
    this.#log.info("Service {service} listening on {bound}", {
      service: service.spec.name,
      listen: service.listenKey,
      bound: formatHostPort({ host: bound.hostname, port: bound.port }),
    });
    service.accepting = this.#acceptLoop(service, service.listener);
  }

  #closeListener(service: LiveService): void {
    try {
      service.listener?.close();
    } catch {
      // already closed
    }
    service.listener = null;
    if (service.relay && this.#plane) {
      void this.#plane.unlisten(service.relay.index);
      service.relay = null;
    }
  }

  /** Starts the io_uring relay; where it cannot be had, says why and keeps to Deno's sockets. */
  async #openPlane(): Promise<void> {
    const opened = await RelayDataPlane.open({
      place: (request) => void this.#placeAsked(request),
      flows: (events, counters, open) => {
        this.#relayOpen = open;
        this.#relayFlowsUpdate(events, counters);
      },
    }).catch((error) => ({ unavailable: errorText(error) }));
    if (opened instanceof RelayDataPlane) {
      this.#plane = opened;
      this.#log.info("Serving connections through io_uring");
    } else {
      this.#log.warn("Cannot serve connections through io_uring ({reason}); using Deno's sockets", {
        reason: opened.unavailable,
      });
    }
  }

  #openRelayListener(service: LiveService, state: ClusterState): void {
    const plane = this.#plane!;
    const { spec } = service;
    const placement = this.#placementOf(service, state);
    plane.listen({
      name: spec.name,
      listen: { ip: spec.listen.host, port: spec.listen.port },
      backends: placement.backends,
      maxConnections: spec.maxConnections,
      connectTimeoutMs: spec.timeouts.connectMs,
      idleTimeoutMs: spec.timeouts.idleMs,
      proxyProtocol: spec.proxyProtocol,
      placement,
    }).then(({ index, port }) => {
      if (this.#services.get(spec.name) !== service || this.#draining) {
        void plane.unlisten(index);
        return;
      }
      service.relay = { index, bound: { transport: "tcp", hostname: spec.listen.host, port } };
      this.#relayServices.set(index, service);
      // The state may have moved on while the listener opened.
      if (this.#state) this.#postPlacement(service, this.#state);
      this.#log.info("Service {service} listening on {bound}", {
        service: spec.name,
        listen: service.listenKey,
        bound: formatHostPort({ host: spec.listen.host, port }),
      });
    }, (error) => {
      this.#log.error("Cannot listen on {listen} for service {service}: {error}", {
        listen: service.listenKey,
        service: spec.name,
        error: errorText(error),
      });
    });
  }

  /** How the relay places a service's flows alone, and which it must ask about. */
  #placementOf(service: LiveService, state: ClusterState): Placement {
    const { spec } = service;
    const askAll = spec.decide === "manager" ||
      (spec.affinity.key === "client_ip" && spec.affinity.ttlMs > 0) ||
      this.#flowLog.isEnabledFor("debug");
    let askBuckets: Uint8Array | null = null;
    if (askAll) askBuckets = new Uint8Array(CLAIM_BUCKETS).fill(1);
    else if (spec.handoff === "claimant" && this.#claimOwners !== null) {
      const owners = this.#claimOwners;
      askBuckets = new Uint8Array(owners.length);
      for (let bucket = 0; bucket < owners.length; bucket++) {
        const owner = state.agents[owners[bucket]!];
        if (owner && this.#takesHandoffs(owner)) askBuckets[bucket] = 1;
      }
    }
    return {
      backends: spec.backends.map((backend) => ({ ip: backend.host, port: backend.port })),
      table: service.table,
      seed: state.seed,
      placeBy: spec.affinity.key === "client_ip" ? "client_ip" : "flow",
      askBuckets,
    };
  }

  #postPlacement(service: LiveService, state: ClusterState): void {
    if (service.relay && this.#plane) {
      this.#plane.setPlacement(service.relay.index, this.#placementOf(service, state));
    }
  }

  /** A relay flow the relay could not place alone: the agent's own decision, as #handle and #serve make it. */
  async #placeAsked(request: PlacementRequest): Promise<void> {
    const plane = this.#plane;
    const service = this.#relayServices.get(request.service);
    if (!plane) return;
    const key = relayFlowKey(request.slot, request.generation);
    if (!service) {
      plane.placed(request, [], null);
      return;
    }
    const { spec, table } = service;
    const endpoints: Endpoints = { client: request.client, destination: request.destination };
    const place = this.#placeHash(spec, endpoints);
    const owner = this.#handoffClaimant(spec, place);
    if (owner !== null) {
      const mesh = parseHostPort(owner.mesh);
      const meshHeader = await encodeMeshHeader(this.#signer, {
        service: spec.name,
        sender: this.#options.id,
        client: endpoints.client,
        destination: endpoints.destination,
      });
      // Should the claimant be unreachable, the flow is served here, from the table, as #handle does.
      const order = tableOrder(spec, table, place);
      const local = order.map((index) => spec.backends[index]!);
      const header = this.#proxyHeader(spec, endpoints);
      this.#relayAsked.set(key, {
        service,
        asked: { id: this.#nextFlowId++, endpoints },
        targets: [owner.id, ...local.map((backend) => backend.id)],
        handoff: { mesh: owner.mesh },
        load: null,
      });
      plane.placed(
        request,
        [{ ip: mesh.host, port: mesh.port }, ...this.#relayTargets(service, spec, order)],
        [meshHeader, ...local.map(() => header)],
        // As on Deno's sockets: a claimant that does not answer soon is passed over for a backend.
        Math.min(spec.timeouts.connectMs, AGENT_DEFAULTS.meshConnectMs),
      );
      return;
    }
    const order = await this.#backendOrder(spec, table, endpoints, place);
    const backends = order.map((index) => spec.backends[index]!);
    this.#relayAsked.set(key, {
      service,
      asked: { id: this.#nextFlowId++, endpoints },
      targets: backends.map((backend) => backend.id),
      handoff: null,
      load: null,
    });
    plane.placed(request, this.#relayTargets(service, spec, order), this.#proxyHeader(spec, endpoints));
  }

  /**
   * Backends of `spec` as the relay's targets: by index (the relay has their addresses) while `spec` is the
   * service's, whose placement went to the relay before this answer; else by address.
   */
  #relayTargets(
    service: LiveService,
    spec: ServiceSpec,
    order: number[],
  ): (SocketAddress | number)[] {
    if (service.spec === spec) return order;
    return order.map((index) => ({ ip: spec.backends[index]!.host, port: spec.backends[index]!.port }));
  }

  #proxyHeader(spec: ServiceSpec, endpoints: Endpoints): Uint8Array | null {
    return spec.proxyProtocol === "none"
      ? null
      : encodeProxyHeader(spec.proxyProtocol, endpoints.client, endpoints.destination);
  }

  /** Flow events of the relay into this agent's counts, and its counters into this agent's. */
  #relayFlowsUpdate(events: number[], counters: RelayCounters): void {
    const last = this.#relayCounters;
    this.counters.rejected += counters.rejected - (last?.rejected ?? 0);
    this.counters.acceptErrors += counters.acceptErrors - (last?.acceptErrors ?? 0);
    this.counters.bytesUp += counters.bytesUp - (last?.bytesUp ?? 0);
    this.counters.bytesDown += counters.bytesDown - (last?.bytesDown ?? 0);
    this.#relayCounters = counters;
    for (let i = 0; i < events.length; i += 6) {
      const kind = events[i]!;
      const service = this.#relayServices.get(events[i + 1]!);
      if (kind === FlowEvent.ACCEPT_FAILED) {
        if (service) this.#acceptFailed(service, osErrorText(events[i + 5]!));
        continue;
      }
      const key = relayFlowKey(events[i + 2]!, events[i + 3]!);
      if (kind === FlowEvent.ENDED) {
        const open = this.#relayFlows.get(key);
        if (open) {
          this.#relayFlows.delete(key);
          this.#relayFlowEnded(open);
        }
        continue;
      }
      const choice = events[i + 4]!;
      const asked = this.#relayAsked.get(key);
      const flow: RelayFlow | undefined = asked ??
        (service ? { service, asked: null, targets: null, handoff: null, load: null } : undefined);
      if (!flow) continue;
      const spec = flow.service.spec;
      const backendId = flow.targets ? flow.targets[choice] : spec.backends[choice]?.id;
      switch (kind) {
        case FlowEvent.CONNECTED:
          this.#relayAsked.delete(key);
          this.#relayConnected(flow, backendId, choice);
          this.#relayFlows.set(key, flow);
          break;
        case FlowEvent.FAILED:
          if (flow.handoff && choice === 0) {
            this.counters.handoffFailures++;
            this.#flowLog.warn(
              "Cannot hand a flow of {service} to claimant {agent} at {mesh}: {error}; serving it here",
              {
                service: spec.name,
                agent: backendId ?? null,
                mesh: flow.handoff.mesh,
                error: osErrorText(events[i + 5]!),
              },
            );
            break;
          }
          if (backendId !== undefined) this.#connectFailed(spec.name, backendId);
          if (flow.asked && backendId !== undefined && this.#flowLog.isEnabledFor("debug")) {
            const backend = spec.backends.find((each) => each.id === backendId);
            this.#flowLog.debug("Flow {flow} of {service}: backend {backend} failed: {error}", {
              flow: flow.asked.id,
              service: spec.name,
              backend: backendId,
              error: events[i + 5] === ECANCELED && backend
                ? connectTimeoutText(backend, spec.timeouts.connectMs)
                : osErrorText(events[i + 5]!),
            });
          }
          break;
        case FlowEvent.NO_BACKEND:
          this.#relayAsked.delete(key);
          this.counters.noBackend++;
          this.#flowLog.warn("Flow {flow} of {service} from {client}: no backend could be reached", {
            flow: flow.asked?.id ?? null,
            service: spec.name,
            client: flow.asked
              ? `${flow.asked.endpoints.client.ip}:${flow.asked.endpoints.client.port}`
              : null,
          });
          break;
        case FlowEvent.IDLE: {
          const open = this.#relayFlows.get(key);
          this.#flowLog.info("Flow {flow} of {service} to {backend} idle for {idleMs} ms; closing", {
            flow: open?.asked?.id ?? null,
            service: spec.name,
            backend: open?.load?.backend ?? backendId ?? null,
            idleMs: spec.timeouts.idleMs,
          });
          break;
        }
      }
    }
  }

  /** A relay flow reached its backend (or claimant): the counts, and its log line as #serve writes it. */
  #relayConnected(flow: RelayFlow, backendId: string | undefined, choice: number): void {
    const spec = flow.service.spec;
    const asked = flow.asked;
    const debug = asked !== null && this.#flowLog.isEnabledFor("debug");
    const client = debug ? `${asked.endpoints.client.ip}:${asked.endpoints.client.port}` : "";
    if (flow.handoff && choice === 0) {
      this.counters.handedOff++;
      if (debug) {
        this.#flowLog.debug("Flow {flow} of {service} from {client} handed off to {agent}", {
          flow: asked.id,
          service: spec.name,
          client,
          agent: backendId ?? null,
        });
      }
      return;
    }
    if (backendId === undefined) return;
    flow.load = this.#served(spec.name, backendId);
    if (debug) {
      const { destination } = asked.endpoints;
      this.#flowLog.debug("Flow {flow} of {service} from {client} served by {agent} via {backend}", {
        flow: asked.id,
        service: spec.name,
        client,
        destination: formatHostPort({ host: destination.ip, port: destination.port }),
        agent: this.#options.id,
        backend: backendId,
        handed_off_by: null,
      });
    }
  }

  #relayFlowEnded(flow: RelayFlow): void {
    const load = flow.load;
    if (load === null) return;
    flow.load = null;
    if (--load.open === 0) this.#openByBackend.delete(load.key);
    this.#openCountsChanged();
  }

  /**
   * Accepts until the listener is closed. Any other accept error (out of file descriptors above all)
   * pauses accepting with a growing delay and then goes on, as HAProxy and nginx do: the listener is
   * never given up while the service is configured.
   */
  async #acceptLoop(service: LiveService, listener: Deno.Listener): Promise<void> {
    let pauseMs = 0;
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (error) {
        if (error instanceof Deno.errors.BadResource || error instanceof Deno.errors.Interrupted) return;
        if (service.listener !== listener) return;
        this.counters.acceptErrors++;
        this.#acceptFailed(service, errorText(error));
        pauseMs = Math.min(AGENT_DEFAULTS.acceptPauseMaxMs, Math.max(10, pauseMs * 2));
        await new Promise((resolve) => setTimeout(resolve, pauseMs));
        continue;
      }
      pauseMs = 0;
      this.#handlers.track(this.#handle(service, conn as Deno.TcpConn));
    }
  }

  async #handle(service: LiveService, client: Deno.TcpConn): Promise<void> {
    const { spec, table } = service;
    // A connection accepted before a drain began is served like any other: the drain only stops accepts.
    if (service.open >= spec.maxConnections || table.length === 0) {
      if (table.length > 0) this.counters.rejected++;
      closeQuietly(client);
      return;
    }
    service.open++;
    let started = false;
    try {
      const remote = client.remoteAddr as Deno.NetAddr;
      const local = client.localAddr as Deno.NetAddr;
      const endpoints: Endpoints = {
        client: { ip: remote.hostname, port: remote.port },
        destination: { ip: local.hostname, port: local.port },
      };
      const place = this.#placeHash(spec, endpoints);
      const owner = this.#handoffClaimant(spec, place);
      if (owner !== null) {
        started = await this.#handOff(service, client, endpoints, owner);
        if (started) return;
      }
      started = await this.#serve(service, table, client, endpoints, place, null);
    } finally {
      // A started flow holds its place in service.open until it ends (see #flowPumpEnded).
      if (!started) service.open--;
    }
  }

  /** Serves a flow another agent handed to this one, as this agent's own; it is never handed on. */
  async #serveHandedOff(conn: Deno.Conn, flow: HandedOffFlow): Promise<void> {
    const service = this.#services.get(flow.service);
    // A draining agent still serves flows handed to it: they were accepted by another agent before it
    // learnt that this one left.
    if (!service || service.table.length === 0 || service.open >= service.spec.maxConnections) {
      this.#flowLog.warn("Cannot serve flow of {service} handed off by {sender}: {reason}", {
        service: flow.service,
        sender: flow.sender,
        reason: service
          ? (service.table.length === 0 ? "no backend" : "at max_connections")
          : "unknown service",
      });
      if (service) this.counters.rejected++;
      closeQuietly(conn);
      return;
    }
    service.open++;
    let started = false;
    try {
      const endpoints = { client: flow.client, destination: flow.destination };
      started = await this.#serve(
        service,
        service.table,
        conn,
        endpoints,
        this.#placeHash(service.spec, endpoints),
        flow,
      );
    } finally {
      if (!started) service.open--;
    }
  }

  /** The hash that places a flow: the 5-tuple's, or the client address's alone with client_ip affinity. */
  #placeHash(spec: ServiceSpec, endpoints: Endpoints): number {
    const seed = this.#state?.seed ?? 0;
    if (spec.affinity.key === "client_ip") return hashClientIp(endpoints.client.ip, seed);
    return hashFlowKey({
      clientIp: endpoints.client.ip,
      clientPort: endpoints.client.port,
      serviceIp: endpoints.destination.ip,
      servicePort: endpoints.destination.port,
    }, seed);
  }

  /** The live agent that claims a flow hash, or null when claims are unknown. */
  #claimant(place: number): AgentSpec | null {
    const owners = this.#claimOwners;
    if (owners === null) return null;
    const owner = owners[claimBucket(place)] as number;
    return this.#state?.agents[owner] ?? null;
  }

  /** The claimant a flow of `spec` at `place` is handed to, or null when this agent serves it. */
  #handoffClaimant(spec: ServiceSpec, place: number): MeshAgent | null {
    if (spec.handoff !== "claimant") return null;
    const owner = this.#claimant(place);
    return owner !== null && this.#takesHandoffs(owner) ? owner : null;
  }

  /** Whether flows another agent claims go to it: it is not this one, and it has a mesh port. */
  #takesHandoffs(owner: AgentSpec): owner is MeshAgent {
    return owner.id !== this.#options.id && owner.mesh !== null;
  }

  /** Relays a flow to its claimant's mesh port; false when the claimant cannot be reached. */
  async #handOff(
    service: LiveService,
    client: Deno.TcpConn,
    endpoints: Endpoints,
    owner: MeshAgent,
  ): Promise<boolean> {
    const spec = service.spec;
    let mesh: Deno.Conn;
    try {
      const address = parseHostPort(owner.mesh);
      const tcp = await this.#connector.connect(
        address,
        Math.min(spec.timeouts.connectMs, AGENT_DEFAULTS.meshConnectMs),
      );
      tcp.setNoDelay(true);
      // With manager.tls the mesh speaks TLS with the manager's certificate: verify it as the manager's.
      mesh = this.#state?.meshTls
        ? await Deno.startTls(tcp, {
          hostname: (this.#link?.manager ?? this.#options.managers[0])?.host ?? "",
          caCerts: this.#options.tls?.caCerts ?? [],
        })
        : tcp;
      await writeAll(
        mesh,
        await encodeMeshHeader(this.#signer, {
          service: spec.name,
          sender: this.#options.id,
          client: endpoints.client,
          destination: endpoints.destination,
        }),
      );
    } catch (error) {
      this.counters.handoffFailures++;
      this.#flowLog.warn(
        "Cannot hand a flow of {service} to claimant {agent} at {mesh}: {error}; serving it here",
        {
          service: spec.name,
          agent: owner.id,
          mesh: owner.mesh,
          error: error instanceof Error ? error.message : String(error),
        },
      );
      return false;
    }
    const id = this.#nextFlowId++;
    this.counters.handedOff++;
    if (this.#flowLog.isEnabledFor("debug")) {
      this.#flowLog.debug("Flow {flow} of {service} from {client} handed off to {agent}", {
        flow: id,
        service: spec.name,
        client: `${endpoints.client.ip}:${endpoints.client.port}`,
        agent: owner.id,
      });
    }
    this.#startFlow(new Flow(id, service, null, client, mesh, spec.timeouts.idleMs, this.#pumpEnded));
    return true;
  }

  /**
   * The backends to try for a flow, in order (indexes into `spec.backends`): the table's candidates from
   * the flow's place, with the preferred one first: the affinity cache's, else the manager's decision
   * (`decide: manager`), which the affinity cache then keeps.
   */
  async #backendOrder(
    spec: ServiceSpec,
    table: Uint16Array,
    endpoints: Endpoints,
    place: number,
  ): Promise<number[]> {
    let preferred = -1;
    const affinity = spec.affinity.key === "client_ip" && spec.affinity.ttlMs > 0;
    if (affinity) preferred = this.#indexOf(spec, this.#affinity.get(spec.name, endpoints.client.ip));
    if (preferred < 0 && spec.decide === "manager") {
      const decision = await this.#link?.decide(spec.name, endpoints.client, spec.decisionTimeoutMs) ?? null;
      if (decision === null) this.counters.decisionFallbacks++;
      else {
        this.counters.decisions++;
        preferred = this.#indexOf(spec, decision.backend);
        if (affinity && preferred >= 0 && decision.ttlMs > 0 && decision.backend !== null) {
          this.#affinity.set(spec.name, endpoints.client.ip, decision.backend, decision.ttlMs);
        }
      }
    }
    const order = tableOrder(spec, table, place);
    if (preferred >= 0) {
      const at = order.indexOf(preferred);
      if (at > 0) order.splice(at, 1);
      if (at !== 0) order.unshift(preferred);
    }
    return order;
  }

  /**
   * Picks the backend (the manager's decision, the affinity cache or the table), connects and starts the
   * pumps; true when the flow started, false when it was closed for want of a backend.
   */
  async #serve(
    service: LiveService,
    table: Uint16Array,
    client: Deno.Conn,
    endpoints: Endpoints,
    place: number,
    handedOff: HandedOffFlow | null,
  ): Promise<boolean> {
    const spec = service.spec;
    const id = this.#nextFlowId++;
    const order = await this.#backendOrder(spec, table, endpoints, place);
    let upstream: Deno.TcpConn | null = null;
    let backendId = "";
    for (const index of order) {
      const backend = spec.backends[index];
      if (!backend) continue;
      try {
        upstream = await this.#connector.connect(backend, spec.timeouts.connectMs);
        backendId = backend.id;
        break;
      } catch (error) {
        // Running out of descriptors or ports here is this agent's trouble, not the backend's.
        if (!isLocalError(error)) this.#connectFailed(spec.name, backend.id);
        this.#flowLog.debug("Flow {flow} of {service}: backend {backend} failed: {error}", {
          flow: id,
          service: spec.name,
          backend: backend.id,
          error: error instanceof Error ? error.message : String(error),
        });
      }
    }
    const clientText = `${endpoints.client.ip}:${endpoints.client.port}`;
    if (upstream === null) {
      this.counters.noBackend++;
      this.#flowLog.warn("Flow {flow} of {service} from {client}: no backend could be reached", {
        flow: id,
        service: spec.name,
        client: clientText,
      });
      closeQuietly(client);
      return false;
    }
    if (this.#flowLog.isEnabledFor("debug")) {
      this.#flowLog.debug("Flow {flow} of {service} from {client} served by {agent} via {backend}", {
        flow: id,
        service: spec.name,
        client: clientText,
        destination: formatHostPort({ host: endpoints.destination.ip, port: endpoints.destination.port }),
        agent: this.#options.id,
        backend: backendId,
        handed_off_by: handedOff?.sender ?? null,
      });
    }
    try {
      if (spec.proxyProtocol !== "none") {
        await writeAll(
          upstream,
          encodeProxyHeader(spec.proxyProtocol, endpoints.client, endpoints.destination),
        );
      }
      if (handedOff !== null && handedOff.initial.length > 0) {
        await writeAll(upstream, handedOff.initial);
        this.counters.bytesUp += handedOff.initial.length;
      }
    } catch (error) {
      this.#flowLog.debug(
        "Flow {flow} of {service}: backend {backend} failed before the first byte: {error}",
        {
          flow: id,
          service: spec.name,
          backend: backendId,
          error: String(error),
        },
      );
      closeQuietly(client);
      closeQuietly(upstream);
      return false;
    }
    const load = this.#served(spec.name, backendId);
    this.#startFlow(new Flow(id, service, load, client, upstream, spec.timeouts.idleMs, this.#pumpEnded));
    return true;
  }

  /** Counts a flow served by `backend` (on either path), open until its load is released. */
  #served(service: string, backend: string): BackendLoad {
    const backendKey = `${service}\u0000${backend}`;
    this.counters.served++;
    this.counters.connectionsByBackend.set(
      backendKey,
      (this.counters.connectionsByBackend.get(backendKey) ?? 0) + 1,
    );
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

  /** Starts both pumps of a flow; it runs until both ends are done, or either fails or idles out. */
  #startFlow(flow: Flow): void {
    const { client, upstream } = flow;
    // TLS connections (the mesh with manager.tls) had it set on their TCP connection before the handshake.
    if ("setNoDelay" in client) (client as Deno.TcpConn).setNoDelay(true);
    if ("setNoDelay" in upstream) (upstream as Deno.TcpConn).setNoDelay(true);
    this.#flows.add(flow);
    pump(client, upstream, flow.up, flow);
    pump(upstream, client, flow.down, flow);
  }

  #flowPumpEnded(flow: Flow, error: unknown): void {
    if (error !== null) {
      // Either side failing ends the flow: the other pump then ends too.
      closeFlow(flow);
      if (!flow.failed && this.#flowLog.isEnabledFor("debug")) {
        this.#flowLog.debug("Flow {flow} of {service} ended with an error: {error}", {
          flow: flow.id,
          service: flow.service.spec.name,
          error: String(error),
        });
      }
      flow.failed = true;
    }
    if (--flow.running > 0) return;
    closeFlow(flow);
    this.#flows.delete(flow);
    this.counters.bytesUp += flow.up.bytes;
    this.counters.bytesDown += flow.down.bytes;
    flow.service.open--;
    const load = flow.load;
    if (load !== null) {
      // A load is in the map exactly while it has open flows.
      if (--load.open === 0) this.#openByBackend.delete(load.key);
      this.#openCountsChanged();
    }
  }

  /** Tells the manager the new open counts, coalesced over a short window. */
  #openCountsChanged(): void {
    if (this.#openCountsTimer !== undefined) return;
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
    const errors = service.acceptErrors;
    if (performance.now() - errors.lastLogged <= AGENT_DEFAULTS.acceptErrorLogMs) {
      errors.unlogged++;
      return;
    }
    this.#log.error(
      "Cannot accept for service {service}: {error}; pausing accepts and retrying ({unlogged} more since the last report)",
      { service: service.spec.name, error, unlogged: errors.unlogged },
    );
    errors.lastLogged = performance.now();
    errors.unlogged = 0;
  }

  #sweepIdle(): void {
    const now = performance.now();
    coarseClock.now = now;
    this.#affinity.sweep(now);
    // closeFlow only closes the connections: the flow leaves the list later, when its pumps end.
    this.#flows.forEach((flow) => {
      // Activity is stamped with the coarse clock, up to one sweep behind: allow for it, so a flow is
      // never closed before it has really been idle for idleMs.
      if (
        flow.idleMs > 0 &&
        now - Math.max(flow.up.lastActive, flow.down.lastActive) > flow.idleMs + AGENT_DEFAULTS.sweepMs
      ) {
        this.#flowLog.info("Flow {flow} of {service} to {backend} idle for {idleMs} ms; closing", {
          flow: flow.id,
          service: flow.service.spec.name,
          backend: flow.load?.backend ?? null,
          idleMs: flow.idleMs,
        });
        closeFlow(flow);
      }
    });
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
        open: this.#flows.size + this.#relayFlows.size,
      },
      backends,
    };
  }
}

/**
 * Whether the io_uring relay can serve a service as the agent would: it takes IP literals (no name to
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

const ECANCELED = 125;

/** An agent with a mesh port, where flows it claims are handed. */
type MeshAgent = AgentSpec & { readonly mesh: string };

/** The table's candidates for a flow at `place`, in order (indexes into `spec.backends`); none without a table. */
function tableOrder(spec: ServiceSpec, table: Uint16Array, place: number): number[] {
  return table.length === 0 ? [] : candidates(table, place % table.length, spec.backends.length);
}

/** A relay flow's key in the agent's maps: its slot and its generation there, in one number. */
function relayFlowKey(slot: number, generation: number): number {
  return slot * 0x1_0000_0000 + generation;
}

/** What Deno says for a socket errno (so log lines read alike on both paths). */
function osErrorText(errno: number): string {
  return `${OS_ERROR_TEXT[errno] ?? "System error"} (os error ${errno})`;
}

/** Linux's text of the errnos a connect or an accept of the relay meets, as Deno's errors word them. */
const OS_ERROR_TEXT: Readonly<Record<number, string>> = {
  12: "Cannot allocate memory",
  23: "Too many open files in system",
  24: "Too many open files",
  99: "Cannot assign requested address",
  101: "Network is unreachable",
  103: "Software caused connection abort",
  104: "Connection reset by peer",
  105: "No buffer space available",
  110: "Connection timed out",
  111: "Connection refused",
  113: "No route to host",
};

/** Errors that say this host is short of something (descriptors, ports, memory), not that a peer failed. */
const LOCAL_ERROR_CODES = new Set(["EMFILE", "ENFILE", "ENOBUFS", "ENOMEM", "EADDRNOTAVAIL"]);

function isLocalError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === "string" && LOCAL_ERROR_CODES.has(code)) return true;
  return error instanceof Error && /Too many open files|os error 24\b/.test(error.message);
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < bytes.length) offset += await conn.write(bytes.subarray(offset));
}

function closeFlow(flow: Flow): void {
  if (flow.closed) return;
  flow.closed = true;
  closeQuietly(flow.client);
  closeQuietly(flow.upstream);
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // already closed
  }
}
