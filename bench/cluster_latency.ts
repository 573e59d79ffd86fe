/**
 * The latency a handoff and a manager decision add to a new connection, measured end to end on
 * loopback: a manager and two agents as processes, an echo backend, and sequential connections that
 * each send one byte and wait for it to come back. Flows are sorted afterwards by the agents' logs into
 * served where accepted and handed off, and compared with `decide: agent` on a second service.
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
const cluster = await startTestCluster({
  agents: 2,
  services: [
    testService({
      name: "decided",
      decide: "manager",
      decision_timeout: "200ms",
      backends: [backend],
      health: null,
    }),
    testService({ name: "tabled", decide: "agent", backends: [backend], health: null }),
  ],
});

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
  await eventually(() => ports(0).size === 2 && ports(1).size === 2, 10_000, "both agents listening");
  await eventually(
    () => cluster.agents.every((a) => a.proc.logs.some((l) => l.message.startsWith("Claims split among 2"))),
    10_000,
    "claims",
  );
  const direct: number[] = [];
  for (let i = 0; i < connections / 4; i++) direct.push((await once(echo.port)).ms);
  const results: Record<string, Array<{ ms: number; localPort: number }>> = { decided: [], tabled: [] };
  for (const service of ["decided", "tabled"]) {
    const port = ports(0).get(service)!;
    for (let i = 0; i < connections; i++) results[service]!.push(await once(port));
  }
  await new Promise((resolve) => setTimeout(resolve, 500));
  const handedOff = new Set<string>();
  for (const line of cluster.agents[1]!.proc.logs) {
    if (line.message.includes("served by") && line.properties.handed_off_by === "agent-1") {
      handedOff.add(`${line.properties.service}:${String(line.properties.client).split(":").pop()}`);
    }
  }
  const rows: string[] = [];
  const row = (label: string, samples: number[]) => {
    const sorted = [...samples].sort((a, b) => a - b);
    rows.push(
      `| ${label} | ${sorted.length} | ${percentile(sorted, 0.5).toFixed(3)} | ${
        percentile(sorted, 0.99).toFixed(3)
      } |`,
    );
  };
  row("direct to the backend", direct);
  for (const service of ["tabled", "decided"]) {
    const local = results[service]!.filter((r) => !handedOff.has(`${service}:${r.localPort}`)).map((r) =>
      r.ms
    );
    const relayed = results[service]!.filter((r) => handedOff.has(`${service}:${r.localPort}`)).map((r) =>
      r.ms
    );
    const mode = service === "decided" ? "decide: manager" : "decide: agent";
    row(`${mode}, served where accepted`, local);
    row(`${mode}, handed off to the claimant`, relayed);
  }
  console.log(
    `Connect + 1-byte round trip, ms (${connections} sequential connections per service, debug logs on):\n\n` +
      "| path | n | p50 | p99 |\n| --- | --- | --- | --- |\n" + rows.join("\n"),
  );
} finally {
  await cluster.close();
  await echo.close();
}
