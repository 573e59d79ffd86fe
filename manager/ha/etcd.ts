/**
 * A client of etcd's v3 API through its JSON gateway (`POST /v3/...`, grpc-gateway, in every etcd since
 * 3.3) over `fetch`: leases, ranges, transactions and watches, the little that leader election and the
 * managers' shared state need. Keys and values are UTF-8 text here and base64 on the wire; 64-bit ids (leases)
 * stay strings, since they do not fit a JavaScript number.
 *
 * Every call has one deadline and tries the endpoints in turn until it passes: a member that refuses, times
 * out or says it is unavailable (no leader, stopping) sends the call to the next one, which then stays first
 * for later calls. Only what etcd answered with an error of its own is thrown at once, as `EtcdError`.
 */

export const ETCD_DEFAULTS = {
  /** How long one call may take over every endpoint tried. */
  timeoutMs: 1_000,
  /** How long a watch may take to be set up before another endpoint is tried. */
  watchSetupMs: 2_000,
} as const;

/** What etcd answered with an error, or that no endpoint answered in time. */
export class EtcdError extends Error {
  override readonly name: string = "EtcdError";
  /** The gRPC status code etcd gave (5: not found, 14: unavailable), or null when no member answered. */
  readonly code: number | null;

  constructor(message: string, options: { code?: number | null; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? {} : { cause: options.cause });
    this.code = options.code ?? null;
  }
}

/** A watch that etcd cancelled because its start revision was compacted away: load everything again. */
export class WatchCompactedError extends EtcdError {
  override readonly name = "WatchCompactedError";
  readonly compactRevision: number;

  constructor(compactRevision: number) {
    super(`Cannot watch from a compacted revision: etcd kept only from revision ${compactRevision}`);
    this.compactRevision = compactRevision;
  }
}

export interface KeyValue {
  readonly key: string;
  readonly value: string;
  readonly createRevision: number;
  readonly modRevision: number;
  /** The lease the key is bound to, "0" for none. */
  readonly lease: string;
}

export interface WatchEvent {
  readonly type: "put" | "delete";
  /** For a delete, only `key` and `modRevision` are set. */
  readonly kv: KeyValue;
}

/** A condition of a transaction on one key. */
export type Compare =
  | { readonly key: string; readonly createRevision: number }
  | { readonly key: string; readonly value: string };

/** An operation of a transaction. */
export type Operation =
  | { readonly put: string; readonly value: string; readonly lease?: string }
  | { readonly delete: string; readonly prefix?: boolean }
  | { readonly range: string; readonly prefix?: boolean };

export interface TxnResult {
  readonly succeeded: boolean;
  readonly revision: number;
  /** The keys each range operation of the branch taken found, in order. */
  readonly ranges: KeyValue[][];
}

export interface RangeOptions {
  /** Every key that starts with the key given. */
  readonly prefix?: boolean;
  /** Only keys changed at or after this revision. */
  readonly minModRevision?: number;
  /** Only how many there are (before `minModRevision` filters: etcd counts every key of the range). */
  readonly countOnly?: boolean;
  /** Keys without their values. */
  readonly keysOnly?: boolean;
  readonly timeoutMs?: number;
}

interface RawKeyValue {
  key?: string;
  value?: string;
  create_revision?: string;
  mod_revision?: string;
  lease?: string;
}

interface RawHeader {
  header?: { revision?: string };
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
/** gRPC codes after which another member may do better: unknown (leader changed), deadline, unavailable. */
const RETRY_CODES = new Set([2, 4, 14]);

export class EtcdClient {
  readonly #endpoints: readonly string[];
  readonly #timeoutMs: number;
  #current = 0;

  constructor(endpoints: readonly string[], options: { timeoutMs?: number } = {}) {
    if (endpoints.length === 0) throw new RangeError("Cannot make an etcd client without endpoints");
    this.#endpoints = endpoints.map((endpoint) => endpoint.replace(/\/+$/, ""));
    this.#timeoutMs = options.timeoutMs ?? ETCD_DEFAULTS.timeoutMs;
  }

