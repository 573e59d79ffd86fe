/**
 * The cluster protocol spoken between the manager and its agents on the cluster port: length-prefixed
 * JSON frames (4-byte big-endian length, then UTF-8 JSON), versioned, bounded in size, and every message
 * validated before it is acted on. A peer that sends anything else is refused and disconnected.
 *
 * Handshake: agent `hello` (its nonce) → manager `challenge` (its nonce and its proof) → agent `auth`
 * (its proof) → manager `welcome` and `state`. Proofs are HMAC-SHA256 of both nonces under the cluster
 * token, so the token itself never crosses the wire and each side proves it to the other. With several
 * managers, one that does not lead answers a proven agent with `redirect` (the leader's cluster address, or
 * none known) in place of `welcome`, and sends it to its sessions when it stops leading.
 *
 * After the first `state`, the manager sends each change as a `delta` against the version the agent has
 * (the slots each table moved, the backends whose weight or state changed), or as a whole `state` when
 * that is what changed (config, agents) or the agent's version is not the delta's base. An agent that
 * cannot apply a delta to the version it has sends `resync`, and the manager sends the whole `state`.
 */
import { z } from "zod";
import {
  DECIDE_TAG,
  DecisionFrameError,
  DECISIONS_TAG,
  decodeDecide,
  decodeDecisions,
} from "./decision_frames.ts";
import { LANES } from "./lanes.ts";

/**
 * 2: decisions asked and answered in batches (`decide` with `requests`, `decisions`).
 * 3: `redirect`, from a manager that does not lead; changes sent as `delta` against the agent's version,
 * and `resync` to ask for the whole state.
 * 4: decisions made ahead (`ahead`, and the agent's `used`); `decide` and `decisions` in their compact
 * form (`decision_frames.ts`). A manager sends neither to an agent of version 3.
 */
export const PROTOCOL_VERSION = 4;
/** The oldest version a manager takes: an agent of an older one is refused (and serves its last state). */
export const MIN_PROTOCOL_VERSION = 3;
/** No frame may be larger than this; a peer announcing more is cut off. */
export const MAX_FRAME_BYTES = 16 * 1024 * 1024;

const base64 = z.string().regex(/^[A-Za-z0-9+/]*={0,2}$/, "Expected base64");
const id = z.string().min(1).max(128);
const counter = z.number().int().nonnegative();
const lane = z.enum(LANES);

export const BackendSpecSchema = z.object({
  id: z.string().min(1).max(300),
  host: z.string().min(1).max(255),
  port: z.number().int().min(1).max(65535),
  weight: z.number().nonnegative(),
  state: z.enum(["up", "draining", "down"]),
});
export type BackendSpec = z.infer<typeof BackendSpecSchema>;

export const ServiceSpecSchema = z.object({
  name: id,
  listen: z.object({ host: z.string().min(1), port: z.number().int().min(0).max(65535) }),
  decide: z.enum(["manager", "agent"]),
  decisionTimeoutMs: counter,
  /** `decide_ahead`: queues of decisions made ahead are sent to the claimant; 0: it asks per connection. */
  decideAheadMs: counter.default(0),
  handoff: z.enum(["claimant", "local"]),
  affinity: z.object({ key: z.enum(["none", "client_ip"]), ttlMs: counter }),
  proxyProtocol: z.enum(["none", "v1", "v2"]),
  timeouts: z.object({ connectMs: counter, idleMs: counter, drainMs: counter }),
  maxConnections: z.number().int().positive(),
  backends: z.array(BackendSpecSchema).max(65535),
  /** The Maglev table: little-endian uint16 backend indexes, base64. */
  table: base64,
});
export type ServiceSpec = z.infer<typeof ServiceSpecSchema>;

export const AgentSpecSchema = z.object({ id, mesh: z.string().nullable() });
export type AgentSpec = z.infer<typeof AgentSpecSchema>;

