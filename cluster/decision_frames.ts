/**
 * The compact encoding of the two messages of every new connection a claimant asks about (`decide` and
 * its `decisions`): a frame body that starts with a tag byte, never `{`, then fixed-width numbers and
 * length-prefixed UTF-8. It carries exactly what the JSON form would, and decoding checks every bound the
 * schema would, so a peer gets the same messages, or a `ProtocolError`, either way; encoding and decoding
 * cost a fraction of JSON and a schema check per request.
 *
 *   decide:    0x01 | count u32 | count × (id u32 | service: len u8, bytes | ip: len u8, bytes | port u16 |
 *              flags u8: 1 for the `mesh` lane, 2 for the `listen` lane, 0 for none given)
 *   decisions: 0x02 | count u32 | count × (id u32 | backend: len u16 (0xffff: none), bytes | ttlMs u32)
 *
 * Numbers are big-endian. `encodeDecide` and `encodeDecisions` give whole frames (the 4-byte length
 * first, as `encodeFrame` does); the decoders take bodies, as `FrameDecoder` yields them.
 */

import type { Lane } from "./lanes.ts";

export const DECIDE_TAG = 0x01;
export const DECISIONS_TAG = 0x02;

/** What one `decide` asks, as the schema of the JSON form has it. */
export interface DecideRequest {
  readonly id: number;
  readonly service: string;
  readonly client: { readonly ip: string; readonly port: number };
  readonly lane?: Lane;
}

/** One answer of `decisions`. */
export interface DecisionAnswer {
  readonly id: number;
  readonly backend: string | null;
  readonly ttlMs: number;
}

/** Bounds of the JSON schema, which the compact form keeps. */
export const DECISION_LIMITS = {
  maxRequests: 100_000,
  maxServiceBytes: 128,
  maxIpBytes: 64,
  maxBackendBytes: 300,
} as const;

const NONE = 0xffff;
const MESH = 1;
const LISTEN = 2;
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** A frame body could not be read; `message` says where and why. */
export class DecisionFrameError extends Error {
  override readonly name = "DecisionFrameError";
}

/** Writes a frame into a growing buffer: its body after 4 bytes left for the length. */
class Writer {
  bytes = new Uint8Array(256);
  view = new DataView(this.bytes.buffer);
  at = 4;

  ensure(more: number): void {
    if (this.at + more <= this.bytes.length) return;
    const grown = new Uint8Array(Math.max(this.bytes.length * 2, this.at + more));
    grown.set(this.bytes.subarray(0, this.at));
    this.bytes = grown;
    this.view = new DataView(grown.buffer);
  }

  u8(value: number): void {
    this.ensure(1);
    this.view.setUint8(this.at, value);
    this.at += 1;
  }

  u16(value: number): void {
    this.ensure(2);
    this.view.setUint16(this.at, value);
    this.at += 2;
  }

  u32(value: number): void {
    this.ensure(4);
    this.view.setUint32(this.at, value);
    this.at += 4;
  }

  text(value: string, width: 1 | 2, max: number, what: string): void {
    // UTF-8 takes at most 3 bytes per UTF-16 code unit.
    this.ensure(width + value.length * 3);
    const { written } = encoder.encodeInto(value, this.bytes.subarray(this.at + width));
    if (written > max || (width === 2 && written === NONE)) {
      throw new RangeError(`Cannot encode ${what} of ${written} bytes: at most ${max}`);
    }
    if (width === 1) this.view.setUint8(this.at, written);
    else this.view.setUint16(this.at, written);
    this.at += width + written;
  }

  /** The frame: the body's length, then the body. */
  frame(): Uint8Array {
    this.view.setUint32(0, this.at - 4);
    return this.bytes.subarray(0, this.at);
  }
}

/** Reads a body, checking that every field lies within it. */
class Reader {
  readonly view: DataView;
  at = 1;

