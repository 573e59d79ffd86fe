/**
 * The PROXY protocol, versions 1 and 2 (HAProxy's doc/proxy-protocol.txt): the header a proxy writes
 * before a connection's first byte so that the server behind it learns the client's address. Pure code, no
 * I/O: the agent encodes a header for a backend whose service has `proxy_protocol: v1 | v2`, and whatever
 * accepts such headers decodes them here.
 *
 * Version 1 is one ASCII line, at most 107 bytes with its CRLF:
 *
 *   PROXY TCP4 192.0.2.10 198.51.100.1 40000 443\r\n      (or TCP6, or "PROXY UNKNOWN…\r\n")
 *
 * Version 2 is binary:
 *
 *   signature (12) | version and command (1) | family and protocol (1) | length (2, big-endian) |
 *   addresses: source ip, destination ip, source port, destination port (12 for IPv4, 36 for IPv6) |
 *   TLVs: type (1) | length (2) | value, up to the end of `length`
 *
 * Invariants:
 * - When the two addresses are of different families, the IPv4 one is sent as `::ffff:a.b.c.d` and the
 *   header is TCP6 / AF_INET6. Two IPv4 or IPv4-mapped addresses make a TCP4 / AF_INET header.
 * - The decoder accepts only what the specification allows a sender to emit, and of that only TCP and
 *   UNSPEC: anything else throws a `ProxyProtocolError` that names the offending value. (The specification
 *   lets a receiver treat UDP and UNIX headers as UNSPEC; we refuse them, as a TCP proxy never sends them.)
 *   It returns null only while the bytes so far can still become a valid header, and it rejects a prefix
 *   as soon as it can no longer be one.
 * - The decoder reads no byte past the end of its input nor past the header it returns, so what follows
 *   the header (the client's first bytes) is untouched.
 * - A v2 CRC32C TLV (type 0x03) is checked when decoding and filled in when encoding.
 */

import { ipBytes } from "./flow_key.ts";

/** One end of a TCP connection; `ip` is IPv4 or IPv6 text, without brackets. */
export interface ProxyAddress {
  readonly ip: string;
  readonly port: number;
}

/** A v2 type-length-value extension; `value` is at most 65535 bytes. */
export interface ProxyTlv {
  readonly type: number;
  readonly value: Uint8Array;
}

/** A decoded PROXY header. */
export interface ProxyHeader {
  readonly version: 1 | 2;
  /** `local`: use the connection's own endpoints (a v2 LOCAL command, or a v1 UNKNOWN line). */
  readonly command: "proxy" | "local";
  /** The client; null for LOCAL, v1 UNKNOWN and v2 AF_UNSPEC. */
  readonly source: ProxyAddress | null;
  /** The address the client connected to; null exactly when `source` is. */
  readonly destination: ProxyAddress | null;
  /** The v2 TLVs in the order sent; empty for v1. */
  readonly tlvs: readonly ProxyTlv[];
}

export const PROXY_PROTOCOL_DEFAULTS = {
  /** The longest header `decodeProxyHeader` accepts: a v2 header with 4 KiB of addresses and TLVs. */
  maxBytes: 4096 + 16,
} as const;

/** A malformed PROXY header: the connection that sent it must be closed. */
export class ProxyProtocolError extends Error {
  override readonly name = "ProxyProtocolError";
}

/** The TLV type whose value is the CRC32C of the whole header, computed with that value zeroed. */
export const PP2_TYPE_CRC32C = 0x03;

const V1_MAX_LENGTH = 107;
const V1_PREFIX = "PROXY ";
const V1_PROTOCOLS = ["TCP4", "TCP6", "UNKNOWN"] as const;
/** The longest IPv6 text a v1 line can carry: eight groups, or six and an IPv4 tail (45 characters). */
const V1_MAX_ADDRESS_LENGTH = 45;

const V2_SIGNATURE = Uint8Array.of(0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a);
const V2_FIXED_LENGTH = 16;
const V2_PROXY_COMMAND = 0x21; // version 2, PROXY
const V2_FAMILY_TCP4 = 0x11;
const V2_FAMILY_TCP6 = 0x21;
/** The family and protocol bytes accepted, with the address block each one needs. */
const V2_FAMILIES: ReadonlyMap<number, { name: string; ipLength: number; addressLength: number }> = new Map([
  [0x00, { name: "UNSPEC", ipLength: 0, addressLength: 0 }],
  [V2_FAMILY_TCP4, { name: "TCP over IPv4", ipLength: 4, addressLength: 12 }],
  [V2_FAMILY_TCP6, { name: "TCP over IPv6", ipLength: 16, addressLength: 36 }],
]);
const TLV_HEADER_LENGTH = 3;
const MAX_UINT16 = 0xffff;

