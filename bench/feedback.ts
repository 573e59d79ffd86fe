/**
 * Feedback at fleet scale, measured on loopback with real processes (`main.ts manager`, `main.ts agent`):
 *
 * 1. **rates**: reports/s over one keep-alive connection, single reports sent one after the other and
 *    batches of 1,000, to a service of 10, 100 and 1,000 backends (one agent attached); meanwhile the
 *    manager, started with `_turns.ts` preloaded, tells how long the turns of its event loop ran;
 * 2. **cpu**: the manager's CPU at 1,000 single reports/s for a service of 1,000 backends, two agents
 *    attached, and the time a report's weight takes to reach every agent's table (posted, then
 *    `GET /v1/agents` until each acknowledges the version the answer names);
 * 3. **decide**: 2,000 connections, 10 at a time, through an agent to another service with
 *    `decide: manager`: without feedback, with 1,000 reports/s for a service of 100 backends of the same
 *    manager, and with the same load sent to another manager (the control: what the reporter and a manager
 *    cost this machine's two cores, without touching the manager that decides); the three in turn;
 * 4. **health**: the manager's CPU while it checks 1,000 backends over TCP every second, all up (each
 *    accepts) and all down (nothing listens), after their state settled.
 *
 * Each measurement runs `--rounds` times (3) on fresh processes; the tables give medians and every round.
 *
 *   deno run --allow-all bench/feedback.ts [--rounds 3] [--duration 4] [--only rates,cpu,decide,health]
 *
 * The feedback load of `cpu` and `decide` comes from a child process (this file with `--reporter`), so
 * that it does not share an event loop with the connections being timed.
 */
import { parseArgs } from "node:util";
import net from "node:net";
import { writeAll } from "../cluster/write_all.ts";
import { V8_FLAGS } from "../scripts/compile.ts";
import { testConfig } from "../tests/_config.ts";
import type { Proc } from "../tests/_helpers.ts";
import { cleanupOnInterrupt, cpuMs, Processes, randomHex } from "./_procs.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const SELF = new URL(import.meta.url).pathname;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

// ---------------------------------------------------------------------------------------------------------
// A bare HTTP/1.1 client over one keep-alive connection: the load must cost the machine little.

class KeepAlive {
  readonly #conn: Deno.TcpConn;
  #buffer = new Uint8Array(64 * 1024);

