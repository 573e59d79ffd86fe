/**
 * `deno task soak`: a mixed load through one switchyard agent for 60 seconds, which must end with no
 * error and flat memory. One manager and one agent (started as a user would) serve four services:
 *
 * - `http` to an HTTP backend (nginx, else a Deno one): keep-alive clients (many requests per connection)
 *   and short clients (`Connection: close`, one request per connection); every answer is checked;
 * - `echo` to an echo backend: clients send 256 KiB, half-close, and must read the same bytes back;
 * - `http` and `rude` for resets: clients that vanish before the answer, reset with unread bytes, or
 *   connect and close at once, and a backend that resets every connection; the agent must stay up, and
 *   every next connection must still succeed.
 *
 * It samples the agent's VmRSS every second and prints the connections made, the errors, and the RSS at
 * start, middle and end. It passes when no client saw an unexpected error, the agent never logged an
 * error and closed every flow afterwards, and its memory grew no more than `flatGrowth` from the middle
 * of the run to its end. Exit code 0 on pass, 1 otherwise.
 */
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { writeAll } from "../cluster/write_all.ts";
import { HTTP_BODY } from "./_backends.ts";
import { cleanupOnInterrupt, ensureOpenFileLimit, Processes, rssKiB, sleep } from "./_procs.ts";
import { findTools, MAIN, startBackends, startSwitchyard, type Switchyard } from "./_targets.ts";

/** Every default of the soak. */
export const SOAK_DEFAULTS = {
  durationS: 60,
  /** Clients of each kind, each looping until the end. */
  keepAliveClients: 8,
  requestsPerConnection: 100,
  shortClients: 8,
  resetClients: 4,
  echoClients: 2,
  echoBytes: 256 * 1024,
  /** Longest any one client step may take before it counts as an error (a hang). */
  stepTimeoutMs: 10_000,
  /** The most the agent's RSS may grow from the middle of the run to its end, as a share of the middle. */
  flatGrowth: 0.1,
  /** …plus this much, so a small heap's ordinary breathing does not fail the run. */
  flatSlackKiB: 8 * 1024,
} as const;

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const BODY = encoder.encode(HTTP_BODY);

/** What the clients did, by kind, and every unexpected error by its text. */
class Tally {
  readonly connections = new Map<string, number>();
  requests = 0;
  echoedBytes = 0;
  readonly errors = new Map<string, number>();

  connected(kind: string): void {
    this.connections.set(kind, (this.connections.get(kind) ?? 0) + 1);
  }

  error(kind: string, error: unknown): void {
    const text = `${kind}: ${error instanceof Error ? `${error.name}: ${error.message}` : String(error)}`;
    this.errors.set(text, (this.errors.get(text) ?? 0) + 1);
  }

  get totalConnections(): number {
    return [...this.connections.values()].reduce((a, b) => a + b, 0);
  }

  get totalErrors(): number {
    return [...this.errors.values()].reduce((a, b) => a + b, 0);
  }
}

/** Runs `step` on `conn`, closing the connection if it takes longer than `timeoutMs`. */
async function bounded<T>(conn: Deno.Conn, timeoutMs: number, step: () => Promise<T>): Promise<T> {
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    closeQuietly(conn);
  }, timeoutMs);
  try {
    return await step();
  } catch (error) {
    if (timedOut) throw new Error(`no progress within ${timeoutMs} ms`);
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // already closed
  }
}

