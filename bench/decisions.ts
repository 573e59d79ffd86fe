/**
 * How many decisions one manager makes per second, alone: a real `switchyard manager` process and fake
 * agents in this process, each a real `ManagerLink` over the cluster port (handshake, heartbeats, frames),
 * without the data path. Two ways of asking, each for `--seconds`:
 *
 * - asked: every new connection asked about (`decide_ahead: 0s`), each agent keeping `--outstanding`
 *   decisions in flight, answered in batches as a busy agent's are;
 * - ahead: queues of decisions made ahead (`decide_ahead: 50ms`), each agent using its whole queue at
 *   once and reporting it, so that the manager refills as fast as it can.
 *
 * Prints decisions per second and the manager's CPU over the run (from /proc), and decisions per second
 * of the manager's CPU: what one core makes.
 *
 *   deno run --allow-all bench/decisions.ts [--agents 8] [--backends 10] [--seconds 5] [--outstanding 256]
 */
import { parseArgs } from "node:util";
import { type AheadMessage, ManagerLink } from "../agent/manager_link.ts";
import { parseHostPort } from "../cluster/address.ts";
import { startBackend } from "../tests/_backends.ts";
import { CLUSTER_TOKEN, testConfig, testService } from "../tests/_config.ts";
import { startManagerProcess } from "../tests/_helpers.ts";
import { cpuMs } from "./_procs.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    agents: { type: "string", default: "8" },
    backends: { type: "string", default: "10" },
    seconds: { type: "string", default: "5" },
    outstanding: { type: "string", default: "256" },
  },
});
const count = (name: keyof typeof values, min: number) => {
  const value = Number(values[name]);
  if (!Number.isInteger(value) || value < min) {
    throw new RangeError(`--${name} must be a whole number ≥ ${min}`);
  }
  return value;
};
const agents = count("agents", 1);
const backendCount = count("backends", 1);
const seconds = count("seconds", 1);
const outstanding = count("outstanding", 1);

/** Backends that accept and close: up for the manager's health checks, never sent a byte. */
const backends = Array.from({ length: backendCount }, () => startBackend(() => Promise.resolve()));
const dir = await Deno.makeTempDir({ prefix: "switchyard-decisions-" });
await Deno.writeTextFile(`${dir}/cluster.token`, CLUSTER_TOKEN);
const service = (name: string, ahead: string) =>
  testService({
    name,
    decide: "manager",
    decide_ahead: ahead,
    backends: backends.map((backend) => backend.address),
    health: null,
  });
const manager = await startManagerProcess(
  dir,
  testConfig({ services: [service("asked", "0s"), service("ahead", "50ms")], heartbeat: "1s" }),
  ["--log-level", "info"],
);

let aheadMade = 0;
const links: ManagerLink[] = [];
for (let i = 0; i < agents; i++) {
  const link: ManagerLink = new ManagerLink({
    managers: [parseHostPort(manager.cluster)],
    token: CLUSTER_TOKEN,
    agentId: `bench-${i + 1}`,
    mesh: null,
    tls: null,
    onState: () => {},
    onDelta: () => true,
    // Every decision of a queue used at once: the manager refills at its own pace.
    onAhead: (ahead: AheadMessage) => {
      aheadMade += ahead.backends.length;
      link.sendUsed([{
        service: ahead.service,
        seq: ahead.seq,
        used: ahead.backends.length,
        lane: ahead.lane,
      }]);
    },
    report: () => ({ connections: { served: 0, handed_off: 0, open: 0 }, backends: [] }),
    takeFailures: () => [],
    takeStarted: () => [],
  });
  link.start();
  links.push(link);
}

const pid = manager.proc.pid;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs `work` for the bench's seconds; the decisions it counted per second and the manager's CPU share. */
async function measure(
  work: (until: number) => Promise<number>,
): Promise<{ perSecond: number; cpu: number }> {
  const cpuBefore = cpuMs(pid) ?? NaN;
  const started = performance.now();
  const decisions = await work(started + seconds * 1000);
  const elapsed = performance.now() - started;
  const cpu = ((cpuMs(pid) ?? NaN) - cpuBefore) / elapsed;
  return { perSecond: decisions / (elapsed / 1000), cpu };
}

try {
  const deadline = performance.now() + 10_000;
  while (!links.every((link) => link.connected)) {
    if (performance.now() > deadline) throw new Error("the fake agents did not join the manager");
    await sleep(20);
  }
  await sleep(500);

  const asked = await measure(async (until) => {
    let answered = 0;
    await Promise.all(links.flatMap((link, agent) =>
      Array.from({ length: outstanding }, async (_, n) => {
        const client = { ip: `10.${agent}.${n >> 8}.${n & 255}`, port: 40_000 };
        while (performance.now() < until) {
          const decision = await link.decide("asked", client, 1_000);
          if (decision?.backend) answered++;
          client.port = client.port === 65_535 ? 1_024 : client.port + 1;
        }
      })
    ));
    return answered;
  });

  const ahead = await measure(async (until) => {
    const before = aheadMade;
    // One connection asked about per agent starts its queues; from then on each refill comes unasked.
    await Promise.all(
      links.map((link) => link.decide("ahead", { ip: "10.0.0.1", port: 1 }, 1_000, "listen")),
    );
    await sleep(Math.max(0, until - performance.now()));
    return aheadMade - before;
  });

  const line = (label: string, { perSecond, cpu }: { perSecond: number; cpu: number }) =>
    `| ${label} | ${Math.round(perSecond).toLocaleString("en-US")} | ${(cpu * 100).toFixed(0)}% | ${
      Math.round(perSecond / cpu).toLocaleString("en-US")
    } |`;
  console.log(
    `Decisions of one manager, ${agents} agents, ${backendCount} backends, ${seconds} s each:\n\n` +
      "| asked | decisions/s | manager CPU | decisions per CPU-second |\n| --- | --- | --- | --- |\n" +
      [
        line(`per connection (decide_ahead: 0s, ${outstanding} in flight per agent)`, asked),
        line("ahead (decide_ahead: 50ms, queues used whole at once)", ahead),
      ].join("\n"),
  );
} finally {
  await Promise.all(links.map((link) => link.close()));
  await manager.proc.stop();
  await Promise.all(backends.map((backend) => backend.close()));
  await Deno.remove(dir, { recursive: true });
}
