/**
 * The agent's link against the manager's real cluster server, in one process over loopback TCP.
 */
import assert from "node:assert/strict";
import { type Config, parseConfig } from "../manager/config.ts";
import { ClusterServer } from "../manager/cluster_server.ts";
import { ClusterModel } from "../manager/state.ts";
import { eventually } from "../tests/_helpers.ts";
import { internalErrors } from "../cluster/guard.ts";
import { type ClusterState, decodeTable } from "../cluster/protocol.ts";
import { applyStateDelta } from "../cluster/state_delta.ts";
import { Agent } from "./agent.ts";
import { agentMetrics } from "./admin.ts";
import { type Decision, ManagerLink, type ManagerLinkOptions } from "./manager_link.ts";

const SANITIZE = { sanitizeOps: true, sanitizeResources: true } as const;
const TOKEN = "cluster-token-0123456789abcdef";
const WEB = [{
  name: "web",
  listen: "127.0.0.1:80",
  decide: "manager",
  backends: [{ address: "10.0.0.11:80", weight: 300 }, { address: "10.0.0.12:80", weight: 100 }],
}];

function startManager(
  options: {
    services?: Array<Record<string, unknown>>;
    leadership?: { leading: () => boolean; leaderCluster: () => string | null };
  } = {},
) {
  const { services = WEB, leadership } = options;
  const result = parseConfig(JSON.stringify({
    manager: { tokens: { cluster: TOKEN } },
    agents: { heartbeat: "200ms" },
    services,
  }));
  assert.deepEqual(result.problems, []);
  const model = new ClusterModel(result.config as Config, { seed: 1 });
  const server = new ClusterServer(model, Deno.listen({ hostname: "127.0.0.1", port: 0 }), {
    token: () => TOKEN,
    ...(leadership ? { leadership } : {}),
  });
  return {
    model,
    server,
    async close() {
      await server.close();
      model.close();
    },
  };
}

