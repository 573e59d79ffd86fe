/**
 * The load the bench drives through every target, the same for each: wrk (keep-alive and
 * `Connection: close` HTTP), iperf3 (bulk bytes), redis-benchmark (pipelined SET and GET), and a crowd of
 * idle connections held open. Parsing of the tools' output is pure and tested in `_load_test.ts`.
 */
import { runBounded } from "./_procs.ts";

/** What one wrk run measured. */
export interface WrkResult {
  readonly requestsPerSecond: number;
  readonly requests: number;
  /** Latency percentiles in milliseconds, when wrk ran with `--latency`. */
  readonly p50Ms: number | null;
  readonly p99Ms: number | null;
  /** Socket errors (connect, read, write, timeout) and non-2xx/3xx answers together. */
  readonly errors: number;
  readonly errorText: string;
}

const TIME_UNITS: Record<string, number> = { us: 0.001, ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };

function parseTime(text: string): number | null {
  const match = text.match(/^([\d.]+)(us|ms|s|m|h)$/);
  if (!match) return null;
  return Math.round(Number(match[1]) * (TIME_UNITS[match[2] as string] as number) * 1_000) / 1_000;
}

/** Parses wrk's text report. Throws when it holds no requests/sec figure. */
export function parseWrk(text: string): WrkResult {
  const rps = text.match(/^Requests\/sec:\s+([\d.]+)/m);
  if (!rps) throw new Error(`Cannot read wrk's report: no "Requests/sec" line in:\n${text}`);
  const requests = text.match(/^\s*(\d+) requests in /m);
  const percentile = (p: string) => {
    const match = text.match(new RegExp(`^\\s+${p}%\\s+(\\S+)`, "m"));
    return match ? parseTime(match[1] as string) : null;
  };
  const socket = text.match(/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/);
  const non2xx = text.match(/Non-2xx or 3xx responses: (\d+)/);
  const parts: string[] = [];
  let errors = 0;
  if (socket) {
    const [connect, read, write, timeout] = socket.slice(1).map(Number) as [number, number, number, number];
    errors += connect + read + write + timeout;
    if (connect + read + write + timeout > 0) {
      parts.push(`socket errors: connect ${connect}, read ${read}, write ${write}, timeout ${timeout}`);
    }
  }
  if (non2xx) {
    errors += Number(non2xx[1]);
    parts.push(`${non2xx[1]} non-2xx/3xx answers`);
  }
  return {
    requestsPerSecond: Number(rps[1]),
    requests: requests ? Number(requests[1]) : 0,
    p50Ms: percentile("50"),
    p99Ms: percentile("99"),
    errors,
    errorText: parts.join("; "),
  };
}

/** Runs wrk against `http://127.0.0.1:port/`, bounded in time. */
export async function runWrk(
  wrk: string,
  port: number,
  options: { threads: number; connections: number; durationS: number; close: boolean },
): Promise<WrkResult> {
  const args = [
    `-t${options.threads}`,
    `-c${options.connections}`,
    `-d${options.durationS}s`,
    "--timeout",
    "2s",
    "--latency",
    ...(options.close ? ["-H", "Connection: close"] : []),
    `http://127.0.0.1:${port}/`,
  ];
  const result = await runBounded(wrk, args, { timeoutMs: (options.durationS + 15) * 1_000 });
  if (result.timedOut) throw new Error(`wrk did not finish within ${options.durationS + 15} s`);
  if (result.code !== 0) throw new Error(`wrk exited with code ${result.code}: ${result.stderr.trim()}`);
  return parseWrk(result.stdout);
}

/** What one iperf3 run measured. */
export interface IperfResult {
  readonly gbitPerSecond: number;
}

/** Parses iperf3's `--json` report. Throws with iperf3's own error when it failed. */
export function parseIperf(text: string): IperfResult {
  let report: { error?: string; end?: { sum_received?: { bits_per_second?: number } } };
  try {
    report = JSON.parse(text);
  } catch {
    throw new Error(`Cannot read iperf3's report: ${text.slice(0, 300)}`);
  }
  if (report.error) throw new Error(`iperf3 failed: ${report.error}`);
  const bits = report.end?.sum_received?.bits_per_second;
  if (typeof bits !== "number") throw new Error("Cannot read iperf3's report: no end.sum_received");
  return { gbitPerSecond: bits / 1e9 };
}

/** Runs one iperf3 client against `127.0.0.1:port`, bounded in time. */
export async function runIperf(iperf3: string, port: number, durationS: number): Promise<IperfResult> {
  const result = await runBounded(
    iperf3,
    ["-c", "127.0.0.1", "-p", String(port), "-t", String(durationS), "--json", "--connect-timeout", "3000"],
    { timeoutMs: (durationS + 20) * 1_000 },
  );
  if (result.timedOut) throw new Error(`iperf3 did not finish within ${durationS + 20} s`);
  return parseIperf(result.stdout);
}