/** Everything an agent needs to serve alone: pushed on every change, acknowledged, persisted. */
export const ClusterStateSchema = z.object({
  version: counter,
  epoch: z.string().min(1).max(64),
  seed: z.number().int().min(0).max(0xffffffff),
  heartbeatMs: z.number().int().positive(),
  services: z.array(ServiceSpecSchema).max(10_000),
  agents: z.array(AgentSpecSchema).max(10_000),
  /** With `manager.tls`: the certificate and key (PEM) every agent's mesh port serves TLS with. */
  meshTls: z.object({ cert: z.string().min(1).max(1_000_000), key: z.string().min(1).max(1_000_000) })
    .nullable()
    .default(null),
});
export type ClusterState = z.infer<typeof ClusterStateSchema>;

/** A backend whose weight or state changed, by its index in its service's `backends`. */
export const BackendChangeSchema = z.object({
  index: z.number().int().min(0).max(65534),
  weight: z.number().nonnegative(),
  state: z.enum(["up", "draining", "down"]),
}).strict();
export type BackendChange = z.infer<typeof BackendChangeSchema>;

/** One service's change: its backends that changed, and the slots its table moved or the whole table. */
export const ServiceDeltaSchema = z.object({
  name: id,
  backends: z.array(BackendChangeSchema).max(65535),
  /**
   * The slots that moved, in ascending order: little-endian records of the slot (uint32) and its new entry
   * (uint16), base64. Null when `table` is sent instead.
   */
  slots: base64.nullable(),
  /** The whole table, as in `ServiceSpec.table`, when that is shorter than the slots that moved; else null. */
  table: base64.nullable(),
  /** MurmurHash3 (x86, 32-bit, seed 0) of the table after the change, as little-endian uint16 entries. */
  hash: z.number().int().min(0).max(0xffffffff),
}).strict().refine((delta) => (delta.slots === null) !== (delta.table === null), {
  message: "Expected either slots or table",
});
export type ServiceDelta = z.infer<typeof ServiceDeltaSchema>;

/** The change from state `base` to state `version` of the same `epoch`: only the services that changed. */
export const StateDeltaSchema = z.object({
  base: counter,
  version: counter,
  epoch: z.string().min(1).max(64),
  services: z.array(ServiceDeltaSchema).max(10_000),
}).strict().refine((delta) => delta.version > delta.base, { message: "Expected version above base" });
export type StateDelta = z.infer<typeof StateDeltaSchema>;

/**
 * An agent's counts since it started: connections it forwarded itself, relayed to their claimant, open now;
 * and the manager's decisions it took (absent from agents before it was counted).
 */
export const ConnectionCountsSchema = z.object({
  served: counter,
  handed_off: counter,
  open: counter,
  decided: counter.optional(),
});
export type ConnectionCounts = z.infer<typeof ConnectionCountsSchema>;

