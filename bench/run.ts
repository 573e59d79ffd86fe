/**
 * `deno task bench`: switchyard side by side with HAProxy and nginx `stream`, on loopback, under the same
 * load, in one command. Starts the backends (nginx HTTP, iperf3 server, redis-server, an echo server), then
 * each target in turn — the direct path, HAProxy (`mode tcp`, `nbthread 1`), nginx `stream` (one worker),
 * switchyard on the epoll relay with `decide: agent`, with `decide: manager` (decided ahead, the default)
 * and with `decide: manager, decide_ahead: 0s` (asked per connection), one manager and one agent each; with
 * two agents sharing each port with reusePort (`decide: agent`, `handoff: local`), and with
 * `decide: agent` on Deno's sockets (`--data-path deno`) — and measures:
 *
 * - keep-alive requests/s and p50/p99 latency (wrk), new connections/s (wrk, `Connection: close`);
 * - bulk throughput (iperf3, one stream);
 * - pipelined SET and GET requests/s (`redis-benchmark -P 16`);
 * - resident memory per idle connection, with 10,000 connections held open through the proxy.
 *
 * The load runs in rounds (3 by default): every target in turn on a fresh process, then again, and the
 * table gives each figure's median, so a burst of other work on a shared machine skews every target of
 * one round alike instead of one target's whole figure. HAProxy, the baseline, runs once through all
 * rounds and gets the same load right before or right after each other target's: a ratio to HAProxy is the
 * median of the ratios of runs seconds apart, on a machine whose speed drifts within a minute.
 *
 * Prints one markdown table, every figure with its ratio to HAProxy's from the same run, and writes it to
 * bench/out/latest.md. A missing tool skips its columns (run `bash bench/setup`); the exit code is 1 only
 * when switchyard itself fails. Every process and temp file is removed at the end, also on error or Ctrl-C.
 */
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import {
  openIdleCrowd,
  redisMean,
  redisRequests,
  type RedisResult,
  runIperf,
  runRedisBenchmark,
  runWrk,
  type WrkResult,
} from "./_load.ts";
import {
  cleanupOnInterrupt,
  cpuMs,
  ensureOpenFileLimit,
  killBoundedRuns,
  openFileLimit,
  Processes,
  rssKiB,
  runBounded,
  sleep,
} from "./_procs.ts";
import { formatTable, median, type Row } from "./_table.ts";
import {
  type DataPath,
  directTarget,
  findTools,
  MAIN,
  type RunningTarget,
  startBackends,
  type StartContext,
  startHaproxy,
  startNginxStream,
  startSwitchyard,
  type Tools,
} from "./_targets.ts";

/** Every default of the bench; `--quick` replaces some of them. */
export const BENCH_DEFAULTS = {
  /** Rounds of load: every target in turn, then again; the table gives each figure's median. */
  rounds: 3,
  /** Seconds of each measured wrk run. */
  durationS: 5,
  /**
   * Seconds of load before the measured runs of each target (JIT, caches, pools): keep-alive before the
   * keep-alive run, `Connection: close` before the new-connection run. A fresh agent under keep-alive load
   * had a p99 of 2.8-3.8 ms in its first 2 s, 2.2-3.1 in the next 2 and 2.0-2.3 from 4-6 s on.
   */
  warmupS: 5,
  /** Seconds of each iperf3 run. */
  iperfDurationS: 3,
  /**
   * Seconds of redis-benchmark load before its measured run (`--warmup` when that is shorter). The target
   * has carried the wrk and iperf3 loads by then, so its code is compiled: this settles the 50 connections
   * and gives the rate that sizes the measured run (`-n`) to last `--duration` seconds.
   */
  redisWarmupS: 2,
  /** Requests of each test of the first, short redis-benchmark run, whose rate sizes the next. */
  redisSizingRequests: 50_000,
  /** wrk's threads and connections. */
  threads: 1,
  connections: 50,
  /** Idle connections held open for the memory figure. */
  idleConnections: 10_000,
} as const;

const QUICK = { rounds: 1, durationS: 3, warmupS: 1, iperfDurationS: 2, idleConnections: 2_000 } as const;

/** File descriptors a process needs besides two per proxied connection. */
const FD_MARGIN = 100;

interface Options {
  rounds: number;
  durationS: number;
  warmupS: number;
  iperfDurationS: number;
  threads: number;
  connections: number;
  idleConnections: number;
  only: string[] | null;
  main: string;
}

interface TargetSpec {
  readonly key: string;
  readonly label: string;
  readonly needs: readonly (keyof Tools)[];
  readonly switchyard: boolean;
  readonly start: (context: StartContext) => Promise<RunningTarget>;
}

/** switchyard as a target: one manager and `agents` agents sharing each port, on the given data path. */
function switchyardTarget(
  key: string,
  label: string,
  options: { decide: "agent" | "manager"; agents: number; dataPath: DataPath; decideAhead?: string },
): TargetSpec {
  return {
    key,
    label,
    needs: [],
    switchyard: true,
    start: (c: StartContext) =>
      startSwitchyard(c.procs, {
        dir: c.dir,
        backends: c.backends,
        maxConnections: c.maxConnections,
        main: c.main,
        ...options,
      }),
  };
}

