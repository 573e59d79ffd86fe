/**
 * Handoff between agents. An agent that accepts a flow claimed by another live agent relays it to that
 * agent's mesh port, prefixed by a PROXY v2 header that carries the original 5-tuple and, in TLVs, the
 * service, the sender and an HMAC under the cluster token over all of them with a timestamp. The
 * claimant checks the header and serves the flow as its own; a handed-off flow is never handed on.
 */
import { TokenSigner } from "../cluster/auth.ts";
import { closeQuietly } from "../cluster/close_quietly.ts";
import { logger } from "../cluster/log.ts";
import {
  decodeProxyHeader,
  encodeProxyV2,
  type ProxyAddress,
  type ProxyHeader,
  ProxyProtocolError,
} from "../cluster/proxy_protocol.ts";

const log = logger("agent", "mesh");

export const MESH_DEFAULTS = {
  /** A mesh peer must send its whole header within this time. */
  headerTimeoutMs: 5_000,
  /** A header older or newer than this (clock skew included) is refused. */
  maxSkewMs: 60_000,
  /** At most this many refusals are logged per source address per minute. */
  refusalLogsPerMinute: 5,
} as const;

/** PROXY v2 TLV types in the custom range (0xE0-0xEF) that switchyard uses on the mesh. */
export const MESH_TLV = { service: 0xe0, sender: 0xe1, timestamp: 0xe2, signature: 0xe3 } as const;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** A flow as the claimant receives it: the original client and service endpoints, and bytes already read. */
export interface HandedOffFlow {
  readonly service: string;
  readonly sender: string;
  readonly client: ProxyAddress;
  readonly destination: ProxyAddress;
  /** Client bytes that arrived with the header. */
  readonly initial: Uint8Array;
}

function signedText(
  service: string,
  sender: string,
  timestamp: bigint,
  source: ProxyAddress,
  destination: ProxyAddress,
) {
  return encoder.encode(
    `switchyard-mesh/1\n${service}\n${sender}\n${timestamp}\n${source.ip}\n${source.port}\n${destination.ip}\n${destination.port}`,
  );
}

/** The header an accepting agent sends before relaying a flow to its claimant. */
export async function encodeMeshHeader(
  signer: TokenSigner,
  flow: { service: string; sender: string; client: ProxyAddress; destination: ProxyAddress },
  now = Date.now(),
): Promise<Uint8Array> {
  const timestamp = BigInt(now);
  const stamp = new Uint8Array(8);
  new DataView(stamp.buffer).setBigUint64(0, timestamp);
  const signature = await signer.sign(
    signedText(flow.service, flow.sender, timestamp, flow.client, flow.destination),
  );
  return encodeProxyV2(flow.client, flow.destination, {
    tlvs: [
      { type: MESH_TLV.service, value: encoder.encode(flow.service) },
      { type: MESH_TLV.sender, value: encoder.encode(flow.sender) },
      { type: MESH_TLV.timestamp, value: stamp },
      { type: MESH_TLV.signature, value: signature },
    ],
  });
}

/** A mesh header that is malformed, unsigned, stale or signed with another token. */
export class MeshAuthError extends Error {
  override readonly name = "MeshAuthError";
}

/** Checks a decoded header; returns the flow it describes or throws `MeshAuthError`. */
export async function verifyMeshHeader(
  signer: TokenSigner,
  header: ProxyHeader,
  now = Date.now(),
): Promise<Omit<HandedOffFlow, "initial">> {
  if (header.version !== 2 || header.command !== "proxy" || !header.source || !header.destination) {
    throw new MeshAuthError("Expected a PROXY v2 header with addresses");
  }
  const tlv = (type: number) => {
    const found = header.tlvs.filter((t) => t.type === type);
    if (found.length !== 1) {
      throw new MeshAuthError(`Expected one TLV 0x${type.toString(16)}, got ${found.length}`);
    }
    return (found[0] as { value: Uint8Array }).value;
  };
  let service: string;
  let sender: string;
  try {
    service = decoder.decode(tlv(MESH_TLV.service));
    sender = decoder.decode(tlv(MESH_TLV.sender));
  } catch (error) {
    if (error instanceof MeshAuthError) throw error;
    throw new MeshAuthError("Service or sender is not UTF-8");
  }
  const stamp = tlv(MESH_TLV.timestamp);
  if (stamp.length !== 8) throw new MeshAuthError(`Expected an 8-byte timestamp, got ${stamp.length} bytes`);
  const timestamp = new DataView(stamp.buffer, stamp.byteOffset, 8).getBigUint64(0);
  const skew = Math.abs(Number(timestamp) - now);
  if (skew > MESH_DEFAULTS.maxSkewMs) throw new MeshAuthError(`Header timestamp is ${skew} ms away from now`);
  const signature = tlv(MESH_TLV.signature);
  const ok = await signer.verify(
    signedText(service, sender, timestamp, header.source, header.destination),
    new Uint8Array(signature),
  );
  if (!ok) throw new MeshAuthError("Bad signature: the sender does not hold the cluster token");
  return { service, sender, client: header.source, destination: header.destination };
}

