/**
 * What carries an agent's connections: the one interface both data paths fill, so that the agent above
 * it (placement answers, counts, logs, drain, handoff fallback) exists once and never asks which runs.
 * The epoll relay (`relay/relay_plane.ts`, the default on Linux) and Deno's sockets
 * (`sockets/socket_plane.ts`) each implement it, as HAProxy's pollers each fill a `struct poller`.
 *
 * A plane accepts for each service it listens for and places each new flow from the service's
 * `Placement` alone where it can (its table, when the agent itself claims the flow and nothing must be
 * decided); every other flow it asks the agent about (`DataPlaneEvents.place`) and holds, reading nothing,
 * until the agent answers (`DataPlane.placed`) with the targets to try in order. It then connects (the next
 * target on failure, before any byte is sent), sends the target's header, and moves bytes both ways,
 * half-close included, until both sides are done, one fails, or the flow idles out. It tells the agent
 * what became of each flow as `FlowEvent` records, in order, with its counters.
 */
import type { HostPort } from "../cluster/address.ts";
import type { Placement } from "../cluster/placement.ts";
import type { Decisions } from "./queued_decisions.ts";

/** An endpoint of a flow: its IP, as text, and port. */
export interface SocketAddress {
  readonly ip: string;
  readonly port: number;
}

/**
 * Where a flow may be sent: a backend by its index in the service's placement as last set, or an address
 * (a claimant's mesh port, or a backend of a newer state). With `tls`, the connection speaks TLS (the mesh
 * with `manager.tls`); only Deno's sockets do, and the agent sends such flows through them alone.
 */
export type Target = number | (HostPort & { readonly tls?: { hostname: string; caCerts: string[] } });

/** The bytes sent to a target before any of the client's: one header for all targets, or one per target. */
export type Headers = Uint8Array | null | readonly (Uint8Array | null)[];

/** A service as a plane serves it. */
export interface PlaneService {
  readonly name: string;
  readonly listen: HostPort;
  readonly maxConnections: number;
  readonly connectTimeoutMs: number;
  readonly idleTimeoutMs: number;
  readonly proxyProtocol: "none" | "v1" | "v2";
  readonly placement: Placement<HostPort>;
  /**
   * How long the plane waits for the answer to a flow it asked about (`DataPlaneEvents.place`) before it
   * places the flow by the table: bounds the wait when the agent's thread stalls. A plane on the agent's
   * own thread waits as long as it takes.
   */
  readonly askTimeoutMs: number;
}

/** A flow a plane waits to be told where to send (see `DataPlane.placed`). */
export interface PlacementRequest {
  /** The service's index in its plane, as `listen` returned it. */
  readonly service: number;
  readonly slot: number;
  /** Tells this flow from a later one in the same slot. */
  readonly generation: number;
  readonly client: SocketAddress;
  readonly destination: SocketAddress;
  /** For a flow another agent handed to this one over the mesh: that agent's id. It is never handed on. */
  readonly handedOffBy?: string;
}

/**
 * The kinds of flow event. Each event is six numbers: kind, service, slot, generation, choice, errno. A
 * flow's `choice` is a backend index when the plane placed it, and an index into the answer's targets when
 * the agent did. An accept failure has no flow: slot and choice are -1.
 */
export const FlowEvent = {
  /** The flow reached its `choice`. */
  CONNECTED: 1,
  /** Connecting to `choice` failed (errno; `ETIMEDOUT` after the connect timeout); the next is tried. */
  FAILED: 2,
  /** As FAILED, but the fault was this host's (no socket could be had), not the target's. */
  FAILED_LOCALLY: 3,
  /** Nothing could be reached; the client was closed. */
  NO_BACKEND: 4,
  /** A connected flow ended. */
  ENDED: 5,
  /** A connected flow is closed for being idle longer than its service allows (ENDED follows). */
  IDLE: 6,
  /** An accept failed (errno), out of descriptors above all: accepting pauses, longer while it lasts. */
  ACCEPT_FAILED: 7,
  /**
   * Decisions taken from the service's queue (`setDecisions`): slot -1, generation the queue's `seq`,
   * choice how many of it were taken so far (a running total). Told at most once per turn.
   */
  DECIDED: 8,
  /**
   * No answer came for the flow within the plane's wait (`PlaneService.askTimeoutMs`): the plane placed it
   * alone, by the table, and ignores the answer when it comes.
   */
  ASK_TIMED_OUT: 9,
} as const;

/** Numbers per flow event. */
export const EVENT_FIELDS = 6;

/** What a plane counts, since it started. */
export interface PlaneCounters {
  accepted: number;
  rejected: number;
  noBackend: number;
  connectFailures: number;
  bytesUp: number;
  bytesDown: number;
  acceptErrors: number;
}

/** Counters at zero, as a plane starts. */
export function noCounters(): PlaneCounters {
  return {
    accepted: 0,
    rejected: 0,
    noBackend: 0,
    connectFailures: 0,
    bytesUp: 0,
    bytesDown: 0,
    acceptErrors: 0,
  };
}

/** What a plane tells the agent. */
export interface DataPlaneEvents {
  /** A flow the plane cannot place alone; the agent answers with `placed`. */
  place(request: PlacementRequest): void;
  /** Flow events (`EVENT_FIELDS` numbers each), in order, with the plane's counters and open flows as of then. */
  flows(events: readonly number[], counters: PlaneCounters, open: number): void;
}

export interface DataPlane {
  /** What it is, for log lines: "epoll" or "deno". */
  readonly kind: string;
  /** Accepts for a service; its index (for the other calls) and the port bound. */
  listen(service: PlaneService): Promise<{ index: number; port: number }>;
  /** Stops accepting for a service; its open flows go on. Its index stays taken. */
  unlisten(index: number): Promise<void>;
  /** Ends the service's open flows at once (its drain is over); their events follow as usual. */
  endFlows(index: number): void;
  /**
   * How the service is served from now on (a new state): where its flows go (table, backends, claims) and
   * its settings (timeouts, limits, PROXY header). Its listen address stays the one it was listened on.
   */
  update(index: number, service: PlaneService): void;
  /**
   * The manager's decisions made ahead for a service placed with `decided`: its backend indexes as of the
   * placement set last. Replaces the queue it had.
   */
  setDecisions(index: number, decisions: Decisions): void;
  /**
   * The answer to a `place` request: the targets to try, in order; the bytes to send each first; and the
   * first target's connect timeout when not the service's (a claimant's mesh port), or 0. Ignored when
   * the flow is gone; no targets close it as having no backend.
   */
  placed(
    request: PlacementRequest,
    targets: readonly Target[],
    headers: Headers,
    firstTimeoutMs?: number,
  ): void;
  /** Its counters and open flows now. */
  counters(): Promise<PlaneCounters & { open: number }>;
  /** Ends every flow and the plane; the flows' events and the final counters are told before it resolves. */
  stop(): Promise<void>;
}
