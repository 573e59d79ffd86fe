/**
 * `host:port` addresses as written in the config, on the command line and on the wire. IPv6 hosts are
 * written in brackets (`[::1]:8080`) and carried without them.
 */
import { ipBytes } from "./flow_key.ts";

/** A host (name, IPv4 or IPv6 without brackets) and a TCP port. */
export interface HostPort {
  readonly host: string;
  readonly port: number;
}

/**
 * Parses `host:port`, `[v6]:port`; throws a `RangeError` that names the value and what is wrong. With
 * `anyPort`, port 0 ("any free port", for addresses switchyard binds) is allowed too.
 */
export function parseHostPort(text: string, options: { anyPort?: boolean } = {}): HostPort {
  const fail = (why: string): never => {
    throw new RangeError(`Cannot parse address "${text}": ${why}`);
  };
  let host: string;
  let portText: string;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0) fail("missing ] after the IPv6 host");
    host = text.slice(1, close);
    if (text[close + 1] !== ":") fail("expected :port after the IPv6 host");
    portText = text.slice(close + 2);
    if (!host.includes(":")) fail("brackets are only for IPv6 hosts");
  } else {
    const colon = text.lastIndexOf(":");
    if (colon < 0) fail("expected host:port");
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(":")) fail("write IPv6 hosts in brackets, as [::1]:8080");
  }
  if (host === "") fail("the host is empty");
  if (!/^[A-Za-z0-9.\-_:%]+$/.test(host)) fail(`host "${host}" has characters a host name cannot have`);
  // Digits and dots alone are no host name (a top-level label is never all digits): an IPv4 address, or
  // a mistake such as 10.0.0.300.
  if (/^[\d.]+$/.test(host) && !isIpv4(host)) {
    fail(`host "${host}" is not an IPv4 address: four numbers 0-255, without leading zeros`);
  }
  if (host.includes(":")) {
    try {
      ipBytes(host);
    } catch {
      fail(`host "${host}" is not an IPv6 address`);
    }
  }
  if (!/^\d{1,5}$/.test(portText)) fail("port must be 1-65535");
  const port = Number(portText);
  if (port > 65535 || (port < 1 && !(options.anyPort && port === 0))) {
    fail(options.anyPort ? "port must be 0-65535" : "port must be 1-65535");
  }
  return { host, port };
}

/** Whether `text` is a dotted-quad IPv4 address: four numbers 0-255, without leading zeros. */
function isIpv4(text: string): boolean {
  const parts = text.split(".");
  return parts.length === 4 && parts.every((part) => /^(0|[1-9]\d{0,2})$/.test(part) && Number(part) <= 255);
}

/** Formats an address back into `host:port`, with brackets around IPv6 hosts. */
export function formatHostPort(address: HostPort): string {
  return address.host.includes(":") ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}
