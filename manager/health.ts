/**
 * Health: the manager's active checks of every backend of every service (`tcp`: connect; `http`: GET the
 * path, 2xx or 3xx is up; `agent-check`: read one HAProxy agent-check line from `health.port`), and the
 * `rise`/`fall` rule that turns passed and failed checks, and the agents' passive connect failures, into
 * a backend's health.
 *
 * Invariants: a backend starts `unknown`, which counts as up; `fall` failures in a row (active checks and
 * connect failures that agents report, cluster-wide) take it `down`; only `rise` passed active checks in a
 * row bring it back `up`. Every check connects to the backend's own host (and its own port, or
 * `health.port` for agent-check), to nothing else, and ends within `health.timeout`. `close()` stops
 * every check and timer.
 */
import { formatHostPort, type HostPort } from "../cluster/address.ts";
import { guardAsync } from "../cluster/guard.ts";
import { logger } from "../cluster/log.ts";
import { type AgentCheckReply, parseAgentCheckReply } from "../feedback/mod.ts";
import type { HealthConfig } from "./config.ts";
import type { ClusterModel, Health } from "./state.ts";

const log = logger("manager", "health");

export const HEALTH_DEFAULTS = {
  /** The most bytes read of a reply: an HTTP status line or an agent-check line. */
  maxReplyBytes: 1024,
  /** Sent as `User-Agent` by `http` checks. */
  userAgent: "switchyard-health",
} as const;

/** The outcome of one check. */
export interface CheckResult {
  readonly ok: boolean;
  /** What was seen, for the log and the admin API: `connected`, `HTTP 503`, `connection refused`, … */
  readonly detail: string;
  /** The reply of an `agent-check`, when one was read. */
  readonly agent?: AgentCheckReply;
}

/** A backend's health and its passed and failed checks in a row. */
export interface HealthTrack {
  readonly health: Health;
  readonly successes: number;
  readonly failures: number;
}

/**
 * The track after `count` passed (`ok`) or failed checks: a pass from `unknown` is `up` at once; from
 * `down` it takes `rise` in a row; `fall` failures in a row from anywhere are `down`.
 */
export function nextHealth(
  track: HealthTrack,
  outcome: { readonly ok: boolean; readonly count?: number },
  rule: { readonly rise: number; readonly fall: number },
): HealthTrack {
  const count = outcome.count ?? 1;
  if (count <= 0) return track;
  if (outcome.ok) {
    const successes = track.successes + count;
    const health = track.health === "down" && successes < rule.rise ? "down" : "up";
    return { health, successes, failures: 0 };
  }
  const failures = track.failures + count;
  return { health: failures >= rule.fall ? "down" : track.health, successes: 0, failures };
}

/** Runs one check of `address` (the backend's) as `health` says, within `health.timeoutMs`. */
export async function checkBackend(
  address: HostPort,
  health: HealthConfig,
  options: { signal?: AbortSignal } = {},
): Promise<CheckResult> {
  const target = health.kind === "agent-check" && health.port !== null
    ? { host: address.host, port: health.port }
    : address;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), health.timeoutMs);
  const stop = () => abort.abort();
  options.signal?.addEventListener("abort", stop, { once: true });
  let conn: Deno.TcpConn | null = null;
  const closeConn = () => {
    try {
      conn?.close();
    } catch {
      // already closed
    }
  };
  abort.signal.addEventListener("abort", closeConn, { once: true });
  try {
    conn = await Deno.connect({ hostname: target.host, port: target.port, signal: abort.signal });
    if (health.kind === "tcp") return { ok: true, detail: "connected" };
    if (health.kind === "http") {
      const host = formatHostPort(address);
      await writeAll(
        conn,
        `GET ${health.path} HTTP/1.0\r\nHost: ${host}\r\nUser-Agent: ${HEALTH_DEFAULTS.userAgent}\r\n` +
          `Connection: close\r\n\r\n`,
      );
      const line = await readLine(conn);
      const status = /^HTTP\/\d(?:\.\d)? (\d{3})(?: |$)/.exec(line ?? "");
      if (!status) return { ok: false, detail: line === null ? "no HTTP reply" : "not an HTTP reply" };
      const code = Number(status[1]);
      return { ok: code >= 200 && code < 400, detail: `HTTP ${code}` };
    }
    const line = await readLine(conn);
    if (line === null) return { ok: false, detail: "agent-check closed without a reply" };
    const agent = parseAgentCheckReply(line);
    return { ok: agent.operational !== "down", detail: `agent-check "${line.trim().slice(0, 100)}"`, agent };
  } catch (error) {
    if (abort.signal.aborted) {
      const why = options.signal?.aborted ? "stopped" : `no answer within ${health.timeoutMs} ms`;
      return { ok: false, detail: why };
    }
    return { ok: false, detail: reason(error) };
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", stop);
    abort.signal.removeEventListener("abort", closeConn);
    closeConn();
  }
}

