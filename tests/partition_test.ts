/**
 * A real network partition: the manager and the agents run in network namespaces of their own, joined by
 * a veth pair; the test (clients and backends) reaches the agents and the manager's admin port through
 * veths of their own. Cutting the manager's end of the pair partitions it from the agents: the agents must
 * serve every client throughout from the state they last had, and rejoin and converge once it heals.
 *
 * Every address is in one private /24 (10.200.N.0/24, N picked free), assigned only to veths of the
 * namespaces made here and their root-side peers: no packet leaves the machine. The namespaces (and with
 * them every veth) are deleted in a `finally`. Without root, or where `ip netns add` fails, the test says
 * so in its name and is ignored.
 */
import assert from "node:assert/strict";
import { startGreeter } from "./_backends.ts";
import { ADMIN_TOKEN, CLUSTER_TOKEN, testConfig, testService } from "./_config.ts";
import { eventually, needs, servicePort } from "./_helpers.ts";
import { sleep, startLoad, summarize } from "./_load.ts";
import { meshAgentArgs, netnsUnavailable, NsProc, TestNetwork } from "./_netns.ts";

const NAME =
  "a manager partitioned off by a cut veth: agents serve every client throughout, then rejoin and converge";
const unavailable = await netnsUnavailable();

interface AgentsView {
  agents: Array<{ id: string; state_version: number }>;
}

