/**
 * A bounded load generator for the fault tests, and the held connections they watch.
 *
 * `startLoad` runs N concurrent client loops through the agents for at most T seconds and M connections,
 * paced to a total rate. Each connection connects, reads the backend's first line and closes; every one
 * is recorded, success or failure, with its times, the agent port it went to and its own client port (so
 * a test can find it in the agents' "served by" and "handed off to" log lines).
 */
import { writeAll } from "../cluster/write_all.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One connection of a load run. Times are `performance.now()` milliseconds. */
export interface LoadRecord {
  /** The agent (service listener) port it connected to. */
  readonly port: number;
  readonly start: number;
  readonly end: number;
  /** Its own port on 127.0.0.1 (or the given host), 0 when connecting failed. */
  readonly localPort: number;
  readonly ok: boolean;
  /** The first line the backend sent ("" when none). */
  readonly line: string;
  /** Why it failed: `connect: …`, `read: …`, `timeout`, `unexpected line "…"`; null on success. */
  readonly error: string | null;
}

export interface LoadOptions {
  /** The agent ports to spread connections over, asked before each connection (a test may drop one). */
  readonly targets: () => readonly number[];
  /** The host the agents listen on. */
  readonly host?: string;
  /** Concurrent client loops. */
  readonly concurrency?: number;
  /** New connections per second over all loops. */
  readonly ratePerSecond?: number;
  /** No connection starts after this many seconds. */
  readonly maxSeconds: number;
  /** No more than this many connections in all. */
  readonly maxConnections?: number;
  /** A connection that has not read its line after this long is a failure. */
  readonly timeoutMs?: number;
  /** Whether a first line is the right answer; any non-empty line by default. */
  readonly expect?: (line: string) => boolean;
}

export interface LoadRun {
  readonly records: readonly LoadRecord[];
  /** Resolves when every loop has ended (time or count reached, or `stop()`). */
  readonly done: Promise<readonly LoadRecord[]>;
  /** Ends the run early and waits for connections in flight. */
  stop(): Promise<readonly LoadRecord[]>;
}

export const LOAD_DEFAULTS = {
  concurrency: 4,
  ratePerSecond: 100,
  maxConnections: 100_000,
  timeoutMs: 5_000,
} as const;

export function startLoad(options: LoadOptions): LoadRun {
  const host = options.host ?? "127.0.0.1";
  const concurrency = options.concurrency ?? LOAD_DEFAULTS.concurrency;
  const rate = options.ratePerSecond ?? LOAD_DEFAULTS.ratePerSecond;
  const maxConnections = options.maxConnections ?? LOAD_DEFAULTS.maxConnections;
  const timeoutMs = options.timeoutMs ?? LOAD_DEFAULTS.timeoutMs;
  const expect = options.expect ?? ((line: string) => line.length > 0);
  const records: LoadRecord[] = [];
  const startedAt = performance.now();
  const deadline = startedAt + options.maxSeconds * 1_000;
  // Loop i starts its k-th connection at startedAt + (k * concurrency + i) / rate seconds.
  const periodMs = (concurrency * 1_000) / rate;
  let started = 0;
  let next = 0;
  let stopped = false;
  const wakers = new Set<() => void>();

  const sleepUntil = (at: number) =>
    new Promise<void>((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        wakers.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, Math.max(0, at - performance.now()));
      wakers.add(wake);
    });

  const loop = async (index: number) => {
    for (let k = 0;; k++) {
      const at = startedAt + k * periodMs + (index * periodMs) / concurrency;
      if (stopped || at > deadline || started >= maxConnections) return;
      await sleepUntil(at);
      if (stopped || performance.now() > deadline || started >= maxConnections) return;
      const targets = options.targets();
      if (targets.length === 0) continue;
      started++;
      const port = targets[next++ % targets.length] as number;
      records.push(await oneConnection(host, port, timeoutMs, expect));
    }
  };
  const done = Promise.all(Array.from({ length: concurrency }, (_, i) => loop(i))).then(() => records);
  return {
    records,
    done,
    async stop() {
      stopped = true;
      for (const wake of [...wakers]) wake();
      return await done;
    },
  };
}

async function oneConnection(
  host: string,
  port: number,
  timeoutMs: number,
  expect: (line: string) => boolean,
): Promise<LoadRecord> {
  const start = performance.now();
  const abort = new AbortController();
  let conn: Deno.TcpConn | null = null;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    abort.abort();
    try {
      conn?.close();
    } catch {
      // closed
    }
  }, timeoutMs);
  const record = (fields: { localPort: number; line: string; error: string | null }): LoadRecord => ({
    port,
    start,
    end: performance.now(),
    ok: fields.error === null,
    ...fields,
  });
  try {
    try {
      conn = await Deno.connect({ hostname: host, port, signal: abort.signal });
    } catch (error) {
      return record({ localPort: 0, line: "", error: timedOut ? "timeout" : `connect: ${message(error)}` });
    }
    const localPort = (conn.localAddr as Deno.NetAddr).port;
    let line: string;
    try {
      line = await readLine(conn);
    } catch (error) {
      return record({ localPort, line: "", error: timedOut ? "timeout" : `read: ${message(error)}` });
    }
    if (!expect(line)) {
      return record({
        localPort,
        line,
        error: timedOut ? "timeout" : `unexpected line ${JSON.stringify(line)}`,
      });
    }
    return record({ localPort, line, error: null });
  } finally {
    clearTimeout(timer);
    try {
      conn?.close();
    } catch {
      // closed by the timer
    }
  }
}

