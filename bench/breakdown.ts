/**
 * Where a proxy's time goes, per request: user and system CPU and wake-ups (voluntary and involuntary
 * context switches), thread by thread, for HAProxy and switchyard under the same wrk load, interleaved.
 *
 *   deno run -A bench/breakdown.ts [--rounds N] [--duration S] [--close] [--decide agent|manager]
 *                                  [--decide-ahead DURATION]
 *
 * `--close` measures new connections (`Connection: close`: one connection per request); without it,
 * keep-alive requests. Each figure is the median over the rounds of (counter after − before) / requests.
 */
import { parseArgs } from "node:util";
import { Processes, sleep } from "./_procs.ts";
import { findTools, type RunningTarget, startBackends, startHaproxy, startSwitchyard } from "./_targets.ts";
import { runWrk } from "./_load.ts";
import { median } from "./_table.ts";

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "3" },
    duration: { type: "string", default: "4" },
    close: { type: "boolean", default: false },
    decide: { type: "string", default: "agent" },
    "decide-ahead": { type: "string" },
  },
});
const rounds = Number(values.rounds);
const durationS = Number(values.duration);
const decide = values.decide === "manager" ? "manager" : "agent";

/** A thread's counters: CPU in ms (user, system) and context switches (voluntary, involuntary). */
interface ThreadCounters {
  name: string;
  user: number;
  system: number;
  voluntary: number;
  involuntary: number;
}

function threads(pid: number): Map<string, ThreadCounters> {
  const found = new Map<string, ThreadCounters>();
  for (const entry of Deno.readDirSync(`/proc/${pid}/task`)) {
    try {
      const stat = Deno.readTextFileSync(`/proc/${pid}/task/${entry.name}/stat`);
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const status = Deno.readTextFileSync(`/proc/${pid}/task/${entry.name}/status`);
      const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, "m").exec(status)?.[1] ?? 0);
      const name = `${pid}/${stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"))}/${entry.name}`;
      found.set(name, {
        name,
        user: Number(fields[11]) * 10,
        system: Number(fields[12]) * 10,
        voluntary: field("voluntary_ctxt_switches"),
        involuntary: field("nonvoluntary_ctxt_switches"),
      });
    } catch {
      // the thread ended while being read
    }
  }
  return found;
}

function snapshot(pids: readonly number[]): Map<string, ThreadCounters> {
  return new Map(pids.flatMap((pid) => [...threads(pid)]));
}

/** Per request, by thread name (the tid dropped so that rounds of fresh processes line up). */
type PerRequest = Map<string, { user: number; system: number; voluntary: number; involuntary: number }>;

function perRequest(
  before: Map<string, ThreadCounters>,
  after: Map<string, ThreadCounters>,
  requests: number,
) {
  const result: PerRequest = new Map();
  for (const [key, end] of after) {
    const start = before.get(key);
    if (!start) continue;
    const label = end.name.replace(/^\d+\//, "").replace(/\/\d+$/, "");
    const entry = result.get(label) ?? { user: 0, system: 0, voluntary: 0, involuntary: 0 };
    entry.user += ((end.user - start.user) * 1000) / requests;
    entry.system += ((end.system - start.system) * 1000) / requests;
    entry.voluntary += (end.voluntary - start.voluntary) / requests;
    entry.involuntary += (end.involuntary - start.involuntary) / requests;
    result.set(label, entry);
  }
  return result;
}

const tools = await findTools(["nginx", "haproxy", "wrk"]);
if (!tools.wrk || !tools.haproxy) throw new Error("wrk and haproxy are needed: bash bench/setup");
const procs = new Processes();
const dir = await Deno.makeTempDir({ prefix: "switchyard-breakdown-" });
const samples = new Map<string, PerRequest[]>();
const rates = new Map<string, number[]>();
const p99s = new Map<string, number[]>();
try {
  const backends = await startBackends({ procs, tools, dir }, { iperf: false });
  const targets: Array<[string, () => Promise<RunningTarget>]> = [
    ["haproxy", () =>
      startHaproxy({
        procs,
        tools,
        dir,
        backends: { ...backends.ports, iperf: null, redis: null },
        maxConnections: 1000,
        main: "",
      })],
    [`switchyard decide: ${decide}`, async () => {
      const round = `${dir}/sy-${crypto.randomUUID()}`;
      await Deno.mkdir(round);
      return await startSwitchyard(procs, {
        dir: round,
        backends: { http: backends.ports.http },
        decide,
        ...(values["decide-ahead"] ? { decideAhead: values["decide-ahead"] } : {}),
        maxConnections: 1000,
      });
    }],
  ];
  for (let r = 0; r < rounds; r++) {
    for (const [name, start] of r % 2 === 0 ? targets : [...targets].reverse()) {
      const target = await start();
      const port = target.ports.http!;
      const load = { threads: 1, connections: 50, durationS, close: values.close };
      await runWrk(tools.wrk, port, { ...load, durationS: 3 });
      await sleep(200);
      const before = snapshot(target.cpuPids());
      const result = await runWrk(tools.wrk, port, load);
      const after = snapshot(target.cpuPids());
      const requests = result.requestsPerSecond * durationS;
      samples.set(name, [...(samples.get(name) ?? []), perRequest(before, after, requests)]);
      rates.set(name, [...(rates.get(name) ?? []), result.requestsPerSecond]);
      p99s.set(name, [...(p99s.get(name) ?? []), result.p99Ms ?? NaN]);
      console.error(
        `round ${r + 1}: ${name} ${result.requestsPerSecond.toFixed(0)} requests/s, p99 ${result.p99Ms} ms`,
      );
      await target.stop();
    }
  }
  console.log(
    `${
      values.close ? "New connections" : "Keep-alive requests"
    }, wrk -c50, ${rounds} rounds of ${durationS} s; ` +
      "µs of CPU and context switches per request, median of the rounds:",
  );
  for (const [name, runs] of samples) {
    console.log(
      `\n${name}: ${(median(rates.get(name)!) ?? 0).toFixed(0)} requests/s, p99 ${
        median(p99s.get(name)!)
      } ms`,
    );
    const labels = new Set(runs.flatMap((run) => [...run.keys()]));
    let user = 0;
    let system = 0;
    for (const label of labels) {
      const of = (field: "user" | "system" | "voluntary" | "involuntary") =>
        median(runs.map((run) => run.get(label)?.[field] ?? 0)) ?? 0;
      if (of("user") + of("system") + of("voluntary") + of("involuntary") < 0.005) continue;
      user += of("user");
      system += of("system");
      console.log(
        `  ${label.padEnd(32)} user ${of("user").toFixed(1).padStart(5)} µs  system ${
          of("system").toFixed(1).padStart(5)
        } µs  wake-ups ${of("voluntary").toFixed(3)}  preempted ${of("involuntary").toFixed(3)}`,
      );
    }
    console.log(
      `  ${"total".padEnd(32)} user ${user.toFixed(1).padStart(5)} µs  system ${
        system.toFixed(1).padStart(5)
      } µs`,
    );
  }
} finally {
  await procs.stopAll();
  await Deno.remove(dir, { recursive: true });
}