const CR = 0x0d;
const LF = 0x0a;

// ---------------------------------------------------------------------------------------------- encoding

/**
 * A v1 line `PROXY TCP4|TCP6 src dst sport dport\r\n`, addresses in canonical form. Throws a `TypeError`
 * for an address that is not IP text and a `RangeError` for a port outside 0-65535.
 */
export function encodeProxyV1(source: ProxyAddress, destination: ProxyAddress): Uint8Array {
  const ends = endpoints(source, destination);
  const line = `PROXY TCP${ends.family} ${formatIp(ends.source)} ${formatIp(ends.destination)} ` +
    `${source.port} ${destination.port}\r\n`;
  return new TextEncoder().encode(line);
}

/**
 * A v2 PROXY header (TCP over IPv4 or IPv6) followed by `options.tlvs`. A CRC32C TLV (type 0x03, a value
 * of 4 bytes whatever they hold) gets the header's checksum. Throws a `TypeError` for an address that is
 * not IP text and a `RangeError` for a port, TLV type or length out of range.
 */
export function encodeProxyV2(
  source: ProxyAddress,
  destination: ProxyAddress,
  options: { tlvs?: readonly ProxyTlv[] } = {},
): Uint8Array {
  const { tlvs = [] } = options;
  const ends = endpoints(source, destination);
  const addressLength = ends.family === 4 ? 12 : 36;
  let length = addressLength;
  let crcIndex = -1;
  for (const [index, tlv] of tlvs.entries()) {
    if (!Number.isInteger(tlv.type) || tlv.type < 0 || tlv.type > 0xff) {
      throw new RangeError(
        `Cannot encode PROXY v2 TLV ${index}: type ${tlv.type} is not an integer from 0 to 255`,
      );
    }
    if (tlv.value.length > MAX_UINT16) {
      throw new RangeError(
        `Cannot encode PROXY v2 TLV ${index}: its value of ${tlv.value.length} bytes is longer than 65535`,
      );
    }
    if (tlv.type === PP2_TYPE_CRC32C) {
      if (tlv.value.length !== 4) {
        throw new RangeError(
          `Cannot encode PROXY v2 TLV ${index}: a CRC32C value is 4 bytes, not ${tlv.value.length}`,
        );
      }
      if (crcIndex >= 0) {
        throw new RangeError(
          `Cannot encode PROXY v2 TLV ${index}: a header has one CRC32C TLV at most, and TLV ${crcIndex} is one`,
        );
      }
      crcIndex = index;
    }
    length += TLV_HEADER_LENGTH + tlv.value.length;
  }
  if (length > MAX_UINT16) {
    throw new RangeError(
      `Cannot encode PROXY v2 header: its ${length} bytes of addresses and TLVs exceed 65535`,
    );
  }

  const out = new Uint8Array(V2_FIXED_LENGTH + length);
  out.set(V2_SIGNATURE, 0);
  out[12] = V2_PROXY_COMMAND;
  out[13] = ends.family === 4 ? V2_FAMILY_TCP4 : V2_FAMILY_TCP6;
  writeUint16(out, 14, length);
  let at = V2_FIXED_LENGTH;
  out.set(ends.source, at);
  out.set(ends.destination, at + ends.source.length);
  at += 2 * ends.source.length;
  writeUint16(out, at, source.port);
  writeUint16(out, at + 2, destination.port);
  at += 4;
  let crcAt = -1;
  for (const tlv of tlvs) {
    out[at] = tlv.type;
    writeUint16(out, at + 1, tlv.value.length);
    if (tlv.type === PP2_TYPE_CRC32C) crcAt = at + TLV_HEADER_LENGTH; // left zero until the sum is known
    else out.set(tlv.value, at + TLV_HEADER_LENGTH);
    at += TLV_HEADER_LENGTH + tlv.value.length;
  }
  if (crcAt >= 0) writeUint32(out, crcAt, crc32c(out, crcAt));
  return out;
}

/** The header for a service's `proxy_protocol` setting (`none` sends no header, so it has no encoder). */
export function encodeProxyHeader(
  version: "v1" | "v2",
  source: ProxyAddress,
  destination: ProxyAddress,
): Uint8Array {
  return version === "v1" ? encodeProxyV1(source, destination) : encodeProxyV2(source, destination);
}

