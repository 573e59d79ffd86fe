/**
 * The flows the relay's worker asks about, the agent's answers, and the flow events, through shared memory
 * (`shared_ring.ts`) rather than messages: one `SharedArrayBuffer`, made by the agent and posted with
 * `start`, holds two counters and three rings (asks, answers, events).
 *
 * - `POSTED`: messages the agent has posted to the worker. The worker compares it with those it has
 *   handled: while it is ahead, a message is on its way and the relay must not block. An answer carries
 *   the count as of when it was written, and the worker takes it only once it has handled as many: an
 *   answer may name backends by index as of a placement posted before it.
 * - `SIGNAL`: moved by the worker after it writes asks or events, for the agent waiting on it
 *   (`Atomics.waitAsync`).
 *
 * Either side falls back to the messages when a ring has no room (`FromWorker` `place` and `flows`,
 * `ToWorker` `placed`).
 */
import { SharedRing } from "./shared_ring.ts";
import { noCounters, type PlacementRequest, type PlaneCounters } from "../data_plane.ts";
import { decodeAddress } from "./sockaddr.ts";

/** Indexes of the counters, 32-bit each, at the start of the buffer. */
export const POSTED = 0;
export const SIGNAL = 1;
const COUNTERS_BYTES = 16;
const RINGS = 3;

export const SHARED_DEFAULTS = {
  /** Bytes of records in each ring: about 5,000 asks, answers of a few backends each, or flow events. */
  ringBytes: 256 * 1024,
} as const;

/** The buffer both sides share, for rings of `ringBytes` each. */
export function sharedBuffer(ringBytes: number = SHARED_DEFAULTS.ringBytes): SharedArrayBuffer {
  return new SharedArrayBuffer(COUNTERS_BYTES + RINGS * SharedRing.bytesFor(ringBytes));
}

/** The counters of a buffer from `sharedBuffer`. */
export function counters(buffer: SharedArrayBuffer): Int32Array {
  return new Int32Array(buffer, 0, COUNTERS_BYTES / 4);
}

/** The `index`th ring of a buffer from `sharedBuffer`. */
function ringOf(buffer: SharedArrayBuffer, index: number): SharedRing {
  const ringBytes = (buffer.byteLength - COUNTERS_BYTES) / RINGS - SharedRing.bytesFor(0);
  return new SharedRing(buffer, COUNTERS_BYTES + index * SharedRing.bytesFor(ringBytes), ringBytes);
}

/**
 * The body of the next record of `ring`, if the reader may take it: the record's first 32 bits count the
 * messages posted before it, and it waits until the reader has handled as many (`handled`). -1 otherwise.
 */
function nextAfter(ring: SharedRing, handled: number): number {
  const at = ring.next();
  return at < 0 || ring.view.getUint32(at, true) > handled ? -1 : at;
}

/** One side of the asks: the worker writes them, the agent reads them. */
export class AskQueue {
  readonly #ring: SharedRing;

  constructor(buffer: SharedArrayBuffer) {
    this.#ring = ringOf(buffer, 0);
  }

  /**
   * The worker's side: a flow to place, between two `struct sockaddr`s (read during the call only); false
   * when the ring has no room.
   */
  put(
    service: number,
    slot: number,
    generation: number,
    client: Uint8Array,
    destination: Uint8Array,
  ): boolean {
    const ring = this.#ring;
    const at = ring.reserve(16 + client.length + destination.length);
    if (at < 0) return false;
    const { view, bytes } = ring;
    view.setUint32(at, service, true);
    view.setUint32(at + 4, slot, true);
    view.setUint32(at + 8, generation, true);
    view.setUint8(at + 12, client.length);
    view.setUint8(at + 13, destination.length);
    bytes.set(client, at + 16);
    bytes.set(destination, at + 16 + client.length);
    ring.commit();
    return true;
  }

