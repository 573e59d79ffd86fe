/**
 * Deno's sockets as the agent's data plane (`../data_plane.ts`): where the epoll relay cannot be had
 * (another OS, FFI not permitted), on request (`--data-path deno`), for what the relay does not do (backends
 * by host name, the mesh with TLS), and for flows handed to this agent over its mesh port (`adopt`).
 *
 * Each flow is an accept, a connect and two byte pumps (`pump.ts`): a read/write loop each way over a
 * reused buffer, half-close passed on. A flow holds only what its life needs once its pumps run, and its
 * events go to the agent in the same records as the relay's, once per microtask checkpoint.
 */
import type { HostPort } from "../../cluster/address.ts";
import { logger } from "../../cluster/log.ts";
import { placeFlow, placeHash, type Placement, preferFirst } from "../../cluster/placement.ts";
import { writeAll } from "../../cluster/write_all.ts";
import { encodeProxyHeader } from "../../cluster/proxy_protocol.ts";
import {
  type DataPlane,
  type DataPlaneEvents,
  FlowEvent,
  type Headers,
  noCounters,
  type PlacementRequest,
  type PlaneCounters,
  type PlaneService,
  type SocketAddress,
  type Target,
} from "../data_plane.ts";
import { Connector } from "./connect.ts";
import { InFlight } from "./in_flight.ts";
import { coarseClock, pump, type PumpEnd, type PumpStats } from "./pump.ts";
import { SlotList } from "./slot_list.ts";
import { type Decisions, QueuedDecisions } from "../queued_decisions.ts";
import { closeQuietly } from "../../cluster/close_quietly.ts";

const log = logger("agent", "sockets");

export const SOCKET_PLANE_DEFAULTS = {
  /** How often idle flows are looked for, and the coarse clock advanced. */
  sweepMs: 250,
  /** The longest pause of a listener after accept errors (such as running out of file descriptors). */
  acceptPauseMaxMs: 1_000,
} as const;

interface Service {
  spec: PlaneService;
  placement: Placement<HostPort>;
  /** The manager's decisions made ahead for it (`decided` placements). */
  readonly decisions: QueuedDecisions;
  listener: Deno.Listener | null;
  accepting: Promise<void> | null;
  open: number;
}

/** A flow waiting for the agent's answer. */
interface Asked {
  readonly service: Service;
  readonly index: number;
  readonly conn: Deno.Conn;
  readonly generation: number;
  /** Bytes of the client's that arrived before the flow was adopted (a handoff's), sent after the header. */
  readonly initial: Uint8Array | null;
}

/**
 * One proxied connection while its two pumps run. It holds only what its life needs: everything used to
 * set it up is dropped once the pumps start, so an idle flow is small. Its pumps report their end to the
 * plane; no promise chain is kept per flow.
 */
class Flow implements PumpEnd {
  readonly up: PumpStats;
  readonly down: PumpStats;
  /** Pumps still running. */
  running = 2;
  closed = false;
  /** Its index in the plane's list of open flows. */
  slot = -1;

  constructor(
    readonly plane: SocketDataPlane,
    readonly service: Service,
    readonly index: number,
    /** Its slot and generation in the events (not its place in the list). */
    readonly id: number,
    readonly generation: number,
    readonly choice: number,
    readonly client: Deno.Conn,
    readonly upstream: Deno.Conn,
  ) {
    // Exact, once: a client that never sends is idle from its connect on.
    const now = performance.now();
    this.up = { lastActive: now, bytes: 0 };
    this.down = { lastActive: now, bytes: 0 };
  }

  pumpEnded(error: unknown): void {
    this.plane.pumpEnded(this, error);
  }
}

