/**
 * A TCP relay on one io_uring: listeners, connects to backends, and both directions of every flow, with
 * no promise and no object per read or write. Flows are slots in typed arrays; a receive takes a buffer
 * from the ring's pool only when bytes arrive, so an idle flow holds none, and a direction holds at most
 * one buffer until the other side took its bytes (a slow reader stops its writer).
 *
 * It runs on one thread, which it blocks in `poll`: the agent runs it in a worker of its own.
 */
import {
  ACCEPT_MULTISHOT,
  type BufferRing,
  CQE_BUFFER_SHIFT,
  CQE_F_BUFFER,
  CQE_F_MORE,
  ENOBUFS,
  IOSQE_BUFFER_SELECT,
  IOSQE_IO_LINK,
  LIBC_PATH,
  Op,
  type Ring,
} from "./ring.ts";
import { ipBytes } from "../../cluster/flow_key.ts";
import { encodeProxyHeader, formatIp } from "../../cluster/proxy_protocol.ts";

const SOCKETS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_REUSEADDR = 2;
const SO_REUSEPORT = 15;
const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;
const SHUT_WR = 1;
const SHUT_RDWR = 2;
const MSG_NOSIGNAL = 0x4000;
const EFD_CLOEXEC = 0o2000000;

/** What a completion was for: the low 3 bits of its data; the flow's slot (or listener) is above them. */
const ACCEPT = 0;
const CONNECT = 1;
const RECV_UP = 2; // client → backend
const RECV_DOWN = 3; // backend → client
const SEND_UP = 4;
const SEND_DOWN = 5;
const WAKE = 6;
const IGNORED = 7;

/** Flow states, in `#done`: bit 0 up finished, bit 1 down finished. */
const BOTH = 3;

/** `#tries` of a flow waiting to be placed. */
const ASKED: readonly Uint8Array[] = Object.freeze([]);

export interface SocketAddress {
  readonly ip: string;
  readonly port: number;
}

/** A service as the relay serves it. */
export interface RelayService {
  readonly name: string;
  readonly listen: SocketAddress;
  readonly backends: readonly SocketAddress[];
  /**
   * Backends to try for a new flow from `client` to `destination` (`struct sockaddr`s; `decodeAddress`
   * reads them), in order (indexes into `backends`); or
   * null when the relay cannot place it alone: it then asks (`RelayOptions.ask`) and waits for `placed`.
   */
  readonly candidates: (client: Uint8Array, destination: Uint8Array) => readonly number[] | null;
  readonly maxConnections: number;
  readonly connectTimeoutMs: number;
  readonly idleTimeoutMs: number;
  /** A PROXY protocol header to send the backend before any byte of the client's. */
  readonly proxyProtocol?: "none" | "v1" | "v2";
}

/** A flow the relay waits to be told where to send (see `Relay.placed`). */
export interface PlacementRequest {
  /** The service's index, in the order of `listen` calls. */
  readonly service: number;
  readonly slot: number;
  /** Tells this flow from a later one in the same slot. */
  readonly generation: number;
  readonly client: SocketAddress;
  readonly destination: SocketAddress;
}

/**
 * What happens to flows, for the agent's counts (open connections per backend, connect failures). A
 * flow's `choice` is a backend index when the relay placed it, and an index into the answer's targets
 * when the agent did (`placed`).
 */
export interface FlowEvents {
  connected(service: number, slot: number, generation: number, choice: number): void;
  /**
   * `errno`: why (`ECANCELED` when the connect timeout ended it); `local`: the fault was this host's (no
   * socket could be had), not the backend's.
   */
  connectFailed(
    service: number,
    slot: number,
    generation: number,
    choice: number,
    errno: number,
    local: boolean,
  ): void;
  /** Nothing could be reached; the client was closed. */
  noBackend(service: number, slot: number, generation: number): void;
  /** A connected flow ended. */
  ended(service: number, slot: number, generation: number, choice: number): void;
  /** A connected flow is closed for being idle longer than its service allows (`ended` follows). */
  idle?(service: number, slot: number, generation: number, choice: number): void;
  /** An accept failed (`errno`): out of descriptors above all. Accepting pauses, longer while it lasts. */
  acceptFailed?(service: number, errno: number): void;
}

/** The kinds of flow event, as the relay's worker posts them (`{ type: "flows", events }`). */
export const FlowEvent = {
  CONNECTED: 1,
  FAILED: 2,
  FAILED_LOCALLY: 3,
  NO_BACKEND: 4,
  ENDED: 5,
  IDLE: 6,
  ACCEPT_FAILED: 7,
} as const;