/** Reads up to the first newline (without it), or to the end of the stream. */
async function readLine(conn: Deno.Conn, max = 4096): Promise<string> {
  const buffer = new Uint8Array(max);
  let length = 0;
  while (length < max) {
    const n = await conn.read(buffer.subarray(length));
    if (n === null) break;
    const newline = buffer.subarray(length, length + n).indexOf(10);
    length += n;
    if (newline >= 0) return decoder.decode(buffer.subarray(0, length - n + newline));
  }
  return decoder.decode(buffer.subarray(0, length));
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Counts of a run, for assertions and for the report a test prints. */
export function summarize(records: readonly LoadRecord[]) {
  const failures = records.filter((r) => !r.ok);
  const first = Math.min(...records.map((r) => r.start));
  const last = Math.max(...records.map((r) => r.start));
  const seconds = records.length > 1 ? (last - first) / 1_000 : 0;
  const byPort = new Map<number, { ok: number; failed: number }>();
  const byLine = new Map<string, number>();
  for (const r of records) {
    const entry = byPort.get(r.port) ?? { ok: 0, failed: 0 };
    if (r.ok) entry.ok++;
    else entry.failed++;
    byPort.set(r.port, entry);
    if (r.ok) byLine.set(r.line, (byLine.get(r.line) ?? 0) + 1);
  }
  return {
    total: records.length,
    ok: records.length - failures.length,
    failed: failures.length,
    failures,
    seconds,
    perSecond: seconds > 0 ? records.length / seconds : 0,
    byPort,
    byLine,
    text: `${records.length} connections in ${seconds.toFixed(1)} s (${
      (seconds > 0 ? records.length / seconds : 0).toFixed(0)
    }/s), ${failures.length} failed`,
  };
}

/** A client connection held open through an agent, that can prove it still carries bytes both ways. */
export interface HeldConnection {
  readonly port: number;
  readonly localPort: number;
  /** The backend's greeting. */
  readonly line: string;
  /** Sends `text` and reads it back from the echoing backend; false if the connection broke. */
  echo(text: string, timeoutMs?: number): Promise<boolean>;
  close(): void;
}

export async function holdConnection(port: number, host = "127.0.0.1"): Promise<HeldConnection> {
  const conn = await Deno.connect({ hostname: host, port });
  let closed = false;
  const line = await readLine(conn, 256);
  return {
    port,
    localPort: (conn.localAddr as Deno.NetAddr).port,
    line,
    async echo(text: string, timeoutMs = 3_000) {
      if (closed) return false;
      const timer = setTimeout(() => {
        closed = true;
        try {
          conn.close();
        } catch {
          // closed
        }
      }, timeoutMs);
      try {
        await writeAll(conn, encoder.encode(text));
        const want = encoder.encode(text).length;
        const buffer = new Uint8Array(want);
        let got = 0;
        while (got < want) {
          const n = await conn.read(buffer.subarray(got));
          if (n === null) return false;
          got += n;
        }
        return decoder.decode(buffer) === text;
      } catch {
        return false;
      } finally {
        clearTimeout(timer);
      }
    },
    close() {
      if (closed) return;
      closed = true;
      try {
        conn.close();
      } catch {
        // closed
      }
    },
  };
}

/** Runs `task` over `items` with at most `concurrency` at a time; returns the results in order. */
export async function forEachBounded<T, R>(
  items: readonly T[],
  concurrency: number,
  task: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await task(items[index] as T, index);
    }
  }));
  return results;
}

/** The resident memory of a process, from /proc/PID/status, in KiB. */
export async function vmRssKiB(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const match = /^VmRSS:\s+(\d+) kB/m.exec(status);
  if (!match) throw new Error(`No VmRSS line in /proc/${pid}/status`);
  return Number(match[1]);
}

/**
 * An admin API view without what moves by itself: ages, expiries, heartbeats, and the counts of open and
 * started connections, which traffic moves.
 */
export function stableView(view: unknown): unknown {
  const moving = new Set([
    "age_s",
    "expires_in_s",
    "open_connections",
    "connections_total",
    "last_heartbeat_s",
  ]);
  return JSON.parse(JSON.stringify(view), (key, value) => moving.has(key) ? undefined : value);
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
