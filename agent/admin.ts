/**
 * The agent's optional admin port: `/healthz` (200 while serving, 503 while draining) and `/metrics` in
 * Prometheus text format. Like the data path, it never waits for the manager: every number is read from
 * the agent's counters at scrape time.
 */
import type { HostPort } from "../cluster/address.ts";
import { internalErrors } from "../cluster/guard.ts";
import { addInternalErrors, Exposition, METRICS_CONTENT_TYPE, type Sample } from "../cluster/prometheus.ts";
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
      return new Response(agentMetrics(agent), { headers: { "content-type": METRICS_CONTENT_TYPE } });
    }
    return new Response("Not found\n", { status: 404 });
  });
}

/** The agent's `/metrics` page. */
export function agentMetrics(agent: Agent): string {
  const c = agent.counters;
  const bytes = agent.bytesForwarded();
  const page = new Exposition()
    .counter(
      "switchyard_connections_total",
      "Connections this agent forwarded to a backend, by service and backend.",
      perBackend(c.connectionsByBackend),
    )
    .counter(
      "switchyard_agent_connections_served_total",
      "Connections this agent forwarded to a backend itself.",
      c.served,
    )
    .gauge(
      "switchyard_active_connections",
      "Connections open through this agent now, relayed ones included.",
      agent.openConnections,
    )
    .counter(
      "switchyard_bytes_total",
      "Bytes this agent forwarded, open connections included: up is client to backend, down the reverse.",
      [[{ direction: "up" }, bytes.up], [{ direction: "down" }, bytes.down]],
    )
    .counter(
      "switchyard_handoffs_total",
      "Connections this agent accepted and relayed to the agent that claims them.",
      c.handedOff,
    )
    .counter(
      "switchyard_handoff_failures_total",
      "Handoffs that could not reach the claimant; those connections were served here.",
      c.handoffFailures,
    )
    .counter(
      "switchyard_connect_failures_total",
      "Failed connection attempts to backends, by service and backend.",
      perBackend(c.connectFailures),
    )
    .counter(
      "switchyard_manager_decisions_total",
      "New flows of decide: manager services: answered by the manager in time, or served from the table.",
      [[{ result: "answered" }, c.decisions], [{ result: "fallback" }, c.decisionFallbacks]],
    )
    .counter(
      "switchyard_rejected_connections_total",
      "Connections closed at once because of limits.max_connections.",
      c.rejected,
    )
    .counter(
      "switchyard_no_backend_total",
      "Connections closed because no backend could be reached.",
      c.noBackend,
    )
    .counter(
      "switchyard_mesh_refused_total",
      "Connections to the mesh port refused for a bad or missing header.",
      agent.meshRefused,
    )
    .gauge(
      "switchyard_manager_connected",
      "1 while this agent is connected to the manager, else 0.",
      agent.connectedToManager ? 1 : 0,
    )
    .gauge(
      "switchyard_state_version",
      "The version of the cluster state this agent serves; -1 before it has one.",
      agent.state?.version ?? -1,
    )
    .gauge("switchyard_draining", "1 while this agent drains, else 0.", agent.draining ? 1 : 0);
  return addInternalErrors(page, internalErrors(), { known: AGENT_GUARDED }).text();
}

/** The loops of the agent that run their turns through `guard`. */
const AGENT_GUARDED = ["manager_link", "unhandled"] as const;

function perBackend(counts: ReadonlyMap<string, number>): Sample[] {
  return [...counts].map(([key, count]): Sample => {
    const [service = "", backend = ""] = key.split("\u0000");
    return [{ service, backend }, count];
  });
}
