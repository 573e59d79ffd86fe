/**
 * The agent role, the data plane: one listener per service (with `reusePort`, so several agents on one
 * machine share a service's port), a backend per new connection from the service's Maglev table and the
 * connection's 5-tuple, and the byte pump. The manager only ever changes the state the agent serves
 * from; the per-connection path never waits for it, and the last state is kept on disk.
 */
import { formatHostPort, type HostPort } from "../cluster/address.ts";
import { hashFlowKey } from "../cluster/flow_key.ts";
import { logger } from "../cluster/log.ts";
import { candidates } from "../cluster/maglev.ts";
import { type ClusterState, decodeTable, type ServiceSpec } from "../cluster/protocol.ts";
import { connectBackend } from "./connect.ts";
import { type LinkReport, ManagerLink } from "./manager_link.ts";
import { coarseClock, pump, type PumpStats } from "./pump.ts";
import { loadState, saveState } from "./state_store.ts";

const log = logger("agent");
const flowLog = logger("agent", "flow");

export const AGENT_DEFAULTS = {
  /** Bytes of buffer per direction of a proxied connection. */
  bufferBytes: 16 * 1024,
  /** How often idle connections are looked for, and the coarse clock advanced. */
  sweepMs: 250,
  /** How long a draining agent waits when no service gives `timeouts.drain`. */
  drainMs: 30_000,
} as const;

export interface AgentOptions {
  readonly id: string;
  readonly manager: HostPort;
  readonly token: string;
  /** Where handed-off flows arrive, as told to the manager; null when this agent takes none. */
  readonly mesh?: string | null;
  readonly stateDir?: string | null;
  readonly tls?: { caCerts: string[] } | null;
}

interface LiveService {
  spec: ServiceSpec;
  table: Uint16Array;
  readonly listenKey: string;
  listener: Deno.Listener | null;
  accepting: Promise<void> | null;
  open: number;
}

interface Flow {
  readonly id: number;
  readonly service: string;
  readonly backend: string;
  readonly client: Deno.Conn;
  readonly upstream: Deno.Conn;
  readonly up: PumpStats;
  readonly down: PumpStats;
  readonly idleMs: number;
  closed: boolean;
}

/** Counters an agent exposes in its heartbeat and on its admin `/metrics`. */
export interface AgentCounters {
  served: number;
  handedOff: number;
  rejected: number;
  noBackend: number;
  bytesUp: number;
  bytesDown: number;
  connectFailures: Map<string, number>;
  connectionsByBackend: Map<string, number>;
}

export class Agent {
  readonly #options: AgentOptions;
  readonly #services = new Map<string, LiveService>();
  readonly #flows = new Set<Flow>();
  readonly #openByBackend = new Map<string, number>();
  readonly #pendingFailures = new Map<string, { service: string; backend: string; count: number }>();
  readonly #handlers = new Set<Promise<void>>();
  readonly counters: AgentCounters = {
    served: 0,
    handedOff: 0,
    rejected: 0,
    noBackend: 0,
    bytesUp: 0,
    bytesDown: 0,
    connectFailures: new Map(),
    connectionsByBackend: new Map(),
  };
  readonly #link: ManagerLink;
  #state: ClusterState | null = null;
  #nextFlowId = 1;
  #sweep: ReturnType<typeof setInterval> | undefined;
  #draining = false;
  #saving: Promise<void> = Promise.resolve();