const AgentMessage = z.discriminatedUnion("type", [
  z.object({ type: z.literal("hello"), version: z.number().int(), agent: id, nonce: base64 }).strict(),
  z.object({ type: z.literal("auth"), proof: base64, mesh: z.string().max(300).nullable() }).strict(),
  z.object({ type: z.literal("ack"), version: counter }).strict(),
  z.object({
    type: z.literal("heartbeat"),
    connections: ConnectionCountsSchema,
    /** Open connections per backend this agent serves right now. */
    backends: z.array(z.object({ service: id, backend: z.string().max(300), open: counter })).max(100_000),
    /** Connections this agent started to each backend since its last heartbeat (absent from older agents). */
    started: z.array(z.object({ service: id, backend: z.string().max(300), count: counter })).max(100_000)
      .optional(),
  }).strict(),
  z.object({
    type: z.literal("open_counts"),
    /** Open connections per backend this agent serves right now: the manager's exact counts. */
    backends: z.array(z.object({ service: id, backend: z.string().max(300), open: counter })).max(100_000),
  }).strict(),
  z.object({
    type: z.literal("decide"),
    /**
     * New connections to place, answered together in one `decisions`: one frame each way for the flows an
     * agent asks about in one turn, not one per flow (each frame costs both ends an encode and a parse).
     */
    requests: z.array(
      z.object({
        /** The agent's request id, echoed in the decision. */
        id: counter,
        service: id,
        client: z.object({ ip: z.string().min(1).max(64), port: z.number().int().min(0).max(65535) }),
        /** The lane whose queue was empty (a flow handed to this agent: `mesh`), when it decides ahead. */
        lane: lane.optional(),
      }).strict(),
    ).min(1).max(100_000),
  }).strict(),
  z.object({
    type: z.literal("used"),
    /** How many of each queue of decisions made ahead the agent has used so far (a running total). */
    queues: z.array(
      z.object({ service: id, seq: counter, used: counter, lane: lane.default("listen") }).strict(),
    )
      .max(10_000),
  }).strict(),
  /** The agent could not apply a delta to the version it has: the manager sends the whole state. */
  z.object({ type: z.literal("resync") }).strict(),
  z.object({
    type: z.literal("connect_failures"),
    failures: z.array(z.object({ service: id, backend: z.string().max(300), count: counter })).max(10_000),
  }).strict(),
]);
export type AgentMessage = z.infer<typeof AgentMessage>;
/** How much of one queue of decisions made ahead an agent used so far, as `used` reports it. */
export type QueueUsed = Extract<AgentMessage, { type: "used" }>["queues"][number];

const ManagerMessage = z.discriminatedUnion("type", [
  z.object({ type: z.literal("challenge"), version: z.number().int(), nonce: base64, proof: base64 })
    .strict(),
  z.object({ type: z.literal("welcome"), heartbeatMs: z.number().int().positive() }).strict(),
  z.object({ type: z.literal("state"), state: ClusterStateSchema }).strict(),
  z.object({ type: z.literal("delta"), delta: StateDeltaSchema }).strict(),
  z.object({ type: z.literal("heartbeat") }).strict(),
  z.object({
    type: z.literal("decisions"),
    /** The answers to one `decide`, in its order. */
    decisions: z.array(
      z.object({
        /** The request's id. */
        id: counter,
        /** The preferred backend's id, or null when the service has none to offer. */
        backend: z.string().max(300).nullable(),
        /** How long this choice holds for the same client (affinity), 0 for none. */
        ttlMs: counter,
      }).strict(),
    ).max(100_000),
  }).strict(),
  z.object({
    type: z.literal("ahead"),
    /**
     * Decisions made ahead: the backends of this agent's next new connections of `service`, in order, as
     * indexes into its `backends` in state `version` (an agent at another version drops the queue), to take
     * for `ttlMs`. Replaces the queue it had; `seq` names it in `used`.
     */
    service: id,
    lane: lane.default("listen"),
    seq: counter,
    version: counter,
    backends: z.array(z.number().int().min(0).max(65534)).max(100_000),
    ttlMs: counter,
  }).strict(),
  z.object({
    type: z.literal("redirect"),
    /** The leading manager's cluster address, or null when this manager knows none. */
    leader: z.string().min(1).max(300).nullable(),
  }).strict(),
  z.object({ type: z.literal("error"), error: z.string().max(1000) }).strict(),
]);
export type ManagerMessage = z.infer<typeof ManagerMessage>;

