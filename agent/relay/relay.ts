/**
 * A TCP relay on nonblocking sockets and one epoll instance: listeners, connects to backends, and both
 * directions of every flow, with no promise and no object per read or write. Flows are slots in typed
 * arrays. Each socket is registered once, edge-triggered, when it is opened; an event only marks which
 * of its directions became ready, and the flow's pumps then move bytes with `recv` and `send` until one
 * side would block. Bytes are received into one of two scratch buffers shared by every flow; a direction
 * holds a buffer of its own only while the other side has not taken all of its bytes (a slow reader stops
 * its writer), so an idle flow holds none.
 *
 * It runs on one thread, which it blocks in `epoll_wait` (`poll`): the agent runs it in a worker of its
 * own. It never makes an io_uring instance.
 */
import type { HostPort } from "../../cluster/address.ts";
import { encodeProxyHeader } from "../../cluster/proxy_protocol.ts";
import { noCounters, type PlaneCounters } from "../data_plane.ts";
import {
  EAGAIN,
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  EINPROGRESS,
  EINTR,
  EMFILE,
  EPOLL_CLOEXEC,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLL_DATA_WORD,
  EPOLL_EVENT_BYTES,
  EPOLLERR,
  EPOLLET,
  EPOLLHUP,
  EPOLLIN,
  EPOLLOUT,
  EPOLLRDHUP,
  errnoText,
  ETIMEDOUT,
  IPPROTO_TCP,
  type Libc,
  MSG_NOSIGNAL,
  openLibc,
  SHUT_WR,
  SO_ERROR,
  SO_REUSEADDR,
  SO_REUSEPORT,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  SOL_SOCKET,
  TCP_NODELAY,
} from "./libc.ts";
import { decodeAddress, encodeAddress, isV6, isWildcard, portOfAddress, SOCKADDR_BYTES } from "./sockaddr.ts";
import { AF_INET, AF_INET6 } from "./libc.ts";

/** What an epoll event is about: the low 2 bits of its token; the flow's slot (or listener) is above them. */
const CLIENT = 0;
const BACKEND = 1;
const LISTENER = 2;
const WAKE = 3;

/** A flow's state bits, in `#flags`. */
const CLIENT_IN = 1 << 0; // the client has bytes (or its end) to read
const CLIENT_OUT = 1 << 1; // the client can take bytes
const BACKEND_IN = 1 << 2;
const BACKEND_OUT = 1 << 3;
const UP_EOF = 1 << 4; // the client sent its last byte
const DOWN_EOF = 1 << 5;
const UP_DONE = 1 << 6; // client → backend is over: the backend was told (shutdown) or the flow ends
const DOWN_DONE = 1 << 7;
const CONNECTING = 1 << 8;
const ASKED = 1 << 9; // waiting for `placed`
const AGAIN = 1 << 10; // in `#again`: it stopped reading for fairness, with bytes left to read
/**
 * The peer shut down or failed: its end is there to read after its last bytes, and no new event will say
 * so, so a short receive does not mean the socket has nothing more.
 */
const CLIENT_HUP = 1 << 11;
const BACKEND_HUP = 1 << 12;
/**
 * No backend could be reached: the client was told (its end is shut down) and what it still sends is read
 * and dropped until it closes too or `lingerMs` passes, so that it sees an orderly end rather than a reset.
 */
const LINGER = 1 << 13;
/**
 * The peer shut down its side in order (it sent FIN, no error): once a receive comes back short, every
 * byte before the FIN was taken, so that is the direction's end, with no receive to read it (as HAProxy
 * does with EPOLLRDHUP).
 */
const CLIENT_FIN = 1 << 14;
const BACKEND_FIN = 1 << 15;
const BOTH_DONE = UP_DONE | DOWN_DONE;

/** Directions: index 0 is up (client → backend), 1 down (backend → client). */
const UP = 0;
const DOWN = 1;
/** Bits of each direction: its source readable, its destination writable, its end read, its end passed on. */
const SOURCE_IN = [CLIENT_IN, BACKEND_IN] as const;
const SINK_OUT = [BACKEND_OUT, CLIENT_OUT] as const;
const EOF = [UP_EOF, DOWN_EOF] as const;
const DONE = [UP_DONE, DOWN_DONE] as const;
const SOURCE_HUP = [CLIENT_HUP, BACKEND_HUP] as const;
const SOURCE_FIN = [CLIENT_FIN, BACKEND_FIN] as const;

/** The events every flow socket is registered for, once. */
const FLOW_EVENTS = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
const READABLE = EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR;
const HUNG_UP = EPOLLRDHUP | EPOLLHUP | EPOLLERR;

/** The `*_FIN` bit that `events` report for a socket (`fin`), or 0. */
function finOf(events: number, fin: number): number {
  return events & (EPOLLRDHUP | EPOLLHUP) && !(events & EPOLLERR) ? fin : 0;
}
const WRITABLE = EPOLLOUT | EPOLLHUP | EPOLLERR;

/** Where a held buffer goes back when its bytes are sent. */
const OWN = 0; // a header, or a copy: dropped
const SMALL = 1;
const LARGE = 2;