  private constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
    conn.setNoDelay(true);
  }

  static async open(address: string): Promise<KeepAlive> {
    const [host, port] = splitAddress(address);
    return new KeepAlive(await Deno.connect({ hostname: host, port }));
  }

  /** Sends one whole request and reads its answer; returns the status and the body. */
  async request(bytes: Uint8Array): Promise<{ status: number; body: string }> {
    await writeAll(this.#conn, bytes);
    let length = 0;
    let end = -1;
    for (;;) {
      if (length === this.#buffer.length) {
        const grown = new Uint8Array(this.#buffer.length * 2);
        grown.set(this.#buffer);
        this.#buffer = grown;
      }
      const n = await this.#conn.read(this.#buffer.subarray(length));
      if (n === null) throw new Error("The manager closed the connection");
      length += n;
      if (end < 0) {
        const head = decoder.decode(this.#buffer.subarray(0, Math.min(length, 4096)));
        const split = head.indexOf("\r\n\r\n");
        if (split < 0) continue;
        const size = /\r\ncontent-length: *(\d+)/i.exec(head.slice(0, split));
        if (!size) throw new Error(`An answer without content-length: ${head.slice(0, 200)}`);
        end = split + 4 + Number(size[1]);
      }
      if (length >= end) {
        const text = decoder.decode(this.#buffer.subarray(0, end));
        const split = text.indexOf("\r\n\r\n");
        return { status: Number(text.slice(9, 12)), body: text.slice(split + 4) };
      }
    }
  }

  close(): void {
    try {
      this.#conn.close();
    } catch {
      // closed
    }
  }
}

function httpRequest(method: string, path: string, token: string, body = ""): Uint8Array {
  const bytes = encoder.encode(body);
  const head = `${method} ${path} HTTP/1.1\r\nhost: manager\r\nauthorization: Bearer ${token}\r\n` +
    `content-type: application/json\r\ncontent-length: ${bytes.length}\r\n\r\n`;
  const request = new Uint8Array(encoder.encode(head).length + bytes.length);
  request.set(encoder.encode(head));
  request.set(bytes, request.length - bytes.length);
  return request;
}

function splitAddress(address: string): [string, number] {
  const at = address.lastIndexOf(":");
  return [address.slice(0, at), Number(address.slice(at + 1))];
}

/** The `i`-th backend address of a feedback service: loopback, never connected to during the bench. */
function backendAddress(i: number): string {
  return `127.2.${i >> 8}.${(i & 255) + 1}:9`;
}

/**
 * `count` requests reporting weights for a service of `backends` backends, `batch` reports each: every
 * report names the next backend with a weight other than the one before, so every one changes a weight.
 */
function feedbackRequests(
  service: string,
  options: { backends: number; batch: number; count: number; token: string },
): Uint8Array[] {
  const { backends, batch, count, token } = options;
  let next = 0;
  return Array.from({ length: count }, (_, r) => {
    const reports = Array.from({ length: batch }, () => {
      const i = next++;
      return { service, backend: backendAddress(i % backends), weight: 20 + ((i * 37 + r) % 80) };
    });
    return httpRequest("POST", "/v1/feedback", token, JSON.stringify(batch === 1 ? reports[0] : reports));
  });
}

// ---------------------------------------------------------------------------------------------------------
// The reporter child: single reports over one keep-alive connection at a rate, until its duration ends.

async function reporter(args: string[]): Promise<void> {
  const [admin, token, service, backends, rate, seconds] = args;
  const client = await KeepAlive.open(admin!);
  const requests = feedbackRequests(service!, {
    backends: Number(backends),
    batch: 1,
    count: 4_096,
    token: token!,
  });
  const started = performance.now();
  const until = started + Number(seconds) * 1_000;
  let sent = 0;
  let failed = 0;
  while (performance.now() < until) {
    const due = Math.floor(((performance.now() - started) / 1_000) * Number(rate));
    while (sent < due && performance.now() < until) {
      const { status } = await client.request(requests[sent % requests.length]!);
      if (status !== 202) failed++;
      sent++;
    }
    // Those due every 10 ms, one after the other: a wake-up per report would cost this machine more than
    // the reports cost the manager.
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  client.close();
  console.log(JSON.stringify({ sent, failed, seconds: (performance.now() - started) / 1_000 }));
}

/** The listeners child: `count` loopback listeners that accept and close, for health checks that pass. */
async function listeners(args: string[]): Promise<void> {
  const count = Number(args[0]);
  const open = Array.from({ length: count }, () => Deno.listen({ hostname: "127.0.0.1", port: 0 }));
  console.log(JSON.stringify(open.map((listener) => listener.addr.port)));
  await Promise.all(open.map(async (listener) => {
    for await (const conn of listener) conn.close();
  }));
}

// ---------------------------------------------------------------------------------------------------------
// The cluster under test

interface Cluster {
  readonly manager: Proc;
  readonly agents: Proc[];
  readonly admin: string;
  readonly token: string;
  /** Each service's bound port on the first agent. */
  readonly ports: Map<string, number>;
  stop(): Promise<void>;
}

async function startCluster(
  procs: Processes,
  options: {
    dir: string;
    services: Record<string, unknown>[];
    agents: number;
    main: string;
    /** Preload `_turns.ts` into the manager, which then tells how long its event loop's turns run. */
    timeTurns?: boolean;
  },
): Promise<Cluster> {
  const dir = await Deno.makeTempDir({ dir: options.dir });
  const token = randomHex(24);
  await Deno.writeTextFile(`${dir}/cluster.token`, randomHex(32));
  await Deno.writeTextFile(
    `${dir}/switchyard.yaml`,
    testConfig({
      manager: { tokens: { admin: token, cluster: { file: `${dir}/cluster.token` } } },
      heartbeat: "1s",
      services: options.services,
    }),
  );
  const run = ["run", "--allow-all", "--unstable-net", `--v8-flags=${V8_FLAGS.join(",")}`, options.main];
  const preload = options.timeTurns ? ["--preload", new URL("./_turns.ts", import.meta.url).pathname] : [];
  const manager = procs.spawn("manager", Deno.execPath(), [
    ...run.slice(0, -1),
    ...preload,
    options.main,
    "manager",
    "--config",
    `${dir}/switchyard.yaml`,
    "--log-format",
    "json",
  ]);
  const ready = await manager.waitForLog((line) => line.message.startsWith("Manager serving"));
  const agents = Array.from(
    { length: options.agents },
    (_, i) =>
      procs.spawn(`agent ${i + 1}`, Deno.execPath(), [
        ...run,
        "agent",
        "--manager",
        String(ready.properties.cluster),
        "--token-file",
        `${dir}/cluster.token`,
        "--id",
        `bench-${i + 1}`,
        "--log-format",
        "json",
      ]),
  );
  const ports = new Map<string, number>();
  for (const service of options.services) {
    for (const agent of agents) {
      const line = await agent.waitForLog((l) =>
        l.message.startsWith("Service") && l.properties.service === service.name &&
        l.properties.bound !== undefined
      );
      if (agent === agents[0]) {
        ports.set(String(service.name), Number(String(line.properties.bound).split(":").pop()));
      }
    }
  }
  const admin = String(ready.properties.admin);
  // Every agent has joined and serves the first state.
  const client = await KeepAlive.open(admin);
  for (let i = 0; i < 200; i++) {
    const { body } = await client.request(httpRequest("GET", "/v1/agents", token));
    const joined = (JSON.parse(body) as { agents: Array<{ state_version: number }> }).agents;
    if (joined.length === options.agents && joined.every((agent) => agent.state_version >= 0)) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  client.close();
  return {
    manager,
    agents,
    admin,
    token,
    ports,
    async stop() {
      for (const proc of [...agents, manager]) {
        if (proc.exit !== null) throw new Error(`${proc.name} exited: ${proc.tail.slice(-5).join(" | ")}`);
      }
      await Promise.all([...agents, manager].map((proc) => procs.stop(proc)));
      await Deno.remove(dir, { recursive: true });
    },
  };
}

function feedbackService(name: string, backends: number, port = 0): Record<string, unknown> {
  return {
    name,
    listen: `127.0.0.1:${port}`,
    decide: "agent",
    // Checked once an hour: this measures feedback; health checks are measured on their own.
    health: { interval: "1h", timeout: "1s" },
    backends: Array.from({ length: backends }, (_, i) => ({ address: backendAddress(i), weight: 100 })),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Measurements

/**
 * The manager's event-loop turns while `body` runs, from the lines `_turns.ts` writes (the manager must
 * have been started with it preloaded): each half second's p99 and longest, in ms.
 */
async function whileTiming<T>(
  cluster: Cluster,
  body: () => Promise<T>,
): Promise<{ result: T; turns: Turns[] }> {
  const from = cluster.manager.logs.length;
  const result = await body();
  // The half second under way when the body ended.
  await new Promise((resolve) => setTimeout(resolve, 600));
  const turns = cluster.manager.logs.slice(from).filter((line) => line.message === "turns")
    .map((line) => line.properties as unknown as Turns);
  return { result, turns };
}

interface Turns {
  readonly p99: number;
  readonly max: number;
  readonly count: number;
}

async function reportsPerSecond(
  cluster: Cluster,
  options: { backends: number; batch: number; seconds: number },
): Promise<{ rate: number; turns: Turns[] }> {
  const client = await KeepAlive.open(cluster.admin);
  const requests = feedbackRequests("api", {
    ...options,
    count: options.batch === 1 ? 4_096 : 16,
    token: cluster.token,
  });
  // Warm the paths up first: a fresh manager's first second is its JIT's, not its rate.
  const warm = performance.now();
  for (let i = 0; performance.now() - warm < 1_500; i++) await client.request(requests[i % requests.length]!);
  const { result, turns } = await whileTiming(cluster, async () => {
    const started = performance.now();
    let sent = 0;
    while (performance.now() - started < options.seconds * 1_000) {
      const { status, body } = await client.request(requests[sent % requests.length]!);
      if (status !== 202) throw new Error(`POST /v1/feedback answered ${status}: ${body.slice(0, 200)}`);
      sent++;
    }
    return (sent * options.batch) / ((performance.now() - started) / 1_000);
  });
  client.close();
  return { rate: result, turns };
}

function startReporter(
  procs: Processes,
  cluster: Cluster,
  options: { backends: number; rate: number; seconds: number },
) {
  const proc = procs.spawn("reporter", Deno.execPath(), [
    "run",
    "--allow-all",
    SELF,
    "--reporter",
    cluster.admin,
    cluster.token,
    "api",
    String(options.backends),
    String(options.rate),
    String(options.seconds),
  ]);
  return {
    /** Waits for its duration to end; what it sent. */
    async done(): Promise<{ sent: number; failed: number; seconds: number }> {
      const status = await proc.exited;
      await procs.stop(proc);
      if (!status.success) throw new Error(`The reporter failed: ${proc.tail.slice(-5).join(" | ")}`);
      return JSON.parse(proc.stdout.trim().split("\n").pop()!);
    },
    /** Stops it before its duration ends. */
    async stop(): Promise<void> {
      await procs.stop(proc);
    },
  };
}

/** How long a report posted now takes to reach every agent's table, in ms. */
async function timeToTables(cluster: Cluster, backend: number, weight: number): Promise<number> {
  const client = await KeepAlive.open(cluster.admin);
  try {
    const started = performance.now();
    const answer = await client.request(
      httpRequest(
        "POST",
        "/v1/feedback",
        cluster.token,
        JSON.stringify({ service: "api", backend: backendAddress(backend), weight }),
      ),
    );
    const { version } = JSON.parse(answer.body) as { version: number };
    const agents = httpRequest("GET", "/v1/agents", cluster.token);
    for (;;) {
      const { body } = await client.request(agents);
      const seen = (JSON.parse(body) as { agents: Array<{ state_version: number }> }).agents;
      if (seen.every((agent) => agent.state_version >= version)) return performance.now() - started;
      if (performance.now() - started > 10_000) {
        throw new Error(`Version ${version} did not reach the agents`);
      }
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
  } finally {
    client.close();
  }
}

/** `count` connections through `port`, `concurrency` at a time, each one byte echoed; total ms and each one's. */
async function connections(port: number, count: number, concurrency: number) {
  const each: number[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < count) {
      next++;
      const begun = performance.now();
      await new Promise<void>((resolve, reject) => {
        const socket = net.connect({ host: "127.0.0.1", port });
        socket.setNoDelay(true);
        socket.once("connect", () => socket.write("x"));
        socket.once("data", () => {
          socket.destroy();
          resolve();
        });
        socket.once("error", reject);
      });
      each.push(performance.now() - begun);
    }
  }));
  return { totalMs: performance.now() - started, each };
}

// ---------------------------------------------------------------------------------------------------------
// Figures

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? NaN;
}

function figure(value: number, digits = 0): string {
  return value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function cpuShare(pid: number, run: () => Promise<unknown>): Promise<number> {
  const before = cpuMs(pid) ?? 0;
  const started = performance.now();
  return run().then(() => ((cpuMs(pid) ?? 0) - before) / (performance.now() - started) * 100);
}

// ---------------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      rounds: { type: "string", default: "3" },
      duration: { type: "string", default: "4" },
      only: { type: "string", default: "rates,cpu,decide,health" },
      main: { type: "string", default: MAIN },
    },
  });
  const rounds = Number(values.rounds);
  const seconds = Number(values.duration);
  const only = new Set(values.only.split(","));
  const procs = new Processes();
  const dir = await Deno.makeTempDir({ prefix: "switchyard-feedback-bench-" });
  const cleanup = cleanupOnInterrupt("feedback bench", async () => {
    await procs.stopAll();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  });
  const report: string[] = [];
  const say = (line: string) => {
    console.log(line);
    report.push(line);
  };
  const context = { dir, main: values.main };
  try {
    say(`# switchyard feedback bench\n\n${rounds} rounds of ${seconds} s; medians, then every round.\n`);

    if (only.has("rates")) {
      const rows: string[] = [];
      for (const backends of [10, 100, 1_000]) {
        const single: number[] = [];
        const batched: number[] = [];
        // The turns of the manager's event loop, ms: the p99 and the longest of each measurement.
        const turns: Array<{ p99: number; max: number }> = [];
        for (let round = 0; round < rounds; round++) {
          const cluster = await startCluster(procs, {
            ...context,
            services: [feedbackService("api", backends)],
            agents: 1,
            timeTurns: true,
          });
          for (const batch of [1, 1_000]) {
            const measured = await reportsPerSecond(cluster, { backends, batch, seconds });
            (batch === 1 ? single : batched).push(measured.rate);
            turns.push({
              p99: median(measured.turns.map((t) => t.p99)),
              max: Math.max(...measured.turns.map((t) => t.max)),
            });
          }
          await cluster.stop();
        }
        const turnText = (batch: number) => {
          const mine = turns.filter((_, i) => i % 2 === (batch === 1 ? 0 : 1));
          return `${figure(median(mine.map((t) => t.p99)), 1)} / ${
            figure(median(mine.map((t) => t.max)), 1)
          }`;
        };
        const list = (values: number[]) => values.map((v) => figure(v)).join(", ");
        rows.push(
          `| ${figure(backends)} | ${figure(median(single))} | ${list(single)} | ${turnText(1)} | ` +
            `${figure(median(batched))} | ${list(batched)} | ${turnText(1_000)} |`,
        );
      }
      say(
        "## Reports/s over one keep-alive connection (one agent attached)\n\n" +
          "turns: how long the manager's event loop ran between two looks at a 1 ms interval (`_turns.ts`), " +
          "ms: the median of each half second's p99 / the longest, medians of the rounds.\n\n" +
          "| backends | single | rounds | turns | batches of 1,000 | rounds | turns |\n" +
          "| ---: | ---: | --- | ---: | ---: | --- | ---: |\n" + rows.join("\n") + "\n",
      );
    }

    if (only.has("cpu")) {
      const cpu: number[] = [];
      const agentCpu: number[] = [];
      const reach: number[] = [];
      const sent: number[] = [];
      for (let round = 0; round < rounds; round++) {
        const cluster = await startCluster(procs, {
          ...context,
          services: [feedbackService("api", 1_000)],
          agents: 2,
        });
        const load = startReporter(procs, cluster, {
          backends: 1_000,
          rate: 1_000,
          seconds: seconds + 5,
        });
        await new Promise((resolve) => setTimeout(resolve, 1_500));
        const agentBefore = cluster.agents.map((agent) => cpuMs(agent.pid) ?? 0);
        const startedAt = performance.now();
        cpu.push(
          await cpuShare(
            cluster.manager.pid,
            () => new Promise((resolve) => setTimeout(resolve, seconds * 1_000)),
          ),
        );
        const elapsed = performance.now() - startedAt;
        agentCpu.push(
          median(
            cluster.agents.map((agent, i) => ((cpuMs(agent.pid) ?? 0) - agentBefore[i]!) / elapsed * 100),
          ),
        );
        // Then, under the same load, reports whose weight must reach both agents' tables.
        for (let probe = 0; probe < 8; probe++) {
          reach.push(await timeToTables(cluster, 999, probe % 2 === 0 ? 0 : 100));
          await new Promise((resolve) => setTimeout(resolve, 200));
        }
        const done = await load.done();
        sent.push(done.sent / done.seconds);
        if (done.failed > 0) throw new Error(`${done.failed} reports were refused`);
        await cluster.stop();
      }
      say(
        "## 1,000 reports/s for a service of 1,000 backends, two agents attached\n\n" +
          "| figure | median | rounds |\n| --- | ---: | --- |\n" +
          `| reports/s sent | ${figure(median(sent))} | ${sent.map((v) => figure(v)).join(", ")} |\n` +
          `| manager CPU, % of a core | ${figure(median(cpu), 1)} | ${
            cpu.map((v) => figure(v, 1)).join(", ")
          } |\n` +
          `| each agent's CPU, % of a core | ${figure(median(agentCpu), 1)} | ${
            agentCpu.map((v) => figure(v, 1)).join(", ")
          } |\n` +
          `| report to both agents' tables, ms (p50 / max of ${reach.length}) | ${
            figure(median(reach), 1)
          } / ${figure(Math.max(...reach), 1)} | |\n`,
      );
    }

    if (only.has("decide")) {
      const echo = procs.spawn("echo backend", Deno.execPath(), [
        "run",
        "--allow-net",
        new URL("./_backends.ts", import.meta.url).pathname,
        "echo",
      ]);
      const echoPort = Number((await echo.waitForStdout(/"echo":\s*(\d+)/))[1]);
      const cluster = await startCluster(procs, {
        ...context,
        services: [
          feedbackService("api", 100),
          {
            name: "web",
            listen: "127.0.0.1:0",
            decide: "manager",
            decision_timeout: "500ms",
            backends: [`127.0.0.1:${echoPort}`],
          },
        ],
        agents: 1,
      });
      // The control: the same load sent to another manager, which costs this machine the same CPU (the
      // reporter's and a manager's) without touching the manager that decides.
      const elsewhere = await startCluster(procs, {
        ...context,
        services: [feedbackService("api", 100)],
        agents: 0,
      });
      const conditions = ["none", "this manager", "another manager"] as const;
      const totals = conditions.map(() => [] as number[]);
      const p50 = conditions.map(() => [] as number[]);
      const p99 = conditions.map(() => [] as number[]);
      const port = cluster.ports.get("web")!;
      // Warm the path of a new connection up (the agent's, the manager's decisions) before timing it.
      await connections(port, 1_000, 10);
      // Each round runs the three conditions back to back, in an order that turns by one each round: the
      // machine's speed drifts by tens of percent within a minute, and a ratio of runs seconds apart
      // says more than one of runs minutes apart.
      for (let run = 0; run < rounds * conditions.length; run++) {
        const round = Math.floor(run / conditions.length);
        const condition = (run + round) % conditions.length;
        const target = condition === 1 ? cluster : condition === 2 ? elsewhere : null;
        const load = target
          ? startReporter(procs, target, { backends: 100, rate: 1_000, seconds: 60 })
          : null;
        if (load) await new Promise((resolve) => setTimeout(resolve, 1_000));
        const { totalMs, each } = await connections(port, 2_000, 10);
        totals[condition]![round] = totalMs;
        p50[condition]![round] = percentile(each, 0.5);
        p99[condition]![round] = percentile(each, 0.99);
        if (load) await load.stop();
      }
      await elsewhere.stop();
      await cluster.stop();
      await procs.stop(echo);
      const ratios = (i: number) => totals[i]!.map((total, round) => total / totals[0]![round]!);
      const rows = conditions.map((condition, i) =>
        `| ${condition === "none" ? "none" : `1,000 reports/s to ${condition}`} | ${
          figure(median(totals[i]!))
        } | ` +
        `${totals[i]!.map((v) => figure(v)).join(", ")} | ${figure(median(ratios(i)), 2)}× | ` +
        `${figure(median(p50[i]!), 2)} | ${figure(median(p99[i]!), 2)} |`
      );
      say(
        "## 2,000 connections (10 at a time) to a service with decide: manager, while 1,000 reports/s come " +
          "for a service of 100 backends\n\n" +
          "× none: the median of each round's ratio to the run without load of the same round.\n\n" +
          "| feedback load | total, ms | rounds | × none | p50 ms | p99 ms |\n| --- | ---: | --- | ---: | ---: | ---: |\n" +
          rows.join("\n") + "\n",
      );
    }

    if (only.has("health")) {
      const rows: string[] = [];
      for (const up of [true, false]) {
        const shares: number[] = [];
        for (let round = 0; round < rounds; round++) {
          let ports: number[];
          let served: Proc | null = null;
          if (up) {
            served = procs.spawn("listeners", Deno.execPath(), [
              "run",
              "--allow-net",
              SELF,
              "--listeners",
              "1000",
            ]);
            ports = JSON.parse((await served.waitForStdout(/^\[.*\]$/m))[0]) as number[];
          } else {
            const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
            const closed = probe.addr.port;
            probe.close();
            ports = Array.from({ length: 1_000 }, () => closed);
          }
          const cluster = await startCluster(procs, {
            ...context,
            services: [{
              name: "checked",
              listen: "127.0.0.1:0",
              health: { kind: "tcp", interval: "1s", timeout: "500ms" },
              backends: ports.map((port, i) => ({
                address: `127.0.${(i >> 8) + 1}.${(i & 255) + 1}:${port}`,
              })),
            }],
            agents: 0,
          });
          // Every backend checked a few times (down after fall = 3), then the steady cost.
          await new Promise((resolve) => setTimeout(resolve, 5_000));
          shares.push(
            await cpuShare(
              cluster.manager.pid,
              () => new Promise((resolve) => setTimeout(resolve, seconds * 1_000)),
            ),
          );
          await cluster.stop();
          if (served) await procs.stop(served);
        }
        rows.push(
          `| ${up ? "up" : "down"} | ${figure(median(shares), 1)} | ${
            shares.map((v) => figure(v, 1)).join(", ")
          } |`,
        );
      }
      say(
        "## 1,000 backends checked over TCP every second\n\n| backends | manager CPU, % of a core | rounds |\n" +
          "| --- | ---: | --- |\n" + rows.join("\n") + "\n",
      );
    }
    await Deno.mkdir(new URL("./out", import.meta.url), { recursive: true });
    await Deno.writeTextFile(new URL("./out/feedback.md", import.meta.url), report.join("\n") + "\n");
  } finally {
    await cleanup();
  }
}

if (Deno.args[0] === "--reporter") await reporter(Deno.args.slice(1));
else if (Deno.args[0] === "--listeners") await listeners(Deno.args.slice(1));
else await main();
