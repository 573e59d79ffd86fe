/**
 * The agent's link against the manager's real cluster server, in one process over loopback TCP.
 */
import assert from "node:assert/strict";
import { type Config, parseConfig } from "../manager/config.ts";
import { ClusterServer } from "../manager/cluster_server.ts";
import { ClusterModel } from "../manager/state.ts";
import { eventually } from "../tests/_helpers.ts";
import { type Decision, ManagerLink } from "./manager_link.ts";

const SANITIZE = { sanitizeOps: true, sanitizeResources: true } as const;
const TOKEN = "cluster-token-0123456789abcdef";

function startManager() {
  const result = parseConfig(JSON.stringify({
    manager: { tokens: { cluster: TOKEN } },
    agents: { heartbeat: "200ms" },
    services: [{
      name: "web",
      listen: "127.0.0.1:80",
      decide: "manager",
      backends: [{ address: "10.0.0.11:80", weight: 300 }, { address: "10.0.0.12:80", weight: 100 }],
    }],
  }));
  assert.deepEqual(result.problems, []);
  const model = new ClusterModel(result.config as Config, { seed: 1 });
  const server = new ClusterServer(model, Deno.listen({ hostname: "127.0.0.1", port: 0 }), {
    token: () => TOKEN,
  });
  return {
    server,
    async close() {
      await server.close();
      model.close();
    },
  };
}

function startLink(port: number): ManagerLink {
  const link = new ManagerLink({
    managers: [{ host: "127.0.0.1", port }],
    token: TOKEN,
    agentId: "edge-1",
    mesh: null,
    tls: null,
    onState: () => {},
    report: () => ({ connections: { served: 0, handed_off: 0, open: 0 }, backends: [] }),
    takeFailures: () => [],
  });
  link.start();
  return link;
}

Deno.test({
  name: "ManagerLink: decisions asked together are answered together, each with the manager's own answer",
  ...SANITIZE,
  fn: async () => {
    const manager = startManager();
    // What the manager decided for each client, in the order it decided.
    const decided = new Map<string, string | null>();
    const decide = manager.server.decider.decide.bind(manager.server.decider);
    manager.server.decider.decide = (agent, service, clientIp, now) => {
      const decision = decide(agent, service, clientIp, now);
      decided.set(clientIp, decision.backend);
      return decision;
    };
    const link = startLink(manager.server.addr.port);
    try {
      await eventually(() => link.connected, 5_000, "the link to join");
      for (let burst = 0; burst < 5; burst++) {
        const clients = Array.from({ length: 40 }, (_, i) => `10.1.${burst}.${i}`);
        // Weighted least connections spreads these 3:1, so an answer given to the wrong request shows.
        const answers: Array<Decision | null> = await Promise.all(
          clients.map((ip) => link.decide("web", { ip, port: 40_000 }, 5_000)),
        );
        answers.forEach((answer, i) => {
          assert.ok(answer !== null, `client ${clients[i]} was answered`);
          assert.equal(answer.backend, decided.get(clients[i]!), `client ${clients[i]}`);
        });
        const backends = new Set(answers.map((answer) => answer?.backend));
        assert.equal(backends.size, 2, "both backends were chosen");
      }
      assert.equal(decided.size, 200);
      const unknown = await link.decide("nope", { ip: "10.2.0.1", port: 1 }, 5_000);
      assert.deepEqual(unknown, { backend: null, ttlMs: 0 }, "a service the manager lacks has no backend");
    } finally {
      await link.close();
      await manager.close();
    }
  },
});

Deno.test({
  name: "ManagerLink: with no manager, a decision is null at once, and asked ones get null when it goes",
  ...SANITIZE,
  fn: async () => {
    const manager = startManager();
    const link = startLink(manager.server.addr.port);
    try {
      await eventually(() => link.connected, 5_000, "the link to join");
      // Asked in the same turn as the manager closes: the link goes down before the frame is answered.
      const asked = link.decide("web", { ip: "10.3.0.1", port: 1 }, 5_000);
      await manager.close();
      assert.equal(await asked, null);
      await eventually(() => !link.connected, 5_000, "the link to notice");
      const started = performance.now();
      assert.equal(await link.decide("web", { ip: "10.3.0.2", port: 1 }, 5_000), null);
      assert.ok(performance.now() - started < 100, "without a manager the agent does not wait");
    } finally {
      await link.close();
    }
  },
});