/** Reads HTTP/1.1 answers with a `Content-Length` off one connection. */
class HttpReader {
  readonly #conn: Deno.Conn;
  #buffer = new Uint8Array(0);

  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  async #fill(): Promise<boolean> {
    const chunk = new Uint8Array(16 * 1024);
    const n = await this.#conn.read(chunk);
    if (n === null) return false;
    const next = new Uint8Array(this.#buffer.length + n);
    next.set(this.#buffer);
    next.set(chunk.subarray(0, n), this.#buffer.length);
    this.#buffer = next;
    return true;
  }

  /** The next answer; throws when the connection ends before a whole one. */
  async answer(): Promise<{ status: number; body: Uint8Array; close: boolean }> {
    for (;;) {
      const end = indexOfHeaderEnd(this.#buffer);
      if (end >= 0) {
        const head = decoder.decode(this.#buffer.subarray(0, end));
        const status = Number(head.match(/^HTTP\/1\.[01] (\d{3})/)?.[1] ?? 0);
        const length = Number(head.match(/^content-length:\s*(\d+)/im)?.[1] ?? -1);
        if (length < 0) {
          throw new Error(`answer without Content-Length: ${JSON.stringify(head.slice(0, 200))}`);
        }
        while (this.#buffer.length < end + 4 + length) {
          if (!(await this.#fill())) throw new Error("connection ended inside an answer's body");
        }
        const body = this.#buffer.slice(end + 4, end + 4 + length);
        this.#buffer = this.#buffer.slice(end + 4 + length);
        return { status, body, close: /^connection:\s*close/im.test(head) };
      }
      if (!(await this.#fill())) {
        throw new Error(
          this.#buffer.length === 0
            ? "connection ended before an answer"
            : "connection ended inside an answer's head",
        );
      }
    }
  }

  /** Whether the peer ends the connection next, with no bytes left over. */
  async ended(): Promise<boolean> {
    if (this.#buffer.length > 0) return false;
    return !(await this.#fill());
  }
}

function indexOfHeaderEnd(bytes: Uint8Array): number {
  for (let i = 0; i + 3 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) return i;
  }
  return -1;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function checkAnswer(answer: { status: number; body: Uint8Array }): void {
  if (answer.status !== 200) throw new Error(`status ${answer.status}`);
  if (!sameBytes(answer.body, BODY)) {
    throw new Error(`unexpected body ${JSON.stringify(decoder.decode(answer.body))}`);
  }
}

const REQUEST = encoder.encode("GET / HTTP/1.1\r\nHost: soak\r\n\r\n");
const CLOSE_REQUEST = encoder.encode("GET / HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n");

interface Ports {
  readonly http: number;
  readonly echo: number;
  readonly rude: number;
}

async function connect(port: number): Promise<Deno.TcpConn> {
  return await Deno.connect({ hostname: "127.0.0.1", port });
}

async function keepAliveClient(ports: Ports, tally: Tally, until: number): Promise<void> {
  while (performance.now() < until) {
    let conn: Deno.Conn | null = null;
    try {
      conn = await connect(ports.http);
      tally.connected("keep-alive");
      const reader = new HttpReader(conn);
      const open = conn;
      for (let i = 0; i < SOAK_DEFAULTS.requestsPerConnection && performance.now() < until; i++) {
        await bounded(open, SOAK_DEFAULTS.stepTimeoutMs, async () => {
          await writeAll(open, REQUEST);
          checkAnswer(await reader.answer());
        });
        tally.requests++;
      }
    } catch (error) {
      tally.error("keep-alive", error);
    } finally {
      if (conn) closeQuietly(conn);
    }
  }
}

async function shortClient(ports: Ports, tally: Tally, until: number): Promise<void> {
  while (performance.now() < until) {
    let conn: Deno.Conn | null = null;
    try {
      conn = await connect(ports.http);
      tally.connected("short");
      const open = conn;
      await bounded(open, SOAK_DEFAULTS.stepTimeoutMs, async () => {
        await writeAll(open, CLOSE_REQUEST);
        const reader = new HttpReader(open);
        checkAnswer(await reader.answer());
        if (!(await reader.ended())) throw new Error("connection not ended after a Connection: close answer");
      });
      tally.requests++;
    } catch (error) {
      tally.error("short", error);
    } finally {
      if (conn) closeQuietly(conn);
    }
  }
}

/** The ways a client or a backend can break a connection off. */
const RESETS = [
  "gone before the answer",
  "reset with unread bytes",
  "connect and close",
  "backend resets",
] as const;

async function resetClient(ports: Ports, tally: Tally, until: number, offset: number): Promise<void> {
  for (let round = offset; performance.now() < until; round++) {
    const kind = RESETS[round % RESETS.length] as (typeof RESETS)[number];
    let conn: Deno.Conn | null = null;
    try {
      conn = await connect(kind === "backend resets" ? ports.rude : ports.http);
      tally.connected("reset");
      const open = conn;
      if (kind === "gone before the answer") {
        await writeAll(open, REQUEST);
      } else if (kind === "reset with unread bytes") {
        await writeAll(open, REQUEST);
        await sleep(10);
      } else if (kind === "backend resets") {
        await bounded(open, SOAK_DEFAULTS.stepTimeoutMs, async () => {
          await writeAll(open, new Uint8Array(1024));
          // the backend resets: the proxy must end this connection, by a reset or an end of stream
          try {
            while ((await open.read(new Uint8Array(1024))) !== null);
          } catch (error) {
            if (!(error instanceof Deno.errors.ConnectionReset)) throw error;
          }
        });
      }
    } catch (error) {
      tally.error(`reset (${kind})`, error);
    } finally {
      if (conn) closeQuietly(conn);
    }
  }
}

async function echoClient(ports: Ports, tally: Tally, until: number): Promise<void> {
  const payload = new Uint8Array(SOAK_DEFAULTS.echoBytes);
  while (performance.now() < until) {
    crypto.getRandomValues(payload.subarray(0, 65536));
    payload.copyWithin(65536, 0);
    let conn: Deno.TcpConn | null = null;
    try {
      conn = await connect(ports.echo);
      tally.connected("echo");
      const open = conn;
      await bounded(open, SOAK_DEFAULTS.stepTimeoutMs, async () => {
        const received = new Uint8Array(payload.length + 1);
        let got = 0;
        const reading = (async () => {
          for (;;) {
            const n = await open.read(received.subarray(got));
            if (n === null) return;
            got += n;
            if (got > payload.length) throw new Error("more bytes came back than were sent");
          }
        })();
        await writeAll(open, payload);
        await open.closeWrite();
        await reading;
        if (got !== payload.length) throw new Error(`${got} of ${payload.length} bytes came back`);
        if (!sameBytes(received.subarray(0, got), payload)) throw new Error("the bytes came back changed");
        tally.echoedBytes += got;
      });
    } catch (error) {
      tally.error("echo", error);
    } finally {
      if (conn) closeQuietly(conn);
    }
  }
}

/** The agent's Prometheus metrics as numbers by series, or null when it does not answer. */
async function agentMetrics(address: string): Promise<Map<string, number> | null> {
  try {
    const response = await fetch(`http://${address}/metrics`, { signal: AbortSignal.timeout(2_000) });
    const text = await response.text();
    const map = new Map<string, number>();
    for (const line of text.split("\n")) {
      const match = line.match(/^([^#\s][^\s]*)\s+(\S+)$/);
      if (match) map.set(match[1] as string, Number(match[2]));
    }
    return map;
  } catch {
    return null;
  }
}

function mib(kib: number | null): string {
  return kib === null ? "?" : `${(kib / 1024).toFixed(1)} MiB`;
}

const grouped = new Intl.NumberFormat("en-US");

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      duration: { type: "string" },
      decide: { type: "string" },
      main: { type: "string" },
      help: { type: "boolean" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(`Usage: deno task soak [--duration S] [--decide agent|manager] [--main FILE]

  --duration S          seconds of mixed load (default ${SOAK_DEFAULTS.durationS}) [SWITCHYARD_SOAK_DURATION]
  --decide MODE         the services' decide: agent (default) or manager [SWITCHYARD_SOAK_DECIDE]
  --main FILE           the switchyard main.ts to run (default: this checkout's) [SWITCHYARD_SOAK_MAIN]`);
    return 0;
  }
  const durationText = values.duration ?? Deno.env.get("SWITCHYARD_SOAK_DURATION") ??
    String(SOAK_DEFAULTS.durationS);
  const durationS = Number(durationText);
  if (!Number.isFinite(durationS) || durationS < 5) {
    console.error(`soak: Cannot use --duration "${durationText}": expected at least 5 seconds`);
    return 2;
  }
  const decide = values.decide ?? Deno.env.get("SWITCHYARD_SOAK_DECIDE") ?? "agent";
  if (decide !== "agent" && decide !== "manager") {
    console.error(`soak: Cannot use --decide "${decide}": expected agent or manager`);
    return 2;
  }
  const main = resolve(values.main ?? Deno.env.get("SWITCHYARD_SOAK_MAIN") ?? MAIN);
  await ensureOpenFileLimit(4_096);

  const tools = await findTools(["nginx"]);
  const procs = new Processes();
  const dir = await Deno.makeTempDir({ prefix: "switchyard-soak-" });
  const cleanup = cleanupOnInterrupt("soak", async () => {
    await procs.stopAll();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  });

  const began = performance.now();
  const tally = new Tally();
  const samples: { atS: number; kib: number }[] = [];
  const failures: string[] = [];
  let switchyard: Switchyard | null = null;
  let before: number | null = null;
  let after: number | null = null;
  let metrics: Map<string, number> | null = null;
  let openAfter: number | null = null;
  let httpServer = "";
  // taken before the processes are stopped, which makes them log their own leaving
  let logged: { agent: number; manager: number; lines: string[] } | null = null;
  try {
    const backends = await startBackends({ procs, tools, dir }, { iperf: false, rude: true });
    httpServer = backends.httpServer;
    switchyard = await startSwitchyard(procs, {
      dir,
      backends: { http: backends.ports.http, echo: backends.ports.echo, rude: backends.ports.rude },
      decide,
      maxConnections: 10_000,
      agentAdmin: true,
      main,
    });
    const agentPid = switchyard.agent.pid;
    const ports = servicePorts(switchyard);
    console.error(
      `· soak: ${durationS} s of mixed load through switchyard (decide: ${decide}), backend ${httpServer}`,
    );
    await sleep(1_000);
    before = rssKiB(agentPid);

    const start = performance.now();
    const until = start + durationS * 1_000;
    const sampler = setInterval(() => {
      const kib = rssKiB(agentPid);
      if (kib !== null) samples.push({ atS: (performance.now() - start) / 1_000, kib });
    }, 1_000);
    const progress = setInterval(() => {
      console.error(
        `· ${Math.round((performance.now() - start) / 1_000)} s: ${
          grouped.format(tally.totalConnections)
        } connections, ${tally.totalErrors} errors, agent ${mib(rssKiB(agentPid))}`,
      );
    }, 10_000);
    const clients = [
      ...Array.from({ length: SOAK_DEFAULTS.keepAliveClients }, () => keepAliveClient(ports, tally, until)),
      ...Array.from({ length: SOAK_DEFAULTS.shortClients }, () => shortClient(ports, tally, until)),
      ...Array.from({ length: SOAK_DEFAULTS.resetClients }, (_, i) => resetClient(ports, tally, until, i)),
      ...Array.from({ length: SOAK_DEFAULTS.echoClients }, () => echoClient(ports, tally, until)),
    ];
    await Promise.all(clients);
    clearInterval(sampler);
    clearInterval(progress);

    // every flow must be closed soon after the clients are gone
    const admin = switchyard.agentAdmin as string;
    const settleUntil = performance.now() + 10_000;
    for (;;) {
      metrics = await agentMetrics(admin);
      openAfter = metrics?.get("switchyard_active_connections") ?? null;
      if (openAfter === 0 || performance.now() > settleUntil) break;
      await sleep(250);
    }
    await sleep(1_000);
    after = rssKiB(agentPid);
    if (openAfter !== 0) {
      failures.push(`the agent still had ${openAfter ?? "?"} open connections 10 s after the load`);
    }
    const failure = switchyard.failure();
    if (failure !== null) failures.push(failure);
    const errorLines = [...switchyard.agent.problems, ...switchyard.manager.problems].filter((line) =>
      /^error|fatal/i.test(line.level)
    );
    if (errorLines.length > 0) failures.push(`switchyard logged ${errorLines.length} errors`);
    logged = {
      agent: switchyard.agent.problems.length,
      manager: switchyard.manager.problems.length,
      lines: switchyard.problems(),
    };
  } catch (error) {
    failures.push(`the soak could not run: ${error instanceof Error ? error.message : String(error)}`);
  } finally {
    await cleanup();
  }

  const at = (fraction: number) => {
    if (samples.length === 0) return null;
    const target = durationS * fraction;
    return samples.reduce((best, sample) =>
      Math.abs(sample.atS - target) < Math.abs(best.atS - target) ? sample : best
    );
  };
  const startSample = at(0.1);
  const middle = at(0.5);
  const end = samples.at(-1) ?? null;
  const peak = samples.reduce((max, sample) => Math.max(max, sample.kib), 0);
  let flat = false;
  if (middle && end) {
    const allowed = middle.kib * SOAK_DEFAULTS.flatGrowth + SOAK_DEFAULTS.flatSlackKiB;
    flat = end.kib - middle.kib <= allowed;
    if (!flat) {
      failures.push(
        `memory is not flat: ${mib(middle.kib)} at ${middle.atS.toFixed(0)} s, ${mib(end.kib)} at ${
          end.atS.toFixed(0)
        } s (allowed +${mib(allowed)})`,
      );
    }
  } else if (switchyard !== null) {
    failures.push("no memory samples of the agent");
  }
  if (tally.totalErrors > 0) failures.push(`${tally.totalErrors} client errors`);

  const kinds = ["keep-alive", "short", "reset", "echo"].map((kind) =>
    `${kind} ${grouped.format(tally.connections.get(kind) ?? 0)}`
  );
  const served = metrics?.get("switchyard_agent_connections_served_total");
  const lines = [
    `## switchyard soak — ${new Date().toISOString().slice(0, 19)}Z`,
    "",
    `${durationS} s of mixed load through one agent (decide: ${decide}); HTTP backend ${httpServer}; ` +
    `${SOAK_DEFAULTS.keepAliveClients} keep-alive, ${SOAK_DEFAULTS.shortClients} short, ` +
    `${SOAK_DEFAULTS.resetClients} reset and ${SOAK_DEFAULTS.echoClients} echo clients.`,
    "",
    `- connections made: ${grouped.format(tally.totalConnections)} (${kinds.join(", ")}); ` +
    `${grouped.format(tally.requests)} HTTP answers checked, ${
      mib(tally.echoedBytes / 1024)
    } echoed and compared`,
    `- agent: ${served === undefined ? "?" : grouped.format(served)} connections served; ` +
    `${openAfter ?? "?"} open after the load`,
    `- errors: ${tally.totalErrors}${
      tally.totalErrors > 0
        ? ` — ${
          [...tally.errors].sort((a, b) => b[1] - a[1]).slice(0, 10).map(([text, n]) =>
            `${n}× ${text}`
          ).join("; ")
        }`
        : ""
    }`,
    `- agent RSS: before ${mib(before)} · start (${startSample?.atS.toFixed(0) ?? "?"} s) ${
      mib(startSample?.kib ?? null)
    } · ` +
    `middle (${middle?.atS.toFixed(0) ?? "?"} s) ${mib(middle?.kib ?? null)} · end (${
      end?.atS.toFixed(0) ?? "?"
    } s) ` +
    `${mib(end?.kib ?? null)} · peak ${mib(peak)} · after the load ${mib(after)}`,
    `- switchyard logged: ${
      logged === null
        ? "?"
        : `${logged.agent} agent and ${logged.manager} manager warnings/errors${
          logged.lines.length > 0
            ? ` (first: ${logged.lines.slice(0, 3).map((line) => line.slice(0, 200)).join("; ")})`
            : ""
        }`
    }`,
    `- took ${Math.round((performance.now() - began) / 1_000)} s`,
    "",
    failures.length === 0 ? "Result: PASS — no error, flat memory" : `Result: FAIL — ${failures.join("; ")}`,
    "",
  ];
  console.log(lines.join("\n"));
  return failures.length === 0 ? 0 : 1;
}

/** The ports the agent bound for the soak's services. */
function servicePorts(switchyard: Switchyard): Ports {
  const port = (service: string) => {
    const bound = switchyard.bound[service];
    if (bound === undefined) throw new Error(`The agent does not listen for service ${service}`);
    return bound;
  };
  return { http: port("http"), echo: port("echo"), rude: port("rude") };
}

if (import.meta.main) {
  Deno.exit(await main());
}