/** What one redis-benchmark run measured: the requests/s of each of its two tests. */
export interface RedisResult {
  readonly setPerSecond: number;
  readonly getPerSecond: number;
}

/** The mean of a run's SET and GET requests/s: the bench's one redis figure. */
export function redisMean(result: RedisResult): number {
  return (result.setPerSecond + result.getPerSecond) / 2;
}

/**
 * Parses `redis-benchmark -q -t set,get`'s report: a final `SET: 475059.38 requests per second, p50=1.111
 * msec` line per test, after progress lines ended by carriage returns. Throws with the tool's own error
 * line (e.g. `Error: Server closed the connection`) when a test has no final line.
 */
export function parseRedisBenchmark(text: string): RedisResult {
  const rate = (test: string) => {
    const match = text.match(new RegExp(`^\\s*${test}: ([\\d.]+) requests per second`, "m"));
    if (match) return Number(match[1]);
    throw new Error(
      `Cannot read redis-benchmark's report: no ${test} result in: ${redisProblem(text) || "(no output)"}`,
    );
  };
  return { setPerSecond: rate("SET"), getPerSecond: rate("GET") };
}

/** The last lines of redis-benchmark's output that are not progress, for an error message. */
function redisProblem(text: string): string {
  return text.split(/[\r\n]+/).map((line) => line.trim())
    .filter((line) => line !== "" && !/^(SET|GET): rps=/.test(line)).slice(-3).join(" | ");
}

/** Requests each test of a redis-benchmark run needs (`-n`) so that SET and GET together last `seconds`. */
export function redisRequests(ratePerSecond: number, seconds: number): number {
  const wanted = ratePerSecond * seconds / 2;
  return Math.max(REDIS_MIN_REQUESTS, Math.round(wanted / 1_000) * 1_000);
}

/** The fewest requests a redis-benchmark test is given: its 50 connections, 16 deep, several times over. */
export const REDIS_MIN_REQUESTS = 10_000;

/**
 * Runs `redis-benchmark -P 16 -t set,get -q` with `clients` connections (50 by default) against
 * `127.0.0.1:port`, `requests` per test, bounded in time: redis-benchmark waits for ever when it cannot
 * connect.
 */
export async function runRedisBenchmark(
  redisBenchmark: string,
  port: number,
  options: { requests: number; timeoutS: number; clients?: number },
): Promise<RedisResult> {
  const { requests, timeoutS, clients = 50 } = options;
  const result = await runBounded(redisBenchmark, [
    "-h",
    "127.0.0.1",
    "-p",
    String(port),
    "-P",
    "16",
    "-t",
    "set,get",
    "-n",
    String(requests),
    "-c",
    String(clients),
    "-q",
  ], { timeoutMs: timeoutS * 1_000 });
  const output = `${result.stdout}\n${result.stderr}`;
  if (result.timedOut) {
    throw new Error(`redis-benchmark did not finish within ${timeoutS} s: ${redisProblem(output)}`);
  }
  if (result.code !== 0) {
    throw new Error(`redis-benchmark exited with code ${result.code}: ${redisProblem(output)}`);
  }
  return parseRedisBenchmark(output);
}

/** Idle connections held open through a proxy to the echo backend. */
export interface IdleCrowd {
  readonly opened: number;
  readonly failed: number;
  readonly firstError: string;
  close(): void;
}

/**
 * Opens `count` connections to `port`, `parallel` at a time, and sends one byte through each, waiting
 * for its echo, so every connection is known to reach the backend. Gives up after `timeoutMs`.
 */
export async function openIdleCrowd(
  port: number,
  options: { count: number; parallel?: number; timeoutMs?: number },
): Promise<IdleCrowd> {
  const { count, parallel = 200, timeoutMs = 120_000 } = options;
  const conns: Deno.Conn[] = [];
  const deadline = performance.now() + timeoutMs;
  let next = 0;
  let failed = 0;
  let firstError = "";
  const byte = new Uint8Array([42]);
  const one = async () => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conns.push(conn);
    await conn.write(byte);
    const buffer = new Uint8Array(1);
    const timer = setTimeout(() => conn.close(), 10_000);
    try {
      const n = await conn.read(buffer);
      if (n !== 1 || buffer[0] !== 42) throw new Error("no echo through the proxy");
    } finally {
      clearTimeout(timer);
    }
  };
  const worker = async () => {
    while (next < count && performance.now() < deadline) {
      next++;
      try {
        await one();
      } catch (error) {
        failed++;
        if (firstError === "") firstError = error instanceof Error ? error.message : String(error);
      }
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return {
    opened: count - failed - (count - next),
    failed: failed + (count - next),
    firstError: firstError || (next < count ? `timed out after ${timeoutMs} ms` : ""),
    close() {
      for (const conn of conns) {
        try {
          conn.close();
        } catch {
          // closed by a failure already
        }
      }
    },
  };
}
