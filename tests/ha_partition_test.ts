/**
 * A real partition between the leading manager and etcd: etcd, each manager and the agents run in network
 * namespaces of their own, joined by veth pairs, and the leader's pair to etcd is cut while it still reaches
 * the agents and the test. It must step down within its lease, before the standby leads, and make no
 * decision after; the agents follow the new leader, and no connection of the load through them fails. Healed,
 * the old leader follows the new one.
 *
 * Every address is in one private /24 (10.200.N.0/24, N picked free), on veths of the namespaces made here
 * and their root-side peers: no packet leaves the machine. Without root, without `ip netns`, or without etcd,
 * the test says so in its name and is ignored.
 */
import assert from "node:assert/strict";
import { startGreeter } from "./_backends.ts";
import { ADMIN_TOKEN, CLUSTER_TOKEN, testConfig, testService } from "./_config.ts";
import { EtcdCluster, etcdUnavailable } from "./_etcd.ts";
import { eventually, type LogLine, needs } from "./_helpers.ts";
import type { ClusterBody } from "./_ha.ts";
import { sleep, startLoad, summarize } from "./_load.ts";
import { meshAgentArgs, netnsUnavailable, NsProc, TestNetwork } from "./_netns.ts";
import { flowsDecided } from "./_prometheus.ts";

const NAME =
  "the leader partitioned from etcd steps down within its lease and decides nothing more; the standby leads, agents follow, no connection fails";
const unavailable = (await netnsUnavailable()) ?? etcdUnavailable();
const LEASE_MS = 2_000;

/** When a log line was written, in this process's `performance.now()` milliseconds. */
const loggedAt = (line: LogLine) =>
  Date.parse(String((line as unknown as Record<string, unknown>)["@timestamp"])) - performance.timeOrigin;