/** A service as the relay serves it. */
export interface RelayService {
  readonly name: string;
  readonly listen: HostPort;
  readonly backends: readonly HostPort[];
  /**
   * Backends to try for a new flow from `client` to `destination` (`struct sockaddr`s; `decodeAddress`
   * reads them), in order (indexes into `backends`); or
   * null when the relay cannot place it alone: it then asks (`RelayOptions.ask`) and waits for `placed`.
   */
  readonly candidates: (client: Uint8Array, destination: Uint8Array) => readonly number[] | null;
  /**
   * How long a flow asked about waits for `placed` at most (none: until it comes). Then the relay places
   * it alone, by `fallback`: an agent whose thread stalls must not hold its flows (the agent's own
   * `decision_timeout` ends the wait for a manager that does not answer, long before).
   */
  readonly askTimeoutMs?: number;
  /** Backends to try for a flow whose answer did not come within `askTimeoutMs`, in order: the table's. */
  readonly fallback?: (client: Uint8Array, destination: Uint8Array) => readonly number[];
  readonly maxConnections: number;
  readonly connectTimeoutMs: number;
  readonly idleTimeoutMs: number;
  /** A PROXY protocol header to send the backend before any byte of the client's. */
  readonly proxyProtocol?: "none" | "v1" | "v2";
}

/** What of a service can change while the relay serves it (`Relay.update`): all but its name and address. */
export type RelaySettings = Omit<RelayService, "name" | "listen" | "candidates" | "fallback">;

/**
 * What happens to flows, for the agent's counts (open connections per backend, connect failures). A
 * flow's `choice` is a backend index when the relay placed it, and an index into the answer's targets
 * when the agent did (`placed`).
 */
export interface FlowEvents {
  connected(service: number, slot: number, generation: number, choice: number): void;
  /**
   * `errno`: why (`ETIMEDOUT` when the connect timeout ended it); `local`: the fault was this host's (no
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
  /** No answer came for an asked flow within `askTimeoutMs`: the relay placed it alone (`fallback`). */
  askTimedOut?(service: number, slot: number, generation: number): void;
}

export interface RelayOptions {
  /** Told of every flow's connect and end. */
  events?: FlowEvents;
  maxFlows?: number;
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

export const RELAY_DEFAULTS = {
  /** Flows held at once (each is two sockets). */
  maxFlows: 65_536,
  /** What a direction receives at once, and the buffer it holds while its bytes wait. */
  bufferSize: 16 * 1024,
  /**
   * What a bulk direction (its last receive filled a small buffer) receives at once: fewer, larger passes.
   * At most `largeBuffers` such buffers are held by waiting directions; beyond, a direction goes back to
   * small ones.
   */
  largeBuffers: 64,
  largeBufferSize: 256 * 1024,
  /** Receives one direction makes in one pass before other flows have their turn. */
  readsPerPass: 4,
  /** Connections accepted per listener in one pass. */
  acceptsPerPass: 64,
  /** Events taken from the kernel per wait. */
  eventsPerWait: 256,
  /** How often idle flows are looked for. */
  sweepMs: 250,
  /** How long a client no backend could take is read (and its bytes dropped) after it was told, at most. */
  lingerMs: 1_000,
  /** The longest pause of accepting after accept errors. */
  acceptPauseMaxMs: 1_000,
} as const;

interface Listener {
  readonly fd: number;
  service: RelayService;
  readonly index: number;
  open: number;
  backendAddresses: Uint8Array[];
  /**
   * The address every flow accepted here arrives at: the one bound, unless that is a wildcard (0.0.0.0,
   * ::), where each flow's is asked of the kernel. One system call fewer per flow.
   */
  readonly local: Uint8Array | null;
  /** Whether `unlisten` closed it; its flows go on. */
  closed: boolean;
  /** How long accepting pauses after the next accept error (grows while they last), and until when. */
  pauseMs: number;
  pausedUntil: number;
}

/** The `tried` of an asked flow's deadline (`RelayService.askTimeoutMs`): no connect is under way. */
const ASK_DEADLINE = -1;

/**
 * Deadlines of one timeout value (connects, lingering clients, asks), in the order set (so in order of
 * deadline): slot, generation, try (`ASK_DEADLINE` for an ask), deadline.
 */
interface DeadlineQueue {
  readonly entries: number[];
  head: number;
}

export class Relay {
  readonly #libc: Libc;
  readonly #errno: () => number;
  readonly #closeLibc: () => void;
  readonly #epoll: number;
  readonly #listeners: Listener[] = [];
  readonly counters: PlaneCounters = noCounters();

  // One entry per flow slot.
  readonly #client: Int32Array;
  readonly #backend: Int32Array;
  readonly #listener: Int32Array;
  readonly #flags: Uint16Array;
  readonly #generation: Uint32Array;
  /** While a flow is being connected, the addresses to try (`struct sockaddr`s) in order; else null. */
  readonly #tries: (readonly Uint8Array[] | null)[];
  /** The backend index of each target for a flow the relay placed (null when the agent did). */
  readonly #choices: (readonly number[] | null)[];
  /** The choice a connected flow reached, or -1. */
  readonly #choice: Int32Array;
  readonly #tried: Uint8Array;
  /** The connect timeout of a flow's first target when the agent set one (`placed`), else 0. */
  readonly #firstTimeoutMs: Uint32Array;
  readonly #lastActive: Float64Array;
  /** The header of each target, when they differ (a handoff's mesh header, then the backends'); else one for all. */
  readonly #headers: (readonly (Uint8Array | null)[] | null)[];
  readonly #header: (Uint8Array | null)[];
  /**
   * Per direction (slot × 2 + 0 up, + 1 down): bytes waiting for the other side (a buffer, where they
   * start and end, and the pool it goes back to), and whether it receives into large buffers.
   */
  readonly #held: (Uint8Array | null)[];
  readonly #heldStart: Int32Array;
  readonly #heldEnd: Int32Array;
  readonly #heldPool: Uint8Array;
  readonly #large: Uint8Array;
  readonly #free: number[] = [];
  /** Slots released during the current batch of events: free only once it is handled (its events may name them). */
  readonly #freeing: number[] = [];
  /** Flows that stopped reading for fairness with bytes left (`AGAIN`), pumped again at the next poll. */
  #again: number[] = [];
  #open = 0;
  #now = performance.now();
  #nextSweep = 0;
  #closed = false;

