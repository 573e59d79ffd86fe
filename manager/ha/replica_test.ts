/**
 * Two managers' replicas in one process against a real etcd: the standby follows what the leader stores,
 * and takes over from it with the same drains, feedback and agents.
 */
import assert from "node:assert/strict";
import { EtcdCluster, etcdUnavailable } from "../../tests/_etcd.ts";
import { eventually, needs } from "../../tests/_helpers.ts";
import type { AgentSession } from "../agent_session.ts";
import { type Config, parseConfig } from "../config.ts";
import { ClusterModel } from "../state.ts";
import { Replica } from "./replica.ts";

const A = "10.0.0.11:80";
const B = "10.0.0.12:80";
const NAME =
  "a standby follows the drains and feedback the leader stores, and takes over with them and its agents";

function config(etcd: string[]): Config {
  const result = parseConfig(JSON.stringify({
    manager: {
      tokens: { cluster: "cluster-token-0123" },
      ha: { etcd, prefix: "/replica-test", lease: "2s" },
    },
    services: [{ name: "web", listen: "0.0.0.0:80", backends: [A, B], health: { interval: "1h" } }],
  }));
  assert.deepEqual(result.problems, []);
  return result.config as Config;
}

async function replica(id: string, { etcd, agents }: { etcd: string[]; agents: AgentSession[] }) {
  const model = new ClusterModel(config(etcd), { seed: 1 });
  const led: AgentSession[][] = [];
  const replica = await Replica.create({
    config: model.config,
    model,
    self: { id, admin: `${id}:9090`, cluster: `${id}:9091` },
    agentsHere: () => agents,
    lead: (previous) => led.push(previous),
    follow: () => {},
    httpClient: null,
  });
  replica.start();
  return {
    model,
    replica,
    led,
    async close() {
      await replica.close();
      model.close();
    },
  };
}

Deno.test({
  ...needs(NAME, etcdUnavailable()),
  sanitizeOps: true,
  sanitizeResources: true,
  async fn() {
    const etcd = await EtcdCluster.start();
    const agent: AgentSession = {
      id: "edge-1",
      mesh: "10.0.0.21:7000",
      remote: "10.0.0.21:40000",
      joinedAt: Date.now(),
      lastHeartbeat: performance.now(),
      ackedVersion: 3,
      sentVersion: 3,
      connections: { served: 10, handed_off: 2, open: 1 },
    };
    const first = await replica("first", { etcd: etcd.endpoints, agents: [agent] });
    let second: Awaited<ReturnType<typeof replica>> | null = null;
    try {
      await eventually(() => first.replica.leading(), 5_000, "the first to lead");
      second = await replica("second", { etcd: etcd.endpoints, agents: [] });
      await eventually(() => second!.replica.writeTarget().kind === "leader", 5_000, "the second to follow");
      assert.equal(second.replica.role(), "standby");

      first.model.setOperatorState("web", A, "drain");
      await first.replica.storeOperatorState("web", A);
      first.model.applyFeedback([{ service: "web", backend: B, weight: 40, ttlMs: 20_000 }]);
      await first.replica.storeFeedback([{ service: "web", backend: B }]);
      first.replica.agentsChanged();
      const expiresAt = first.model.service("web")!.backends[1]!.feedback!.expiresAt;

      const standby = second;
      await eventually(
        () => standby.model.service("web")!.backends.map((b) => b.effectiveWeight).join() === "0,40",
        5_000,
        "the standby to follow the drain and the feedback",
      );
      assert.equal(standby.model.service("web")!.backends[0]!.state, "draining");
      await eventually(() => standby.replica.agents().length === 1, 5_000, "the standby to know the agent");
      assert.equal(standby.replica.agents()[0]!.connections.served, 10);
      const view = standby.replica.view();
      assert.deepEqual(view.leader, { id: "first", admin: "first:9090", cluster: "first:9091" });
      assert.deepEqual(view.managers.map((m) => [m.id, m.role]), [["first", "leader"], [
        "second",
        "standby",
      ]]);

      await first.close();
      await eventually(() => standby.replica.leading(), 5_000, "the second to lead");
      const backends = standby.model.service("web")!.backends;
      assert.deepEqual(backends.map((b) => [b.operatorState, b.effectiveWeight]), [["drain", 0], ["up", 40]]);
      // Both managers run on one clock here: the record expires when it did on the first, to the millisecond.
      assert.ok(Math.abs(backends[1]!.feedback!.expiresAt - expiresAt) <= 2);
      assert.deepEqual(standby.led.map((agents) => agents.map((a) => [a.id, a.mesh])), [[[
        "edge-1",
        "10.0.0.21:7000",
      ]]]);
      assert.equal(standby.replica.leaderChanges(), 2);
    } finally {
      await first.close().catch(() => {});
      await second?.close();
      await etcd.close();
    }
  },
});