export interface RelayOptions {
  /** Told of every flow's connect and end. */
  events?: FlowEvents;
  maxFlows?: number;
  buffers?: number;
  bufferSize?: number;
  largeBuffers?: number;
  largeBufferSize?: number;
  /**
   * Called for each flow whose service's `candidates` returned null, with its addresses as `struct
   * sockaddr`s (`decodeAddress` reads them), valid during the call only.
   */
  ask?: (
    service: number,
    slot: number,
    generation: number,
    client: Uint8Array,
    destination: Uint8Array,
  ) => void;
}

export interface RelayCounters {
  accepted: number;
  rejected: number;
  noBackend: number;
  connectFailures: number;
  bytesUp: number;
  bytesDown: number;
  acceptErrors: number;
}

/** Counters at zero, as a relay starts. */
export function noCounters(): RelayCounters {
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

export const RELAY_DEFAULTS = {
  /** Flows held at once (each is two sockets). */
  maxFlows: 65_536,
  /** Receive buffers in the pool, and their size. */
  buffers: 1024,
  bufferSize: 16 * 1024,
  /**
   * Larger buffers, for a direction whose last receive filled a small one (bulk data): each buffer passed
   * costs a receive, a send and their completions, so bulk moves in fewer, larger ones (iperf3 through the
   * relay here: 4.5 Gbit/s with 16 KiB buffers, 6.5 with 64 KiB, 9 with 256 KiB).
   */
  largeBuffers: 64,
  largeBufferSize: 256 * 1024,
  /** How often idle flows are looked for. */
  sweepMs: 250,
  /** The longest pause of accepting after accept errors. */
  acceptPauseMaxMs: 1_000,
} as const;

interface Listener {
  readonly fd: number;
  service: RelayService;
  readonly index: number;
  open: number;
  /** The kernel's copy of the connect timeout is taken at submission, so one per service will do. */
  readonly connectTimeout: BigInt64Array;
  backendAddresses: Uint8Array[];
  /**
   * The address every flow accepted here arrives at: the one bound, unless that is a wildcard (0.0.0.0,
   * ::), where each flow's is asked of the kernel. One system call fewer per flow.
   */
  readonly local: Uint8Array | null;
  /** Whether `unlisten` closed it; its flows go on. */
  closed: boolean;
  /** How long accepting pauses after the next accept error (grows while they last), and its timespec. */
  pauseMs: number;
  readonly pause: BigInt64Array;
}

/** In an ACCEPT completion's slot bits: the end of an accept pause, not an accept. */
const PAUSED = 1 << 24;

/** Buffer groups: the small buffers every receive starts with, and the large ones of bulk directions. */
const SMALL = 0;
const LARGE = 1;

export class Relay {
  readonly #ring: Ring;
  readonly #sockets: Deno.DynamicLibrary<typeof SOCKETS>["symbols"];
  readonly #errno: Deno.UnsafePointerView;
  /** The buffer pools receives pick from: small (group 0) and large (group 1), by group. */
  readonly #pools: readonly [BufferRing, BufferRing];
  readonly #listeners: Listener[] = [];
  readonly counters: RelayCounters = noCounters();

  // One entry per flow slot.
  readonly #client: Int32Array;
  readonly #backend: Int32Array;
  readonly #listener: Int32Array;
  /** Operations in flight; a slot is freed only when none is. */
  readonly #pending: Int32Array;
  readonly #done: Uint8Array;
  /**
   * While a flow is being connected, the addresses to try (`struct sockaddr`s) in order; ASKED while it
   * waits to be placed; null once connected.
   */
  readonly #tries: (readonly Uint8Array[] | null)[];
  readonly #generation: Uint32Array;
  /** The backend index of each target for a flow the relay placed (null when the agent did). */
  readonly #choices: (readonly number[] | null)[];
  /** The choice a connected flow reached, or -1. */
  readonly #choice: Int32Array;
  readonly #tried: Uint8Array;
  /** The connect timeout of a flow's first target when the agent set one (`placed`), else 0. */
  readonly #firstTimeoutMs: Uint32Array;
  /** `struct __kernel_timespec`s of connect timeouts, by milliseconds (few values; kept for the ring). */
  readonly #timespecs = new Map<number, BigInt64Array>();
  readonly #lastActive: Float64Array;
  /** Bytes sent to the backend before any of the client's (a PROXY header), kept alive until sent. */
  readonly #header: (Uint8Array | null)[];
  /** The header of each target, when they differ (a handoff's mesh header, then the backends'). */
  readonly #headers: (readonly (Uint8Array | null)[] | null)[];
  /**
   * Per direction (slot × 2 + 0 up, + 1 down): the buffer held, its group (that of the receive that took
   * it), its length, and bytes sent from it; and the group it receives into next.
   */
  readonly #bufferId: Int32Array;
  readonly #group: Uint8Array;
  readonly #nextGroup: Uint8Array;
  readonly #length: Int32Array;
  readonly #sent: Int32Array;
  readonly #free: number[] = [];
  /** Directions waiting for a buffer (the pool was empty when they received). */
  readonly #starved: number[] = [];
  #open = 0;
  #now = performance.now();
  #nextSweep = 0;
  readonly #one = new Uint8Array(new Int32Array([1]).buffer);
  /** The addresses of the connection being accepted (`struct sockaddr_in` or `_in6`). */
  readonly #clientAddress = new Uint8Array(28);
  readonly #destinationAddress = new Uint8Array(28);
  /** The address `listen` binds, read back for its port. */
  readonly #addressBytes = new Uint8Array(28);
  readonly #addressLength = new Uint32Array(1);
  readonly #onCompletion = (data: number, result: number, flags: number) =>
    this.#completed(data, result, flags);
  #closed = false;
  readonly #ask: NonNullable<RelayOptions["ask"]> | null;
  readonly #events: FlowEvents | null;
  /**
   * An eventfd the relay always has a read pending on: another thread writes to it (`wake`) to end a
   * wait in `poll` at once.
   */
  readonly wakeFd: number;
  readonly #wakeBytes = new BigUint64Array(1);
  readonly #wakeAddress: number;

  constructor(ring: Ring, options: RelayOptions = {}) {
    this.#ring = ring;
    this.#ask = options.ask ?? null;
    this.#events = options.events ?? null;
    const library = Deno.dlopen(LIBC_PATH, SOCKETS);
    this.#sockets = library.symbols;
    this.#errno = new Deno.UnsafePointerView(this.#sockets.__errno_location()!);
    this.#pools = [
      ring.provideBuffers(
        SMALL,
        options.buffers ?? RELAY_DEFAULTS.buffers,
        options.bufferSize ?? RELAY_DEFAULTS.bufferSize,
      ),
      ring.provideBuffers(
        LARGE,
        options.largeBuffers ?? RELAY_DEFAULTS.largeBuffers,
        options.largeBufferSize ?? RELAY_DEFAULTS.largeBufferSize,
      ),
    ];
    const slots = options.maxFlows ?? RELAY_DEFAULTS.maxFlows;
    this.#client = new Int32Array(slots);
    this.#backend = new Int32Array(slots);
    this.#listener = new Int32Array(slots);
    this.#pending = new Int32Array(slots);
    this.#done = new Uint8Array(slots);
    this.#tries = new Array(slots).fill(null);
    this.#tried = new Uint8Array(slots);
    this.#firstTimeoutMs = new Uint32Array(slots);
    this.#lastActive = new Float64Array(slots);
    this.#header = new Array(slots).fill(null);
    this.#headers = new Array(slots).fill(null);
    this.#generation = new Uint32Array(slots);
    this.#choices = new Array(slots).fill(null);
    this.#choice = new Int32Array(slots).fill(-1);
    this.#bufferId = new Int32Array(slots * 2);
    this.#group = new Uint8Array(slots * 2);
    this.#nextGroup = new Uint8Array(slots * 2);
    this.#length = new Int32Array(slots * 2);
    this.#sent = new Int32Array(slots * 2);
    this.#client.fill(-1);
    this.#backend.fill(-1);
    for (let slot = slots - 1; slot >= 0; slot--) this.#free.push(slot);
    this.wakeFd = this.#sockets.eventfd(0, EFD_CLOEXEC);
    if (this.wakeFd < 0) throw new Error(`Cannot make an eventfd (errno ${this.#errno.getInt32()})`);
    this.#wakeAddress = addressOfBytes(this.#wakeBytes);
    this.#watchWake();
  }

  #watchWake(): void {
    this.#ring.queue(Op.READ, this.wakeFd, this.#wakeAddress, 8, 0, WAKE);
  }

  /** Flows open now. */
  get open(): number {
    return this.#open;
  }

  /** Starts accepting for `service`; returns the port bound (useful with port 0). */
  listen(service: RelayService): number {
    const address = encodeAddress(service.listen);
    const fd = this.#socket(address[0] === AF_INET6, false);
    const opt = this.#one;
    this.#sockets.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, opt, 4);
    this.#sockets.setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, opt, 4);
    // Accepted sockets inherit it (Linux copies a listener's options to each connection it accepts): no
    // system call per flow.
    this.#sockets.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, opt, 4);
    if (this.#sockets.bind(fd, address, address.length) !== 0 || this.#sockets.listen(fd, 4096) !== 0) {
      const errno = this.#errno.getInt32();
      this.#sockets.close(fd);
      throw new Error(`Cannot listen on ${service.listen.ip}:${service.listen.port} (errno ${errno})`);
    }
    this.#addressLength[0] = 28;
    this.#sockets.getsockname(fd, this.#addressBytes, this.#addressLength);
    const port = portOfAddress(this.#addressBytes);
    const listener: Listener = {
      fd,
      service,
      index: this.#listeners.length,
      open: 0,
      connectTimeout: this.#timespec(service.connectTimeoutMs),
      backendAddresses: service.backends.map(encodeAddress),
      local: isWildcard(this.#addressBytes) ? null : this.#addressBytes.slice(),
      closed: false,
      pauseMs: 0,
      pause: new BigInt64Array(2),
    };
    this.#listeners.push(listener);
    this.#accept(listener);
    return port;
  }

  /**
   * Stops accepting for service `index` (removed, or moving to another address); its open flows go on
   * to their end. Its index stays taken.
   */
  unlisten(index: number): void {
    const listener = this.#listeners[index];
    if (!listener) throw new RangeError(`No service ${index}: the relay has ${this.#listeners.length}`);
    if (listener.closed) return;
    listener.closed = true;
    // The pending accept ends (with an error nobody counts) once the socket is shut down.
    this.#sockets.shutdown(listener.fd, SHUT_RDWR);
    this.#sockets.close(listener.fd);
  }

  /**
   * Gives service `index` (in the order of `listen` calls) new backends, which its `candidates` index
   * from now on; flows already connecting keep the addresses they had.
   */
  update(index: number, backends: readonly SocketAddress[]): void {
    const listener = this.#listeners[index];
    if (!listener) throw new RangeError(`No service ${index}: the relay has ${this.#listeners.length}`);
    listener.service = { ...listener.service, backends };
    listener.backendAddresses = backends.map(encodeAddress);
  }

  /**
   * Submits what is queued, waits up to `waitMs` for completions (0: none), and handles them. Returns
   * the number handled.
   */
  poll(waitMs: number): number {
    // Idle flows are looked for every `sweepMs` while there are flows; with none, nothing shortens the wait
    // and there is nothing to look through.
    const sweepIn = this.#open > 0 ? Math.max(0, this.#nextSweep - performance.now()) : waitMs;
    this.#ring.enter(1, Math.min(waitMs, sweepIn));
    this.#now = performance.now();
    const count = this.#ring.complete(this.#onCompletion);
    if (this.#open > 0 && this.#now >= this.#nextSweep) this.#sweep();
    return count;
  }

  /** Stops accepting, ends every flow, and closes the listeners (the ring is the caller's). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const listener of this.#listeners) this.unlisten(listener.index);
    for (let slot = 0; slot < this.#client.length; slot++) {
      if (this.#client[slot]! < 0) continue;
      this.#abort(slot);
      if (this.#tries[slot] === ASKED) {
        // Nothing is in flight for a flow waiting to be placed: it ends here.
        this.#tries[slot] = null;
        this.#release(slot);
      }
    }
    // Every aborted operation completes at once (its sockets are shut down): take those completions.
    for (let round = 0; round < 100 && this.#open > 0; round++) this.poll(10);
    this.#sockets.close(this.wakeFd);
  }

  #socket(v6: boolean, nonBlocking: boolean): number {
    const family = v6 ? AF_INET6 : AF_INET;
    const fd = this.#sockets.socket(
      family,
      SOCK_STREAM | SOCK_CLOEXEC | (nonBlocking ? SOCK_NONBLOCK : 0),
      0,
    );
    if (fd < 0) throw new Error(`Cannot open a socket (errno ${this.#errno.getInt32()})`);
    return fd;
  }

  #accept(listener: Listener): void {
    this.#ring.queue(
      Op.ACCEPT,
      listener.fd,
      0,
      0,
      SOCK_CLOEXEC | SOCK_NONBLOCK,
      (listener.index << 3) | ACCEPT,
      0,
      0,
      ACCEPT_MULTISHOT,
    );
  }

  #completed(data: number, result: number, flags: number): void {
    const kind = data & 7;
    const slot = data >>> 3;
    switch (kind) {
      case ACCEPT:
        if (slot & PAUSED) {
          const listener = this.#listeners[slot & ~PAUSED]!;
          if (!listener.closed) this.#accept(listener);
        } else this.#accepted(slot, result, flags);
        return;
      case CONNECT:
        this.#pending[slot]!--;
        this.#connected(slot, result);
        return;
      case RECV_UP:
      case RECV_DOWN:
        this.#pending[slot]!--;
        this.#received(slot, kind - RECV_UP, result, flags);
        return;
      case SEND_UP:
      case SEND_DOWN:
        this.#pending[slot]!--;
        this.#wrote(slot, kind - SEND_UP, result);
        return;
      case WAKE:
        if (!this.#closed) this.#watchWake();
        return;
    }
  }

  #accepted(index: number, fd: number, flags: number): void {
    const listener = this.#listeners[index]!;
    if (fd < 0) {
      if (listener.closed) return;
      this.counters.acceptErrors++;
      this.#events?.acceptFailed?.(index, -fd);
      // Out of descriptors above all: the connection waiting would fail again at once, so accepting pauses,
      // longer while errors last (as HAProxy and nginx do, and the agent on Deno's sockets).
      if (!(flags & CQE_F_MORE)) this.#pauseAccepting(listener);
      return;
    }
    listener.pauseMs = 0;
    if (!(flags & CQE_F_MORE) && !listener.closed) this.#accept(listener);
    const slot = this.#free.pop();
    if (slot === undefined || listener.open >= listener.service.maxConnections) {
      this.counters.rejected++;
      this.#sockets.close(fd);
      return;
    }
    this.counters.accepted++;
    listener.open++;
    this.#open++;
    this.#client[slot] = fd;
    this.#backend[slot] = -1;
    this.#listener[slot] = index;
    this.#pending[slot] = 0;
    this.#done[slot] = 0;
    this.#lastActive[slot] = this.#now;
    this.#bufferId[slot * 2] = -1;
    this.#bufferId[slot * 2 + 1] = -1;
    this.#nextGroup[slot * 2] = SMALL;
    this.#nextGroup[slot * 2 + 1] = SMALL;
    this.#firstTimeoutMs[slot] = 0;
    this.#addressLength[0] = 28;
    this.#sockets.getpeername(fd, this.#clientAddress, this.#addressLength);
    let destination = listener.local;
    if (destination === null) {
      destination = this.#destinationAddress;
      this.#addressLength[0] = 28;
      this.#sockets.getsockname(fd, destination, this.#addressLength);
    }
    const generation = ++this.#generation[slot]!;
    const service = listener.service;
    // Placed from the addresses' bytes; they become text only for the agent or a PROXY header.
    const order = service.candidates(this.#clientAddress, destination);
    if (order === null) {
      this.#tries[slot] = ASKED;
      if (this.#ask === null) {
        throw new Error(`Service ${service.name} asks where to send flows, but no one answers`);
      }
      this.#ask(index, slot, generation, this.#clientAddress, destination);
      return;
    }
    const version = service.proxyProtocol ?? "none";
    this.#begin(
      slot,
      order.map((i) => listener.backendAddresses[i]!),
      order,
      version === "none" ? null : encodeProxyHeader(
        version,
        decodeAddress(this.#clientAddress),
        decodeAddress(destination),
      ),
    );
  }

  /**
   * Where to send a flow the relay asked about: `targets` in order (addresses, as text or `struct sockaddr`s,
   * or indexes into the service's backends as of the last `update`), and the bytes to send each first
   * (one header for all, or one per target, such as a claimant's mesh header and then none). Ignored
   * when that flow is gone (its slot's generation moved on); an empty `targets` closes it as having no
   * backend.
   */
  placed(
    slot: number,
    generation: number,
    targets: readonly (SocketAddress | Uint8Array | number)[],
    header: Uint8Array | null | readonly (Uint8Array | null)[],
    firstTimeoutMs = 0,
  ): void {
    if (this.#generation[slot] !== generation || this.#tries[slot] !== ASKED) return;
    if (this.#done[slot] === BOTH) {
      this.#tries[slot] = null;
      this.#release(slot);
      return;
    }
    const backends = this.#listeners[this.#listener[slot]!]!.backendAddresses;
    const addresses: Uint8Array[] = [];
    for (const target of targets) {
      const address = typeof target === "number"
        ? backends[target]
        : target instanceof Uint8Array
        ? target
        : encodeAddress(target);
      // An index the relay does not have (never, while the agent answers after its placements) ends the
      // list there, so that the positions of those before it still name them in flow events.
      if (address === undefined) break;
      addresses.push(address);
    }
    this.#firstTimeoutMs[slot] = firstTimeoutMs;
    this.#begin(slot, addresses, null, header);
  }

  #begin(
    slot: number,
    targets: readonly Uint8Array[],
    choices: readonly number[] | null,
    header: Uint8Array | null | readonly (Uint8Array | null)[],
  ): void {
    this.#tries[slot] = targets;
    this.#choices[slot] = choices;
    this.#tried[slot] = 0;
    this.#headers[slot] = header === null || header instanceof Uint8Array ? null : header;
    this.#header[slot] = header instanceof Uint8Array ? header : null;
    this.#connectNext(slot);
  }

  #pauseAccepting(listener: Listener): void {
    listener.pauseMs = Math.min(RELAY_DEFAULTS.acceptPauseMaxMs, Math.max(10, listener.pauseMs * 2));
    listener.pause[0] = BigInt(Math.floor(listener.pauseMs / 1000));
    listener.pause[1] = BigInt((listener.pauseMs % 1000) * 1_000_000);
    this.#ring.queue(
      Op.TIMEOUT,
      -1,
      addressOfBytes(listener.pause),
      1,
      0,
      ((listener.index | PAUSED) << 3) | ACCEPT,
    );
  }

  /** Connects to the next candidate, or gives the flow up when none is left. */
  #connectNext(slot: number): void {
    const listener = this.#listeners[this.#listener[slot]!]!;
    const tries = this.#tries[slot]!;
    const at = this.#tried[slot]!;
    if (at >= tries.length || this.#closed) {
      this.#tries[slot] = null;
      if (!this.#closed) {
        this.counters.noBackend++;
        this.#events?.noBackend(this.#listener[slot]!, slot, this.#generation[slot]!);
      }
      this.#done[slot] = BOTH;
      this.#sockets.shutdown(this.#client[slot]!, SHUT_RDWR);
      this.#release(slot);
      return;
    }
    this.#tried[slot] = at + 1;
    const address = tries[at]!;
    let fd: number;
    try {
      fd = this.#socket(address[0] === AF_INET6, true);
    } catch {
      this.#events?.connectFailed(
        this.#listener[slot]!,
        slot,
        this.#generation[slot]!,
        this.#choiceOf(slot, at),
        24, // EMFILE, or whatever socket() met: this host's
        true,
      );
      this.#connectNext(slot);
      return;
    }
    this.#backend[slot] = fd;
    this.#sockets.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, this.#one, 4);
    this.#pending[slot]!++;
    this.#ring.queue(
      Op.CONNECT,
      fd,
      addressOfBytes(address),
      0,
      0,
      (slot << 3) | CONNECT,
      IOSQE_IO_LINK,
      address.length,
    );
    const firstTimeoutMs = this.#firstTimeoutMs[slot]!;
    const timeout = at === 0 && firstTimeoutMs > 0 ? this.#timespec(firstTimeoutMs) : listener.connectTimeout;
    this.#ring.queue(Op.LINK_TIMEOUT, -1, addressOfBytes(timeout), 1, 0, IGNORED);
  }

  #timespec(ms: number): BigInt64Array {
    let timespec = this.#timespecs.get(ms);
    if (timespec === undefined) {
      timespec = new BigInt64Array([BigInt(Math.floor(ms / 1000)), BigInt((ms % 1000) * 1_000_000)]);
      this.#timespecs.set(ms, timespec);
    }
    return timespec;
  }

  #connected(slot: number, result: number): void {
    if (result < 0 || this.#done[slot] === BOTH) {
      this.#sockets.close(this.#backend[slot]!);
      this.#backend[slot] = -1;
      if (this.#done[slot] === BOTH) {
        // Aborted while connecting (the relay is closing).
        this.#tries[slot] = null;
        this.#release(slot);
        return;
      }
      this.counters.connectFailures++;
      const choice = this.#choiceOf(slot, this.#tried[slot]! - 1);
      this.#events?.connectFailed(
        this.#listener[slot]!,
        slot,
        this.#generation[slot]!,
        choice,
        -result,
        false,
      );
      this.#connectNext(slot);
      return;
    }
    this.#tries[slot] = null;
    const choice = this.#choiceOf(slot, this.#tried[slot]! - 1);
    this.#choice[slot] = choice;
    this.#choices[slot] = null;
    this.#events?.connected(this.#listener[slot]!, slot, this.#generation[slot]!, choice);
    const perTarget = this.#headers[slot];
    if (perTarget) {
      this.#header[slot] = perTarget[this.#tried[slot]! - 1] ?? null;
      this.#headers[slot] = null;
    }
    const header = this.#header[slot];
    if (header) {
      // The header goes first; the client's bytes are read once it is sent (see #wrote).
      const k = slot * 2;
      this.#length[k] = header.length;
      this.#sent[k] = 0;
      this.#sendHeader(slot);
    } else this.#receive(slot, 0);
    this.#receive(slot, 1);
  }

  /** The choice that the `at`th target of a flow stands for (see `FlowEvents`). */
  #choiceOf(slot: number, at: number): number {
    const choices = this.#choices[slot];
    return choices ? choices[at]! : at;
  }

  #sendHeader(slot: number): void {
    const k = slot * 2;
    this.#pending[slot]!++;
    this.#ring.queue(
      Op.SEND,
      this.#backend[slot]!,
      addressOfBytes(this.#header[slot]!) + this.#sent[k]!,
      this.#length[k]! - this.#sent[k]!,
      MSG_NOSIGNAL,
      (slot << 3) | SEND_UP,
    );
  }

  #receive(slot: number, direction: number): void {
    const k = slot * 2 + direction;
    const group = this.#nextGroup[k]!;
    this.#group[k] = group;
    this.#pending[slot]!++;
    this.#ring.queue(
      Op.RECV,
      direction === 0 ? this.#client[slot]! : this.#backend[slot]!,
      0,
      0,
      0,
      (slot << 3) | (RECV_UP + direction),
      IOSQE_BUFFER_SELECT,
      0,
      0,
      group,
    );
  }

  #received(slot: number, direction: number, result: number, flags: number): void {
    const k = slot * 2 + direction;
    const group = this.#group[k]!;
    if (result > 0) {
      const id = (flags & CQE_F_BUFFER) ? flags >>> CQE_BUFFER_SHIFT : -1;
      if (this.#done[slot] === BOTH) {
        if (id >= 0) this.#recycle(group, id);
        this.#release(slot);
        return;
      }
      // A full small buffer: bulk data, received into large ones from now on; a large one barely used:
      // back to small ones.
      const small = this.#pools[SMALL].size;
      if (group === SMALL && result === small) this.#nextGroup[k] = LARGE;
      else if (group === LARGE && result < small) this.#nextGroup[k] = SMALL;
      this.#bufferId[k] = id;
      this.#length[k] = result;
      this.#sent[k] = 0;
      this.#lastActive[slot] = this.#now;
      if (direction === 0) this.counters.bytesUp += result;
      else this.counters.bytesDown += result;
      this.#send(slot, direction);
      return;
    }
    if (result === -ENOBUFS && this.#done[slot] !== BOTH) {
      if (group === LARGE) {
        // Every large buffer is taken: a small one will do.
        this.#nextGroup[k] = SMALL;
        this.#receive(slot, direction);
        return;
      }
      this.#starved.push(k);
      return;
    }
    if (result === 0) this.#finish(slot, direction);
    else this.#abort(slot);
    this.#release(slot);
  }

  #send(slot: number, direction: number): void {
    const k = slot * 2 + direction;
    this.#pending[slot]!++;
    this.#ring.queue(
      Op.SEND,
      direction === 0 ? this.#backend[slot]! : this.#client[slot]!,
      this.#pools[this.#group[k]!]!.address(this.#bufferId[k]!) + this.#sent[k]!,
      this.#length[k]! - this.#sent[k]!,
      MSG_NOSIGNAL,
      (slot << 3) | (SEND_UP + direction),
    );
  }

  #wrote(slot: number, direction: number, result: number): void {
    const k = slot * 2 + direction;
    if (direction === 0 && this.#header[slot] !== null) {
      this.#headerWritten(slot, result);
      return;
    }
    if (result > 0 && this.#done[slot] !== BOTH) {
      this.#sent[k]! += result;
      if (this.#sent[k]! < this.#length[k]!) {
        this.#send(slot, direction);
        return;
      }
    }
    this.#recycle(this.#group[k]!, this.#bufferId[k]!);
    this.#bufferId[k] = -1;
    if (result <= 0) this.#abort(slot);
    else if (this.#done[slot] !== BOTH) this.#receive(slot, direction);
    this.#release(slot);
  }

  #headerWritten(slot: number, result: number): void {
    const k = slot * 2;
    if (result > 0 && this.#done[slot] !== BOTH) {
      this.#sent[k]! += result;
      if (this.#sent[k]! < this.#length[k]!) {
        this.#sendHeader(slot);
        return;
      }
    }
    this.#header[slot] = null;
    if (result <= 0) this.#abort(slot);
    else if (this.#done[slot] !== BOTH) this.#receive(slot, 0);
    this.#release(slot);
  }

  /** Gives a buffer back; a direction that found the pool empty then receives again. */
  #recycle(group: number, id: number): void {
    this.#pools[group]!.recycle(id);
    const k = this.#starved.shift();
    if (k === undefined) return;
    const slot = k >> 1;
    if (this.#done[slot] === BOTH) {
      this.#release(slot);
      return;
    }
    this.#receive(slot, k & 1);
  }

  /**
   * One direction reached its end: the other side learns it (half-close); the flow ends with both. When this
   * ends the flow, with nothing in flight, `#release` closes both sockets next, and a close sends the same
   * FIN (the socket has nothing unread: its own direction ended first), one system call fewer per flow.
   */
  #finish(slot: number, direction: number): void {
    this.#done[slot]! |= 1 << direction;
    if (this.#done[slot] === BOTH && this.#pending[slot] === 0) return;
    this.#sockets.shutdown(direction === 0 ? this.#backend[slot]! : this.#client[slot]!, SHUT_WR);
  }

  /** Ends both directions at once: every operation in flight on the flow's sockets completes. */
  #abort(slot: number): void {
    if (this.#done[slot] === BOTH && this.#tries[slot] === null) return;
    this.#done[slot] = BOTH;
    this.#sockets.shutdown(this.#client[slot]!, SHUT_RDWR);
    if (this.#backend[slot]! >= 0) this.#sockets.shutdown(this.#backend[slot]!, SHUT_RDWR);
  }

  /** Frees the flow's slot once it is over and nothing of it is in flight. */
  #release(slot: number): void {
    if (this.#done[slot] !== BOTH || this.#pending[slot] !== 0) return;
    this.#sockets.close(this.#client[slot]!);
    if (this.#backend[slot]! >= 0) this.#sockets.close(this.#backend[slot]!);
    this.#client[slot] = -1;
    this.#backend[slot] = -1;
    this.#tries[slot] = null;
    this.#header[slot] = null;
    this.#headers[slot] = null;
    this.#choices[slot] = null;
    if (this.#choice[slot]! >= 0) {
      this.#events?.ended(this.#listener[slot]!, slot, this.#generation[slot]!, this.#choice[slot]!);
      this.#choice[slot] = -1;
    }
    if (this.#starved.length > 0) {
      const left = this.#starved.filter((k) => k >> 1 !== slot);
      this.#starved.length = 0;
      this.#starved.push(...left);
    }
    this.#listeners[this.#listener[slot]!]!.open--;
    this.#open--;
    this.#free.push(slot);
  }

  /** Aborts flows idle for longer than their service allows. */
  #sweep(): void {
    this.#nextSweep = this.#now + RELAY_DEFAULTS.sweepMs;
    for (let slot = 0; slot < this.#client.length; slot++) {
      if (this.#client[slot]! < 0 || this.#done[slot] === BOTH || this.#tries[slot] !== null) continue;
      const idleMs = this.#listeners[this.#listener[slot]!]!.service.idleTimeoutMs;
      if (idleMs > 0 && this.#now - this.#lastActive[slot]! > idleMs) {
        this.#events?.idle?.(this.#listener[slot]!, slot, this.#generation[slot]!, this.#choice[slot]!);
        this.#abort(slot);
      }
    }
  }
}

const ONE_EVENT = new Uint8Array(new BigUint64Array([1n]).buffer);

/**
 * What ends the wait of a relay from another thread: `wake(relay.wakeFd)`.
 * Opens libc; `close` when done.
 */
export function openWaker(): { wake(wakeFd: number): void; close(): void } {
  const library = Deno.dlopen(LIBC_PATH, {
    write: { parameters: ["i32", "buffer", "usize"], result: "void" },
  });
  return {
    wake: (wakeFd) => {
      library.symbols.write(wakeFd, ONE_EVENT, 8n);
    },
    close: () => library.close(),
  };
}

function addressOfBytes(bytes: ArrayBufferView): number {
  return Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes as Uint8Array<ArrayBuffer>)));
}

