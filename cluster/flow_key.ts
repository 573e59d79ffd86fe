/**
 * The flow key: what identifies one TCP connection for hashing, and its fixed byte encoding. Every agent
 * must hash the same connection to the same value, so the encoding never changes:
 *
 *   client ip (4 or 16 bytes) | client port (2, big-endian) | service ip (4 or 16) | service port (2) | 6
 *
 * The last byte is the IP protocol number of TCP. An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) is
 * encoded as its 4 IPv4 bytes, so a dual-stack listener hashes a client the same as an IPv4 one.
 *
 * This runs once per connection, so it parses addresses straight into a reused buffer: no strings are
 * split and nothing is allocated per call.
 */

import { hash32 } from "./hash.ts";

/** One TCP connection as seen by the agent that accepted it. */
export interface FlowKey {
  readonly clientIp: string;
  readonly clientPort: number;
  readonly serviceIp: string;
  readonly servicePort: number;
}

const PROTOCOL_TCP = 6;

/** Scratch for one parsed address: 16 bytes, of which an IPv4 address uses the first 4. */
const SCRATCH = new Uint8Array(16);
/** The encoded key; at most 16 + 2 + 16 + 2 + 1 bytes. */
const KEY = new Uint8Array(37);
/** Views of `KEY` for each length an encoding can have, so hashing allocates no view per call. */
const KEY_VIEWS: ReadonlyMap<number, Uint8Array> = new Map(
  [4, 16, 13, 25, 37].map((length) => [length, KEY.subarray(0, length)]),
);

/**
 * The bytes of an IP address: 4 for IPv4, 16 for IPv6. Accepts `::` compression, an IPv4 tail
 * (`64:ff9b::1.2.3.4`) and a `%zone` suffix, which is dropped; an IPv4-mapped address gives the 4 IPv4
 * bytes. Throws a `TypeError` naming the value for anything else.
 */
export function ipBytes(ip: string): Uint8Array {
  const length = parseIpInto(ip, KEY, 0);
  return KEY.slice(0, length);
}

/** MurmurHash3 of the flow key's fixed encoding (see the top of this file) with `seed`. */
export function hashFlowKey(key: FlowKey, seed: number): number {
  let at = parseIpInto(key.clientIp, KEY, 0);
  at = writePort(key.clientPort, at);
  at += parseIpInto(key.serviceIp, KEY, at);
  at = writePort(key.servicePort, at);
  KEY[at++] = PROTOCOL_TCP;
  return hash32(keyView(at), seed);
}

/** MurmurHash3 of the client address's bytes alone, for client affinity: one client, one backend. */
export function hashClientIp(clientIp: string, seed: number): number {
  return hash32(keyView(parseIpInto(clientIp, KEY, 0)), seed);
}

/**
 * `hashFlowKey` of a flow whose addresses are bytes already (4 or 16, as a socket address holds them), so
 * nothing is formatted to text and parsed back.
 */
export function hashFlowKeyOfBytes(
  clientIp: Uint8Array,
  clientPort: number,
  serviceIp: Uint8Array,
  servicePort: number,
  seed: number,
): number {
  let at = copyIpInto(clientIp, 0);
  at = writePort(clientPort, at);
  at += copyIpInto(serviceIp, at);
  at = writePort(servicePort, at);
  KEY[at++] = PROTOCOL_TCP;
  return hash32(keyView(at), seed);
}

/** `hashClientIp` of an address's bytes. */
export function hashClientIpOfBytes(clientIp: Uint8Array, seed: number): number {
  return hash32(keyView(copyIpInto(clientIp, 0)), seed);
}

/** The table slot a hash falls in: `hash % size`, for a table of `size` slots. */
export function tableSlot(hash: number, size: number): number {
  return hash % size;
}

function keyView(length: number): Uint8Array {
  return KEY_VIEWS.get(length) ?? KEY.subarray(0, length);
}

function writePort(port: number, at: number): number {
  if (!Number.isInteger(port) || port < 0 || port > 0xffff) {
    throw new RangeError(`Cannot hash a flow with port ${port}: a port must be an integer from 0 to 65535`);
  }
  KEY[at] = port >>> 8;
  KEY[at + 1] = port & 0xff;
  return at + 2;
}

