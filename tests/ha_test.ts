/**
 * Several managers (`manager.ha`) under load: two managers on one etcd, two agents sharing the service's
 * port (reusePort) with `decide: manager`, ~150 new connections a second. The leading manager is SIGKILLed:
 * no connection fails, the standby leads within `lease` + 1 s, and it has the operator drain and the feedback
 * that were POSTed (to the standby, which passed them on) before the kill, while the agents' claims stay
 * where they were. Skipped when etcd is not installed.
 */
import assert from "node:assert/strict";
import { etcdUnavailable } from "./_etcd.ts";
import { startGreeter } from "./_backends.ts";
import { eventually, freeFixedPort, needs } from "./_helpers.ts";
import { type ClusterBody, HaCluster, type HaManager, haService } from "./_ha.ts";
import { sleep, startLoad, summarize } from "./_load.ts";
import { flowsDecided } from "./_prometheus.ts";

const unavailable = etcdUnavailable();
const LEASE_MS = 2_000;
const FEEDBACK_TTL_S = 14;

interface ServicesView {
  version: number;
  services: Array<{
    backends: Array<{
      address: string;
      state: string;
      operator_state: string;
      effective_weight: number;
      feedback: { weight: number; expires_in_s: number } | null;
    }>;
  }>;
}
interface AgentsView {
  agents: Array<{ id: string; claim: number; state_version: number }>;
}

/** Every agent is connected to `manager` and serves its current state. */
async function caughtUp(cluster: HaCluster, manager: HaManager, count: number): Promise<boolean> {
  try {
    const { version } = await cluster.api<ServicesView>(manager, "/v1/services");
    const { agents } = await cluster.api<AgentsView>(manager, "/v1/agents");
    const live = cluster.agents.map((a) => a.id);
    return agents.filter((a) => live.includes(a.id) && a.state_version === version).length === count;
  } catch {
    return false;
  }
}

const NAME =
  "the leading manager SIGKILLed under load: no connection fails, and a standby leads within lease + 1 s with the same drains, feedback and claims";

