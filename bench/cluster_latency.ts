/**
 * The latency a handoff and a manager decision add to a new connection, measured end to end on
 * loopback: a manager and two agents as processes, an echo backend, and sequential connections that
 * each send one byte and wait for it to come back. Flows are sorted afterwards into served where accepted
 * and handed off (by the claimant the manager's `/v1/explain` names for each), and compared across three
 * services: `decide: manager` decided ahead (the default), `decide: manager` asked per connection
 * (`decide_ahead: 0s`), and `decide: agent`. The agents log at `info`: at `debug` they ask about every flow.
 *
 *   deno run --allow-all bench/cluster_latency.ts [--connections 2000]
 */
import { parseArgs } from "node:util";
import net from "node:net";
import { startEcho } from "../tests/_backends.ts";
import { startTestCluster } from "../tests/_cluster.ts";
import { testService } from "../tests/_config.ts";
import { eventually } from "../tests/_helpers.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { connections: { type: "string", default: "2000" } },
});
const connections = Number(values.connections);

const echo = startEcho();
const backend = echo.address;
const SERVICES = {
  tabled: "decide: agent",
  decided: "decide: manager, decided ahead",
  asked: "decide: manager, decide_ahead 0s",
} as const;
type Service = keyof typeof SERVICES;

const cluster = await startTestCluster({
  agents: 2,
  agentArgs: () => ["--log-level", "info"],
  services: [
    testService({ name: "tabled", decide: "agent", backends: [backend], health: null }),
    testService({
      name: "decided",
      decide: "manager",
      decision_timeout: "200ms",
      backends: [backend],
      health: null,
    }),
    testService({
      name: "asked",
      decide: "manager",
      decide_ahead: "0s",
      decision_timeout: "200ms",
      backends: [backend],
      health: null,
    }),
  ],
});
const names = Object.keys(SERVICES) as Service[];

function ports(agentIndex: number): Map<string, number> {
  const found = new Map<string, number>();
  for (const line of cluster.agents[agentIndex]!.proc.logs) {
    if (line.message.startsWith("Service") && line.properties.bound) {
      found.set(String(line.properties.service), Number(String(line.properties.bound).split(":").pop()));
    }
  }
  return found;
}

async function once(port: number): Promise<{ ms: number; localPort: number }> {
  const started = performance.now();
  const socket = net.connect({ host: "127.0.0.1", port });
  socket.setNoDelay(true);
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", () => socket.write("x"));
    socket.once("data", () => resolve());
    socket.once("error", reject);
  });
  const ms = performance.now() - started;
  const localPort = socket.localPort ?? 0;
  await new Promise<void>((resolve) => {
    socket.once("close", () => resolve());
    socket.destroy();
  });
  return { ms, localPort };
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? NaN;
}

try {
  await eventually(() => ports(0).size === 3 && ports(1).size === 3, 10_000, "both agents listening");
  await eventually(
    () => cluster.agents.every((a) => a.proc.logs.some((l) => l.message.startsWith("Claims split among 2"))),
    10_000,
    "claims",
  );
  const direct: number[] = [];
  for (let i = 0; i < connections / 4; i++) direct.push((await once(echo.port)).ms);
  const results = new Map<Service, Array<{ ms: number; localPort: number }>>(names.map((name) => [name, []]));
  // Services in turn, a few hundred connections at a time, so that drift on a shared machine hits each alike.
  for (let done = 0; done < connections; done += 250) {
    for (const service of names) {
      const port = ports(0).get(service)!;
      for (let i = done; i < Math.min(connections, done + 250); i++) {
        results.get(service)!.push(await once(port));
      }
    }
  }
  const rows: string[] = [];
  const p50s = new Map<string, number>();
  const row = (label: string, samples: number[]) => {
    const sorted = [...samples].sort((a, b) => a - b);
    p50s.set(label, percentile(sorted, 0.5));
    rows.push(
      `| ${label} | ${sorted.length} | ${percentile(sorted, 0.5).toFixed(3)} | ${
        percentile(sorted, 0.99).toFixed(3)
      } |`,
    );
  };
  row("direct to the backend", direct);
  for (const service of names) {
    const port = ports(0).get(service)!;
    const local: number[] = [];
    const relayed: number[] = [];
    for (const result of results.get(service)!) {
      const query = new URLSearchParams({
        service,
        client: `127.0.0.1:${result.localPort}`,
        service_address: `127.0.0.1:${port}`,
      });
      const explained = await cluster.api<{ claim: { agent: string | null } }>(`/v1/explain?${query}`);
      (explained.claim.agent === "agent-1" ? local : relayed).push(result.ms);
    }
    row(`${SERVICES[service]}, served where accepted`, local);
    row(`${SERVICES[service]}, handed off to the claimant`, relayed);
  }
  const added = (service: Service) =>
    (p50s.get(`${SERVICES[service]}, served where accepted`)! -
      p50s.get(`${SERVICES.tabled}, served where accepted`)!).toFixed(3);
  rows.push(
    "",
    `A manager decision adds ${added("decided")} ms at p50 decided ahead, ${
      added("asked")
    } ms asked per connection (served where accepted, against decide: agent).`,
  );
  console.log(
    `Connect + 1-byte round trip, ms (${connections} sequential connections per service):\n\n` +
      "| path | n | p50 | p99 |\n| --- | --- | --- | --- |\n" + rows.join("\n"),
  );
} finally {
  await cluster.close();
  echo.close();
}
