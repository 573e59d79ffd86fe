import assert from "node:assert/strict";
import { Agent } from "./agent.ts";
import { agentMetrics } from "./admin.ts";

Deno.test("the agent's /metrics names every series the Prometheus way, from its counters", () => {
  const agent = new Agent({
    id: "edge-1",
    managers: [{ host: "127.0.0.1", port: 1 }],
    token: "t".repeat(24),
  });
  agent.counters.connectionsByBackend.set("web\u000010.0.0.11:80", 30);
  agent.counters.connectionsByBackend.set('we"b\u000010.0.0.12:80', 7);
  agent.counters.connectFailures.set("web\u000010.0.0.13:80", 2);
  agent.counters.served = 37;
  agent.counters.handedOff = 5;
  agent.counters.bytesUp = 1234;
  agent.counters.bytesDown = 5678;
  agent.counters.decisions = 36;
  agent.counters.decisionFallbacks = 1;
  const lines = agentMetrics(agent).split("\n");
  for (
    const line of [
      'switchyard_connections_total{service="web",backend="10.0.0.11:80"} 30',
      'switchyard_connections_total{service="we\\"b",backend="10.0.0.12:80"} 7',
      "switchyard_agent_connections_served_total 37",
      "switchyard_active_connections 0",
      'switchyard_bytes_total{direction="up"} 1234',
      'switchyard_bytes_total{direction="down"} 5678',
      "switchyard_handoffs_total 5",
      'switchyard_connect_failures_total{service="web",backend="10.0.0.13:80"} 2',
      'switchyard_manager_decisions_total{result="answered"} 36',
      'switchyard_manager_decisions_total{result="fallback"} 1',
      "switchyard_manager_connected 0",
      "switchyard_state_version -1",
      "# TYPE switchyard_bytes_total counter",
      "# TYPE switchyard_active_connections gauge",
    ]
  ) {
    assert.ok(lines.includes(line), `${line} in:\n${lines.join("\n")}`);
  }
});