  get endpoints(): readonly string[] {
    return this.#endpoints;
  }

  /** A lease of `ttlS` seconds; etcd may grant more (its minimum, 2 s with its default timing). */
  async grant(ttlS: number, options: { timeoutMs?: number } = {}): Promise<{ id: string; ttlS: number }> {
    const body = await this.#call<{ ID?: string; TTL?: string; error?: string }>(
      "/v3/lease/grant",
      { TTL: ttlS },
      options,
    );
    if (body.error) throw new EtcdError(`Cannot get a lease: ${body.error}`);
    if (body.ID === undefined) throw new EtcdError("Cannot get a lease: etcd answered no id");
    return { id: body.ID, ttlS: Number(body.TTL ?? ttlS) };
  }

  /** Renews lease `id`; returns its new time to live in seconds, 0 when it no longer exists. */
  async keepAlive(id: string, options: { timeoutMs?: number } = {}): Promise<number> {
    const body = await this.#call<{ result?: { TTL?: string }; error?: { message?: string } }>(
      "/v3/lease/keepalive",
      { ID: id },
      options,
    );
    if (body.error) throw new EtcdError(`Cannot renew lease ${id}: ${body.error.message ?? "error"}`);
    return Number(body.result?.TTL ?? 0);
  }

  /** Ends lease `id` now, deleting every key bound to it. */
  async revoke(id: string, options: { timeoutMs?: number } = {}): Promise<void> {
    try {
      await this.#call("/v3/lease/revoke", { ID: id }, options);
    } catch (error) {
      // A lease already gone is what was asked for.
      if (!(error instanceof EtcdError && error.code === 5)) throw error;
    }
  }

  async range(
    key: string,
    options: RangeOptions = {},
  ): Promise<{ revision: number; kvs: KeyValue[]; count: number }> {
    const body = await this.#call<RawHeader & { kvs?: RawKeyValue[]; count?: string }>(
      "/v3/kv/range",
      {
        ...rangeOf(key, options.prefix === true),
        ...(options.minModRevision ? { min_mod_revision: String(options.minModRevision) } : {}),
        ...(options.countOnly ? { count_only: true } : {}),
        ...(options.keysOnly ? { keys_only: true } : {}),
      },
      options,
    );
    return {
      revision: Number(body.header?.revision ?? 0),
      kvs: (body.kvs ?? []).map(keyValue),
      count: Number(body.count ?? 0),
    };
  }

  async put(
    key: string,
    value: string,
    options: { lease?: string; timeoutMs?: number } = {},
  ): Promise<number> {
    const body = await this.#call<RawHeader>(
      "/v3/kv/put",
      { key: base64(key), value: base64(value), ...(options.lease ? { lease: options.lease } : {}) },
      options,
    );
    return Number(body.header?.revision ?? 0);
  }

  /** If every `compare` holds, runs `success`, else `failure` (none by default), all as one step. */
  async txn(
    compare: readonly Compare[],
    success: readonly Operation[],
    options: { failure?: readonly Operation[]; timeoutMs?: number } = {},
  ): Promise<TxnResult> {
    const body = await this.#call<
      RawHeader & {
        succeeded?: boolean;
        responses?: Array<{ response_range?: { kvs?: RawKeyValue[] } }>;
      }
    >("/v3/kv/txn", {
      compare: compare.map((c) =>
        "createRevision" in c
          ? { target: "CREATE", key: base64(c.key), create_revision: String(c.createRevision) }
          : { target: "VALUE", key: base64(c.key), value: base64(c.value) }
      ),
      success: success.map(operation),
      failure: (options.failure ?? []).map(operation),
    }, options);
    return {
      succeeded: body.succeeded === true,
      revision: Number(body.header?.revision ?? 0),
      ranges: (body.responses ?? []).filter((r) => r.response_range !== undefined).map((r) =>
        (r.response_range?.kvs ?? []).map(keyValue)
      ),
    };
  }

  /**
   * Yields each batch of changes to `key` (or every key under it with `prefix`) from `startRevision` on, with
   * the revision it brings the watcher to, until `signal` aborts (then it returns) or the stream breaks
   * (then it throws, and the caller watches again from the last revision it saw).
   */
  async *watch(
    key: string,
    options: { prefix?: boolean; startRevision: number; signal: AbortSignal },
  ): AsyncGenerator<{ revision: number; events: WatchEvent[] }> {
    const request = {
      create_request: {
        ...rangeOf(key, options.prefix === true),
        start_revision: String(options.startRevision),
      },
    };
    const response = await this.#open("/v3/watch", request, options.signal);
    if (response === null) return;
    const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
    const onAbort = () => reader.cancel().catch(() => {});
    options.signal.addEventListener("abort", onAbort, { once: true });
    let pending = "";
    try {
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (error) {
          if (options.signal.aborted) return;
          throw new EtcdError(`The watch of ${key} broke: ${messageOf(error)}`, { cause: error });
        }
        if (chunk.done) {
          if (options.signal.aborted) return;
          throw new EtcdError(`etcd ended the watch of ${key}`);
        }
        pending += chunk.value;
        const lines = pending.split("\n");
        pending = lines.pop() ?? "";
        for (const line of lines) {
          if (line.trim() === "") continue;
          const message = JSON.parse(line) as {
            result?: RawHeader & {
              created?: boolean;
              canceled?: boolean;
              compact_revision?: string;
              cancel_reason?: string;
              events?: Array<{ type?: string; kv?: RawKeyValue }>;
            };
            error?: { message?: string; code?: number };
          };
          if (message.error) {
            throw new EtcdError(`etcd ended the watch of ${key}: ${message.error.message ?? "error"}`, {
              code: message.error.code ?? null,
            });
          }
          const result = message.result ?? {};
          if (result.compact_revision && result.compact_revision !== "0") {
            throw new WatchCompactedError(Number(result.compact_revision));
          }
          if (result.canceled) {
            throw new EtcdError(`etcd cancelled the watch of ${key}: ${result.cancel_reason ?? "no reason"}`);
          }
          const events = (result.events ?? []).map((event): WatchEvent => ({
            type: event.type === "DELETE" ? "delete" : "put",
            kv: keyValue(event.kv ?? {}),
          }));
          yield { revision: Number(result.header?.revision ?? 0), events };
        }
      }
    } finally {
      options.signal.removeEventListener("abort", onAbort);
      await reader.cancel().catch(() => {});
    }
  }

  /** One call, over the endpoints in turn until one answers or the deadline passes. */
  async #call<T>(path: string, body: unknown, options: { timeoutMs?: number }): Promise<T> {
    const deadline = performance.now() + (options.timeoutMs ?? this.#timeoutMs);
    const text = JSON.stringify(body);
    let lastError: unknown = null;
    for (let tried = 0; tried < this.#endpoints.length || performance.now() < deadline; tried++) {
      const left = deadline - performance.now();
      if (left <= 0) break;
      const endpoint = this.#endpoints[this.#current] as string;
      try {
        const response = await fetch(`${endpoint}${path}`, {
          method: "POST",
          body: text,
          signal: AbortSignal.timeout(Math.max(1, Math.ceil(left))),
        });
        const answer = await response.text();
        const parsed = parseJson(answer);
        if (response.ok) return parsed as T;
        const code = typeof parsed?.code === "number" ? parsed.code : null;
        const error = new EtcdError(
          `etcd at ${endpoint} refused ${path}: ${parsed?.message ?? parsed?.error ?? answer.slice(0, 200)}`,
          { code },
        );
        // What a member says of itself (no leader, stopping) or a gateway error page: ask another.
        if (code !== null && !RETRY_CODES.has(code)) throw error;
        lastError = error;
      } catch (error) {
        if (error instanceof EtcdError && !RETRY_CODES.has(error.code ?? 14)) throw error;
        lastError = error;
      }
      this.#current = (this.#current + 1) % this.#endpoints.length;
      // After a round of refusals, wait a little before the next, rather than spin.
      if ((tried + 1) % this.#endpoints.length === 0) {
        await new Promise((resolve) =>
          setTimeout(resolve, Math.min(50, Math.max(0, deadline - performance.now())))
        );
      }
    }
    throw new EtcdError(
      `No etcd endpoint answered ${path} in time (${this.#endpoints.join(", ")}): ${messageOf(lastError)}`,
      { cause: lastError },
    );
  }

  /** Opens a streaming call (a watch) on the first endpoint that answers; null when `signal` aborted. */
  async #open(path: string, body: unknown, signal: AbortSignal): Promise<Response | null> {
    let lastError: unknown = null;
    for (let tried = 0; tried < this.#endpoints.length; tried++) {
      if (signal.aborted) return null;
      const endpoint = this.#endpoints[this.#current] as string;
      const setup = new AbortController();
      const timer = setTimeout(() => setup.abort(), ETCD_DEFAULTS.watchSetupMs);
      const onAbort = () => setup.abort();
      signal.addEventListener("abort", onAbort, { once: true });
      try {
        const response = await fetch(`${endpoint}${path}`, {
          method: "POST",
          body: JSON.stringify(body),
          signal: setup.signal,
        });
        if (response.ok && response.body) return response;
        lastError = new EtcdError(`etcd at ${endpoint} refused ${path}: ${await response.text()}`);
      } catch (error) {
        if (signal.aborted) return null;
        lastError = error;
      } finally {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
      }
      this.#current = (this.#current + 1) % this.#endpoints.length;
    }
    throw new EtcdError(
      `No etcd endpoint took ${path} (${this.#endpoints.join(", ")}): ${messageOf(lastError)}`,
      {
        cause: lastError,
      },
    );
  }
}