interface Endpoints {
  readonly family: 4 | 6;
  readonly source: Uint8Array;
  readonly destination: Uint8Array;
}

/** Both addresses as bytes of one family, IPv4 mapped into IPv6 when the other side is IPv6. */
function endpoints(source: ProxyAddress, destination: ProxyAddress): Endpoints {
  const sourceBytes = encodableIp("source", source);
  const destinationBytes = encodableIp("destination", destination);
  if (sourceBytes.length === destinationBytes.length) {
    return { family: sourceBytes.length === 4 ? 4 : 6, source: sourceBytes, destination: destinationBytes };
  }
  return { family: 6, source: asIpv6(sourceBytes), destination: asIpv6(destinationBytes) };
}

function encodableIp(side: "source" | "destination", address: ProxyAddress): Uint8Array {
  const { ip, port } = address;
  if (!Number.isInteger(port) || port < 0 || port > MAX_UINT16) {
    throw new RangeError(
      `Cannot encode PROXY header: ${side} port ${port} is not an integer from 0 to 65535`,
    );
  }
  try {
    return ipBytes(ip);
  } catch (cause) {
    const message = `Cannot encode PROXY header: ${side} address "${ip}" is not an IPv4 or IPv6 address`;
    throw new TypeError(message, { cause });
  }
}

function asIpv6(bytes: Uint8Array): Uint8Array {
  if (bytes.length === 16) return bytes;
  const mapped = new Uint8Array(16);
  mapped[10] = 0xff;
  mapped[11] = 0xff;
  mapped.set(bytes, 12);
  return mapped;
}

function writeUint16(out: Uint8Array, at: number, value: number): void {
  out[at] = value >>> 8;
  out[at + 1] = value & 0xff;
}

function writeUint32(out: Uint8Array, at: number, value: number): void {
  writeUint16(out, at, value >>> 16);
  writeUint16(out, at + 2, value & 0xffff);
}

/**
 * IP bytes as text: dotted quad for 4 bytes; for 16, RFC 5952's canonical form (lower case, no leading
 * zeros, the longest run of two or more zero groups — the first of equals — as `::`), and
 * `::ffff:a.b.c.d` for an IPv4-mapped address.
 */
