/**
 * etcd failing under several managers, under load (`decide: manager`, two agents sharing the port, ~150 new
 * connections a second): one member of three SIGKILLed changes nothing a client sees; then all of them gone:
 * the leader gives up its lead within its lease, every write is answered 503, the agents keep serving from
 * their last state; and once etcd is back a manager leads again and the agents join it. Skipped when etcd
 * is not installed.
 */
import assert from "node:assert/strict";
import { etcdUnavailable } from "./_etcd.ts";
import { startGreeter } from "./_backends.ts";
import { eventually, freeFixedPort, needs } from "./_helpers.ts";
import { type ClusterBody, HaCluster, haService } from "./_ha.ts";
import { sleep, startLoad, summarize } from "./_load.ts";

const unavailable = etcdUnavailable();
const LEASE_MS = 2_000;
const NAME =
  "etcd under several managers: a member of three SIGKILLed fails nothing; all gone, the lead ends within the lease and agents serve on; back, a manager leads";

Deno.test({
  ...needs(NAME, unavailable),
  async fn() {
    const backends = [startGreeter("b1", { hold: true }), startGreeter("b2", { hold: true })];
    const port = freeFixedPort();
    let cluster: HaCluster | null = null;
    let load: ReturnType<typeof startLoad> | null = null;
    try {
      cluster = await HaCluster.start({
        agents: 2,
        managers: 2,
        etcdMembers: 3,
        lease: `${LEASE_MS / 1_000}s`,
        services: [haService(port, backends)],
      });
      const c = cluster;
      const first = await c.leader();
      await eventually(
        async () => (await c.api<{ agents: unknown[] }>(first, "/v1/agents")).agents.length === 2,
        10_000,
        "both agents to join the leader",
      );
      load = startLoad({
        targets: () => [port],
        concurrency: 6,
        ratePerSecond: 150,
        maxSeconds: 40,
        expect: (line) => line === "b1" || line === "b2",
      });
      await sleep(1_500);

      // One member of three: etcd keeps its quorum, the managers go on to another member.
      await c.etcd.kill(0);
      await sleep(4_000);
      const afterOne = await c.leader(5_000);

      // Every member: nobody may lead past its lease.
      await Promise.all([c.etcd.kill(1), c.etcd.kill(2)]);
      const goneAt = performance.now();
      let lastLed = goneAt;
      await eventually(
        async () => {
          const views = await c.views();
          if (views.some((view) => view?.role === "leader")) lastLed = performance.now();
          return views.every((view) => view !== null && view.role === "standby" && view.leader === null);
        },
        LEASE_MS + 2_000,
        "every manager to stop leading and know no leader",
      );
      const ledFor = lastLed - goneAt;
      const writes = await Promise.all(c.managers.map(async (m) => {
        const response = await c.request(m, "/v1/feedback", {
          method: "POST",
          body: JSON.stringify({ service: "web", backend: backends[0]!.address, weight: 50 }),
        });
        return `${response.status} ${((await response.json()) as { error: string }).error}`;
      }));
      const duringOutage = load.records.length;
      await sleep(3_000);
      const servedWithoutEtcd = load.records.length - duringOutage;

      // etcd back: a manager leads again, and the agents join it.
      for (let i = 0; i < 3; i++) c.etcd.restart(i);
      const backAt = performance.now();
      await c.etcd.ready();
      const again = await c.leader(LEASE_MS * 5 + 5_000);
      const leadsAfter = performance.now() - backAt;
      await eventually(
        async () => (await c.api<{ agents: unknown[] }>(again, "/v1/agents")).agents.length === 2,
        10_000,
        "both agents to join the leader once etcd is back",
      );
      const view = await c.api<ClusterBody>(again, "/v1/cluster");
      await sleep(1_000);
      const records = await load.stop();
      const all = summarize(records);
      console.log(
        `load ${all.text}; a member killed: ${afterOne === first ? "the lead stayed" : "the lead moved"}; ` +
          `all killed: the last leader was seen ${
            ledFor.toFixed(0)
          } ms after, ${servedWithoutEtcd} connections in 3 s without etcd, writes answered ${
            JSON.stringify(writes)
          }; etcd back: ${again.index === first.index ? "the same" : "the other"} manager led ${
            leadsAfter.toFixed(0)
          } ms after the restart`,
      );
      assert.equal(all.failed, 0, `failed: ${all.failures.slice(0, 5).map((r) => r.error).join("; ")}`);
      assert.ok(ledFor <= LEASE_MS, `a manager still led ${ledFor.toFixed(0)} ms after etcd was gone`);
      for (const write of writes) assert.match(write, /^503 No manager leads now/);
      assert.ok(servedWithoutEtcd > 300, `only ${servedWithoutEtcd} connections in 3 s without etcd`);
      assert.equal(view.role, "leader");
      assert.equal(view.ha?.etcd_reachable, true);
    } finally {
      await load?.stop();
      await cluster?.close();
      await Promise.all(backends.map((b) => b.close()));
    }
  },
});