Deno.test({
  ...needs(NAME, unavailable),
  async fn() {
    const network = new TestNetwork();
    const procs: NsProc[] = [];
    let etcd: EtcdCluster | null = null;
    let dir: string | null = null;
    let backends: Array<ReturnType<typeof startGreeter>> = [];
    let load: ReturnType<typeof startLoad> | null = null;
    try {
      await network.pickSubnet();
      const net = (host: number) => network.address(host);
      // etcd (E), two managers (M1, M2) and the agents (A); the test is the root namespace.
      const [nsE, nsM1, nsM2, nsA] = [
        await network.namespace("e"),
        await network.namespace("m1"),
        await network.namespace("m2"),
        await network.namespace("a"),
      ];
      const cut = await network.veth({ ns: nsM1, suffix: "1e", host: 1 }, { ns: nsE, suffix: "e1", host: 2 });
      await network.veth({ ns: nsM2, suffix: "2e", host: 5 }, { ns: nsE, suffix: "e2", host: 6 });
      await network.veth({ ns: nsM1, suffix: "1a", host: 9 }, { ns: nsA, suffix: "a1", host: 10 });
      await network.veth({ ns: nsM2, suffix: "2a", host: 13 }, { ns: nsA, suffix: "a2", host: 14 });
      await network.veth({ ns: null, suffix: "ra", host: 17 }, { ns: nsA, suffix: "ar", host: 18 });
      await network.veth({ ns: null, suffix: "r1", host: 21 }, { ns: nsM1, suffix: "1r", host: 22 });
      await network.veth({ ns: null, suffix: "r2", host: 25 }, { ns: nsM2, suffix: "2r", host: 26 });
      await network.veth({ ns: null, suffix: "re", host: 29 }, { ns: nsE, suffix: "er", host: 30 });

      etcd = await EtcdCluster.start({ host: net(30), listen: "0.0.0.0", netns: nsE });
      const etcdPort = etcd.ports[0]!;
      backends = [
        startGreeter("b1", { host: net(17), hold: true }),
        startGreeter("b2", { host: net(17), hold: true }),
      ];
      dir = await Deno.makeTempDir({ prefix: "switchyard-ha-partition-" });
      await Deno.writeTextFile(`${dir}/cluster.token`, CLUSTER_TOKEN);
      await Deno.writeTextFile(
        `${dir}/switchyard.yaml`,
        testConfig({
          manager: {
            // Each manager reaches etcd at one of these only: M1 at .2, M2 at .6.
            ha: { etcd: [`http://${net(2)}:${etcdPort}`, `http://${net(6)}:${etcdPort}`], lease: "2s" },
          },
          // The managers cannot reach the backends (they are on the root-A link): no active checks.
          services: [testService({
            // Fixed ports are safe here: the namespaces are this test's alone.
            listen: `${net(18)}:7000`,
            decide: "manager",
            decision_timeout: "50ms",
            backends: backends.map((b) => b.address),
          })],
        }),
      );
      const spawn = (m: { ns: string; admin: string; cluster: string }) => {
        const proc = new NsProc(m.ns, [
          "manager",
          "--config",
          `${dir}/switchyard.yaml`,
          "--admin",
          m.admin,
          "--cluster",
          m.cluster,
          "--log-format",
          "json",
          "--log-level",
          "debug",
        ]);
        procs.push(proc);
        return { ...m, proc };
      };
      const m1 = spawn({ ns: nsM1, admin: `${net(22)}:9090`, cluster: `${net(9)}:9091` });
      const m2Place = { ns: nsM2, admin: `${net(26)}:9090`, cluster: `${net(13)}:9091` };
      const api = async <T>(manager: typeof m1, path: string): Promise<T> => {
        const response = await fetch(`http://${manager.admin}${path}`, {
          headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
          signal: AbortSignal.timeout(3_000),
        });
        if (!response.ok) throw new Error(`${path} answered ${response.status}`);
        return path === "/metrics" ? (await response.text()) as T : (await response.json()) as T;
      };
      const decisions = async (manager: typeof m1) => flowsDecided(await api<string>(manager, "/metrics"));
      const role = (manager: typeof m1) => api<ClusterBody>(manager, "/v1/cluster").catch(() => null);

      // M1 first, so that it is the one that leads.
      await eventually(async () => (await role(m1))?.role === "leader", 15_000, "M1 to lead");
      const m1Id = (await role(m1))!.id;
      const m2 = spawn(m2Place);
      await eventually(async () => (await role(m2))?.leader?.id === m1Id, 15_000, "M2 to follow M1");
      const agents = ["agent-1", "agent-2"].map((id) => {
        const proc = new NsProc(nsA, meshAgentArgs(`${m1.cluster},${m2.cluster}`, dir!, id));
        procs.push(proc);
        return proc;
      });
      await eventually(
        async () => (await api<{ agents: unknown[] }>(m1, "/v1/agents")).agents.length === 2,
        15_000,
        "both agents to join M1",
      );
      // Both listening before the load: a listener joining the port's reusePort group while connections are
      // set up on it can lose one, which is not what this test is about.
      for (const agent of agents) {
        await agent.waitForLog((l) => l.message.startsWith("Service") && l.properties.service === "web");
      }

      load = startLoad({
        host: net(18),
        targets: () => [7000],
        concurrency: 6,
        ratePerSecond: 150,
        maxSeconds: 25,
        expect: (line) => line === "b1" || line === "b2",
      });
      await sleep(2_000);
      const decidedBeforeCut = await decisions(m1);

      // Cut M1 off from etcd; it still reaches the agents and the test.
      await network.link(nsM1, cut.left, "down");
      const cutAt = performance.now();
      const steppedDown = await m1.proc.waitForLog(
        (l) => l.message.startsWith("Stepped down"),
        LEASE_MS + 2_000,
      );
      const decidedAtStepDown = await decisions(m1);
      await eventually(async () => (await role(m2))?.role === "leader", LEASE_MS + 5_000, "M2 to lead");
      const m2LedAt = performance.now();
      const won = await m2.proc.waitForLog((l) => l.message.startsWith("Won the election"));
      await eventually(
        async () => (await api<{ agents: unknown[] }>(m2, "/v1/agents")).agents.length === 2,
        10_000,
        "both agents to join M2",
      );
      const m1View = await role(m1);
      await sleep(1_500);
      const decidedByM2 = await decisions(m2);

      // Healed: M1 follows the new leader.
      await network.link(nsM1, cut.left, "up");
      const m2Id = (await role(m2))!.id;
      await eventually(
        async () => {
          const view = await role(m1);
          return view?.role === "standby" && view.leader?.id === m2Id;
        },
        10_000,
        "M1 to follow M2 once healed",
      );
      await sleep(1_000);
      const records = await load.stop();
      const all = summarize(records);
      const decidedAtEnd = await decisions(m1);
      const stepDownAfter = loggedAt(steppedDown) - cutAt;
      console.log(
        `subnet ${net(0)}/24; load ${all.text}; M1 stepped down ${
          stepDownAfter.toFixed(0)
        } ms after the cut (${steppedDown.properties.reason}), M2 won ${
          (loggedAt(won) - cutAt).toFixed(0)
        } ms after it and answered as leader ${
          (m2LedAt - cutAt).toFixed(0)
        } ms after it; M1 decided ${decidedBeforeCut} flows before the cut, ${
          decidedAtStepDown - decidedBeforeCut
        } more until it stepped down, ${decidedAtEnd - decidedAtStepDown} after; M2 decided ${decidedByM2}`,
      );
      assert.equal(
        all.failed,
        0,
        `failed:\n${
          all.failures.slice(0, 5).map((r) => {
            const client = `${net(17)}:${r.localPort}`;
            const lines = agents.flatMap((a) => a.logs.filter((l) => l.properties.client === client))
              .map((l) => `    ${l.message} ${JSON.stringify(l.properties)}`);
            return `  client ${client} at ${
              ((r.start - cutAt) / 1000).toFixed(2)
            } s from the cut: ${r.error}\n${lines.join("\n")}`;
          }).join("\n")
        }`,
      );
      assert.ok(
        stepDownAfter > 0 && stepDownAfter <= LEASE_MS,
        `M1 stepped down ${stepDownAfter.toFixed(0)} ms after`,
      );
      assert.ok(loggedAt(won) > loggedAt(steppedDown), "M2 won before M1 had stepped down");
      assert.ok(decidedBeforeCut > 100, `M1 decided only ${decidedBeforeCut} flows before the cut`);
      assert.equal(decidedAtEnd, decidedAtStepDown, "M1 decided flows after it stepped down");
      assert.ok(decidedByM2 > 100, `M2 decided only ${decidedByM2} flows`);
      assert.equal(m1View?.role, "standby");
      assert.equal(m1View?.ha?.etcd_reachable, false);
      for (const agent of agents) {
        assert.ok(
          agent.logs.some((l) =>
            l.message.startsWith("Joined the manager") && l.properties.manager === m2.cluster
          ),
        );
      }
    } finally {
      await load?.stop();
      await Promise.all(procs.map((p) => p.stop()));
      await etcd?.close();
      await Promise.all(backends.map((b) => b.close()));
      if (dir) await Deno.remove(dir, { recursive: true });
      await network.close();
    }
  },
});