/** A frame or message that breaks the protocol; the connection that sent it is closed. */
export class ProtocolError extends Error {
  override readonly name = "ProtocolError";
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/**
 * Where a frame of up to 64 KiB (every decision) is encoded before its one copy out: each buffer Deno
 * allocates costs about 1.2 µs here, and encoding into a fresh one and then copying it into the frame cost
 * two. Frames are encoded one at a time, on one thread, so one scratch serves them all.
 */
const scratch = new Uint8Array(64 * 1024);
const scratchBody = scratch.subarray(4);
const scratchView = new DataView(scratch.buffer);

/** Encodes one message as a frame: 4-byte big-endian length, then the JSON. */
export function encodeFrame(message: AgentMessage | ManagerMessage): Uint8Array {
  const json = JSON.stringify(message);
  // UTF-8 takes at most 3 bytes per UTF-16 code unit.
  if (json.length * 3 <= scratchBody.length) {
    const { written } = encoder.encodeInto(json, scratchBody);
    scratchView.setUint32(0, written);
    return scratch.slice(0, 4 + written);
  }
  const body = encoder.encode(json);
  if (body.length > MAX_FRAME_BYTES) {
    throw new ProtocolError(`Cannot send a ${body.length}-byte frame: the limit is ${MAX_FRAME_BYTES}`);
  }
  const frame = new Uint8Array(4 + body.length);
  new DataView(frame.buffer).setUint32(0, body.length);
  frame.set(body, 4);
  return frame;
}

function parseBody<T>(schema: z.ZodType<T>, body: Uint8Array): T {
  let json: unknown;
  try {
    json = JSON.parse(decoder.decode(body));
  } catch (error) {
    throw new ProtocolError(`Cannot parse frame: ${(error as Error).message}`);
  }
  const result = schema.safeParse(json);
  if (!result.success) {
    const issue = result.error.issues[0];
    const where = issue?.path.length ? ` at ${issue.path.join(".")}` : "";
    throw new ProtocolError(`Cannot accept message${where}: ${issue?.message ?? "invalid"}`);
  }
  return result.data;
}

/** A frame body's message: JSON, or the compact form of `decide` (`decision_frames.ts`). */
export function parseAgentMessage(body: Uint8Array): AgentMessage {
  if (body[0] === DECIDE_TAG) return { type: "decide", requests: compact(decodeDecide, body) };
  return parseBody(AgentMessage, body);
}

/** A frame body's message: JSON, or the compact form of `decisions` (`decision_frames.ts`). */
export function parseManagerMessage(body: Uint8Array): ManagerMessage {
  if (body[0] === DECISIONS_TAG) return { type: "decisions", decisions: compact(decodeDecisions, body) };
  return parseBody(ManagerMessage, body);
}

function compact<T>(decode: (body: Uint8Array) => T, body: Uint8Array): T {
  try {
    return decode(body);
  } catch (error) {
    if (error instanceof DecisionFrameError) {
      throw new ProtocolError(`Cannot accept message: ${error.message}`);
    }
    throw error;
  }
}

/**
 * Splits a byte stream into frame bodies. Feed it what `read` returned; it yields each complete body, a
 * view into its buffer that holds until the next is asked for. A frame announcing more than `maxBytes` is a
 * `ProtocolError` before any of it is buffered.
 */
export class FrameDecoder {
  #buffer = new Uint8Array(64 * 1024);
  #length = 0;
  readonly #maxBytes: number;

  constructor(maxBytes = MAX_FRAME_BYTES) {
    this.#maxBytes = maxBytes;
  }