  /** The agent's side: the next flow asked about, or null. */
  take(): PlacementRequest | null {
    const ring = this.#ring;
    const at = ring.next();
    if (at < 0) return null;
    const { view, bytes } = ring;
    const clientLength = view.getUint8(at + 12);
    const destinationLength = view.getUint8(at + 13);
    const request: PlacementRequest = {
      service: view.getUint32(at, true),
      slot: view.getUint32(at + 4, true),
      generation: view.getUint32(at + 8, true),
      client: decodeAddress(bytes.subarray(at + 16, at + 16 + clientLength)),
      destination: decodeAddress(
        bytes.subarray(at + 16 + clientLength, at + 16 + clientLength + destinationLength),
      ),
    };
    ring.done();
    return request;
  }
}

/** An answer as the worker reads it: targets are indexes or `struct sockaddr`s. */
export interface Answer {
  readonly slot: number;
  readonly generation: number;
  readonly targets: (number | Uint8Array)[];
  readonly header: Uint8Array | null | (Uint8Array | null)[];
  readonly firstTimeoutMs: number;
}

const NO_HEADER = 0;
const ONE_HEADER = 1;
const HEADER_PER_TARGET = 2;

const padded = (length: number) => (length + 3) & ~3;

/** The other side: the agent writes answers, the worker reads them. */
export class AnswerQueue {
  readonly #ring: SharedRing;

  constructor(buffer: SharedArrayBuffer) {
    this.#ring = ringOf(buffer, 1);
  }

  /**
   * The agent's side: an answer (see `RelayDataPlane.placed`; addresses as `struct sockaddr`s), written
   * after `posted` messages; false when the ring has no room.
   */
  put(
    posted: number,
    answer: Answer,
  ): boolean {
    const { targets, header } = answer;
    let size = 20 + 4 * targets.length;
    for (const target of targets) if (typeof target !== "number") size += padded(target.length);
    if (header instanceof Uint8Array) size += 4 + padded(header.length);
    else if (header !== null) {
      if (header.length !== targets.length) {
        throw new RangeError(`Cannot answer with ${header.length} headers for ${targets.length} targets`);
      }
      for (const one of header) size += 4 + (one === null ? 0 : padded(one.length));
    }
    const ring = this.#ring;
    let at = ring.reserve(size);
    if (at < 0) return false;
    const { view, bytes } = ring;
    view.setUint32(at, posted, true);
    view.setUint32(at + 4, answer.slot, true);
    view.setUint32(at + 8, answer.generation, true);
    view.setUint32(at + 12, answer.firstTimeoutMs, true);
    view.setUint16(at + 16, targets.length, true);
    view.setUint16(
      at + 18,
      header === null ? NO_HEADER : header instanceof Uint8Array ? ONE_HEADER : HEADER_PER_TARGET,
      true,
    );
    at += 20;
    for (const target of targets) {
      if (typeof target === "number") {
        view.setInt32(at, target, true);
        at += 4;
      } else {
        view.setInt32(at, -target.length, true);
        bytes.set(target, at + 4);
        at += 4 + padded(target.length);
      }
    }
    const headers = header === null ? [] : header instanceof Uint8Array ? [header] : header;
    for (const one of headers) {
      view.setInt32(at, one === null ? -1 : one.length, true);
      if (one !== null) bytes.set(one, at + 4);
      at += 4 + (one === null ? 0 : padded(one.length));
    }
    ring.commit();
    return true;
  }