  /** The buffers every direction receives into, and those of directions whose bytes wait. */
  readonly #bufferSize: number;
  readonly #bufferSizeBig: bigint;
  readonly #largeSize: number;
  readonly #largeSizeBig: bigint;
  readonly #largeMax: number;
  #scratch: Uint8Array;
  #largeScratch: Uint8Array | null = null;
  readonly #smallPool: Uint8Array[] = [];
  readonly #largePool: Uint8Array[] = [];
  /** Large buffers in existence (held, pooled or the scratch one). */
  #largeCount = 0;

  readonly #deadlines = new Map<number, DeadlineQueue>();
  readonly #events: Uint8Array;
  readonly #eventWords: Uint32Array;
  readonly #eventBytes = new Uint8Array(EPOLL_EVENT_BYTES);
  readonly #eventBytesWords: Uint32Array;
  readonly #one = new Uint8Array(new Int32Array([1]).buffer);
  readonly #int = new Uint8Array(4);
  readonly #intLength = new Uint32Array([4]);
  /** The addresses of the connection being accepted (`struct sockaddr_in` or `_in6`). */
  readonly #clientAddress = new Uint8Array(SOCKADDR_BYTES);
  readonly #destinationAddress = new Uint8Array(SOCKADDR_BYTES);
  readonly #addressLength = new Uint32Array(1);
  readonly #wakeBytes = new Uint8Array(8);
  readonly #ask: NonNullable<RelayOptions["ask"]> | null;
  readonly #flowEvents: FlowEvents | null;
  /** An eventfd in the epoll set: another thread writes to it (`wake`) to end a wait in `poll` at once. */
  readonly wakeFd: number;