function startLink(ports: number | number[], options: Partial<ManagerLinkOptions> = {}): ManagerLink {
  const link = new ManagerLink({
    managers: (typeof ports === "number" ? [ports] : ports).map((port) => ({ host: "127.0.0.1", port })),
    token: TOKEN,
    agentId: "edge-1",
    mesh: null,
    tls: null,
    onState: () => {},
    onDelta: () => false,
    onAhead: () => {},
    report: () => ({ connections: { served: 0, handed_off: 0, open: 0 }, backends: [] }),
    takeFailures: () => [],
    takeStarted: () => [],
    ...options,
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
    manager.server.decider.decide = (agent, flow, now) => {
      const decision = decide(agent, flow, now);
      decided.set(flow.clientIp, decision.backend);
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

Deno.test({
  name:
    "ManagerLink: a state or heartbeat the agent fails on is counted on its /metrics, and the link stays up",
  ...SANITIZE,
  fn: async () => {
    const manager = startManager();
    const before = internalErrors().get("manager_link") ?? 0;
    let states = 0;
    let heartbeats = 0;
    const link = startLink(manager.server.addr.port, {
      onState: () => {
        states++;
        throw new RangeError("Cannot apply the state");
      },
      report: () => {
        if (++heartbeats <= 2) throw new TypeError("Cannot count the connections");
        return { connections: { served: 0, handed_off: 0, open: 0 }, backends: [] };
      },
    });
    try {
      await eventually(() => link.connected && heartbeats >= 4, 5_000, "heartbeats after the failed ones");
      assert.ok(states >= 1);
      // The state that failed was not acknowledged: the manager still sees the agent at no version.
      assert.equal(manager.server.agents()[0]?.ackedVersion, -1);
      assert.ok(link.connected, "the link stayed up");
      assert.equal((internalErrors().get("manager_link") ?? 0) - before, states + 2);
      const agent = new Agent({ id: "edge-1", managers: [{ host: "127.0.0.1", port: 1 }], token: TOKEN });
      const line = agentMetrics(agent).split("\n").find((l) =>
        l.startsWith('switchyard_internal_errors_total{where="manager_link"}')
      );
      assert.equal(
        line,
        `switchyard_internal_errors_total{where="manager_link"} ${internalErrors().get("manager_link")}`,
      );
    } finally {
      await link.close();
      await manager.close();
    }
  },
});

Deno.test({
  name: "ManagerLink: given several managers it joins the one that leads, and follows the lead when it moves",
  ...SANITIZE,
  fn: async () => {
    let leader: "a" | "b" = "b";
    const address = (server: { server: ClusterServer }) => `127.0.0.1:${server.server.addr.port}`;
    const managers: Record<"a" | "b", ReturnType<typeof startManager>> = {} as never;
    managers.a = startManager({
      leadership: { leading: () => leader === "a", leaderCluster: () => address(managers[leader]) },
    });
    managers.b = startManager({
      leadership: { leading: () => leader === "b", leaderCluster: () => address(managers[leader]) },
    });
    // The standby first: it sends the agent on.
    const link = startLink([managers.a.server.addr.port, managers.b.server.addr.port]);
    try {
      await eventually(
        () => link.connected && managers.b.server.agents().length === 1,
        5_000,
        "the link to join b",
      );
      assert.equal(managers.a.server.agents().length, 0);
      assert.equal(link.manager.port, managers.b.server.addr.port);
      assert.notEqual(await link.decide("web", { ip: "10.4.0.1", port: 1 }, 5_000), null);

      // The lead moves to a: b sends its agent there, and answers no decision meanwhile.
      leader = "a";
      const decided = managers.b.server.decider.counts.get("web");
      const before = [...(decided?.values() ?? [])].reduce((sum, n) => sum + n, 0);
      const asked = link.decide("web", { ip: "10.4.0.2", port: 1 }, 5_000);
      managers.b.server.follow();
      assert.equal(await asked, null);
      await eventually(
        () => link.connected && managers.a.server.agents().length === 1,
        5_000,
        "the link to join a",
      );
      const after = [...(managers.b.server.decider.counts.get("web")?.values() ?? [])].reduce(
        (sum, n) => sum + n,
        0,
      );
      assert.equal(after, before, "the manager that stopped leading decided");
      assert.equal(link.manager.port, managers.a.server.addr.port);
    } finally {
      await link.close();
      await managers.a.close();
      await managers.b.close();
    }
  },
});

Deno.test({
  name: "ManagerLink: a change comes as a delta of the slots that moved, applied and acknowledged",
  ...SANITIZE,
  fn: async () => {
    const backends = Array.from({ length: 40 }, (_, i) => ({ address: `10.0.1.${i + 1}:80` }));
    const manager = startManager({ services: [{ name: "web", listen: "127.0.0.1:80", backends }] });
    let state: ClusterState | null = null;
    let tables = new Map<string, Uint16Array>();
    const received: string[] = [];
    const link = startLink(manager.server.addr.port, {
      onState: (whole) => {
        received.push(`state ${whole.version}`);
        state = whole;
        tables = new Map(whole.services.map((s) => [s.name, decodeTable(s.table, s.backends.length)]));
      },
      onDelta: (delta) => {
        received.push(
          `delta ${delta.base}→${delta.version} ${delta.services[0]?.slots === null ? "table" : "slots"}`,
        );
        if (state === null) return false;
        ({ state, tables } = applyStateDelta(state, tables, delta));
        return true;
      },
    });
    try {
      await eventually(() => link.connected && state !== null, 5_000, "the first state");
      const first = manager.model.version;
      manager.model.applyFeedback([{ service: "web", backend: "10.0.1.7:80", weight: 50 }]);
      manager.model.flushTables();
      const version = manager.model.version;
      assert.equal(version, first + 1);
      await eventually(() => manager.server.agents()[0]?.ackedVersion === version, 5_000, "the ack");
      assert.deepEqual(received, [`state ${first}`, `delta ${first}→${version} slots`]);
      assert.deepEqual(state, manager.model.snapshot(), "the agent's state is the manager's");
      assert.deepEqual(tables.get("web"), manager.model.service("web")!.table);
    } finally {
      await link.close();
      await manager.close();
    }
  },
});

Deno.test({
  name: "ManagerLink: while no manager leads it gets no session, and a decision is null at once",
  ...SANITIZE,
  fn: async () => {
    const none = { leading: () => false, leaderCluster: () => null };
    const a = startManager({ leadership: none });
    const b = startManager({ leadership: none });
    const link = startLink([a.server.addr.port, b.server.addr.port]);
    try {
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      assert.equal(link.connected, false);
      assert.equal(await link.decide("web", { ip: "10.5.0.1", port: 1 }, 5_000), null);
    } finally {
      await link.close();
      await a.close();
      await b.close();
    }
  },
});

Deno.test({
  name: "ManagerLink: a delta that does not apply is not acknowledged; the agent asks for the whole state",
  ...SANITIZE,
  fn: async () => {
    const manager = startManager();
    const received: string[] = [];
    let refuse = true;
    const link = startLink(manager.server.addr.port, {
      onState: (whole) => received.push(`state ${whole.version}`),
      onDelta: (delta) => {
        received.push(`delta ${delta.version}`);
        // The first delta does not apply (as if the agent had missed one); later ones would.
        const applies = !refuse;
        refuse = false;
        return applies;
      },
    });
    try {
      await eventually(() => link.connected && received.length === 1, 5_000, "the first state");
      const first = manager.model.version;
      manager.model.applyFeedback([{ service: "web", backend: "10.0.0.11:80", weight: 50 }]);
      manager.model.flushTables();
      const version = manager.model.version;
      await eventually(() => manager.server.agents()[0]?.ackedVersion === version, 5_000, "the ack");
      assert.deepEqual(received, [`state ${first}`, `delta ${version}`, `state ${version}`]);
    } finally {
      await link.close();
      await manager.close();
    }
  },
});