export function formatIp(bytes: Uint8Array): string {
  if (bytes.length === 4) return bytes.join(".");
  if (isIpv4Mapped(bytes)) return `::ffff:${bytes.subarray(12).join(".")}`;
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i]! << 8) | bytes[i + 1]!);
  let bestStart = -1;
  let bestLength = 1; // a single zero group is written as 0, not ::
  for (let start = 0; start < 8;) {
    let end = start;
    while (end < 8 && groups[end] === 0) end++;
    if (end - start > bestLength) {
      bestStart = start;
      bestLength = end - start;
    }
    start = end + 1;
  }
  const hex = (part: number[]) => part.map((group) => group.toString(16)).join(":");
  if (bestStart < 0) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLength))}`;
}

function isIpv4Mapped(bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) {
    if (bytes[i] !== 0) return false;
  }
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

// ---------------------------------------------------------------------------------------------- decoding

/**
 * Decodes a v1 or v2 header at the start of `bytes`. Returns the header and its length in bytes (what
 * follows is the connection's data), or null when more bytes are needed. Throws a `ProxyProtocolError`
 * for anything malformed, or longer than `options.maxBytes` (default `PROXY_PROTOCOL_DEFAULTS.maxBytes`;
 * a v1 line is also never longer than 107 bytes).
 */
export function decodeProxyHeader(
  bytes: Uint8Array,
  options: { maxBytes?: number } = {},
): { header: ProxyHeader; length: number } | null {
  const { maxBytes = PROXY_PROTOCOL_DEFAULTS.maxBytes } = options;
  if (!Number.isInteger(maxBytes) || maxBytes < V2_FIXED_LENGTH) {
    throw new RangeError(
      `Cannot decode PROXY header with maxBytes ${maxBytes}: it must be an integer of at least 16`,
    );
  }
  if (bytes.length === 0) return null;
  if (bytes[0] === V1_PREFIX.charCodeAt(0)) return decodeV1(bytes, Math.min(V1_MAX_LENGTH, maxBytes));
  if (bytes[0] === V2_SIGNATURE[0]) return decodeV2(bytes, maxBytes);
  const found = hexBytes(bytes, 8);
  throw new ProxyProtocolError(
    `Cannot decode PROXY header: expected "PROXY " (v1) or the v2 signature, found ${found}`,
  );
}

/** Throws a `ProxyProtocolError` saying `why`. */
type Fail = (why: string) => never;

function decodeV1(bytes: Uint8Array, limit: number): { header: ProxyHeader; length: number } | null {
  const fail: Fail = (why) => {
    throw new ProxyProtocolError(`Cannot decode PROXY v1 header: ${why}`);
  };
  const tooLong = () => fail(`no CRLF within the first ${limit} bytes`);
  // Find the CRLF, checking on the way that the line is printable ASCII.
  let text = "";
  const available = Math.min(bytes.length, limit);
  for (let i = 0; i < available; i++) {
    const byte = bytes[i]!;
    if (byte === CR) {
      if (i + 1 === limit) tooLong();
      if (i + 1 === bytes.length) break; // the LF has not arrived yet
      if (bytes[i + 1] !== LF) {
        fail(`CR at byte ${i} is followed by ${hex(bytes[i + 1]!)} instead of LF`);
      }
      return { header: parseV1Line(text, true, fail)!, length: i + 2 };
    }
    if (byte === LF) fail(`LF at byte ${i} is not preceded by CR`);
    if (byte < 0x20 || byte > 0x7e) {
      fail(`byte ${i} is ${hex(byte)}, which is not printable ASCII`);
    }
    text += String.fromCharCode(byte);
  }
  if (bytes.length >= limit) tooLong();
  parseV1Line(text, false, fail);
  return null;
}

const V1_FIELDS = ["protocol", "source address", "destination address", "source port", "destination port"];

/**
 * Checks a v1 line (without its CRLF) and returns its header. With `complete` false, `text` is what has
 * arrived so far: its fields are checked (the last one only as far as it goes) and null is returned.
 */
function parseV1Line(text: string, complete: boolean, fail: Fail): ProxyHeader | null {
  const prefix = text.slice(0, V1_PREFIX.length);
  if (!V1_PREFIX.startsWith(prefix) || (complete && prefix !== V1_PREFIX)) {
    fail(`the line must start with "PROXY ", found ${JSON.stringify(text.slice(0, 16))}`);
  }
  if (prefix.length < V1_PREFIX.length) return null;
  const fields = text.slice(V1_PREFIX.length).split(" ");
  const protocol = fields[0]!;
  if (fields.length === 1 && !complete) {
    if (!V1_PROTOCOLS.some((known) => known.startsWith(protocol))) badProtocol(protocol, fail);
    return null;
  }
  if (protocol === "UNKNOWN") {
    // The sender may leave out the rest of the line, and the receiver must ignore it.
    return complete ? { version: 1, command: "local", source: null, destination: null, tlvs: [] } : null;
  }
  if (protocol !== "TCP4" && protocol !== "TCP6") badProtocol(protocol, fail);
  const family = protocol === "TCP4" ? 4 : 6;
  // Every field followed by a space is whole; without the CRLF, the last one may still grow.
  const tooMany = fields.length > V1_FIELDS.length;
  const whole = tooMany ? V1_FIELDS.length : complete ? fields.length : fields.length - 1;
  const ips: Uint8Array[] = [];
  const ports: number[] = [];
  for (let i = 1; i < whole; i++) {
    if (i <= 2) ips.push(v1Address(V1_FIELDS[i]!, fields[i]!, family, fail));
    else ports.push(v1Port(V1_FIELDS[i]!, fields[i]!, fail));
  }
  if (tooMany) {
    const extra = " " + fields.slice(V1_FIELDS.length).join(" ");
    fail(`unexpected ${JSON.stringify(extra)} after the destination port`);
  }
  if (complete && fields.length < V1_FIELDS.length) {
    fail(`the line ${JSON.stringify(text)} ends after the ${V1_FIELDS[fields.length - 1]}`);
  }
  if (!complete) {
    const last = fields.length - 1;
    if (last <= 2) v1AddressStart(V1_FIELDS[last]!, fields[last]!, family, fail);
    else v1PortStart(V1_FIELDS[last]!, fields[last]!, fail);
    return null;
  }
  return {
    version: 1,
    command: "proxy",
    source: { ip: formatIp(ips[0]!), port: ports[0]! },
    destination: { ip: formatIp(ips[1]!), port: ports[1]! },
    tlvs: [],
  };
}

function badProtocol(protocol: string, fail: Fail): never {
  return fail(`protocol ${JSON.stringify(protocol)} is not TCP4, TCP6 or UNKNOWN`);
}

/**
 * The bytes of a v1 address of `family`, 4 or 16: an IPv4 dotted quad without leading zeros, or IPv6 text
 * (an IPv4 address in it is mapped, as in `::ffff:192.0.2.1`).
 */
function v1Address(name: string, text: string, family: 4 | 6, fail: Fail): Uint8Array {
  if (text === "") fail(`the ${name} is empty`);
  let bytes: Uint8Array | undefined;
  // ipBytes also takes a %zone, which a PROXY line cannot carry.
  if (/^[0-9A-Fa-f:.]+$/.test(text)) {
    try {
      bytes = ipBytes(text);
    } catch {
      // reported just below
    }
  }
  if (bytes === undefined) fail(`the ${name} ${JSON.stringify(text)} is not a valid IPv${family} address`);
  const isIpv6 = text.includes(":");
  if ((family === 6) !== isIpv6) {
    fail(`a TCP${family} line cannot carry the IPv${isIpv6 ? 6 : 4} ${name} ${JSON.stringify(text)}`);
  }
  return family === 6 ? asIpv6(bytes) : bytes;
}

/** Fails unless `text` can still grow into an address. */
function v1AddressStart(name: string, text: string, family: 4 | 6, fail: Fail): void {
  if (!/^[0-9A-Fa-f:.]*$/.test(text) || text.length > V1_MAX_ADDRESS_LENGTH) {
    fail(`the ${name} starting ${JSON.stringify(text)} is not a valid IPv${family} address`);
  }
}

/** A v1 port: 0-65535 in decimal without leading zeros. */
function v1Port(name: string, text: string, fail: Fail): number {
  if (text === "") fail(`the ${name} is empty`);
  v1PortStart(name, text, fail);
  return Number(text);
}

/** Fails unless `text` can still grow into a port. */
function v1PortStart(name: string, text: string, fail: Fail): void {
  if (!/^[0-9]*$/.test(text)) fail(`the ${name} ${JSON.stringify(text)} is not a decimal number`);
  if (text.length > 1 && text.startsWith("0")) fail(`the ${name} ${JSON.stringify(text)} has a leading zero`);
  if (Number(text) > MAX_UINT16) fail(`the ${name} ${text} is above 65535`);
}

function decodeV2(bytes: Uint8Array, maxBytes: number): { header: ProxyHeader; length: number } | null {
  const fail: Fail = (why) => {
    throw new ProxyProtocolError(`Cannot decode PROXY v2 header: ${why}`);
  };
  const signatureBytes = Math.min(bytes.length, V2_SIGNATURE.length);
  for (let i = 0; i < signatureBytes; i++) {
    if (bytes[i] !== V2_SIGNATURE[i]) {
      const expected = hexBytes(V2_SIGNATURE, i + 1);
      fail(`its signature begins ${hexBytes(bytes, i + 1)} instead of ${expected}`);
    }
  }
  if (bytes.length <= 12) return null;
  const versionCommand = bytes[12]!;
  const version = versionCommand >>> 4;
  const command = versionCommand & 0x0f;
  const inByte = `in version and command byte ${hex(versionCommand)}`;
  if (version !== 2) fail(`version ${version} ${inByte} is not supported, only 2`);
  if (command > 1) fail(`command ${command} ${inByte} is neither LOCAL (0) nor PROXY (1)`);
  if (bytes.length <= 13) return null;
  const familyByte = bytes[13]!;
  const family = V2_FAMILIES.get(familyByte);
  if (family === undefined) {
    fail(
      `family and protocol byte ${hex(familyByte)} (${describeFamily(familyByte)}) is not supported: ` +
        `expected 0x00 (UNSPEC), 0x11 (TCP over IPv4) or 0x21 (TCP over IPv6)`,
    );
  }
  if (bytes.length < V2_FIXED_LENGTH) return null;
  const length = readUint16(bytes, 14);
  const total = V2_FIXED_LENGTH + length;
  if (total > maxBytes) fail(`its length of ${total} bytes is above the limit of ${maxBytes}`);
  if (length < family.addressLength) {
    fail(
      `its length ${length} is too short for the ${family.addressLength}-byte ${family.name} address block`,
    );
  }
  if (bytes.length < total) return null;

  // LOCAL: "discard the protocol block including the family"; UNSPEC: "ignore address information".
  let source: ProxyAddress | null = null;
  let destination: ProxyAddress | null = null;
  if (command === 1 && family.ipLength > 0) {
    const { ipLength } = family;
    const portsAt = V2_FIXED_LENGTH + 2 * ipLength;
    source = { ip: formatIp(bytes.slice(16, 16 + ipLength)), port: readUint16(bytes, portsAt) };
    destination = { ip: formatIp(bytes.slice(16 + ipLength, portsAt)), port: readUint16(bytes, portsAt + 2) };
  }

  const tlvs: ProxyTlv[] = [];
  let crcAt = -1;
  for (let at = V2_FIXED_LENGTH + family.addressLength; at < total;) {
    const left = total - at;
    if (left < TLV_HEADER_LENGTH) {
      fail(
        `the TLV at byte ${at} is cut off: ${bytesLeft(left)} left of the header, and a TLV takes 3 or more`,
      );
    }
    const type = bytes[at]!;
    const valueLength = readUint16(bytes, at + 1);
    const valueAt = at + TLV_HEADER_LENGTH;
    if (valueLength > left - TLV_HEADER_LENGTH) {
      const tlv = `the TLV of type ${hex(type)} at byte ${at}`;
      fail(
        `${tlv} has length ${valueLength}, but only ${
          bytesLeft(left - TLV_HEADER_LENGTH)
        } left of the header`,
      );
    }
    if (type === PP2_TYPE_CRC32C) {
      if (valueLength !== 4) fail(`the CRC32C TLV at byte ${at} has length ${valueLength} instead of 4`);
      if (crcAt >= 0) fail(`the header has a second CRC32C TLV, at byte ${at}`);
      crcAt = valueAt;
    }
    tlvs.push({ type, value: bytes.slice(valueAt, valueAt + valueLength) });
    at = valueAt + valueLength;
  }
  if (crcAt >= 0) {
    const sent = readUint32(bytes, crcAt);
    const computed = crc32c(bytes.subarray(0, total), crcAt);
    if (sent !== computed) {
      fail(`its CRC32C TLV holds ${hex(sent, 8)} but the header's checksum is ${hex(computed, 8)}`);
    }
  }
  const header: ProxyHeader = {
    version: 2,
    command: command === 1 ? "proxy" : "local",
    source,
    destination,
    tlvs,
  };
  return { header, length: total };
}