/** Reads and checks the mesh header at the start of `conn`, within the header timeout. */
export async function readMeshHeader(conn: Deno.Conn, signer: TokenSigner): Promise<HandedOffFlow> {
  const buffer = new Uint8Array(4096 + 64);
  let length = 0;
  const timer = setTimeout(() => {
    try {
      conn.close();
    } catch {
      // closed already
    }
  }, MESH_DEFAULTS.headerTimeoutMs);
  try {
    for (;;) {
      const n = await conn.read(buffer.subarray(length)).catch(() => null);
      if (n === null) {
        throw new MeshAuthError(`Connection ended after ${length} bytes, before a whole header`);
      }
      length += n;
      const decoded = decodeProxyHeader(buffer.subarray(0, length));
      if (decoded === null) {
        if (length === buffer.length) throw new MeshAuthError("Header is too long");
        continue;
      }
      const flow = await verifyMeshHeader(signer, decoded.header);
      return { ...flow, initial: buffer.slice(decoded.length, length) };
    }
  } catch (error) {
    if (error instanceof ProxyProtocolError) throw new MeshAuthError(error.message);
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/** Accepts handed-off flows on the mesh port and passes each one, checked, to `serve`. */
export class MeshServer {
  #listener: Deno.Listener;
  readonly #signer: TokenSigner;
  readonly #serve: (conn: Deno.Conn, flow: HandedOffFlow) => Promise<void>;
  readonly #handlers = new Set<Promise<void>>();
  readonly #refusals = new Map<string, { windowStart: number; count: number }>();
  readonly #accepting = new Set<Promise<void>>();
  refused = 0;

  constructor(
    listener: Deno.Listener,
    signer: TokenSigner,
    serve: (conn: Deno.Conn, flow: HandedOffFlow) => Promise<void>,
  ) {
    this.#listener = listener;
    this.#signer = signer;
    this.#serve = serve;
    this.#accept(listener);
  }

  get addr(): Deno.NetAddr {
    return this.#listener.addr as Deno.NetAddr;
  }

  /**
   * Accepts on a new listener from now on (to switch between plain TCP and TLS on the same port): the old
   * one is closed and its port released first; flows already taken carry on.
   */
  async replaceListener(open: () => Deno.Listener): Promise<void> {
    closeQuietly(this.#listener);
    await Promise.allSettled([...this.#accepting]);
    this.#listener = open();
    this.#accept(this.#listener);
  }

  async close(): Promise<void> {
    closeQuietly(this.#listener);
    await Promise.allSettled([...this.#accepting]);
    await Promise.allSettled([...this.#handlers]);
  }

  #accept(listener: Deno.Listener): void {
    const loop = this.#acceptLoop(listener).finally(() => this.#accepting.delete(loop));
    this.#accepting.add(loop);
  }

  async #acceptLoop(listener: Deno.Listener): Promise<void> {
    try {
      for await (const conn of listener) {
        const handler = this.#handle(conn).finally(() => this.#handlers.delete(handler));
        this.#handlers.add(handler);
      }
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) log.error("Mesh listener failed: {error}", { error });
    }
  }

  async #handle(conn: Deno.Conn): Promise<void> {
    let flow: HandedOffFlow;
    try {
      flow = await readMeshHeader(conn, this.#signer);
    } catch (error) {
      this.refused++;
      this.#logRefusal(conn.remoteAddr as Deno.NetAddr, error);
      closeQuietly(conn);
      return;
    }
    await this.#serve(conn, flow);
  }

  #logRefusal(remote: Deno.NetAddr, error: unknown): void {
    const now = performance.now();
    const entry = this.#refusals.get(remote.hostname);
    if (!entry || now - entry.windowStart > 60_000) {
      if (this.#refusals.size > 10_000) this.#refusals.clear();
      this.#refusals.set(remote.hostname, { windowStart: now, count: 1 });
    } else if (++entry.count > MESH_DEFAULTS.refusalLogsPerMinute) {
      return;
    }
    log.warn("Refused mesh connection from {remote}: {reason}", {
      remote: `${remote.hostname}:${remote.port}`,
      reason: error instanceof Error ? error.message : String(error),
    });
  }
}