  constructor(options: RelayOptions = {}) {
    this.#ask = options.ask ?? null;
    this.#flowEvents = options.events ?? null;
    const { libc, errno, close } = openLibc();
    this.#libc = libc;
    this.#errno = errno;
    this.#closeLibc = close;
    const slots = options.maxFlows ?? RELAY_DEFAULTS.maxFlows;
    this.#client = new Int32Array(slots).fill(-1);
    this.#backend = new Int32Array(slots).fill(-1);
    this.#listener = new Int32Array(slots);
    this.#flags = new Uint16Array(slots);
    this.#generation = new Uint32Array(slots);
    this.#tries = new Array(slots).fill(null);
    this.#choices = new Array(slots).fill(null);
    this.#choice = new Int32Array(slots).fill(-1);
    this.#tried = new Uint8Array(slots);
    this.#firstTimeoutMs = new Uint32Array(slots);
    this.#lastActive = new Float64Array(slots);
    this.#headers = new Array(slots).fill(null);
    this.#header = new Array(slots).fill(null);
    this.#held = new Array(slots * 2).fill(null);
    this.#heldStart = new Int32Array(slots * 2);
    this.#heldEnd = new Int32Array(slots * 2);
    this.#heldPool = new Uint8Array(slots * 2);
    this.#large = new Uint8Array(slots * 2);
    for (let slot = slots - 1; slot >= 0; slot--) this.#free.push(slot);

    this.#bufferSize = options.bufferSize ?? RELAY_DEFAULTS.bufferSize;
    this.#bufferSizeBig = BigInt(this.#bufferSize);
    this.#largeSize = options.largeBufferSize ?? RELAY_DEFAULTS.largeBufferSize;
    this.#largeSizeBig = BigInt(this.#largeSize);
    this.#largeMax = options.largeBuffers ?? RELAY_DEFAULTS.largeBuffers;
    this.#scratch = new Uint8Array(this.#bufferSize);
    this.#events = new Uint8Array(RELAY_DEFAULTS.eventsPerWait * EPOLL_EVENT_BYTES);
    this.#eventWords = new Uint32Array(this.#events.buffer);
    this.#eventBytesWords = new Uint32Array(this.#eventBytes.buffer);

    this.#epoll = libc.epoll_create1(EPOLL_CLOEXEC);
    if (this.#epoll < 0) throw new Error(`Cannot make an epoll instance (errno ${errno()})`);
    this.wakeFd = libc.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (this.wakeFd < 0) {
      const error = errno();
      libc.close(this.#epoll);
      throw new Error(`Cannot make an eventfd (errno ${error})`);
    }
    this.#register(this.wakeFd, EPOLLIN, WAKE);
  }

  /** Flows open now. */
  get open(): number {
    return this.#open;
  }

  /** Starts accepting for `service`; returns the port bound (useful with port 0). */
  listen(service: RelayService): number {
    const address = encodeAddress(service.listen);
    const fd = this.#socket(isV6(address));
    if (fd < 0) throw new Error(`Cannot open a socket (errno ${this.#errno()})`);
    const libc = this.#libc;
    libc.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, this.#one, 4);
    libc.setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, this.#one, 4);
    // Accepted sockets inherit it (Linux copies a listener's options to each connection it accepts): no
    // system call per flow.
    libc.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, this.#one, 4);
    if (libc.bind(fd, address, address.length) !== 0 || libc.listen(fd, 4096) !== 0) {
      const errno = this.#errno();
      libc.close(fd);
      // As Deno's own listen says it: the agent names the address and the service.
      throw new Error(errnoText(errno));
    }
    const bound = new Uint8Array(SOCKADDR_BYTES);
    this.#addressLength[0] = SOCKADDR_BYTES;
    libc.getsockname(fd, bound, this.#addressLength);
    const listener: Listener = {
      fd,
      service,
      index: this.#listeners.length,
      open: 0,
      backendAddresses: service.backends.map(encodeAddress),
      local: isWildcard(bound) ? null : bound,
      closed: false,
      pauseMs: 0,
      pausedUntil: 0,
    };
    this.#listeners.push(listener);
    // Level-triggered: a listener left with connections waiting (a pass takes at most `acceptsPerPass`)
    // is reported again by the next wait.
    this.#register(fd, EPOLLIN, LISTENER, listener.index);
    return portOfAddress(bound);
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
    // Closing it takes it out of the epoll set; connections still in its queue are reset.
    this.#libc.close(listener.fd);
  }

  /** Ends every open flow of service `index` at once (its drain is over). */
  endFlows(index: number): void {
    for (let slot = 0; slot < this.#client.length; slot++) {
      if (this.#client[slot]! >= 0 && this.#listener[slot] === index) this.#end(slot);
    }
    while (this.#freeing.length > 0) this.#free.push(this.#freeing.pop()!);
  }

  /**
   * Gives service `index` (in the order of `listen` calls) new settings and backends, which its `candidates`
   * index from now on; flows already connecting keep the addresses they had.
   */
  update(index: number, settings: RelaySettings): void {
    const listener = this.#listeners[index];
    if (!listener) throw new RangeError(`No service ${index}: the relay has ${this.#listeners.length}`);
    listener.service = { ...listener.service, ...settings };
    listener.backendAddresses = settings.backends.map(encodeAddress);
  }

  /**
   * Waits up to `waitMs` for events (0: none) and handles them, then the connect timeouts due, paused
   * listeners to resume and idle flows. Returns the number of events handled.
   */
  poll(waitMs: number): number {
    let wait = this.#again.length > 0 ? 0 : waitMs;
    if (wait > 0) wait = Math.min(wait, this.#nextTimer() - performance.now());
    // A wait shorter than 1 ms must not be rounded down to 0: that spins.
    const timeout = wait <= 0 ? 0 : Math.min(Math.ceil(wait), 2 ** 31 - 1);
    let count = this.#libc.epoll_wait(this.#epoll, this.#events, RELAY_DEFAULTS.eventsPerWait, timeout);
    this.#now = performance.now();
    if (count < 0) {
      const errno = this.#errno();
      if (errno !== EINTR) throw new Error(`epoll_wait failed (errno ${errno})`);
      count = 0;
    }
    const words = this.#eventWords;
    const stride = EPOLL_EVENT_BYTES / 4;
    for (let i = 0; i < count; i++) {
      this.#dispatch(words[i * stride]!, words[i * stride + EPOLL_DATA_WORD]!);
    }
    if (this.#again.length > 0) this.#pumpAgain();
    this.#expireConnects();
    this.#resumeListeners();
    if (this.#open > 0 && this.#now >= this.#nextSweep) this.#sweep();
    // Slots released while events naming them could still be handled are free from now on.
    while (this.#freeing.length > 0) this.#free.push(this.#freeing.pop()!);
    return count;
  }

  /** Stops accepting, ends every flow, and closes the relay's descriptors. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const listener of this.#listeners) this.unlisten(listener.index);
    for (let slot = 0; slot < this.#client.length; slot++) {
      if (this.#client[slot]! >= 0) this.#end(slot);
    }
    while (this.#freeing.length > 0) this.#free.push(this.#freeing.pop()!);
    this.#libc.close(this.wakeFd);
    this.#libc.close(this.#epoll);
    this.#closeLibc();
  }

  #socket(v6: boolean): number {
    return this.#libc.socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  }

  #register(fd: number, events: number, kind: number, slot = 0): boolean {
    const words = this.#eventBytesWords;
    words[0] = events >>> 0;
    words[EPOLL_DATA_WORD] = (slot << 2) | kind;
    words[EPOLL_DATA_WORD + 1] = 0;
    return this.#libc.epoll_ctl(this.#epoll, EPOLL_CTL_ADD, fd, this.#eventBytes) === 0;
  }

  #dispatch(events: number, token: number): void {
    const kind = token & 3;
    const slot = token >>> 2;
    switch (kind) {
      case CLIENT: {
        if (this.#client[slot]! < 0) return;
        let flags = this.#flags[slot]!;
        if (events & READABLE) flags |= CLIENT_IN;
        if (events & WRITABLE) flags |= CLIENT_OUT;
        if (events & HUNG_UP) flags |= CLIENT_HUP | finOf(events, CLIENT_FIN);
        this.#flags[slot] = flags;
        if (flags & LINGER) {
          if (events & READABLE) this.#linger(slot);
          return;
        }
        // Nothing moves until the backend is connected.
        if (flags & (CONNECTING | ASKED) || this.#backend[slot]! < 0) return;
        if (events & READABLE) this.#pump(slot, UP);
        if (events & WRITABLE && this.#client[slot]! >= 0) this.#pump(slot, DOWN);
        return;
      }
      case BACKEND: {
        if (this.#backend[slot]! < 0) return;
        if (this.#flags[slot]! & CONNECTING) {
          this.#connectDone(slot, events);
          return;
        }
        let flags = this.#flags[slot]!;
        if (events & READABLE) flags |= BACKEND_IN;
        if (events & WRITABLE) flags |= BACKEND_OUT;
        if (events & HUNG_UP) flags |= BACKEND_HUP | finOf(events, BACKEND_FIN);
        this.#flags[slot] = flags;
        if (events & READABLE) this.#pump(slot, DOWN);
        if (events & WRITABLE && this.#client[slot]! >= 0) this.#pump(slot, UP);
        return;
      }
      case LISTENER:
        this.#acceptAll(this.#listeners[slot]!);
        return;
      case WAKE:
        this.#libc.read(this.wakeFd, this.#wakeBytes, 8n);
        return;
    }
  }

  #acceptAll(listener: Listener): void {
    const libc = this.#libc;
    for (
      let n = 0;
      n < RELAY_DEFAULTS.acceptsPerPass && !listener.closed && listener.pausedUntil === 0;
      n++
    ) {
      this.#addressLength[0] = SOCKADDR_BYTES;
      const fd = libc.accept4(
        listener.fd,
        this.#clientAddress,
        this.#addressLength,
        SOCK_NONBLOCK | SOCK_CLOEXEC,
      );
      if (fd < 0) {
        const errno = this.#errno();
        if (errno === EAGAIN || errno === EINTR) return;
        this.counters.acceptErrors++;
        this.#flowEvents?.acceptFailed?.(listener.index, errno);
        // Out of descriptors above all: the connection waiting would fail again at once, so accepting
        // pauses, longer while errors last (as HAProxy and nginx do, and the agent on Deno's sockets).
        this.#pauseAccepting(listener);
        return;
      }
      listener.pauseMs = 0;
      this.#accepted(listener, fd);
    }
  }

  #accepted(listener: Listener, fd: number): void {
    const slot = this.#free.pop();
    if (slot === undefined || listener.open >= listener.service.maxConnections) {
      if (slot !== undefined) this.#free.push(slot);
      this.counters.rejected++;
      this.#libc.close(fd);
      return;
    }
    if (!this.#register(fd, FLOW_EVENTS, CLIENT, slot)) {
      // Out of memory for the epoll set: as good as out of descriptors.
      this.#free.push(slot);
      this.counters.acceptErrors++;
      this.#flowEvents?.acceptFailed?.(listener.index, this.#errno());
      this.#libc.close(fd);
      return;
    }
    this.counters.accepted++;
    listener.open++;
    this.#open++;
    this.#client[slot] = fd;
    this.#backend[slot] = -1;
    this.#listener[slot] = listener.index;
    this.#flags[slot] = 0;
    this.#firstTimeoutMs[slot] = 0;
    this.#lastActive[slot] = this.#now;
    this.#large[slot * 2] = 0;
    this.#large[slot * 2 + 1] = 0;
    const destination = this.#destinationOf(listener, fd) ?? this.#destinationAddress;
    const generation = ++this.#generation[slot]!;
    const service = listener.service;
    // Placed from the addresses' bytes; they become text only for the agent or a PROXY header.
    const order = service.candidates(this.#clientAddress, destination);
    if (order === null) {
      this.#flags[slot] = ASKED;
      if (this.#ask === null) {
        throw new Error(`Service ${service.name} asks where to send flows, but no one answers`);
      }
      this.#ask(listener.index, slot, generation, this.#clientAddress, destination);
      if (service.askTimeoutMs !== undefined) this.#deadline(slot, service.askTimeoutMs, ASK_DEADLINE);
      return;
    }
    this.#beginPlaced(slot, listener, order, destination);
  }

  /**
   * The address a client of `listener` reached (`struct sockaddr`): the one it listens on, or for a wildcard
   * the kernel's (in a scratch buffer, valid until the next call); null when the kernel cannot tell.
   */
  #destinationOf(listener: Listener, fd: number): Uint8Array | null {
    if (listener.local !== null) return listener.local;
    this.#addressLength[0] = SOCKADDR_BYTES;
    return this.#libc.getsockname(fd, this.#destinationAddress, this.#addressLength) === 0
      ? this.#destinationAddress
      : null;
  }

  /** Starts a flow the relay placed: to `order`'s backends, with a PROXY header where its service sends one. */
  #beginPlaced(slot: number, listener: Listener, order: readonly number[], destination: Uint8Array): void {
    const version = listener.service.proxyProtocol ?? "none";
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
   * An asked flow whose answer did not come within its service's `askTimeoutMs`: placed by the relay
   * (`fallback`), its addresses asked of the kernel again. A client gone meanwhile just ends.
   */
  #askTimedOut(slot: number): void {
    const listener = this.#listeners[this.#listener[slot]!]!;
    const { fallback } = listener.service;
    const fd = this.#client[slot]!;
    this.#flags[slot] = this.#flags[slot]! & ~ASKED;
    this.#flowEvents?.askTimedOut?.(listener.index, slot, this.#generation[slot]!);
    const destination = this.#destinationOf(listener, fd);
    this.#addressLength[0] = SOCKADDR_BYTES;
    if (
      fallback === undefined || destination === null ||
      this.#libc.getpeername(fd, this.#clientAddress, this.#addressLength) !== 0
    ) {
      this.#end(slot);
      return;
    }
    this.#beginPlaced(slot, listener, fallback(this.#clientAddress, destination), destination);
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
    targets: readonly (HostPort | Uint8Array | number)[],
    header: Uint8Array | null | readonly (Uint8Array | null)[],
    firstTimeoutMs = 0,
  ): void {
    if (
      this.#generation[slot] !== generation || this.#client[slot]! < 0 || !(this.#flags[slot]! & ASKED)
    ) return;
    this.#flags[slot] = this.#flags[slot]! & ~ASKED;
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
    listener.pausedUntil = this.#now + listener.pauseMs;
    this.#libc.epoll_ctl(this.#epoll, EPOLL_CTL_DEL, listener.fd, this.#eventBytes);
  }

  #resumeListeners(): void {
    for (const listener of this.#listeners) {
      if (listener.pausedUntil === 0 || listener.pausedUntil > this.#now) continue;
      listener.pausedUntil = 0;
      if (!listener.closed) this.#register(listener.fd, EPOLLIN, LISTENER, listener.index);
    }
  }

  /** When the next connect deadline, accept pause or idle sweep is due (Infinity: none). */
  #nextTimer(): number {
    let next = this.#open > 0 ? this.#nextSweep : Infinity;
    for (const queue of this.#deadlines.values()) {
      if (queue.head < queue.entries.length) next = Math.min(next, queue.entries[queue.head + 3]!);
    }
    for (const listener of this.#listeners) {
      if (listener.pausedUntil > 0) next = Math.min(next, listener.pausedUntil);
    }
    return next;
  }

  /** Connects to the next candidate, or gives the flow up when none is left. */
  #connectNext(slot: number): void {
    const libc = this.#libc;
    for (;;) {
      const tries = this.#tries[slot]!;
      const at = this.#tried[slot]!;
      if (at >= tries.length) {
        this.#tries[slot] = null;
        this.counters.noBackend++;
        this.#flowEvents?.noBackend(this.#listener[slot]!, slot, this.#generation[slot]!);
        this.#libc.shutdown(this.#client[slot]!, SHUT_WR);
        this.#flags[slot] = this.#flags[slot]! | LINGER;
        this.#deadline(slot, RELAY_DEFAULTS.lingerMs);
        this.#linger(slot);
        return;
      }
      this.#tried[slot] = at + 1;
      const address = tries[at]!;
      const fd = this.#socket(isV6(address));
      if (fd < 0) {
        this.#failed(slot, at, this.#errno() || EMFILE, true);
        continue;
      }
      libc.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, this.#one, 4);
      if (libc.connect(fd, address, address.length) !== 0) {
        const errno = this.#errno();
        if (errno !== EINPROGRESS) {
          libc.close(fd);
          this.counters.connectFailures++;
          this.#failed(slot, at, errno, false);
          continue;
        }
      }
      if (!this.#register(fd, FLOW_EVENTS, BACKEND, slot)) {
        const errno = this.#errno();
        libc.close(fd);
        this.#failed(slot, at, errno, true);
        continue;
      }
      this.#backend[slot] = fd;
      this.#flags[slot] = (this.#flags[slot]! & ~(BACKEND_IN | BACKEND_OUT)) | CONNECTING;
      const firstTimeoutMs = this.#firstTimeoutMs[slot]!;
      const timeoutMs = at === 0 && firstTimeoutMs > 0
        ? firstTimeoutMs
        : this.#listeners[this.#listener[slot]!]!.service.connectTimeoutMs;
      this.#deadline(slot, timeoutMs);
      return;
    }
  }

  #failed(slot: number, at: number, errno: number, local: boolean): void {
    this.#flowEvents?.connectFailed(
      this.#listener[slot]!,
      slot,
      this.#generation[slot]!,
      this.#choiceOf(slot, at),
      errno,
      local,
    );
  }

  /** A deadline of slot's flow `timeoutMs` from now: of its connect (the try `tried`), linger or ask. */
  #deadline(slot: number, timeoutMs: number, tried = this.#tried[slot]!): void {
    let queue = this.#deadlines.get(timeoutMs);
    if (queue === undefined) this.#deadlines.set(timeoutMs, queue = { entries: [], head: 0 });
    queue.entries.push(slot, this.#generation[slot]!, tried, this.#now + timeoutMs);
  }

  /**
   * Connects that outlived their timeout fail, and the flow tries its next candidate; lingering clients
   * end; asked flows still waiting are placed alone.
   */
  #expireConnects(): void {
    for (const queue of this.#deadlines.values()) {
      const { entries } = queue;
      while (queue.head < entries.length && entries[queue.head + 3]! <= this.#now) {
        const slot = entries[queue.head]!;
        const generation = entries[queue.head + 1]!;
        const tried = entries[queue.head + 2]!;
        queue.head += 4;
        if (this.#generation[slot] !== generation || this.#client[slot]! < 0) continue;
        if (this.#flags[slot]! & LINGER) {
          this.#end(slot);
          continue;
        }
        if (tried === ASK_DEADLINE) {
          if (this.#flags[slot]! & ASKED) this.#askTimedOut(slot);
          continue;
        }
        if (this.#tried[slot] !== tried || !(this.#flags[slot]! & CONNECTING)) continue;
        this.#libc.close(this.#backend[slot]!);
        this.#backend[slot] = -1;
        this.#flags[slot] = this.#flags[slot]! & ~CONNECTING;
        this.counters.connectFailures++;
        this.#failed(slot, tried - 1, ETIMEDOUT, false);
        this.#connectNext(slot);
      }
      if (queue.head === entries.length) {
        entries.length = 0;
        queue.head = 0;
      } else if (queue.head > 4096 && queue.head * 2 > entries.length) {
        entries.splice(0, queue.head);
        queue.head = 0;
      }
    }
  }

  /** The backend socket of a connecting flow was reported: connected, or failed (then the next candidate). */
  #connectDone(slot: number, events: number): void {
    const fd = this.#backend[slot]!;
    let errno = 0;
    if (events & EPOLLERR || !(events & EPOLLOUT)) {
      this.#intLength[0] = 4;
      this.#libc.getsockopt(fd, SOL_SOCKET, SO_ERROR, this.#int, this.#intLength);
      errno = new Int32Array(this.#int.buffer)[0]!;
      // Hung up with no error set: the backend closed at once.
      if (errno === 0 && !(events & EPOLLOUT)) errno = 104;
    }
    let flags = this.#flags[slot]! & ~CONNECTING;
    if (errno !== 0) {
      this.#libc.close(fd);
      this.#backend[slot] = -1;
      this.#flags[slot] = flags;
      this.counters.connectFailures++;
      this.#failed(slot, this.#tried[slot]! - 1, errno, false);
      this.#connectNext(slot);
      return;
    }
    this.#tries[slot] = null;
    const choice = this.#choiceOf(slot, this.#tried[slot]! - 1);
    this.#choice[slot] = choice;
    this.#choices[slot] = null;
    this.#flowEvents?.connected(this.#listener[slot]!, slot, this.#generation[slot]!, choice);
    const perTarget = this.#headers[slot];
    const header = perTarget ? perTarget[this.#tried[slot]! - 1] ?? null : this.#header[slot]!;
    this.#headers[slot] = null;
    this.#header[slot] = null;
    if (events & READABLE) flags |= BACKEND_IN;
    if (events & HUNG_UP) flags |= BACKEND_HUP | finOf(events, BACKEND_FIN);
    flags |= BACKEND_OUT;
    this.#flags[slot] = flags;
    if (header !== null && header.length > 0) {
      // The header goes first: the client's bytes are read once it is sent.
      const k = slot * 2;
      this.#held[k] = header;
      this.#heldStart[k] = 0;
      this.#heldEnd[k] = header.length;
      this.#heldPool[k] = OWN;
    }
    this.#pump(slot, UP);
    if (this.#client[slot]! >= 0) this.#pump(slot, DOWN);
  }

  /** The choice that the `at`th target of a flow stands for (see `FlowEvents`). */
  #choiceOf(slot: number, at: number): number {
    const choices = this.#choices[slot];
    return choices ? choices[at]! : at;
  }

  /**
   * Moves one direction's bytes until its source has none, its destination takes no more, or it read
   * `readsPerPass` times (then it goes on at the next poll). Ends the direction at its source's end, and
   * the flow on an error or when both are done.
   */
  #pump(slot: number, direction: number): void {
    const libc = this.#libc;
    const k = slot * 2 + direction;
    const source = direction === UP ? this.#client[slot]! : this.#backend[slot]!;
    const sink = direction === UP ? this.#backend[slot]! : this.#client[slot]!;
    const sourceIn = SOURCE_IN[direction]!;
    const sinkOut = SINK_OUT[direction]!;
    let flags = this.#flags[slot]!;
    if (flags & DONE[direction]!) return;
    const held = this.#held[k] ?? null;
    if (held !== null) {
      if (!(flags & sinkOut)) return;
      const start = this.#heldStart[k]!;
      const end = this.#heldEnd[k]!;
      const sent = libc.send(
        sink,
        start === 0 ? held : held.subarray(start),
        BigInt(end - start),
        MSG_NOSIGNAL,
      );
      if (sent < 0) {
        const errno = this.#errno();
        if (errno !== EAGAIN) return this.#end(slot);
        this.#flags[slot] = flags & ~sinkOut;
        return;
      }
      if (start + sent < end) {
        this.#heldStart[k] = start + sent;
        this.#flags[slot] = flags & ~sinkOut;
        return;
      }
      this.#release(k);
    }
    if (flags & EOF[direction]!) return this.#finish(slot, direction);
    for (let reads = 0; flags & sourceIn; reads++) {
      if (reads === RELAY_DEFAULTS.readsPerPass) {
        if (!(flags & AGAIN)) {
          this.#flags[slot] = flags | AGAIN;
          this.#again.push(slot);
        }
        return;
      }
      const large = this.#large[k] === 1 && this.#takeLargeScratch();
      const buffer = large ? this.#largeScratch! : this.#scratch;
      const size = large ? this.#largeSize : this.#bufferSize;
      const received = libc.recv(source, buffer, large ? this.#largeSizeBig : this.#bufferSizeBig, 0);
      if (received > 0) {
        if (direction === UP) this.counters.bytesUp += received;
        else this.counters.bytesDown += received;
        this.#lastActive[slot] = this.#now;
        // A full small buffer: bulk data, received into large ones from now on; a large one barely used:
        // back to small ones.
        if (!large && received === size) this.#large[k] = 1;
        else if (large && received < this.#bufferSize) this.#large[k] = 0;
        let sent = 0;
        if (flags & sinkOut) {
          sent = libc.send(sink, buffer, BigInt(received), MSG_NOSIGNAL);
          if (sent < 0) {
            if (this.#errno() !== EAGAIN) return this.#end(slot);
            sent = 0;
          }
        }
        // A short receive took everything there was: new bytes will be reported by a new event. Not so the
        // end of a peer that hung up, reported once: it is read next, or known already after a FIN.
        const ended = received < size && (flags & SOURCE_FIN[direction]!) !== 0;
        if (ended) flags = (flags & ~sourceIn) | EOF[direction]!;
        else if (received < size && !(flags & SOURCE_HUP[direction]!)) flags &= ~sourceIn;
        if (sent < received) {
          this.#hold(k, buffer, sent, received, large);
          this.#flags[slot] = flags & ~sinkOut;
          return;
        }
        this.#flags[slot] = flags;
        if (ended) return this.#finish(slot, direction);
        continue;
      }
      if (received === 0) {
        this.#flags[slot] = (flags & ~sourceIn) | EOF[direction]!;
        return this.#finish(slot, direction);
      }
      const errno = this.#errno();
      if (errno !== EAGAIN && errno !== EINTR) return this.#end(slot);
      if (errno === EAGAIN) flags &= ~sourceIn;
      this.#flags[slot] = flags;
    }
  }

  /** Reads and drops what a lingering client sends; ends the flow at its end, an error, or enough bytes. */
  #linger(slot: number): void {
    const fd = this.#client[slot]!;
    for (let reads = 0; reads < RELAY_DEFAULTS.readsPerPass; reads++) {
      const received = this.#libc.recv(fd, this.#scratch, this.#bufferSizeBig, 0);
      if (received > 0) continue;
      if (received < 0 && this.#errno() === EAGAIN) return;
      break;
    }
    this.#end(slot);
  }

  /** Flows that stopped for fairness pump on. */
  #pumpAgain(): void {
    const again = this.#again;
    this.#again = [];
    for (const slot of again) {
      const flags = this.#flags[slot]!;
      if (!(flags & AGAIN)) continue;
      this.#flags[slot] = flags & ~AGAIN;
      if (this.#client[slot]! < 0 || this.#backend[slot]! < 0) continue;
      this.#pump(slot, UP);
      if (this.#client[slot]! >= 0) this.#pump(slot, DOWN);
    }
  }

  /** Makes the large scratch buffer ready; false when every large buffer is held (small ones will do). */
  #takeLargeScratch(): boolean {
    if (this.#largeScratch !== null) return true;
    const pooled = this.#largePool.pop();
    if (pooled !== undefined) {
      this.#largeScratch = pooled;
      return true;
    }
    if (this.#largeCount >= this.#largeMax) return false;
    this.#largeCount++;
    this.#largeScratch = new Uint8Array(this.#largeSize);
    return true;
  }

  /**
   * Keeps bytes `start` to `end` of the scratch buffer just received into for direction `k`, until its
   * destination takes them: the direction takes the buffer itself, and the relay receives into another.
   */
  #hold(k: number, buffer: Uint8Array, start: number, end: number, large: boolean): void {
    this.#held[k] = buffer;
    this.#heldStart[k] = start;
    this.#heldEnd[k] = end;
    if (large) {
      this.#heldPool[k] = LARGE;
      this.#largeScratch = null;
    } else {
      this.#heldPool[k] = SMALL;
      this.#scratch = this.#smallPool.pop() ?? new Uint8Array(this.#bufferSize);
    }
  }

  /** Gives back what direction `k` held, once sent (or when its flow ends). */
  #release(k: number): void {
    const held = this.#held[k]!;
    const pool = this.#heldPool[k];
    if (pool === SMALL) this.#smallPool.push(held);
    else if (pool === LARGE) this.#largePool.push(held);
    this.#held[k] = null;
  }

  /**
   * One direction reached its end with nothing left to send: the other side learns it (half-close); the
   * flow ends with both. When this ends the flow, closing both sockets sends the same FIN (the socket has
   * nothing unread: its own direction ended first), one system call fewer.
   */
  #finish(slot: number, direction: number): void {
    const flags = this.#flags[slot]! | DONE[direction]!;
    this.#flags[slot] = flags;
    if ((flags & BOTH_DONE) === BOTH_DONE) return this.#end(slot);
    this.#libc.shutdown(direction === UP ? this.#backend[slot]! : this.#client[slot]!, SHUT_WR);
  }

  /** Ends a flow: closes its sockets (which takes them out of the epoll set) and frees its slot. */
  #end(slot: number): void {
    const libc = this.#libc;
    libc.close(this.#client[slot]!);
    if (this.#backend[slot]! >= 0) libc.close(this.#backend[slot]!);
    this.#client[slot] = -1;
    this.#backend[slot] = -1;
    this.#flags[slot] = 0;
    this.#tries[slot] = null;
    this.#header[slot] = null;
    this.#headers[slot] = null;
    this.#choices[slot] = null;
    if (this.#held[slot * 2] !== null) this.#release(slot * 2);
    if (this.#held[slot * 2 + 1] !== null) this.#release(slot * 2 + 1);
    if (this.#choice[slot]! >= 0) {
      this.#flowEvents?.ended(this.#listener[slot]!, slot, this.#generation[slot]!, this.#choice[slot]!);
      this.#choice[slot] = -1;
    }
    this.#listeners[this.#listener[slot]!]!.open--;
    this.#open--;
    this.#freeing.push(slot);
  }

  /** Ends flows idle for longer than their service allows. */
  #sweep(): void {
    this.#nextSweep = this.#now + RELAY_DEFAULTS.sweepMs;
    for (let slot = 0; slot < this.#client.length; slot++) {
      if (this.#client[slot]! < 0 || this.#choice[slot]! < 0) continue;
      const idleMs = this.#listeners[this.#listener[slot]!]!.service.idleTimeoutMs;
      if (idleMs > 0 && this.#now - this.#lastActive[slot]! > idleMs) {
        this.#flowEvents?.idle?.(this.#listener[slot]!, slot, this.#generation[slot]!, this.#choice[slot]!);
        this.#end(slot);
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
  const library = Deno.dlopen("libc.so.6", {
    write: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  });
  return {
    wake: (wakeFd) => {
      library.symbols.write(wakeFd, ONE_EVENT, 8n);
    },
    close: () => library.close(),
  };
}