function readUint16(bytes: Uint8Array, at: number): number {
  return (bytes[at]! << 8) | bytes[at + 1]!;
}

function readUint32(bytes: Uint8Array, at: number): number {
  return ((readUint16(bytes, at) << 16) | readUint16(bytes, at + 2)) >>> 0;
}

function bytesLeft(count: number): string {
  return count === 1 ? "1 byte is" : `${count} bytes are`;
}

function hex(value: number, digits = 2): string {
  return `0x${value.toString(16).padStart(digits, "0")}`;
}

/** The first `count` of `bytes` (fewer if it is shorter) in hex for an error message: `0d 0a 47`. */
function hexBytes(bytes: Uint8Array, count: number): string {
  const parts: string[] = [];
  for (let i = 0; i < Math.min(count, bytes.length); i++) parts.push(bytes[i]!.toString(16).padStart(2, "0"));
  return parts.join(" ");
}

/** A v2 family and protocol byte in words, such as "DGRAM over AF_INET". */
function describeFamily(byte: number): string {
  const families = ["AF_UNSPEC", "AF_INET", "AF_INET6", "AF_UNIX"];
  const protocols = ["UNSPEC", "STREAM", "DGRAM"];
  const family = families[byte >>> 4] ?? `unknown family ${byte >>> 4}`;
  const protocol = protocols[byte & 0x0f] ?? `unknown protocol ${byte & 0x0f}`;
  return `${protocol} over ${family}`;
}

// ---------------------------------------------------------------------------------------------- CRC32C

/** The reflected Castagnoli polynomial (RFC 4960 appendix B). */
const CRC32C_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC32C of `bytes` read as if the 4 bytes at `zeroAt` were zero (a PROXY header's own checksum field). */
function crc32c(bytes: Uint8Array, zeroAt: number): number {
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) {
    const byte = i >= zeroAt && i < zeroAt + 4 ? 0 : bytes[i]!;
    crc = CRC32C_TABLE[(crc ^ byte) & 0xff]! ^ (crc >>> 8);
  }
  return (crc ^ 0xffffffff) >>> 0;
}