Deno.test({
  ...needs(NAME, unavailable),
  async fn() {
    const network = new TestNetwork();
    const procs: NsProc[] = [];
    let dir: string | null = null;
    let cleanupBackends: Array<() => Promise<void>> = [];
    let load: ReturnType<typeof startLoad> | null = null;
    try {
      await network.pickSubnet();
      const net = (host: number) => network.address(host);
      // Manager (M) and agents (A), joined by M:.1 ↔ A:.2; the root reaches A by .5 ↔ .6 and M by .9 ↔ .10.
      const nsM = await network.namespace("m");
      const nsA = await network.namespace("a");
      const cut = await network.veth({ ns: nsM, suffix: "ma", host: 1 }, { ns: nsA, suffix: "am", host: 2 });
      await network.veth({ ns: null, suffix: "ra", host: 5 }, { ns: nsA, suffix: "ar", host: 6 });
      await network.veth({ ns: null, suffix: "rm", host: 9 }, { ns: nsM, suffix: "mr", host: 10 });

      const backends = [
        startGreeter("b1", { host: net(5), hold: true }),
        startGreeter("b2", { host: net(5), hold: true }),
      ];
      cleanupBackends = backends.map((b) => () => b.close());
      dir = await Deno.makeTempDir({ prefix: "switchyard-partition-" });
      await Deno.writeTextFile(`${dir}/cluster.token`, CLUSTER_TOKEN);
      await Deno.writeTextFile(
        `${dir}/switchyard.yaml`,
        testConfig({
          manager: { admin: `${net(10)}:0`, cluster: `${net(1)}:0` },
          // The manager cannot reach the backends (they are on the root-A link): no active checks.
          services: [testService({
            listen: `${net(6)}:0`,
            decide: "manager",
            decision_timeout: "50ms",
            backends: backends.map((b) => b.address),
          })],
        }),
      );
      const manager = new NsProc(nsM, [
        "manager",
        "--config",
        `${dir}/switchyard.yaml`,
        "--log-format",
        "json",
        "--log-level",
        "debug",
      ]);
      procs.push(manager);
      const ready = await manager.waitForLog((l) => l.message.startsWith("Manager serving"));
      const admin = String(ready.properties.admin);
      const clusterAddr = String(ready.properties.cluster);
      const api = async <T>(path: string, init: RequestInit = {}): Promise<T> => {
        const response = await fetch(`http://${admin}${path}`, {
          ...init,
          headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
        });
        const body = await response.json();
        if (!response.ok) throw new Error(`${path} answered ${response.status}: ${JSON.stringify(body)}`);
        return body as T;
      };
      const agents: Array<{ id: string; proc: NsProc; port: number }> = [];
      for (const id of ["agent-1", "agent-2"]) {
        const proc = new NsProc(nsA, meshAgentArgs(clusterAddr, dir, id));
        procs.push(proc);
        agents.push({ id, proc, port: await servicePort(proc, "web") });
      }
      const converged = async () => {
        try {
          const { version } = await api<{ version: number }>("/v1/services");
          const view = await api<AgentsView>("/v1/agents");
          return view.agents.length === 2 && view.agents.every((a) => a.state_version === version);
        } catch {
          return false;
        }
      };
      await eventually(converged, 10_000, "both agents to join and ack the state");

      load = startLoad({
        host: net(6),
        targets: () => agents.map((a) => a.port),
        concurrency: 4,
        ratePerSecond: 100,
        maxSeconds: 25,
        expect: (line) => line === "b1" || line === "b2",
      });
      await sleep(1_000);

      // Cut the manager off: its end of the M-A pair goes down.
      await network.link(nsM, cut.left, "down");
      const cutAt = performance.now();
      await eventually(
        async () => (await api<AgentsView>("/v1/agents")).agents.length === 0,
        5_000,
        "the manager to drop both agents",
      );
      const droppedAfter = performance.now() - cutAt;
      await eventually(
        () =>
          agents.every((a) =>
            a.proc.logs.some((l) => /No word from the manager|Lost the manager/.test(l.message))
          ),
        5_000,
        "both agents to notice the manager is gone",
      );
      // A change the agents cannot learn while cut off: b2 drained by an operator.
      await api(`/v1/services/web/backends/${encodeURIComponent(backends[1]!.address)}/state`, {
        method: "POST",
        body: JSON.stringify({ state: "drain" }),
      });
      const b2AtDrain = backends[1]!.accepted();
      await sleep(2_000);
      const b2DuringCut = backends[1]!.accepted() - b2AtDrain;

      await network.link(nsM, cut.left, "up");
      const healedAt = performance.now();
      await eventually(converged, 15_000, "both agents to rejoin and ack the manager's state");
      const convergedAfter = performance.now() - healedAt;
      await sleep(300);
      const b2AtConverged = backends[1]!.accepted();
      await sleep(1_500);
      const b2AfterHeal = backends[1]!.accepted() - b2AtConverged;
      const records = await load.stop();
      const all = summarize(records);
      const duringCut = records.filter((r) => r.start >= cutAt && r.start < healedAt);
      console.log(
        `subnet ${net(0)}/24; load ${all.text}; ${duringCut.length} during the ${
          ((healedAt - cutAt) / 1000).toFixed(1)
        } s partition; the manager dropped the agents ${
          droppedAfter.toFixed(0)
        } ms after the cut; converged ${
          convergedAfter.toFixed(0)
        } ms after healing; drained b2 got ${b2DuringCut} connections during the cut, ${b2AfterHeal} after convergence`,
      );
      assert.equal(all.failed, 0, `failed: ${all.failures.slice(0, 5).map((r) => r.error).join("; ")}`);
      assert.ok(duringCut.length > 200, `only ${duringCut.length} connections during the partition`);
      assert.ok(b2DuringCut > 0, "the cut-off agents learnt of the drain: the partition was not real");
      assert.equal(b2AfterHeal, 0, "the agents serve the drained b2 after they converged");
      for (const agent of agents) {
        const joins = agent.proc.logs.filter((l) => l.message.startsWith("Joined the manager")).length;
        assert.ok(joins >= 2, `${agent.id} joined ${joins} times`);
      }
    } finally {
      await load?.stop();
      await Promise.all(procs.map((p) => p.stop()));
      await Promise.all(cleanupBackends.map((close) => close()));
      if (dir) await Deno.remove(dir, { recursive: true });
      await network.close();
    }
  },
});