  constructor(readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  need(count: number, what: string): void {
    if (this.at + count > this.bytes.length) {
      throw new DecisionFrameError(`The frame ends before ${what} (byte ${this.at} of ${this.bytes.length})`);
    }
  }

  u8(what: string): number {
    this.need(1, what);
    const value = this.view.getUint8(this.at);
    this.at += 1;
    return value;
  }

  u16(what: string): number {
    this.need(2, what);
    const value = this.view.getUint16(this.at);
    this.at += 2;
    return value;
  }

  u32(what: string): number {
    this.need(4, what);
    const value = this.view.getUint32(this.at);
    this.at += 4;
    return value;
  }

  text(length: number, what: string): string {
    this.need(length, what);
    let value: string;
    try {
      value = decoder.decode(this.bytes.subarray(this.at, this.at + length));
    } catch {
      throw new DecisionFrameError(`${what} is not UTF-8`);
    }
    this.at += length;
    return value;
  }

  /** A u8-prefixed string of 1 to `max` bytes. */
  shortText(max: number, what: string): string {
    this.need(1, what);
    const length = this.view.getUint8(this.at);
    this.at += 1;
    if (length < 1 || length > max) throw new DecisionFrameError(`${what} has ${length} bytes: 1 to ${max}`);
    return this.text(length, what);
  }

  count(max: number, min: number): number {
    const count = this.u32("the count");
    if (count < min || count > max) {
      throw new DecisionFrameError(`The frame holds ${count} entries: ${min} to ${max}`);
    }
    return count;
  }

  end(): void {
    if (this.at !== this.bytes.length) {
      throw new DecisionFrameError(`The frame has ${this.bytes.length - this.at} bytes after its last entry`);
    }
  }
}

/** The frame of a `decide` message. Throws a `RangeError` for a request the schema would refuse. */
export function encodeDecide(requests: readonly DecideRequest[]): Uint8Array {
  const writer = new Writer();
  writer.u8(DECIDE_TAG);
  writer.u32(requests.length);
  for (const { id, service, client, lane } of requests) {
    checkId(id);
    writer.u32(id);
    writer.text(service, 1, DECISION_LIMITS.maxServiceBytes, "a service name");
    writer.text(client.ip, 1, DECISION_LIMITS.maxIpBytes, "a client IP");
    writer.u16(client.port);
    writer.u8(lane === "mesh" ? MESH : lane === "listen" ? LISTEN : 0);
  }
  return writer.frame();
}

/** The requests of a `decide` body (tag included). Throws a `DecisionFrameError`. */
export function decodeDecide(body: Uint8Array): DecideRequest[] {
  const reader = new Reader(body);
  const count = reader.count(DECISION_LIMITS.maxRequests, 1);
  const requests: DecideRequest[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const id = reader.u32("a request id");
    const service = reader.shortText(DECISION_LIMITS.maxServiceBytes, "a service name");
    const ip = reader.shortText(DECISION_LIMITS.maxIpBytes, "a client IP");
    const port = reader.u16("a client port");
    const flags = reader.u8("the flags");
    if (flags > LISTEN) throw new DecisionFrameError(`Unknown flags ${flags} in request ${id}`);
    requests[i] = flags === 0
      ? { id, service, client: { ip, port } }
      : { id, service, client: { ip, port }, lane: flags === MESH ? "mesh" : "listen" };
  }
  reader.end();
  return requests;
}

/** The frame of a `decisions` message. Throws a `RangeError` for an answer the schema would refuse. */
export function encodeDecisions(decisions: readonly DecisionAnswer[]): Uint8Array {
  const writer = new Writer();
  writer.u8(DECISIONS_TAG);
  writer.u32(decisions.length);
  for (const { id, backend, ttlMs } of decisions) {
    checkId(id);
    writer.u32(id);
    if (backend === null) writer.u16(NONE);
    else writer.text(backend, 2, DECISION_LIMITS.maxBackendBytes, "a backend id");
    writer.u32(Math.min(Math.max(0, Math.trunc(ttlMs)), 0xffff_ffff));
  }
  return writer.frame();
}

/** The answers of a `decisions` body (tag included). Throws a `DecisionFrameError`. */
export function decodeDecisions(body: Uint8Array): DecisionAnswer[] {
  const reader = new Reader(body);
  const count = reader.count(DECISION_LIMITS.maxRequests, 0);
  const decisions: DecisionAnswer[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const id = reader.u32("a request id");
    const length = reader.u16("a backend id");
    let backend: string | null = null;
    if (length !== NONE) {
      if (length > DECISION_LIMITS.maxBackendBytes) {
        throw new DecisionFrameError(
          `A backend id has ${length} bytes: at most ${DECISION_LIMITS.maxBackendBytes}`,
        );
      }
      backend = reader.text(length, "a backend id");
    }
    const ttlMs = reader.u32("a ttl");
    decisions[i] = { id, backend, ttlMs };
  }
  reader.end();
  return decisions;
}

function checkId(id: number): void {
  if (!Number.isInteger(id) || id < 0 || id > 0xffff_ffff) {
    throw new RangeError(`Cannot encode request id ${id}: an integer from 0 to ${0xffff_ffff}`);
  }
}