/** The key's bytes as base64, and with `prefix` the end of the range of every key that starts with it. */
function rangeOf(key: string, prefix: boolean): { key: string; range_end?: string } {
  if (!prefix) return { key: base64(key) };
  return { key: base64(key), range_end: bytesToBase64(prefixEnd(encoder.encode(key))) };
}

/** The first key after every key that starts with `prefix`: its last byte below 0xff plus one. */
export function prefixEnd(prefix: Uint8Array): Uint8Array {
  const end = prefix.slice();
  for (let i = end.length - 1; i >= 0; i--) {
    if ((end[i] as number) < 0xff) {
      end[i] = (end[i] as number) + 1;
      return end.subarray(0, i + 1);
    }
  }
  // Every byte is 0xff: the range goes to the end of the key space.
  return new Uint8Array([0]);
}

function operation(op: Operation): Record<string, unknown> {
  if ("put" in op) {
    return {
      request_put: { key: base64(op.put), value: base64(op.value), ...(op.lease ? { lease: op.lease } : {}) },
    };
  }
  if ("delete" in op) return { request_delete_range: rangeOf(op.delete, op.prefix === true) };
  return { request_range: rangeOf(op.range, op.prefix === true) };
}

function keyValue(raw: RawKeyValue): KeyValue {
  return {
    key: fromBase64(raw.key ?? ""),
    value: fromBase64(raw.value ?? ""),
    createRevision: Number(raw.create_revision ?? 0),
    modRevision: Number(raw.mod_revision ?? 0),
    lease: raw.lease ?? "0",
  };
}

export function base64(text: string): string {
  return bytesToBase64(encoder.encode(text));
}

function bytesToBase64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function fromBase64(text: string): string {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return decoder.decode(bytes);
}

function parseJson(
  text: string,
): Record<string, unknown> & { code?: unknown; message?: string; error?: string } | null {
  try {
    const value = JSON.parse(text);
    return typeof value === "object" && value !== null ? value : null;
  } catch {
    return null;
  }
}

function messageOf(error: unknown): string {
  if (error === null) return "no endpoint tried";
  return error instanceof Error ? error.message : String(error);
}