/**
 * Checks every backend of every service of `model`, each on its own loop (the first check in the second
 * half of the first `health.interval`, then one every interval), and follows config reloads: a new backend
 * gets a loop, a removed one's loop ends.
 */
export class HealthChecker {
  readonly #model: ClusterModel;
  readonly #check: typeof checkBackend;
  readonly #abort = new AbortController();
  readonly #loops = new Map<string, Promise<void>>();
  readonly #unsubscribe: () => void;

  constructor(model: ClusterModel, options: { check?: typeof checkBackend } = {}) {
    this.#model = model;
    this.#check = options.check ?? checkBackend;
    this.#unsubscribe = model.onChange(() => this.#sync());
    this.#sync();
  }

  /** Stops every loop and waits for checks in flight to end. */
  async close(): Promise<void> {
    this.#unsubscribe();
    this.#abort.abort();
    await Promise.allSettled([...this.#loops.values()]);
  }

  #sync(): void {
    if (this.#abort.signal.aborted) return;
    for (const service of this.#model.services()) {
      for (const backend of service.backends) {
        const key = `${service.config.name}\u0000${backend.config.id}`;
        if (this.#loops.has(key)) continue;
        const loop = this.#loop(service.config.name, backend.config.id).finally(() => {
          if (this.#loops.get(key) === loop) this.#loops.delete(key);
        });
        this.#loops.set(key, loop);
      }
    }
  }

  /** Checks one backend every interval until it is gone or the checker closes; a failed turn is skipped. */
  async #loop(serviceName: string, backendId: string): Promise<void> {
    const signal = this.#abort.signal;
    // The first check comes at a random point in the second half of the first interval, so that the
    // checks of many backends spread out instead of all starting together after a start or a reload.
    let interval = this.#model.service(serviceName)?.config.health.intervalMs ?? 0;
    await sleep(interval * (0.5 + Math.random() / 2), signal);
    const context = { service: serviceName, backend: backendId };
    while (!signal.aborted) {
      const next = await guardAsync(
        "health_check",
        () => this.#turn(serviceName, backendId, signal),
        context,
      );
      if (next === null) return;
      // After a turn that failed, the next comes one interval later, as after any other.
      if (next !== undefined) interval = next;
      await sleep(interval, signal);
    }
  }

  /** One check of one backend, given to the model; the interval to the next, or null when it is gone. */
  async #turn(serviceName: string, backendId: string, signal: AbortSignal): Promise<number | null> {
    const service = this.#model.service(serviceName);
    const backend = service?.backends.find((b) => b.config.id === backendId);
    if (!service || !backend) return null;
    const health = service.config.health;
    let result: CheckResult;
    try {
      result = await this.#check(backend.config.address, health, { signal });
    } catch (error) {
      result = { ok: false, detail: reason(error) };
    }
    if (signal.aborted) return null;
    if (this.#model.service(serviceName)?.backends.some((b) => b.config.id === backendId) !== true) {
      return null;
    }
    this.#model.recordCheck(serviceName, backendId, result);
    log.debug("Checked {backend} of {service} with {kind}: {detail}", {
      service: serviceName,
      backend: backendId,
      kind: health.kind,
      ok: result.ok,
      detail: result.detail,
    });
    return health.intervalMs;
  }
}

async function writeAll(conn: Deno.Conn, text: string): Promise<void> {
  const bytes = new TextEncoder().encode(text);
  let offset = 0;
  while (offset < bytes.length) offset += await conn.write(bytes.subarray(offset));
}

/** Reads up to the first line break (or `maxReplyBytes`, or the end); null when nothing came. */
async function readLine(conn: Deno.Conn): Promise<string | null> {
  const buffer = new Uint8Array(HEALTH_DEFAULTS.maxReplyBytes);
  let length = 0;
  while (length < buffer.length) {
    const n = await conn.read(buffer.subarray(length));
    if (n === null) break;
    const end = buffer.subarray(length, length + n).indexOf(10);
    length += n;
    if (end >= 0) {
      length = length - n + end;
      break;
    }
  }
  if (length === 0) return null;
  return new TextDecoder().decode(buffer.subarray(0, length)).replace(/\r$/, "");
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

function reason(error: unknown): string {
  if (error instanceof Deno.errors.ConnectionRefused) return "connection refused";
  if (error instanceof Deno.errors.ConnectionReset) return "connection reset";
  const message = error instanceof Error ? error.message : String(error);
  return message.replace(/\s*\(os error \d+\)$/, "");
}