const TARGETS: readonly TargetSpec[] = [
  {
    key: "direct",
    label: "direct (no proxy)",
    needs: [],
    switchyard: false,
    start: (c) => Promise.resolve(directTarget(c)),
  },
  {
    key: "haproxy",
    label: "HAProxy (mode tcp, nbthread 1)",
    needs: ["haproxy"],
    switchyard: false,
    start: startHaproxy,
  },
  {
    key: "nginx",
    label: "nginx stream (1 worker)",
    needs: ["nginx", "nginxStream"],
    switchyard: false,
    start: startNginxStream,
  },
  switchyardTarget("agent", "switchyard decide: agent (epoll)", {
    decide: "agent",
    agents: 1,
    dataPath: "epoll",
  }),
  switchyardTarget("manager", "switchyard decide: manager (epoll)", {
    decide: "manager",
    agents: 1,
    dataPath: "epoll",
  }),
  // The patent's literal flow: the claimant asks the manager about each new connection.
  switchyardTarget("manager0", "switchyard decide: manager, decide_ahead 0s (epoll)", {
    decide: "manager",
    agents: 1,
    dataPath: "epoll",
    decideAhead: "0s",
  }),
  switchyardTarget("agents2", "switchyard decide: agent, 2 agents (epoll)", {
    decide: "agent",
    agents: 2,
    dataPath: "epoll",
  }),
  // The data path an agent falls back to (no FFI, another OS) or is asked for keeps its own row.
  switchyardTarget("sockets", "switchyard decide: agent, Deno's sockets", {
    decide: "agent",
    agents: 1,
    dataPath: "deno",
  }),
];

const USAGE = `Usage: deno task bench [--quick] [--rounds N] [--duration S] [--warmup S] [--iperf-duration S]
                       [--connections N] [--threads N] [--idle N] [--only KEYS] [--main FILE]

  --quick             about 4 minutes: ${QUICK.rounds} round, ${QUICK.durationS} s runs, ${QUICK.iperfDurationS} s iperf3, ${QUICK.idleConnections} idle connections
  --rounds N          rounds of load, each target in turn, HAProxy's same load right before or after each;
                      the table gives medians (default ${BENCH_DEFAULTS.rounds})
  --duration S        seconds of each wrk run, and about that of each redis-benchmark run, whose -n is sized
                      from its warm-up's rate (default ${BENCH_DEFAULTS.durationS})
  --warmup S          seconds of the same load before each target's wrk runs (default ${BENCH_DEFAULTS.warmupS}),
                      and before its redis-benchmark run (${BENCH_DEFAULTS.redisWarmupS} s at most)
  --iperf-duration S  seconds of each iperf3 run (default ${BENCH_DEFAULTS.iperfDurationS})
  --connections N     wrk connections (default ${BENCH_DEFAULTS.connections})
  --threads N         wrk threads (default ${BENCH_DEFAULTS.threads})
  --idle N            idle connections for the memory figure (default ${BENCH_DEFAULTS.idleConnections}; 0 skips it)
  --only KEYS         comma-separated subset of the targets (default: all of them)
  --main FILE         the switchyard main.ts to run (default: this checkout's)

Targets:
${TARGETS.map((t) => `  ${t.key.padEnd(18)}  ${t.label}`).join("\n")}

Load on each: wrk keep-alive and Connection: close, iperf3 (one stream), and
redis-benchmark -P 16 -t set,get -c 50 against a redis-server (its column: the mean of SET's and GET's
requests/s).

Every flag can also be set as SWITCHYARD_BENCH_<FLAG> (e.g. SWITCHYARD_BENCH_DURATION=5); flags win.
Install the tools with: bash bench/setup`;

