/** The agent's optional admin port: `/healthz` (200 while serving, 503 while draining) and `/metrics`. */
import type { HostPort } from "../cluster/address.ts";
import type { Agent } from "./agent.ts";

export function startAgentAdmin(agent: Agent, address: HostPort): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve({ hostname: address.host, port: address.port, onListen: () => {} }, (request) => {
    const { pathname } = new URL(request.url);
    if (request.method !== "GET") return new Response("Method not allowed\n", { status: 405 });
    if (pathname === "/healthz") {
      return agent.draining
        ? Response.json({ status: "draining" }, { status: 503 })
        : Response.json({ status: "ok", manager: agent.connectedToManager ? "connected" : "unreachable" });
    }
    if (pathname === "/metrics") {
      return new Response(agentMetrics(agent), { headers: { "content-type": "text/plain; version=0.0.4" } });
    }
    return new Response("Not found\n", { status: 404 });
  });
}

function agentMetrics(agent: Agent): string {
  const c = agent.counters;
  const lines = [
    "# HELP switchyard_agent_connections_served_total Connections this agent forwarded to a backend itself.",
    "# TYPE switchyard_agent_connections_served_total counter",
    `switchyard_agent_connections_served_total ${c.served}`,
    "# HELP switchyard_active_connections Connections open through this agent now.",
    "# TYPE switchyard_active_connections gauge",
    `switchyard_active_connections ${agent.openConnections}`,
    "# HELP switchyard_rejected_connections_total Connections closed at once because of limits.max_connections.",
    "# TYPE switchyard_rejected_connections_total counter",
    `switchyard_rejected_connections_total ${c.rejected}`,
    "# HELP switchyard_bytes_total Bytes forwarded by finished connections.",
    "# TYPE switchyard_bytes_total counter",
    `switchyard_bytes_total{direction="up"} ${c.bytesUp}`,
    `switchyard_bytes_total{direction="down"} ${c.bytesDown}`,
    "# HELP switchyard_connections_total Connections forwarded, per service and backend.",
    "# TYPE switchyard_connections_total counter",
  ];
  for (const [key, count] of c.connectionsByBackend) {
    const [service = "", backend = ""] = key.split("\u0000");
    lines.push(
      `switchyard_connections_total{service="${escape(service)}",backend="${escape(backend)}"} ${count}`,
    );
  }
  lines.push(
    "# HELP switchyard_connect_failures_total Failed connection attempts to backends.",
    "# TYPE switchyard_connect_failures_total counter",
  );
  for (const [key, count] of c.connectFailures) {
    const [service = "", backend = ""] = key.split("\u0000");
    lines.push(
      `switchyard_connect_failures_total{service="${escape(service)}",backend="${escape(backend)}"} ${count}`,
    );
  }
  return `${lines.join("\n")}\n`;
}

function escape(value: string): string {
  return value.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");
}