/** Parses `ip` into `out` at `at`; returns how many bytes it wrote (4 or 16) or throws a `TypeError`. */
function parseIpInto(ip: string, out: Uint8Array, at: number): number {
  let end = ip.indexOf("%");
  const hasZone = end >= 0;
  if (!hasZone) end = ip.length;
  const colon = ip.indexOf(":");
  if (colon < 0 || colon > end) {
    // No colon before the end: IPv4, which has no zone.
    if (!hasZone && parseIpv4(ip, 0, end, out, at)) return 4;
    throw invalidIp(ip);
  }
  if ((hasZone && end === ip.length - 1) || !parseIpv6(ip, end)) throw invalidIp(ip);
  if (isIpv4Mapped(SCRATCH)) {
    for (let i = 0; i < 4; i++) out[at + i] = SCRATCH[12 + i]!;
    return 4;
  }
  out.set(SCRATCH, at);
  return 16;
}

/** Copies IP bytes into `KEY` at `at` as `parseIpInto` would write them; returns how many (4 or 16). */
function copyIpInto(ip: Uint8Array, at: number): number {
  if (ip.length === 16 && isIpv4Mapped(ip)) {
    KEY.set(ip.subarray(12), at);
    return 4;
  }
  if (ip.length !== 4 && ip.length !== 16) {
    throw new TypeError(`Cannot hash ${ip.length} bytes as an IP address`);
  }
  KEY.set(ip, at);
  return ip.length;
}

function invalidIp(ip: string): TypeError {
  return new TypeError(
    `Cannot parse IP address "${ip}": expected IPv4 such as 10.0.0.1 or IPv6 such as fd00::1`,
  );
}

/** Dotted-quad IPv4 in `text[start, end)`: four decimal parts 0-255 without leading zeros. */
function parseIpv4(text: string, start: number, end: number, out: Uint8Array, at: number): boolean {
  let part = 0;
  let i = start;
  while (part < 4) {
    const first = i;
    let value = 0;
    while (i < end && i - first < 3) {
      const digit = text.charCodeAt(i) - 48;
      if (digit < 0 || digit > 9) break;
      value = value * 10 + digit;
      i++;
    }
    const digits = i - first;
    if (digits === 0 || value > 255 || (digits > 1 && text.charCodeAt(first) === 48)) return false;
    out[at + part] = value;
    part++;
    if (part < 4) {
      if (i >= end || text.charCodeAt(i) !== 46) return false; // "."
      i++;
    }
  }
  return i === end;
}

/** IPv6 in `text[0, end)` into `SCRATCH`. */
function parseIpv6(text: string, end: number): boolean {
  let groups = 0; // 16-bit groups written so far, at SCRATCH[2 * g]
  let gap = -1; // group index where "::" stands, if any
  let i = 0;
  if (text.charCodeAt(0) === 58) { // ":" must start "::"
    if (text.charCodeAt(1) !== 58) return false;
    gap = 0;
    i = 2;
    if (i === end) return expandGap(groups, gap);
  }
  for (;;) {
    if (groups === 8) return false;
    const first = i;
    let value = 0;
    while (i < end) {
      const digit = hexValue(text.charCodeAt(i));
      if (digit < 0) break;
      value = (value << 4) | digit;
      i++;
      if (i - first > 4) return false;
    }
    if (i < end && text.charCodeAt(i) === 46) { // ".": the last 32 bits are written as IPv4
      if (groups > 6 || !parseIpv4(text, first, end, SCRATCH, 2 * groups)) return false;
      groups += 2;
      break;
    }
    if (i === first) return false;
    SCRATCH[2 * groups] = value >>> 8;
    SCRATCH[2 * groups + 1] = value & 0xff;
    groups++;
    if (i === end) break;
    if (text.charCodeAt(i) !== 58) return false;
    i++;
    if (i < end && text.charCodeAt(i) === 58) {
      if (gap >= 0) return false;
      gap = groups;
      i++;
      if (i === end) break;
    } else if (i === end) {
      return false; // a single trailing ":"
    }
  }
  if (gap < 0) return groups === 8;
  return expandGap(groups, gap);
}

/** Moves the groups after the "::" to the end of `SCRATCH` and zeroes the gap; false if there is none. */
function expandGap(groups: number, gap: number): boolean {
  if (groups > 7) return false;
  const tail = 2 * (groups - gap);
  SCRATCH.copyWithin(16 - tail, 2 * gap, 2 * groups);
  SCRATCH.fill(0, 2 * gap, 16 - tail);
  return true;
}

function hexValue(code: number): number {
  if (code >= 48 && code <= 57) return code - 48; // 0-9
  if (code >= 97 && code <= 102) return code - 87; // a-f
  if (code >= 65 && code <= 70) return code - 55; // A-F
  return -1;
}

function isIpv4Mapped(bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) {
    if (bytes[i] !== 0) return false;
  }
  return bytes[10] === 0xff && bytes[11] === 0xff;
}