function parseOptions(args: string[]): Options {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean" },
      rounds: { type: "string" },
      duration: { type: "string" },
      warmup: { type: "string" },
      "iperf-duration": { type: "string" },
      connections: { type: "string" },
      threads: { type: "string" },
      idle: { type: "string" },
      only: { type: "string" },
      main: { type: "string" },
      help: { type: "boolean" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const env = (flag: string) => Deno.env.get(`SWITCHYARD_BENCH_${flag.toUpperCase().replaceAll("-", "_")}`);
  const quick = values.quick === true || env("quick") === "1";
  const base = { ...BENCH_DEFAULTS, ...(quick ? QUICK : {}) };
  const number = (flag: keyof typeof values, fallback: number, min: number) => {
    const text = (values[flag] as string | undefined) ?? env(flag);
    if (text === undefined || text === "") return fallback;
    const value = Number(text);
    if (!Number.isInteger(value) || value < min) {
      throw new RangeError(`Cannot use --${flag} "${text}": expected a whole number of at least ${min}`);
    }
    return value;
  };
  const onlyText = values.only ?? env("only");
  const only = onlyText ? onlyText.split(",").map((key) => key.trim()) : null;
  for (const key of only ?? []) {
    if (!TARGETS.some((target) => target.key === key)) {
      throw new RangeError(
        `Cannot use --only "${key}": expected one of ${TARGETS.map((t) => t.key).join(", ")}`,
      );
    }
  }
  return {
    rounds: number("rounds", base.rounds, 1),
    durationS: number("duration", base.durationS, 1),
    warmupS: number("warmup", base.warmupS, 0),
    iperfDurationS: number("iperf-duration", base.iperfDurationS, 1),
    threads: number("threads", base.threads, 1),
    connections: number("connections", base.connections, 1),
    idleConnections: number("idle", base.idleConnections, 0),
    only,
    main: resolve(values.main ?? env("main") ?? MAIN),
  };
}

async function versionOf(name: string, tool: string | null, args: string[]): Promise<string> {
  if (tool === null) return `${name} missing`;
  const result = await runBounded(tool, args, { timeoutMs: 5_000 }).catch(() => null);
  if (result === null) return "unknown";
  const text = `${result.stdout}\n${result.stderr}`;
  return text.split("\n").map((line) => line.trim()).find((line) => /\d+\.\d+/.test(line)) ?? "unknown";
}

/** The 1-minute load average, to show whether something else ran on the machine meanwhile. */
function loadAverage(): string {
  try {
    return Deno.readTextFileSync("/proc/loadavg").split(" ")[0] ?? "?";
  } catch {
    return "?";
  }
}

function cpuModel(): string {
  try {
    return Deno.readTextFileSync("/proc/cpuinfo").match(/^model name\s*:\s*(.+)$/m)?.[1] ?? "unknown CPU";
  } catch {
    return "unknown CPU";
  }
}

/** A target's figures of every round. */
interface Samples {
  keepAliveRps: number[];
  p50Ms: number[];
  p99Ms: number[];
  newConnectionsPerSecond: number[];
  bulkGbitPerSecond: number[];
  /** redis-benchmark: the mean of SET's and GET's requests/s, and each of them. */
  redisRps: number[];
  redisSetRps: number[];
  redisGetRps: number[];
  /** CPU time of the target's processes per connection in the Connection: close run, µs. */
  cpuUsPerConnection: number[];
}

function noSamples(): Samples {
  return {
    keepAliveRps: [],
    p50Ms: [],
    p99Ms: [],
    newConnectionsPerSecond: [],
    bulkGbitPerSecond: [],
    redisRps: [],
    redisSetRps: [],
    redisGetRps: [],
    cpuUsPerConnection: [],
  };
}

/** One target's figures (every round's), and what went wrong while measuring it. */
interface Measured {
  readonly spec: TargetSpec;
  readonly samples: Samples;
  /** Each run's figure divided by that of the reference HAProxy's run beside it (`Reference`). */
  readonly ratios: Samples;
  kibPerIdleConnection: number | null;
  readonly notes: string[];
  failed: boolean;
  /** Skipped for a missing tool: not started in any round. */
  skipped: boolean;
  readonly rss: { fresh: number | null; idle: number | null; loaded: number | null };
}

function progress(text: string): void {
  console.error(`· ${text}`);
}

function describeWrk(result: WrkResult): string {
  return `${Math.round(result.requestsPerSecond)}/s, p50 ${result.p50Ms} ms, p99 ${result.p99Ms} ms` +
    (result.errors > 0 ? `, ${result.errorText}` : "");
}

const mib = (kib: number | null) => kib === null ? "?" : `${(kib / 1024).toFixed(1)} MiB`;

function newMeasured(spec: TargetSpec, context: StartContext): Measured {
  const measured: Measured = {
    spec,
    samples: noSamples(),
    ratios: noSamples(),
    kibPerIdleConnection: null,
    notes: [],
    failed: false,
    skipped: false,
    rss: { fresh: null, idle: null, loaded: null },
  };
  const missing = spec.needs.filter((tool) => context.tools[tool] === null);
  if (missing.length > 0) {
    note(
      measured,
      `skipped: ${
        missing.map((tool) => tool === "nginxStream" ? "nginx stream module" : tool).join(", ")
      } missing`,
    );
    measured.skipped = true;
  }
  return measured;
}

function note(measured: Measured, text: string, failure = false): void {
  measured.notes.push(`${measured.spec.label}: ${text}`);
  if (failure) measured.failed = true;
  progress(`${measured.spec.key}: ${text}`);
}

/**
 * The table row: the median of every round's figures, and of their ratios to the reference HAProxy's runs
 * beside them, where it was measured beside them.
 */
function rowOf(measured: Measured): Row {
  const { samples, ratios } = measured;
  return {
    label: measured.spec.label,
    keepAliveRps: median(samples.keepAliveRps),
    p50Ms: median(samples.p50Ms),
    p99Ms: median(samples.p99Ms),
    newConnectionsPerSecond: median(samples.newConnectionsPerSecond),
    bulkGbitPerSecond: median(samples.bulkGbitPerSecond),
    redisRps: median(samples.redisRps),
    kibPerIdleConnection: measured.kibPerIdleConnection,
    ratios: Object.fromEntries(
      ([
        "keepAliveRps",
        "p50Ms",
        "p99Ms",
        "newConnectionsPerSecond",
        "bulkGbitPerSecond",
        "redisRps",
      ] as const)
        .filter((figure) => ratios[figure].length > 0)
        .map((figure) => [figure, median(ratios[figure])]),
    ),
  };
}

/**
 * Starts the target afresh, runs `steps` on it, and stops it; false when it could not start. Every phase
 * and round gets a fresh process, so no figure carries what another measurement left behind.
 */
async function phase(
  measured: Measured,
  context: StartContext,
  name: string,
  steps: (target: RunningTarget, step: Step) => Promise<void>,
): Promise<boolean> {
  const { spec } = measured;
  let target: RunningTarget;
  try {
    progress(`${spec.key}: starting for the ${name}`);
    target = await spec.start(context);
  } catch (error) {
    note(measured, `could not start: ${error instanceof Error ? error.message : String(error)}`, true);
    return false;
  }
  try {
    await steps(target, stepOn(measured, target));
  } finally {
    noteProblems(measured, target);
    await target.stop();
  }
  return true;
}

/**
 * Runs the steps of a measurement on a running target: an error or the target's death is noted (a failure),
 * and once it is dead the steps left are skipped.
 */
function stepOn(measured: Measured, target: RunningTarget): Step {
  return async (what, run) => {
    if (target.failure() !== null) return;
    try {
      await run();
    } catch (error) {
      note(measured, `${what} failed: ${error instanceof Error ? error.message : String(error)}`, true);
    }
    const after = target.failure();
    if (after !== null) note(measured, `died during ${what}: ${after}`, true);
  };
}

/** The warning and error lines a target logged, into its notes (failures for switchyard). */
function noteProblems(measured: Measured, target: RunningTarget): void {
  const problems = target.problems();
  for (const line of problems.slice(0, 10)) {
    note(measured, `logged: ${line.slice(0, 300)}`, measured.spec.switchyard);
  }
  if (problems.length > 10) note(measured, `logged ${problems.length - 10} more warnings or errors`);
}

/** `read` (RSS in KiB, CPU time in ms) of processes together; null when there are none or one is gone. */
function total(pids: readonly number[], read: (pid: number) => number | null): number | null {
  if (pids.length === 0) return null;
  let sum = 0;
  for (const pid of pids) {
    const value = read(pid);
    if (value === null) return null;
    sum += value;
  }
  return sum;
}

/** The memory figure: idle connections held open through a fresh process of the target. */
async function measureIdle(measured: Measured, context: StartContext, idleCount: number): Promise<void> {
  const { spec } = measured;
  await phase(measured, context, "idle connections", async (target, step) => {
    const pids = target.memoryPids();
    const echoPort = target.ports.echo;
    if (pids.length === 0 || echoPort === null) return;
    await step("idle-connection run", async () => {
      progress(`${spec.key}: ${idleCount} idle connections`);
      await sleep(1_000);
      const before = total(pids, rssKiB);
      const started = performance.now();
      const crowd = await openIdleCrowd(echoPort, { count: idleCount });
      const openMs = performance.now() - started;
      try {
        await sleep(2_000);
        const after = total(pids, rssKiB);
        if (before === null || after === null) throw new Error(`a process of ${spec.label} is gone`);
        measured.rss.idle = after;
        if (crowd.failed > 0) {
          note(
            measured,
            `${crowd.failed} of ${idleCount} idle connections failed: ${crowd.firstError}`,
            spec.switchyard,
          );
        }
        if (crowd.opened === 0) throw new Error("no idle connection could be opened");
        measured.kibPerIdleConnection = (after - before) / crowd.opened;
        progress(
          `${spec.key}:   RSS ${before} → ${after} KiB for ${crowd.opened} connections (opened in ${
            Math.round(openMs)
          } ms): ${measured.kibPerIdleConnection.toFixed(1)} KiB each`,
        );
      } finally {
        crowd.close();
      }
    });
  });
}

/**
 * HAProxy as the baseline: one process alive through every round, given the same load as each other target
 * right before it (odd rounds) or right after it (even rounds), so that each ratio compares runs seconds
 * apart. This machine's speed drifts by 20-30% within a minute: HAProxy's figures taken minutes before a
 * target's decided its ratio as much as the target did. Nothing else runs beside either: the target is
 * started after HAProxy's load, or stopped before it. An idle switchyard just after its load, beside
 * HAProxy, could only favour switchyard (HAProxy's p99 read 4% and 13% higher that way, on average, in two
 * checks of 8 and 4 alternations). Idle, HAProxy wakes once a second.
 */
interface Reference {
  readonly measured: Measured;
  readonly target: RunningTarget;
}

/** Starts the reference HAProxy; null (noted) when it cannot start, and ratios are then of the medians. */
async function startReference(measured: Measured, context: StartContext): Promise<Reference | null> {
  progress(`${measured.spec.key}: starting, to run beside every other target`);
  try {
    const target = await measured.spec.start(context);
    await sleep(500);
    measured.rss.fresh = total(target.memoryPids(), rssKiB);
    return { measured, target };
  } catch (error) {
    note(measured, `could not start: ${error instanceof Error ? error.message : String(error)}`, true);
    return null;
  }
}

async function stopReference({ measured, target }: Reference): Promise<void> {
  if (target.failure() === null) measured.rss.loaded = total(target.memoryPids(), rssKiB);
  noteProblems(measured, target);
  await target.stop();
}

/** What one round of load measured on a target; null where it was not. */
interface LoadResult {
  keepAlive: WrkResult | null;
  newConnections: { result: WrkResult; cpuUs: number | null } | null;
  bulkGbitPerSecond: number | null;
  redis: RedisResult | null;
}

/** A wrk run's figures into a target's samples, and its errors into its notes. */
function recordWrk(
  measured: Measured,
  result: WrkResult,
  run: "keep-alive" | "new-connection",
  round: string,
  cpuUs: number | null,
): void {
  const { samples, spec } = measured;
  progress(
    `${spec.key}:   ${describeWrk(result)}${cpuUs === null ? "" : `, ${cpuUs.toFixed(0)} µs CPU each`}`,
  );
  if (run === "keep-alive") {
    samples.keepAliveRps.push(result.requestsPerSecond);
    if (result.p50Ms !== null) samples.p50Ms.push(result.p50Ms);
    if (result.p99Ms !== null) samples.p99Ms.push(result.p99Ms);
  } else {
    samples.newConnectionsPerSecond.push(result.requestsPerSecond);
    if (cpuUs !== null) samples.cpuUsPerConnection.push(cpuUs);
  }
  if (result.errors > 0) {
    note(
      measured,
      `${run} run (${round}): ${result.errorText} of ${result.requests} requests`,
      spec.switchyard,
    );
  }
}

/**
 * One round's load on a running target: a warm-up, keep-alive, a warm-up of new connections, new
 * connections, bulk, a warm-up of redis-benchmark, redis-benchmark. Its figures go into `measured`'s
 * samples as they come.
 */
async function runLoad(
  measured: Measured,
  target: RunningTarget,
  step: Step,
  context: StartContext,
  options: Options,
  round: string,
): Promise<LoadResult> {
  const { spec } = measured;
  const { wrk, iperf3, redisBenchmark } = context.tools;
  const wrkOptions = { threads: options.threads, connections: options.connections };
  const measuredLoad: LoadResult = {
    keepAlive: null,
    newConnections: null,
    bulkGbitPerSecond: null,
    redis: null,
  };
  if (wrk !== null) {
    if (options.warmupS > 0) {
      await step("warm-up", async () => {
        await runWrk(wrk, target.ports.http, { ...wrkOptions, durationS: options.warmupS, close: false });
      });
    }
    await step("keep-alive run", async () => {
      progress(`${spec.key}: keep-alive, ${options.durationS} s (${round})`);
      const result = await runWrk(wrk, target.ports.http, {
        ...wrkOptions,
        durationS: options.durationS,
        close: false,
      });
      recordWrk(measured, result, "keep-alive", round, null);
      measuredLoad.keepAlive = result;
    });
    // The keep-alive load never took the path of a new connection (accept, placement, the manager's
    // decision, connect, close): a fresh switchyard's first 5 s of it ran 8-9% slower than the next.
    if (options.warmupS > 0) {
      await step("Connection: close warm-up", async () => {
        await runWrk(wrk, target.ports.http, { ...wrkOptions, durationS: options.warmupS, close: true });
      });
    }
    await step("new-connection run", async () => {
      progress(`${spec.key}: Connection: close, ${options.durationS} s (${round})`);
      const cpuPids = target.cpuPids();
      const cpuBefore = total(cpuPids, cpuMs);
      const result = await runWrk(wrk, target.ports.http, {
        ...wrkOptions,
        durationS: options.durationS,
        close: true,
      });
      const cpuAfter = total(cpuPids, cpuMs);
      const cpuUs = cpuBefore === null || cpuAfter === null || result.requests === 0
        ? null
        : (cpuAfter - cpuBefore) * 1_000 / result.requests;
      recordWrk(measured, result, "new-connection", round, cpuUs);
      measuredLoad.newConnections = { result, cpuUs };
    });
  }
  const iperfPort = target.ports.iperf;
  if (iperf3 !== null && iperfPort !== null) {
    await step("iperf3 run", async () => {
      progress(`${spec.key}: iperf3, ${options.iperfDurationS} s (${round})`);
      const result = await runIperf(iperf3, iperfPort, options.iperfDurationS);
      progress(`${spec.key}:   ${result.gbitPerSecond.toFixed(2)} Gbit/s`);
      measured.samples.bulkGbitPerSecond.push(result.gbitPerSecond);
      measuredLoad.bulkGbitPerSecond = result.gbitPerSecond;
    });
  }
  const redisPort = target.ports.redis;
  if (redisBenchmark !== null && redisPort !== null) {
    // redis-benchmark has no duration, only a count (-n): each run is sized from the rate of the one before
    // it, so that it lasts about as long as wrk's runs whatever the target's speed.
    const redis = (requests: number, expectedS: number) =>
      runRedisBenchmark(redisBenchmark, redisPort, { requests, timeoutS: Math.ceil(3 * expectedS) + 15 });
    let rate = 0;
    await step("redis-benchmark warm-up", async () => {
      rate = redisMean(await redis(BENCH_DEFAULTS.redisSizingRequests, 2));
      const warmupS = Math.min(options.warmupS, BENCH_DEFAULTS.redisWarmupS);
      if (warmupS > 0) rate = redisMean(await redis(redisRequests(rate, warmupS), warmupS));
    });
    if (rate > 0) {
      await step("redis-benchmark run", async () => {
        const requests = redisRequests(rate, options.durationS);
        progress(`${spec.key}: redis-benchmark -P 16, ${requests} SET and ${requests} GET (${round})`);
        const result = await redis(requests, options.durationS);
        const mean = redisMean(result);
        progress(
          `${spec.key}:   SET ${Math.round(result.setPerSecond)}/s, GET ${
            Math.round(result.getPerSecond)
          }/s, mean ${Math.round(mean)}/s`,
        );
        measured.samples.redisRps.push(mean);
        measured.samples.redisSetRps.push(result.setPerSecond);
        measured.samples.redisGetRps.push(result.getPerSecond);
        measuredLoad.redis = result;
      });
    }
  }
  return measuredLoad;
}

/**
 * One round's load on the reference HAProxy; null when it is gone, or died during it. Its failures are noted
 * on it. Runs where wrk saw errors are left out, as no figure to compare with.
 */
async function runReference(
  reference: Reference,
  context: StartContext,
  options: Options,
  round: string,
): Promise<LoadResult | null> {
  const { measured, target } = reference;
  if (target.failure() !== null) return null;
  progress(`${measured.spec.key}: the same load, beside the next or last target (${round})`);
  const load = await runLoad(measured, target, stepOn(measured, target), context, options, round);
  if (target.failure() !== null) return null;
  return {
    keepAlive: load.keepAlive?.errors === 0 ? load.keepAlive : null,
    newConnections: load.newConnections?.result.errors === 0 ? load.newConnections : null,
    bulkGbitPerSecond: load.bulkGbitPerSecond,
    redis: load.redis,
  };
}

/** `own / theirs`, when both were measured; null otherwise. */
function ratio(own: number | null | undefined, theirs: number | null | undefined): number | null {
  return own === null || own === undefined || theirs === null || theirs === undefined || theirs <= 0
    ? null
    : own / theirs;
}

/**
 * One round of load on a fresh process of the target, with the same load on the reference HAProxy (where
 * there is one) right before it in odd rounds and right after it, once the target is stopped, in even ones.
 */
async function measureLoad(
  measured: Measured,
  context: StartContext,
  options: Options,
  round: { number: number; text: string },
  reference: Reference | null,
): Promise<void> {
  const { spec, ratios } = measured;
  const referenceLoad = () =>
    reference === null ? Promise.resolve(null) : runReference(reference, context, options, round.text);
  let theirs = round.number % 2 === 1 ? await referenceLoad() : null;
  let own = null as LoadResult | null;
  await phase(measured, context, `load (${round.text})`, async (target, step) => {
    const pids = target.memoryPids();
    if (pids.length > 0) {
      await sleep(500);
      measured.rss.fresh ??= total(pids, rssKiB);
    }
    own = await runLoad(measured, target, step, context, options, round.text);
    if (pids.length > 0) measured.rss.loaded = total(pids, rssKiB);
  });
  if (round.number % 2 === 0) theirs = await referenceLoad();
  if (own === null || theirs === null) return;
  const paired: Record<keyof Samples, number | null> = {
    keepAliveRps: ratio(own.keepAlive?.requestsPerSecond, theirs.keepAlive?.requestsPerSecond),
    p50Ms: ratio(own.keepAlive?.p50Ms, theirs.keepAlive?.p50Ms),
    p99Ms: ratio(own.keepAlive?.p99Ms, theirs.keepAlive?.p99Ms),
    newConnectionsPerSecond: ratio(
      own.newConnections?.result.requestsPerSecond,
      theirs.newConnections?.result.requestsPerSecond,
    ),
    cpuUsPerConnection: ratio(own.newConnections?.cpuUs, theirs.newConnections?.cpuUs),
    bulkGbitPerSecond: ratio(own.bulkGbitPerSecond, theirs.bulkGbitPerSecond),
    redisRps: ratio(own.redis && redisMean(own.redis), theirs.redis && redisMean(theirs.redis)),
    redisSetRps: ratio(own.redis?.setPerSecond, theirs.redis?.setPerSecond),
    redisGetRps: ratio(own.redis?.getPerSecond, theirs.redis?.getPerSecond),
  };
  for (const figure of Object.keys(paired) as (keyof Samples)[]) {
    const value = paired[figure];
    if (value !== null) ratios[figure].push(value);
  }
  const shown = (value: number | null) => value?.toFixed(2) ?? "—";
  progress(
    `${spec.key}: × HAProxy this round: keep-alive ${shown(paired.keepAliveRps)}, p99 ${
      shown(paired.p99Ms)
    }, new conn ${shown(paired.newConnectionsPerSecond)}, bulk ${shown(paired.bulkGbitPerSecond)}, redis ${
      shown(paired.redisRps)
    }`,
  );
}

/** The memory line of the report, for targets that have a process of their own. */
function memoryLine(measured: Measured, idleCount: number): string | null {
  const { rss, spec } = measured;
  if (rss.fresh === null && rss.idle === null) return null;
  const idle = rss.idle === null
    ? ""
    : `; ${mib(rss.idle)} with ${idleCount} idle connections (another process)`;
  return `${spec.label}: ${mib(rss.fresh)} fresh, ${mib(rss.loaded)} after a round of load${idle}`;
}

/**
 * CPU per new connection of every target that has processes, with its ratio to HAProxy's: on a machine the
 * load generator and backend share, this cost, not the proxy's design, sets the new-connection rate.
 */
function cpuLines(results: readonly Measured[]): string[] {
  const haproxy = median(
    results.find((result) => result.spec.key === "haproxy")?.samples.cpuUsPerConnection ?? [],
  );
  return results.flatMap((result) => {
    const us = median(result.samples.cpuUsPerConnection);
    if (us === null) return [];
    const ratioValue = result.ratios.cpuUsPerConnection.length > 0
      ? median(result.ratios.cpuUsPerConnection)
      : haproxy === null || haproxy === 0
      ? null
      : us / haproxy;
    const ratio = ratioValue === null ? "" : ` (${ratioValue.toFixed(2)}× HAProxy)`;
    return [`${result.spec.label}: ${us.toFixed(0)} µs${ratio}`];
  });
}

/** Every round's figures of one target, for the report: the spread the medians hide. */
function roundsLine(measured: Measured): string | null {
  const { samples } = measured;
  const list = (values: number[], digits: number) =>
    values.map((value) => value.toLocaleString("en-US", { maximumFractionDigits: digits })).join(" / ");
  if (
    samples.keepAliveRps.length === 0 && samples.bulkGbitPerSecond.length === 0 &&
    samples.redisRps.length === 0
  ) {
    return null;
  }
  return `${measured.spec.label}: keep-alive ${list(samples.keepAliveRps, 0)} req/s; p99 ${
    list(samples.p99Ms, 2)
  } ms; new conn ${list(samples.newConnectionsPerSecond, 0)}/s; bulk ${
    list(samples.bulkGbitPerSecond, 2)
  } Gbit/s${
    samples.redisRps.length === 0
      ? ""
      : `; redis SET ${list(samples.redisSetRps, 0)}/s, GET ${list(samples.redisGetRps, 0)}/s`
  }${pairedLine(measured)}`;
}

/** Each run's ratio to the reference HAProxy's run beside it, for the report; empty without any. */
function pairedLine({ ratios }: Measured): string {
  if (
    ratios.keepAliveRps.length === 0 && ratios.bulkGbitPerSecond.length === 0 && ratios.redisRps.length === 0
  ) {
    return "";
  }
  const list = (values: number[]) =>
    values.length === 0 ? "—" : values.map((value) => value.toFixed(2)).join(" / ");
  return `; × HAProxy beside it: keep-alive ${list(ratios.keepAliveRps)}; p99 ${
    list(ratios.p99Ms)
  }; new conn ${list(ratios.newConnectionsPerSecond)}; bulk ${list(ratios.bulkGbitPerSecond)}${
    ratios.redisRps.length === 0
      ? ""
      : `; redis ${list(ratios.redisRps)} (SET ${list(ratios.redisSetRps)}, GET ${list(ratios.redisGetRps)})`
  }`;
}

type Step = (what: string, run: () => Promise<void>) => Promise<void>;

async function main(): Promise<number> {
  let options: Options;
  try {
    options = parseOptions(Deno.args);
  } catch (error) {
    console.error(`bench: ${error instanceof Error ? error.message : String(error)}\n\n${USAGE}`);
    return 2;
  }
  await ensureOpenFileLimit(2 * options.idleConnections + FD_MARGIN);
  const began = performance.now();
  const loadBefore = loadAverage();
  const notes: string[] = [];
  const limit = openFileLimit().soft;
  const idleCount = Math.max(0, Math.min(options.idleConnections, Math.floor((limit - FD_MARGIN) / 2)));
  if (idleCount < options.idleConnections) {
    notes.push(
      `Idle connections: ${idleCount} instead of ${options.idleConnections}: the open-file limit is ${limit} ` +
        `and a proxy needs two files per connection (raise the hard limit, e.g. \`ulimit -Hn 65536\` as root)`,
    );
  }

  const tools = await findTools();
  const versions = await Promise.all([
    versionOf("haproxy", tools.haproxy, ["-v"]),
    versionOf("nginx", tools.nginx, ["-v"]),
    versionOf("wrk", tools.wrk, ["-v"]),
    versionOf("iperf3", tools.iperf3, ["-v"]),
    versionOf("redis-server", tools.redisServer, ["--version"])
      .then((text) => text.replace(/^Redis server v=(\S+).*$/, "redis-server $1")),
    versionOf("redis-benchmark", tools.redisBenchmark, ["--version"]),
  ]);
  const missing = [
    ...(["haproxy", "nginx", "wrk", "iperf3"] as const).filter((tool) => tools[tool] === null),
    ...(tools.redisServer === null ? ["redis-server"] : []),
    ...(tools.redisBenchmark === null ? ["redis-benchmark"] : []),
    ...(tools.nginx !== null && tools.nginxStream === null
      ? ["nginx stream module (libnginx-mod-stream)"]
      : []),
  ];
  if (missing.length > 0) {
    const text = `Missing: ${missing.join(", ")}. Install with: bash bench/setup (Debian/Ubuntu, as root). ` +
      "The columns that need them are left empty.";
    console.error(text);
    notes.push(text);
  }

  const procs = new Processes();
  const dir = await Deno.makeTempDir({ prefix: "switchyard-bench-" });
  const cleanup = cleanupOnInterrupt("bench", async () => {
    killBoundedRuns();
    await procs.stopAll();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  });

  const results: Measured[] = [];
  let reference: Reference | null = null;
  let httpServer = "";
  let broken = false;
  try {
    // Without redis-benchmark, redis-server would only sit there.
    const started = await startBackends({ procs, tools, dir }, { redis: tools.redisBenchmark !== null });
    httpServer = started.httpServer;
    const context: StartContext = {
      procs,
      tools,
      dir,
      backends: started.ports,
      // Every proxy must take the idle connections, and wrk's (with --idle 0 too) with room to spare.
      maxConnections: Math.max(idleCount, options.connections + 100),
      main: options.main,
    };
    const checkBackends = () => {
      const dead = started.failure();
      if (dead !== null) {
        throw new Error(`A backend of the bench failed; the figures would be wrong: ${dead}`);
      }
    };
    for (const spec of TARGETS) {
      if (options.only !== null && !options.only.includes(spec.key)) continue;
      results.push(newMeasured(spec, context));
    }
    const running = () => results.filter((measured) => !measured.skipped && !procs.closed);
    if (idleCount > 0) {
      for (const measured of running()) {
        if (measured.spec.key === "direct") continue;
        await measureIdle(measured, context, idleCount);
        checkBackends();
      }
    }
    // HAProxy, when there is another target to compare with it, is the reference run beside each of theirs.
    const haproxy = running().find((measured) => measured.spec.key === "haproxy");
    if (haproxy !== undefined && running().length > 1) {
      reference = await startReference(haproxy, context);
    }
    // Round after round, each target in turn: a burst of other work on the machine then skews one round
    // of every target alike, and the medians leave it out. The order turns by one each round, so no target
    // always follows the same one (whose sockets in TIME_WAIT, or bulk run, could weigh on it).
    for (let round = 1; round <= options.rounds; round++) {
      const targets = running().filter((measured) => measured !== reference?.measured);
      const turn = (round - 1) % Math.max(1, targets.length);
      for (const measured of [...targets.slice(turn), ...targets.slice(0, turn)]) {
        const text = `round ${round} of ${options.rounds}`;
        await measureLoad(measured, context, options, { number: round, text }, reference);
        checkBackends();
      }
    }
  } catch (error) {
    const text = `The bench stopped: ${error instanceof Error ? error.message : String(error)}`;
    console.error(text);
    notes.push(text);
    broken = true;
  } finally {
    if (reference !== null) await stopReference(reference);
    await cleanup();
  }

  const elapsedS = (performance.now() - began) / 1_000;
  const redisWarmupS = Math.min(options.warmupS, BENCH_DEFAULTS.redisWarmupS);
  const pairedWithReference = results.some((result) => result.ratios.keepAliveRps.length > 0);
  const rows = results.map(rowOf);
  const baseline = rows.find((row) => row.label.startsWith("HAProxy")) ?? null;
  const table = formatTable(rows, baseline);
  const allNotes = [...notes, ...results.flatMap((result) => result.notes)];
  const memory = results.flatMap((result) => memoryLine(result, idleCount) ?? []);
  const rounds = results.flatMap((result) => roundsLine(result) ?? []);
  const cpu = cpuLines(results);

  const report = [
    `## switchyard bench — ${new Date().toISOString().slice(0, 19)}Z`,
    "",
    `Loopback, ${navigator.hardwareConcurrency} CPUs (${cpuModel()}), Linux ${Deno.osRelease()}, ` +
    `deno ${Deno.version.deno}. Backends: HTTP ${httpServer}; ${
      tools.iperf3 ? "bulk an iperf3 server; " : ""
    }${
      tools.redisServer && tools.redisBenchmark ? "redis a redis-server (no persistence); " : ""
    }idle connections an echo server (Deno).`,
    `Load: ${options.rounds} round${
      options.rounds === 1 ? "" : "s"
    }, each target in turn on a fresh process; ` +
    `the table gives the median of the rounds. Each round: ` +
    `\`wrk -t${options.threads} -c${options.connections} -d${options.durationS}s --latency\` after a ` +
    `${options.warmupS} s warm-up; new conn/s adds \`-H 'Connection: close'\` (its warm-up too); bulk is ` +
    `\`iperf3 -t ${options.iperfDurationS}\` (one stream); ${
      tools.redisServer && tools.redisBenchmark
        ? `redis is the mean of SET's and GET's requests/s of \`redis-benchmark -P 16 -t set,get -c 50 -q\`, ` +
          `its \`-n\` sized to last about ${options.durationS} s from the rate of a warm-up of that load (a run of ` +
          `${BENCH_DEFAULTS.redisSizingRequests.toLocaleString("en-US")} requests each${
            redisWarmupS > 0 ? `, then ${redisWarmupS} s` : ""
          }); `
        : ""
    }KiB/idle conn is the growth of the proxy's VmRSS ` +
    `(HAProxy, the nginx worker, the switchyard agents) with ${idleCount} connections open, each having ` +
    "echoed one byte. " + (
      pairedWithReference
        ? "HAProxy ran once through all rounds and got the same load (warm-ups too) right before each other " +
          "target's, in odd rounds, or right after it, once the target was stopped, in even ones: × HAProxy is " +
          "the median of each run's ratio to HAProxy's beside it, runs seconds apart; HAProxy's figures are " +
          "the medians of all its runs. KiB/idle conn is the figure divided by HAProxy's. For p50, p99 and " +
          "KiB lower is better."
        : "× HAProxy is the figure divided by HAProxy's (for p50, p99 and KiB lower is better)."
    ),
    "",
    table,
    "",
    `Tools: ${versions.join(" · ")}. Took ${Math.round(elapsedS)} s. Load average (1 min) ${loadBefore} ` +
    `before, ${loadAverage()} after: other work on the machine skews every figure.`,
    ...(cpu.length > 0
      ? [
        "",
        "CPU per new connection (user and system time of the proxy's processes over the Connection: close " +
        "run, per connection; for switchyard the agents and the manager; median of the rounds; its ratio " +
        `${
          pairedWithReference ? "the median of each run's to HAProxy's beside it" : "to HAProxy's median"
        }):`,
        ...cpu.map((text) => `- ${text}`),
      ]
      : []),
    ...(rounds.length > 0 ? ["", "Every round:", ...rounds.map((text) => `- ${text}`)] : []),
    ...(memory.length > 0 ? ["", "Resident memory (VmRSS):", ...memory.map((text) => `- ${text}`)] : []),
    ...(allNotes.length > 0 ? ["", "Notes:", ...allNotes.map((text) => `- ${text}`)] : []),
    "",
  ].join("\n");
  console.log(`\n${report}`);
  const out = fileURLToPath(new URL("./out/", import.meta.url));
  await Deno.mkdir(out, { recursive: true });
  await Deno.writeTextFile(`${out}latest.md`, report);
  console.error(`Written to bench/out/latest.md`);
  const switchyardFailed = results.some((result) => result.failed && result.spec.switchyard);
  return broken || switchyardFailed ? 1 : 0;
}

if (import.meta.main) {
  Deno.exit(await main());
}