/**
 * `struct sockaddr_in` or `sockaddr_in6` for an IP literal and port (an IPv4-mapped IPv6 address gives
 * `sockaddr_in`, as `ipBytes` does). Throws a `TypeError` for anything but an IP literal.
 */
export function encodeAddress(address: SocketAddress): Uint8Array {
  const ip = ipBytes(address.ip);
  const v6 = ip.length === 16;
  const bytes = new Uint8Array(v6 ? 28 : 16);
  bytes[0] = v6 ? AF_INET6 : AF_INET; // sa_family, a little-endian u16
  bytes[2] = address.port >>> 8;
  bytes[3] = address.port & 0xff;
  bytes.set(ip, v6 ? 8 : 4);
  return bytes;
}

/** The IP (as `formatIp` writes it) and port of a `sockaddr_in` or `sockaddr_in6`. */
export function decodeAddress(bytes: Uint8Array): SocketAddress {
  return { ip: formatIp(ipOfAddress(bytes)), port: portOfAddress(bytes) };
}

/** The IP bytes of a `sockaddr_in` (4) or `sockaddr_in6` (16), as a view of it. */
export function ipOfAddress(bytes: Uint8Array): Uint8Array {
  return bytes[0] === AF_INET ? bytes.subarray(4, 8) : bytes.subarray(8, 24);
}

/** The port of a `sockaddr_in` or `sockaddr_in6`. */
export function portOfAddress(bytes: Uint8Array): number {
  return (bytes[2]! << 8) | bytes[3]!;
}

/** Whether a socket address (as `encodeAddress` lays it out) is 0.0.0.0 or ::, any port. */
export function isWildcard(bytes: Uint8Array): boolean {
  return ipOfAddress(bytes).every((byte) => byte === 0);
}