  constructor(options: AgentOptions) {
    this.#options = options;
    this.#link = new ManagerLink({
      manager: options.manager,
      token: options.token,
      agentId: options.id,
      mesh: options.mesh ?? null,
      tls: options.tls ?? null,
      onState: (state) => this.applyState(state, { persist: true }),
      report: () => this.#report(),
      takeFailures: () => {
        const failures = [...this.#pendingFailures.values()];
        this.#pendingFailures.clear();
        return failures;
      },
    });
  }

  get id(): string {
    return this.#options.id;
  }

  get draining(): boolean {
    return this.#draining;
  }

  get connectedToManager(): boolean {
    return this.#link.connected;
  }

  get state(): ClusterState | null {
    return this.#state;
  }

  get openConnections(): number {
    return this.#flows.size;
  }

  /** The address each service listens on, once its listener is open. */
  listenAddrs(): Map<string, Deno.NetAddr> {
    const addrs = new Map<string, Deno.NetAddr>();
    for (const [name, service] of this.#services) {
      if (service.listener) addrs.set(name, service.listener.addr as Deno.NetAddr);
    }
    return addrs;
  }

  /** Serves from the saved state (if any) at once, then joins the manager. */
  async start(): Promise<void> {
    this.#sweep = setInterval(() => this.#sweepIdle(), AGENT_DEFAULTS.sweepMs);
    if (this.#options.stateDir) {
      try {
        const saved = await loadState(this.#options.stateDir);
        if (saved) {
          log.info("Serving from the saved state of {dir} (version {version}) until the manager answers", {
            dir: this.#options.stateDir,
            version: saved.version,
          });
          this.applyState(saved, { persist: false });
        }
      } catch (error) {
        log.error("Cannot load the saved state: {error}", { error });
      }
    }
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
        log.error("Ignoring service {service} from state {version}: {error}", {
          service: spec.name,
          version: state.version,
          error,
        });
        continue;
      }
      const listenKey = formatHostPort(spec.listen);
      const existing = this.#services.get(spec.name);
      if (existing && existing.listenKey === listenKey && existing.listener) {
        existing.spec = spec;
        existing.table = table;
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
      };
      this.#services.set(spec.name, live);
      if (!this.#draining) this.#openListener(live);
    }
    for (const [name, service] of this.#services) {
      if (!seen.has(name)) {
        log.info("Service {service} was removed; closing its listener", { service: name });
        this.#closeListener(service);
        this.#services.delete(name);
      }
    }
    this.#state = state;
    log.debug("Serving state {version} with {services} services", {
      version: state.version,
      services: state.services.length,
    });
    if (options.persist && this.#options.stateDir) {
      const dir = this.#options.stateDir;
      this.#saving = this.#saving.then(() => saveState(dir, state)).catch((error) => {
        log.error("Cannot save the state to {dir}: {error}", { dir, error });
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
    const drainMs = Math.max(0, ...[...this.#services.values()].map((s) => s.spec.timeouts.drainMs)) ||
      (this.#services.size === 0 ? 0 : AGENT_DEFAULTS.drainMs);
    log.info("Draining {open} open connections for up to {drainMs} ms", { open: this.#flows.size, drainMs });
    const deadline = performance.now() + drainMs;
    while (this.#flows.size > 0 && performance.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    if (this.#flows.size > 0) {
      log.warn("Closing {open} connections still open after the drain", { open: this.#flows.size });
    }
    await this.close();
  }

  /** Closes everything at once: listeners, open connections, the manager link. */
  async close(): Promise<void> {
    this.#draining = true;
    clearInterval(this.#sweep);
    for (const service of this.#services.values()) this.#closeListener(service);
    for (const flow of this.#flows) closeFlow(flow);
    await this.#link.close();
    await Promise.allSettled([...this.#handlers]);
    await Promise.allSettled([...this.#services.values()].map((s) => s.accepting));
    await this.#saving;
  }

  #openListener(service: LiveService): void {
    const { listen } = service.spec;
    try {
      service.listener = Deno.listen({ hostname: listen.host, port: listen.port, reusePort: true });
    } catch (error) {
      log.error("Cannot listen on {listen} for service {service}: {error}", {
        listen: service.listenKey,
        service: service.spec.name,
        error,
      });
      return;
    }
    const bound = service.listener.addr as Deno.NetAddr;
    log.info("Service {service} listening on {bound}", {
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
  }

  async #acceptLoop(service: LiveService, listener: Deno.Listener): Promise<void> {
    try {
      for await (const conn of listener) {
        const handler = this.#handle(service, conn as Deno.TcpConn).finally(() =>
          this.#handlers.delete(handler)
        );
        this.#handlers.add(handler);
      }
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource) && !(error instanceof Deno.errors.Interrupted)) {
        log.error("Listener of service {service} failed: {error}", { service: service.spec.name, error });
      }
    }
  }

  async #handle(service: LiveService, client: Deno.TcpConn): Promise<void> {
    const { spec, table } = service;
    if (this.#draining || service.open >= spec.maxConnections || table.length === 0) {
      if (!this.#draining && table.length > 0) this.counters.rejected++;
      closeQuietly(client);
      return;
    }
    service.open++;
    try {
      await this.#forward(spec, table, client);
    } finally {
      service.open--;
    }
  }

  async #forward(
    spec: ServiceSpec,
    table: Uint16Array,
    client: Deno.TcpConn,
  ): Promise<void> {
    const id = this.#nextFlowId++;
    const remote = client.remoteAddr as Deno.NetAddr;
    const local = client.localAddr as Deno.NetAddr;
    const seed = this.#state?.seed ?? 0;
    const hash = hashFlowKey(
      {
        clientIp: remote.hostname,
        clientPort: remote.port,
        serviceIp: local.hostname,
        servicePort: local.port,
      },
      seed,
    );
    const order = candidates(table, hash % table.length, spec.backends.length);
    let upstream: Deno.TcpConn | null = null;
    let backendId = "";
    for (const index of order) {
      const backend = spec.backends[index];
      if (!backend) continue;
      try {
        upstream = await connectBackend(backend, { timeoutMs: spec.timeouts.connectMs });
        backendId = backend.id;
        break;
      } catch (error) {
        this.#connectFailed(spec.name, backend.id);
        flowLog.debug("Flow {flow} of {service}: backend {backend} failed: {error}", {
          flow: id,
          service: spec.name,
          backend: backend.id,
          error: error instanceof Error ? error.message : String(error),
        });
      }
    }
    if (upstream === null) {
      this.counters.noBackend++;
      flowLog.warn("Flow {flow} of {service} from {client}: no backend could be reached", {
        flow: id,
        service: spec.name,
        client: `${remote.hostname}:${remote.port}`,
      });
      closeQuietly(client);
      return;
    }
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const now = coarseClock.now;
    const flow: Flow = {
      id,
      service: spec.name,
      backend: backendId,
      client,
      upstream,
      up: { lastActive: now, bytes: 0 },
      down: { lastActive: now, bytes: 0 },
      idleMs: spec.timeouts.idleMs,
      closed: false,
    };
    const backendKey = `${spec.name}\u0000${backendId}`;
    this.#flows.add(flow);
    this.counters.served++;
    this.counters.connectionsByBackend.set(
      backendKey,
      (this.counters.connectionsByBackend.get(backendKey) ?? 0) + 1,
    );
    this.#openByBackend.set(backendKey, (this.#openByBackend.get(backendKey) ?? 0) + 1);
    try {
      const upBuffer = new Uint8Array(AGENT_DEFAULTS.bufferBytes);
      const downBuffer = new Uint8Array(AGENT_DEFAULTS.bufferBytes);
      const results = await Promise.allSettled([
        pump(client, upstream, upBuffer, flow.up).catch((error) => {
          closeFlow(flow);
          throw error;
        }),
        pump(upstream, client, downBuffer, flow.down).catch((error) => {
          closeFlow(flow);
          throw error;
        }),
      ]);
      const failed = results.find((result) => result.status === "rejected");
      if (failed && !flow.closed) {
        flowLog.debug("Flow {flow} of {service} ended with an error: {error}", {
          flow: id,
          service: spec.name,
          error: String(failed.reason),
        });
      }
    } finally {
      closeFlow(flow);
      this.#flows.delete(flow);
      this.counters.bytesUp += flow.up.bytes;
      this.counters.bytesDown += flow.down.bytes;
      const open = (this.#openByBackend.get(backendKey) ?? 1) - 1;
      if (open > 0) this.#openByBackend.set(backendKey, open);
      else this.#openByBackend.delete(backendKey);
    }
  }

  #connectFailed(service: string, backend: string): void {
    const key = `${service}\u0000${backend}`;
    this.counters.connectFailures.set(key, (this.counters.connectFailures.get(key) ?? 0) + 1);
    const pending = this.#pendingFailures.get(key);
    if (pending) pending.count++;
    else this.#pendingFailures.set(key, { service, backend, count: 1 });
  }

  #sweepIdle(): void {
    const now = performance.now();
    coarseClock.now = now;
    for (const flow of this.#flows) {
      if (flow.idleMs > 0 && now - Math.max(flow.up.lastActive, flow.down.lastActive) > flow.idleMs) {
        flowLog.info("Flow {flow} of {service} to {backend} idle for {idleMs} ms; closing", {
          flow: flow.id,
          service: flow.service,
          backend: flow.backend,
          idleMs: flow.idleMs,
        });
        closeFlow(flow);
      }
    }
  }

  #report(): LinkReport {
    const backends: LinkReport["backends"] = [];
    for (const [key, open] of this.#openByBackend) {
      const [service = "", backend = ""] = key.split("\u0000");
      backends.push({ service, backend, open });
    }
    return {
      connections: {
        served: this.counters.served,
        handed_off: this.counters.handedOff,
        open: this.#flows.size,
      },
      backends,
    };
  }
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