export class SocketDataPlane implements DataPlane {
  readonly kind = "deno";
  readonly #events: DataPlaneEvents;
  readonly #services: Service[] = [];
  readonly #flows = new SlotList<Flow>();
  readonly #asked = new Map<number, Asked>();
  /** Flow ids (the events' slots): a free list, and each one's generation. */
  readonly #free: number[] = [];
  readonly #generation: number[] = [];
  /** Connections being set up (until their pumps start or they are refused). */
  readonly #setups = new InFlight((error) => log.error("A connection failed to set up: {error}", { error }));
  readonly #connector = new Connector();
  readonly #counters: PlaneCounters = noCounters();
  #pending: number[] = [];
  #flushDue = false;
  /** Services whose queue of decisions was taken from since the last flush. */
  readonly #decidedServices = new Set<number>();
  /** The last 40 steps of the coarse clock (10 s of sweeps): how stale a stamp can be. */
  readonly #clockSteps = new Array<number>(40).fill(0);
  #clockStep = 0;
  /** The idle sweep, from the first service taken until `stop`. */
  #sweep: ReturnType<typeof setInterval> | undefined;
  #stopped = false;

  constructor(events: DataPlaneEvents) {
    this.#events = events;
  }

  /** Flows open now, from their accept (or adoption) to their end: asked about, connecting or connected. */
  get open(): number {
    let open = 0;
    for (const service of this.#services) open += service.open;
    return open;
  }

  /** Bytes moved by flows still open, which the counters add only when they end. */
  openBytes(): { up: number; down: number } {
    let up = 0;
    let down = 0;
    this.#flows.forEach((flow) => {
      up += flow.up.bytes;
      down += flow.down.bytes;
    });
    return { up, down };
  }

  listen(service: PlaneService): Promise<{ index: number; port: number }> {
    const listener = Deno.listen({
      hostname: service.listen.host,
      port: service.listen.port,
      reusePort: true,
    });
    const index = this.define(service);
    const runtime = this.#services[index]!;
    runtime.listener = listener;
    runtime.accepting = this.#acceptLoop(runtime, index, listener);
    return Promise.resolve({ index, port: (listener.addr as Deno.NetAddr).port });
  }

  /**
   * Takes a service whose flows only arrive by `adopt` (it listens elsewhere), or new settings for one taken
   * before (`index`); returns its index.
   */
  define(service: PlaneService, index?: number): number {
    const known = index === undefined ? undefined : this.#services[index];
    if (known !== undefined) {
      known.spec = service;
      known.placement = service.placement;
      return index!;
    }
    this.#services.push({
      spec: service,
      placement: service.placement,
      decisions: new QueuedDecisions(),
      listener: null,
      accepting: null,
      open: 0,
    });
    if (!this.#stopped) this.#sweep ??= setInterval(() => this.#sweepIdle(), SOCKET_PLANE_DEFAULTS.sweepMs);
    return this.#services.length - 1;
  }

  async unlisten(index: number): Promise<void> {
    const service = this.#service(index);
    const listener = service.listener;
    if (listener === null) return;
    service.listener = null;
    try {
      listener.close();
    } catch {
      // closed already
    }
    await service.accepting;
  }

  endFlows(index: number): void {
    for (const [id, asked] of this.#asked) {
      if (asked.index !== index) continue;
      this.#asked.delete(id);
      closeQuietly(asked.conn);
      this.#endAsked(asked, id);
    }
    // Their pumps end, and with them the flows.
    this.#flows.forEach((flow) => {
      if (flow.index === index) closeFlow(flow);
    });
  }

  update(index: number, service: PlaneService): void {
    const known = this.#service(index);
    known.spec = service;
    known.placement = service.placement;
  }

  setDecisions(index: number, decisions: Decisions): void {
    const queue = this.#service(index).decisions;
    // What was taken of the queue replaced is told first: the manager counts those uses too.
    if (this.#tellDecided(index)) this.#flush();
    queue.set(decisions, performance.now());
  }

  /**
   * Serves a connection that arrived elsewhere (a flow handed to this agent over its mesh port) as a flow
   * of service `index`: the agent is asked where it goes (`handedOffBy` tells it the flow came from
   * another agent), and `initial` is sent after the header, before the client's next bytes.
   */
  adopt(index: number, conn: Deno.Conn, flow: {
    client: SocketAddress;
    destination: SocketAddress;
    initial: Uint8Array;
    handedOffBy: string;
  }): boolean {
    const service = this.#service(index);
    if (service.open >= service.spec.maxConnections) {
      this.#counters.rejected++;
      this.#flush();
      closeQuietly(conn);
      return false;
    }
    this.#counters.accepted++;
    service.open++;
    this.#ask(service, index, conn, flow.client, flow.destination, flow.initial, flow.handedOffBy);
    return true;
  }

  placed(request: PlacementRequest, targets: readonly Target[], headers: Headers, firstTimeoutMs = 0): void {
    const asked = this.#asked.get(request.slot);
    if (asked === undefined || asked.generation !== request.generation) return;
    this.#asked.delete(request.slot);
    this.#setups.track(this.#connect(asked, request.slot, targets, headers, firstTimeoutMs));
  }

  counters(): Promise<PlaneCounters & { open: number }> {
    const { up, down } = this.openBytes();
    const counters = { ...this.#counters, open: this.open };
    counters.bytesUp += up;
    counters.bytesDown += down;
    return Promise.resolve(counters);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#sweep);
    await Promise.all(this.#services.map((_, index) => this.unlisten(index)));
    this.#connector.close();
    for (const [id, asked] of this.#asked) {
      closeQuietly(asked.conn);
      this.#endAsked(asked, id);
    }
    this.#asked.clear();
    // Setups wait on connects, never on flows: once they are done (the connector is closed, so at once),
    // no flow starts any more, and closing every flow ends its pumps.
    await this.#setups.whenIdle();
    for (const flow of this.#flows.snapshot()) closeFlow(flow);
    while (this.#flows.size > 0) await new Promise((resolve) => setTimeout(resolve, 5));
    this.#flush();
  }

  #service(index: number): Service {
    const service = this.#services[index];
    if (!service) throw new RangeError(`No service ${index}: the plane has ${this.#services.length}`);
    return service;
  }

  /**
   * Accepts until the listener is closed. Any other accept error (out of file descriptors above all)
   * pauses accepting with a growing delay and then goes on, as HAProxy and nginx do: the listener is
   * never given up while the service is configured.
   */
  async #acceptLoop(service: Service, index: number, listener: Deno.Listener): Promise<void> {
    let pauseMs = 0;
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (error) {
        if (error instanceof Deno.errors.BadResource || error instanceof Deno.errors.Interrupted) return;
        if (service.listener !== listener) return;
        this.#counters.acceptErrors++;
        this.#event(FlowEvent.ACCEPT_FAILED, index, -1, 0, -1, errnoOf(error));
        pauseMs = Math.min(SOCKET_PLANE_DEFAULTS.acceptPauseMaxMs, Math.max(10, pauseMs * 2));
        await new Promise((resolve) => setTimeout(resolve, pauseMs));
        continue;
      }
      pauseMs = 0;
      this.#accepted(service, index, conn as Deno.TcpConn);
    }
  }

  #accepted(service: Service, index: number, conn: Deno.TcpConn): void {
    if (service.open >= service.spec.maxConnections) {
      this.#counters.rejected++;
      this.#flush();
      closeQuietly(conn);
      return;
    }
    this.#counters.accepted++;
    service.open++;
    const remote = conn.remoteAddr as Deno.NetAddr;
    const local = conn.localAddr as Deno.NetAddr;
    const client = { ip: remote.hostname, port: remote.port };
    const destination = { ip: local.hostname, port: local.port };
    const { placement } = service;
    let order = placeFlow(placement, placeHash(placement.placeBy, client, destination, placement.seed));
    if (order !== null && placement.decided) {
      const decided = service.decisions.take(performance.now());
      order = decided < 0 ? null : preferFirst(order, decided);
      if (decided >= 0) this.#decided(index);
    }
    if (order === null) {
      this.#ask(service, index, conn, client, destination, null, null);
      return;
    }
    const id = this.#takeId();
    const asked: Asked = { service, index, conn, generation: this.#generation[id]!, initial: null };
    this.#setups.track(
      this.#connect(asked, id, order, proxyHeader(service.spec, client, destination), 0, order),
    );
  }

  #ask(
    service: Service,
    index: number,
    conn: Deno.Conn,
    client: SocketAddress,
    destination: SocketAddress,
    initial: Uint8Array | null,
    handedOffBy: string | null,
  ): void {
    const id = this.#takeId();
    const generation = this.#generation[id]!;
    this.#asked.set(id, { service, index, conn, generation, initial });
    this.#events.place({
      service: index,
      slot: id,
      generation,
      client,
      destination,
      ...(handedOffBy !== null ? { handedOffBy } : {}),
    });
  }

  /**
   * Connects to the targets in turn (telling the agent of each failure) and starts the flow's pumps on the
   * first that answers, after its header; closes the client when none does.
   */
  async #connect(
    asked: Asked,
    id: number,
    targets: readonly Target[],
    headers: Headers,
    firstTimeoutMs: number,
    choices: readonly number[] | null = null,
  ): Promise<void> {
    const { service, index, conn, generation } = asked;
    const { placement, spec } = service;
    for (let at = 0; at < targets.length && !this.#stopped; at++) {
      const target = targets[at]!;
      const address = typeof target === "number" ? placement.backends[target] : target;
      const choice = choices === null ? at : choices[at]!;
      if (address === undefined) break;
      const timeoutMs = at === 0 && firstTimeoutMs > 0 ? firstTimeoutMs : spec.connectTimeoutMs;
      let upstream: Deno.Conn;
      try {
        const tcp = await this.#connector.connect(address, timeoutMs);
        tcp.setNoDelay(true);
        upstream = typeof target !== "number" && target.tls
          ? await Deno.startTls(tcp, { hostname: target.tls.hostname, caCerts: target.tls.caCerts })
          : tcp;
      } catch (error) {
        if (!this.#stopped) {
          if (!isLocalError(error)) this.#counters.connectFailures++;
          const kind = isLocalError(error) ? FlowEvent.FAILED_LOCALLY : FlowEvent.FAILED;
          this.#event(kind, index, id, generation, choice, errnoOf(error));
        }
        continue;
      }
      this.#event(FlowEvent.CONNECTED, index, id, generation, choice, 0);
      const header = headers === null || headers instanceof Uint8Array ? headers : headers[at] ?? null;
      const flow = new Flow(this, service, index, id, generation, choice, conn, upstream);
      // TLS connections (the mesh with manager.tls) had it set on their TCP connection before the handshake.
      if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
      this.#flows.add(flow);
      try {
        if (header !== null && header.length > 0) await writeAll(upstream, header);
        if (asked.initial !== null && asked.initial.length > 0) {
          await writeAll(upstream, asked.initial);
          flow.up.bytes += asked.initial.length;
        }
      } catch {
        // The backend went before its first byte: the flow ends as any other that fails.
        flow.running = 1;
        closeFlow(flow);
        this.pumpEnded(flow, null);
        return;
      }
      pump(conn, upstream, flow.up, flow);
      pump(upstream, conn, flow.down, flow);
      return;
    }
    closeQuietly(conn);
    if (!this.#stopped) {
      this.#counters.noBackend++;
      this.#event(FlowEvent.NO_BACKEND, index, id, generation, -1, 0);
    }
    this.#endAsked(asked, id);
  }

  /** What a flow's pumps call as each ends: either failing ends the flow; both done, it is over. */
  pumpEnded(flow: Flow, error: unknown): void {
    if (error !== null) closeFlow(flow);
    if (--flow.running > 0) return;
    closeFlow(flow);
    this.#flows.delete(flow);
    this.#counters.bytesUp += flow.up.bytes;
    this.#counters.bytesDown += flow.down.bytes;
    this.#event(FlowEvent.ENDED, flow.index, flow.id, flow.generation, flow.choice, 0);
    flow.service.open--;
    this.#free.push(flow.id);
  }

  /** A flow that never ran its pumps is over: its place is given back. */
  #endAsked(asked: Asked, id: number): void {
    asked.service.open--;
    this.#free.push(id);
  }

  #takeId(): number {
    const id = this.#free.pop() ?? this.#generation.length;
    this.#generation[id] = (this.#generation[id] ?? 0) + 1;
    return id;
  }

  /** Tells the agent, once per microtask checkpoint, what was taken of a service's queue of decisions. */
  #decided(index: number): void {
    this.#decidedServices.add(index);
    this.#flush();
  }

  #event(
    kind: number,
    service: number,
    slot: number,
    generation: number,
    choice: number,
    errno: number,
  ): void {
    this.#pending.push(kind, service, slot, generation, choice, errno);
    this.#flush();
  }

  /** A `DECIDED` event for service `index`'s queue, when decisions were taken of it since the last. */
  #tellDecided(index: number): boolean {
    const { decisions } = this.#services[index]!;
    if (!decisions.reported()) return false;
    this.#pending.push(FlowEvent.DECIDED, index, -1, decisions.seq, decisions.taken, 0);
    return true;
  }

  /** Tells the agent of the events so far with the counters, once per microtask checkpoint. */
  #flush(): void {
    if (this.#flushDue) return;
    this.#flushDue = true;
    queueMicrotask(() => {
      this.#flushDue = false;
      for (const index of this.#decidedServices) this.#tellDecided(index);
      this.#decidedServices.clear();
      const events = this.#pending;
      this.#pending = [];
      this.#events.flows(events, this.#counters, this.open);
    });
  }

  #sweepIdle(): void {
    const now = performance.now();
    // Activity is stamped with the coarse clock, which is as old as the time since its last update: a
    // sweep every 250 ms, later on a loaded machine. The slowest of the recent updates is allowed for, so a
    // flow is never closed before it has really been idle for its service's idle timeout.
    this.#clockSteps[this.#clockStep++ % this.#clockSteps.length] = now - coarseClock.now;
    coarseClock.now = now;
    const slack = Math.max(SOCKET_PLANE_DEFAULTS.sweepMs, ...this.#clockSteps);
    // closeFlow only closes the connections: the flow leaves the list later, when its pumps end.
    this.#flows.forEach((flow) => {
      const idleMs = flow.service.spec.idleTimeoutMs;
      if (
        idleMs > 0 && !flow.closed &&
        now - Math.max(flow.up.lastActive, flow.down.lastActive) > idleMs + slack
      ) {
        this.#event(FlowEvent.IDLE, flow.index, flow.id, flow.generation, flow.choice, 0);
        closeFlow(flow);
      }
    });
  }
}

