/**
 * Socket addresses as the kernel lays them out (`struct sockaddr_in` and `sockaddr_in6`), which the relay
 * passes to libc and places flows by, and as text (`SocketAddress`) for the agent and PROXY headers.
 */
import type { HostPort } from "../../cluster/address.ts";
import { ipBytes } from "../../cluster/flow_key.ts";
import { formatIp } from "../../cluster/proxy_protocol.ts";
import type { SocketAddress } from "../data_plane.ts";
import { AF_INET, AF_INET6 } from "./libc.ts";

/** Bytes enough for either layout. */
export const SOCKADDR_BYTES = 28;

/**
 * `struct sockaddr_in` or `sockaddr_in6` for an IP literal and port (an IPv4-mapped IPv6 address gives
 * `sockaddr_in`, as `ipBytes` does). Throws a `TypeError` for anything but an IP literal.
 */
export function encodeAddress(address: HostPort): Uint8Array {
  const ip = ipBytes(address.host);
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

/** Whether an address (as `encodeAddress` lays it out) is IPv6. */
export function isV6(bytes: Uint8Array): boolean {
  return bytes[0] === AF_INET6;
}

/** The IP bytes of a `sockaddr_in` (4) or `sockaddr_in6` (16), as a view of it. */
export function ipOfAddress(bytes: Uint8Array): Uint8Array {
  return bytes[0] === AF_INET ? bytes.subarray(4, 8) : bytes.subarray(8, 24);
}

/** The port of a `sockaddr_in` or `sockaddr_in6`. */
export function portOfAddress(bytes: Uint8Array): number {
  return (bytes[2]! << 8) | bytes[3]!;
}

/** Whether a socket address is 0.0.0.0 or ::, any port. */
export function isWildcard(bytes: Uint8Array): boolean {
  return ipOfAddress(bytes).every((byte) => byte === 0);
}