Deno.test({
  ...needs(NAME, unavailable),
  async fn() {
    const backends = [
      startGreeter("b1", { hold: true }),
      startGreeter("b2", { hold: true }),
      startGreeter("b3", { hold: true }),
    ];
    const [b1, b2, b3] = backends as [typeof backends[0], typeof backends[0], typeof backends[0]];
    const port = freeFixedPort();
    let cluster: HaCluster | null = null;
    let load: ReturnType<typeof startLoad> | null = null;
    try {
      cluster = await HaCluster.start({
        agents: 2,
        managers: 2,
        lease: `${LEASE_MS / 1_000}s`,
        services: [haService(port, backends)],
      });
      const c = cluster;
      const leader = await c.leader();
      const standby = c.managers.find((m) => m !== leader)!;
      await eventually(() => caughtUp(c, leader, 2), 10_000, "both agents to serve the leader's state");

      // A drain and a feedback weight, both POSTed to the standby, which passes them to the leader.
      const drained = await c.request(
        standby,
        `/v1/services/web/backends/${encodeURIComponent(b3.address)}/state`,
        {
          method: "POST",
          body: JSON.stringify({ state: "drain" }),
        },
      );
      assert.equal(drained.status, 200, await drained.clone().text());
      const reported = await c.request(standby, "/v1/feedback", {
        method: "POST",
        body: JSON.stringify({ service: "web", backend: b2.address, weight: 25, ttl: `${FEEDBACK_TTL_S}s` }),
      });
      const reportedAt = performance.now();
      assert.equal(reported.status, 202);
      assert.equal(
        ((await reported.json()) as { backends: Array<{ effective_weight: number }> }).backends[0]!
          .effective_weight,
        25,
      );
      const onLeader = (await c.api<ServicesView>(leader, "/v1/services")).services[0]!.backends;
      assert.deepEqual(onLeader.map((b) => [b.state, b.effective_weight]), [["up", 100], ["up", 25], [
        "drain",
        0,
      ]]);
      // What the standby showed last, for the failure's message.
      let standbyWeights = "";
      await eventually(
        async () => {
          const view = (await c.api<ServicesView>(standby, "/v1/services")).services[0]!.backends;
          standbyWeights = view.map((b) => b.effective_weight).join();
          return standbyWeights === "100,25,0";
        },
        5_000,
        "the standby to follow the drain and the feedback",
      ).catch((error) => {
        throw new Error(`${error.message}: the standby shows weights ${standbyWeights}`);
      });
      await eventually(() => caughtUp(c, leader, 2), 10_000, "both agents to serve the drain");
      const claimsBefore = (await c.api<AgentsView>(leader, "/v1/agents")).agents.map((a) => [a.id, a.claim]);
      assert.equal(claimsBefore.length, 2);
      const claimLines = () =>
        c.agents.map((a) => a.proc.logs.filter((l) => l.message.startsWith("Claims split")).length);
      const claimLinesBefore = claimLines();

      load = startLoad({
        targets: () => [port],
        concurrency: 6,
        ratePerSecond: 150,
        maxSeconds: 14,
        expect: (line) => line === "b1" || line === "b2",
      });
      await sleep(2_000);
      const b3Before = b3.accepted();
      await c.kill(leader);
      const killedAt = performance.now();
      // Before the standby leads, a write to it cannot be taken: 503, with the error body.
      const early = await c.request(standby, "/v1/feedback", {
        method: "POST",
        body: JSON.stringify({ service: "web", backend: b1.address, weight: 50 }),
      });
      const earlyBody = (await early.json()) as { error: string; path: string };
      await eventually(
        async () => (await c.api<ClusterBody>(standby, "/v1/cluster").catch(() => null))?.role === "leader",
        LEASE_MS + 3_000,
        "the standby to lead",
      );
      const ledAfter = performance.now() - killedAt;
      await eventually(() => caughtUp(c, standby, 2), 10_000, "both agents to join the new leader");
      const joinedAfter = performance.now() - killedAt;

      const view = (await c.api<ServicesView>(standby, "/v1/services")).services[0]!.backends;
      const claimsAfter = (await c.api<AgentsView>(standby, "/v1/agents")).agents.map((a) => [a.id, a.claim]);
      const elapsedS = (performance.now() - reportedAt) / 1_000;
      await sleep(2_000);
      const records = await load.stop();
      const all = summarize(records);
      const afterKill = records.filter((r) => r.start >= killedAt);
      const metrics = await (await c.request(standby, "/metrics")).text();
      const newLeaderDecisions = flowsDecided(metrics);
      console.log(
        `load ${all.text}; ${afterKill.length} after the kill; the standby led ${
          ledAfter.toFixed(0)
        } ms after it and both agents had joined it ${
          joinedAfter.toFixed(0)
        } ms after it; the new leader decided ${newLeaderDecisions} flows; the drained backend got ${
          b3.accepted() - b3Before
        } connections; a write during the failover answered ${early.status} "${earlyBody.error}"`,
      );

      assert.equal(all.failed, 0, `failed: ${all.failures.slice(0, 5).map((r) => r.error).join("; ")}`);
      assert.ok(afterKill.length > 300, `only ${afterKill.length} connections after the kill`);
      assert.ok(ledAfter <= LEASE_MS + 1_000, `the standby led ${ledAfter.toFixed(0)} ms after the kill`);
      assert.equal(early.status, 503);
      assert.equal(earlyBody.path, "");
      // The drain and the feedback hold on the new leader, the feedback with the expiry it had.
      assert.deepEqual(view.map((b) => [b.operator_state, b.state, b.effective_weight]), [
        ["up", "up", 100],
        ["up", "up", 25],
        ["drain", "drain", 0],
      ]);
      assert.equal(view[1]!.feedback?.weight, 25);
      assert.ok(
        Math.abs(view[1]!.feedback!.expires_in_s - (FEEDBACK_TTL_S - elapsedS)) < 1,
        JSON.stringify(view[1]),
      );
      assert.equal(b3.accepted(), b3Before, "the drained backend got new connections");
      // Claims did not move: the same shares, and no agent ever split them anew.
      assert.deepEqual(claimsAfter, claimsBefore);
      assert.deepEqual(claimLines(), claimLinesBefore, "an agent's claims moved during the failover");
      assert.ok(newLeaderDecisions > 100, `the new leader decided only ${newLeaderDecisions} flows`);

      // The feedback still holds until its ttl, then expires on the new leader by itself.
      await eventually(
        async () => {
          const b = (await c.api<ServicesView>(standby, "/v1/services")).services[0]!.backends[1]!;
          return b.feedback === null && b.effective_weight === 100;
        },
        (FEEDBACK_TTL_S - elapsedS + 2) * 1_000,
        "the feedback to expire at its ttl",
      );
      assert.ok(
        (performance.now() - reportedAt) / 1_000 >= FEEDBACK_TTL_S - 0.5,
        "the feedback expired early",
      );
    } finally {
      await load?.stop();
      await cluster?.close();
      await Promise.all(backends.map((b) => b.close()));
    }
  },
});