function proxyHeader(
  spec: PlaneService,
  client: SocketAddress,
  destination: SocketAddress,
): Uint8Array | null {
  return spec.proxyProtocol === "none" ? null : encodeProxyHeader(spec.proxyProtocol, client, destination);
}

/** Errors that say this host is short of something (descriptors, ports, memory), not that a peer failed. */
const LOCAL_ERROR_CODES = new Set(["EMFILE", "ENFILE", "ENOBUFS", "ENOMEM", "EADDRNOTAVAIL"]);

function isLocalError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === "string" && LOCAL_ERROR_CODES.has(code)) return true;
  return error instanceof Error && /Too many open files|os error 24\b/.test(error.message);
}

/** The errno behind a socket error, as Linux numbers it (what the relay reports), for the agent's log line. */
export function errnoOf(error: unknown): number {
  if (error instanceof Deno.errors.TimedOut) return ETIMEDOUT;
  const match = error instanceof Error ? /os error (\d+)/.exec(error.message) : null;
  if (match) return Number(match[1]);
  if (error instanceof Deno.errors.ConnectionRefused) return 111;
  if (error instanceof Deno.errors.ConnectionReset) return 104;
  return 0;
}

const ETIMEDOUT = 110;

function closeFlow(flow: Flow): void {
  if (flow.closed) return;
  flow.closed = true;
  closeQuietly(flow.client);
  closeQuietly(flow.upstream);
}
