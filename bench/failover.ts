/**
 * Failover of several managers, measured: two managers on one etcd (`manager.ha`, lease 2 s by default), two
 * agents sharing a port with `decide: manager`, and a light bounded load through them. The leading manager is
 * SIGKILLed `--kills` times; each time the bench takes how long until the standby answers `GET /v1/cluster` as
 * leader, and until both agents have joined it, then starts the killed one again (as a standby) and waits for
 * the managers to agree before the next kill. Prints every kill, then p50 and max, and the load's failures.
 *
 *   deno run --allow-all bench/failover.ts [--kills 20] [--lease 2s] [--rate 100]
 */
import { parseArgs } from "node:util";
import { etcdUnavailable } from "../tests/_etcd.ts";
import { startGreeter } from "../tests/_backends.ts";
import { testService } from "../tests/_config.ts";
import { eventually, freeFixedPort } from "../tests/_helpers.ts";
import { type ClusterBody, HaCluster, type HaManager } from "../tests/_ha.ts";
import { startLoad, summarize } from "../tests/_load.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    kills: { type: "string", default: "20" },
    lease: { type: "string", default: "2s" },
    rate: { type: "string", default: "100" },
  },
});
const kills = Number(values.kills);
const rate = Number(values.rate);
const missing = etcdUnavailable();
if (missing) {
  console.error(`bench/failover: ${missing}`);
  Deno.exit(1);
}

const backends = [startGreeter("b1", { hold: true }), startGreeter("b2", { hold: true })];
const port = freeFixedPort();
const cluster = await HaCluster.start({
  agents: 2,
  managers: 2,
  lease: values.lease,
  services: [testService({
    listen: `127.0.0.1:${port}`,
    decide: "manager",
    decision_timeout: "50ms",
    backends: backends.map((b) => b.address),
  })],
});

const role = (manager: HaManager) =>
  cluster.api<ClusterBody>(manager, "/v1/cluster").then((view) => view.role).catch(() => null);
const joined = async (manager: HaManager) => {
  const { agents } = await cluster.api<{ agents: Array<{ last_heartbeat_s: number }> }>(manager, "/v1/agents")
    .catch(() => ({ agents: [] }));
  return agents.length === 2 && agents.every((agent) => agent.last_heartbeat_s < 0.5);
};

const load = startLoad({
  targets: () => [port],
  concurrency: 4,
  ratePerSecond: rate,
  maxSeconds: kills * 12 + 30,
  expect: (line) => line === "b1" || line === "b2",
});
const led: number[] = [];
const rejoined: number[] = [];
try {
  for (let kill = 1; kill <= kills; kill++) {
    const leader = await cluster.leader(15_000);
    const standby = cluster.managers.find((m) => m !== leader)!;
    await eventually(() => joined(leader), 10_000, "both agents on the leader");
    await cluster.kill(leader);
    const killedAt = performance.now();
    await eventually(async () => (await role(standby)) === "leader", 15_000, "the standby to lead");
    led.push(performance.now() - killedAt);
    await eventually(() => joined(standby), 15_000, "both agents to join the new leader");
    rejoined.push(performance.now() - killedAt);
    console.log(
      `kill ${kill}: led after ${led.at(-1)!.toFixed(0)} ms, agents joined after ${
        rejoined.at(-1)!.toFixed(0)
      } ms`,
    );
    await cluster.startManager(leader.index);
  }
} finally {
  const records = await load.stop();
  await cluster.close();
  await Promise.all(backends.map((b) => b.close()));
  const all = summarize(records);
  const quantile = (values: number[], q: number) => {
    const sorted = [...values].sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
  };
  const row = (name: string, values: number[]) =>
    `| ${name} | ${values.length} | ${quantile(values, 0.5).toFixed(0)} | ${
      Math.max(...values).toFixed(0)
    } |`;
  console.log(`\nlease ${values.lease}; load ${all.text}\n`);
  console.log("| from the SIGKILL of the leader to | kills | p50 ms | max ms |");
  console.log("| --- | ---: | ---: | ---: |");
  console.log(row("the standby answering as leader", led));
  console.log(row("both agents joined to it", rejoined));
}