  *push(chunk: Uint8Array): Generator<Uint8Array> {
    this.#append(chunk);
    let offset = 0;
    while (this.#length - offset >= 4) {
      const buffer = this.#buffer;
      const size = ((buffer[offset]! << 24) | (buffer[offset + 1]! << 16) | (buffer[offset + 2]! << 8) |
        buffer[offset + 3]!) >>> 0;
      if (size > this.#maxBytes) {
        throw new ProtocolError(`Cannot accept a ${size}-byte frame: the limit is ${this.#maxBytes}`);
      }
      if (this.#length - offset - 4 < size) break;
      // A view, not a copy (each buffer allocated costs about 1.2 µs, and there is a frame per decision):
      // the caller reads it before asking for the next.
      yield buffer.subarray(offset + 4, offset + 4 + size);
      offset += 4 + size;
    }
    if (offset > 0) {
      this.#buffer.copyWithin(0, offset, this.#length);
      this.#length -= offset;
    }
  }

  #append(chunk: Uint8Array): void {
    if (this.#length + chunk.length > this.#buffer.length) {
      const grown = new Uint8Array(Math.max(this.#buffer.length * 2, this.#length + chunk.length));
      grown.set(this.#buffer.subarray(0, this.#length));
      this.#buffer = grown;
    }
    this.#buffer.set(chunk, this.#length);
    this.#length += chunk.length;
  }
}

/** Encodes a Maglev table (uint16 entries) for the wire: its little-endian bytes in base64. */
export function encodeTable(table: Uint16Array): string {
  return encodeBase64(tableBytes(table));
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** A table's entries as little-endian bytes: a view of it on a little-endian host, else a copy. */
export function tableBytes(table: Uint16Array): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(table.buffer, table.byteOffset, table.byteLength);
  const bytes = new Uint8Array(table.length * 2);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < table.length; i++) view.setUint16(i * 2, table[i]!, true);
  return bytes;
}

const BASE64_ALPHABET = encoder.encode("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/");
const PAD = 61; // "="
const latin1 = new TextDecoder("latin1");

/**
 * Standard base64 with padding. Written out rather than `btoa` over a string of the bytes: a table of
 * 65,537 slots took 5.4 ms that way (entry by entry through a DataView, then `String.fromCharCode(...)`
 * over 32 KiB), 0.34 ms this way.
 */
export function encodeBase64(bytes: Uint8Array): string {
  const length = bytes.length;
  const out = new Uint8Array(Math.ceil(length / 3) * 4);
  let o = 0;
  let i = 0;
  for (; i + 2 < length; i += 3) {
    const v = (bytes[i]! << 16) | (bytes[i + 1]! << 8) | bytes[i + 2]!;
    out[o++] = BASE64_ALPHABET[v >> 18]!;
    out[o++] = BASE64_ALPHABET[(v >> 12) & 63]!;
    out[o++] = BASE64_ALPHABET[(v >> 6) & 63]!;
    out[o++] = BASE64_ALPHABET[v & 63]!;
  }
  if (i < length) {
    const two = i + 1 < length;
    const v = (bytes[i]! << 16) | ((two ? bytes[i + 1]! : 0) << 8);
    out[o++] = BASE64_ALPHABET[v >> 18]!;
    out[o++] = BASE64_ALPHABET[(v >> 12) & 63]!;
    out[o++] = two ? BASE64_ALPHABET[(v >> 6) & 63]! : PAD;
    out[o++] = PAD;
  }
  return latin1.decode(out);
}

/** The bytes of standard base64 text; a `ProtocolError` naming `what` when it is not base64. */
export function decodeBase64(text: string, what: string): Uint8Array {
  let binary: string;
  try {
    binary = atob(text);
  } catch {
    const shown = text.length > 40 ? `${text.slice(0, 40)}…` : text;
    throw new ProtocolError(`Cannot decode ${what}: "${shown}" is not base64`);
  }
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < bytes.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/**
 * Decodes a table from the wire; it must be base64 of whole entries, each pointing at a known backend.
 * Throws a `ProtocolError` otherwise.
 */
export function decodeTable(text: string, backendCount: number): Uint16Array {
  const bytes = decodeBase64(text, "table");
  if (bytes.length % 2 !== 0 || bytes.length < 2) {
    throw new ProtocolError(`Cannot decode table: ${bytes.length} bytes is not a whole number of entries`);
  }
  const table = new Uint16Array(bytes.length / 2);
  for (let i = 0; i < table.length; i++) {
    const entry = bytes[i * 2]! | (bytes[i * 2 + 1]! << 8);
    if (entry !== 0xffff && entry >= backendCount) {
      throw new ProtocolError(`Cannot decode table: slot ${i} points at backend ${entry} of ${backendCount}`);
    }
    table[i] = entry;
  }
  return table;
}