  /**
   * The worker's side: the next answer (addresses and headers copied out), or null when there is none or it
   * was written after more messages than the worker has `handled`.
   */
  take(handled: number): Answer | null {
    const ring = this.#ring;
    const start = nextAfter(ring, handled);
    if (start < 0) return null;
    const { view, bytes } = ring;
    const count = view.getUint16(start + 16, true);
    const mode = view.getUint16(start + 18, true);
    let at = start + 20;
    const targets: (number | Uint8Array)[] = [];
    for (let i = 0; i < count; i++) {
      const value = view.getInt32(at, true);
      if (value >= 0) {
        targets.push(value);
        at += 4;
      } else {
        targets.push(bytes.slice(at + 4, at + 4 - value));
        at += 4 + padded(-value);
      }
    }
    const headers: (Uint8Array | null)[] = [];
    const headerCount = mode === NO_HEADER ? 0 : mode === ONE_HEADER ? 1 : count;
    for (let i = 0; i < headerCount; i++) {
      const length = view.getInt32(at, true);
      headers.push(length < 0 ? null : bytes.slice(at + 4, at + 4 + length));
      at += 4 + (length < 0 ? 0 : padded(length));
    }
    const answer: Answer = {
      slot: view.getUint32(start + 4, true),
      generation: view.getUint32(start + 8, true),
      targets,
      header: mode === NO_HEADER ? null : mode === ONE_HEADER ? headers[0]! : headers,
      firstTimeoutMs: view.getUint32(start + 12, true),
    };
    ring.done();
    return answer;
  }
}

/** The relay's counters in the order an events record holds them. */
const COUNTER_NAMES = [
  "accepted",
  "rejected",
  "noBackend",
  "connectFailures",
  "bytesUp",
  "bytesDown",
  "acceptErrors",
] as const satisfies readonly (keyof PlaneCounters)[];
/**
 * The `flows` messages posted before, open flows, the number of events, then the counters (64-bit floats:
 * bytes pass 2^32).
 */
const EVENTS_HEAD_BYTES = 12 + 8 * COUNTER_NAMES.length;
/** Numbers per event (see `FromWorker` `flows`); the fourth, the generation, is unsigned. */
const EVENT_FIELDS = 6;

/** Flow events as the agent reads them. */
export interface FlowEvents {
  readonly events: number[];
  readonly counters: PlaneCounters;
  readonly open: number;
}

/**
 * The third ring: the worker writes the flow events of a turn, with its counters; the agent reads them. A
 * record carries the count of `flows` messages the worker posted before it (those that found no room): the
 * agent takes it only once it has handled as many, so that a flow's events keep their order.
 */
export class EventQueue {
  readonly #ring: SharedRing;

  constructor(buffer: SharedArrayBuffer) {
    this.#ring = ringOf(buffer, 2);
  }

  /**
   * The worker's side: flow events, six numbers each (kind, service, slot, generation, choice, errno),
   * with the counters and open flows as of then; false when the ring has no room.
   */
  put(posted: number, events: readonly number[], counters: PlaneCounters, open: number): boolean {
    const ring = this.#ring;
    let at = ring.reserve(EVENTS_HEAD_BYTES + 4 * events.length);
    if (at < 0) return false;
    const { view } = ring;
    view.setUint32(at, posted, true);
    view.setUint32(at + 4, open, true);
    view.setUint32(at + 8, events.length / EVENT_FIELDS, true);
    at += 12;
    for (const name of COUNTER_NAMES) {
      view.setFloat64(at, counters[name], true);
      at += 8;
    }
    for (let i = 0; i < events.length; i++) {
      if (i % EVENT_FIELDS === 3) view.setUint32(at, events[i]!, true);
      else view.setInt32(at, events[i]!, true);
      at += 4;
    }
    ring.commit();
    return true;
  }

  /**
   * The agent's side: the next record, or null when there is none or it was written after more `flows`
   * messages than the agent has `handled`.
   */
  take(handled: number): FlowEvents | null {
    const ring = this.#ring;
    const start = nextAfter(ring, handled);
    if (start < 0) return null;
    const { view } = ring;
    const count = view.getUint32(start + 8, true) * EVENT_FIELDS;
    const events = new Array<number>(count);
    let at = start + EVENTS_HEAD_BYTES;
    for (let i = 0; i < count; i++) {
      events[i] = i % EVENT_FIELDS === 3 ? view.getUint32(at, true) : view.getInt32(at, true);
      at += 4;
    }
    const counters = noCounters();
    COUNTER_NAMES.forEach((name, i) => counters[name] = view.getFloat64(start + 12 + 8 * i, true));
    const record: FlowEvents = { events, counters, open: view.getUint32(start + 4, true) };
    ring.done();
    return record;
  }
}
