/**
 * SIGTERM on one of several agents that share a service's port on one machine (`reusePort`, as the spec
 * deploys them): no client connection may fail, not even one the kernel had already queued on the
 * terminated agent's listener. The agents run in a network namespace of their own, with the kernel
 * settings of deploy/90-switchyard.conf applied inside it (never to this machine), and clients and the
 * backend reach them through a veth.
 *
 * It guards three drain behaviours: connections queued on the closed listener move to another agent's
 * listener (`net.ipv4.tcp_migrate_req = 1`, in deploy/90-switchyard.conf), connections the agent accepted
 * just before its drain began are served, and the drain keeps the mesh port open a few heartbeats while
 * the other agents still hand it flows.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { startGreeter } from "./_backends.ts";
import { CLUSTER_TOKEN, testConfig, testService } from "./_config.ts";
import { claimsSplit, needs } from "./_helpers.ts";
import { sleep, startLoad, summarize } from "./_load.ts";
import { meshAgentArgs, netnsUnavailable, NsProc, TestNetwork } from "./_netns.ts";

const NAME =
  "an agent SIGTERMed while it shares the service port with two others (reusePort): no connection fails";
const SYSCTLS = fileURLToPath(new URL("../deploy/90-switchyard.conf", import.meta.url));
const unavailable = await netnsUnavailable();
const ignoredBecause = unavailable;

/** The `key = value` lines of a sysctl.d file. */
async function sysctls(file: string): Promise<Array<[string, string]>> {
  return (await Deno.readTextFile(file)).split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"))
    .map((line) => line.split("=").map((part) => part.trim()) as [string, string]);
}

Deno.test({
  ...needs(NAME, ignoredBecause),
  async fn() {
    const network = new TestNetwork();
    const procs: NsProc[] = [];
    let dir: string | null = null;
    let backend: ReturnType<typeof startGreeter> | null = null;
    let load: ReturnType<typeof startLoad> | null = null;
    try {
      await network.pickSubnet();
      const ns = await network.namespace("s");
      await network.veth({ ns: null, suffix: "r", host: 1 }, { ns, suffix: "s", host: 2 });
      const applied: string[] = [];
      for (const [key, value] of await sysctls(SYSCTLS)) {
        if (await network.sysctl(ns, key, value)) applied.push(`${key}=${value}`);
      }
      backend = startGreeter("b1", { host: network.address(1), hold: true });
      dir = await Deno.makeTempDir({ prefix: "switchyard-shared-port-" });
      await Deno.writeTextFile(`${dir}/cluster.token`, CLUSTER_TOKEN);
      // A fixed port is safe here: the namespace is this test's alone.
      const service = { host: network.address(2), port: 7000 };
      await Deno.writeTextFile(
        `${dir}/switchyard.yaml`,
        testConfig({
          services: [testService({
            listen: `${service.host}:${service.port}`,
            decide: "agent",
            timeouts: { connect: "1s", idle: "60s", drain: "10s" },
            backends: [backend.address],
          })],
        }),
      );
      const manager = new NsProc(ns, [
        "manager",
        "--config",
        `${dir}/switchyard.yaml`,
        "--log-format",
        "json",
      ]);
      procs.push(manager);
      const cluster = String(
        (await manager.waitForLog((l) => l.message.startsWith("Manager serving"))).properties.cluster,
      );
      const tokenDir = dir;
      const agents = ["agent-1", "agent-2", "agent-3"].map((id) => {
        const agent = new NsProc(ns, meshAgentArgs(cluster, tokenDir, id));
        procs.push(agent);
        return agent;
      });
      await claimsSplit(agents, 3, { what: "three agents sharing the port" });

      load = startLoad({
        host: service.host,
        targets: () => [service.port],
        concurrency: 30,
        ratePerSecond: 600,
        maxSeconds: 3.5,
        expect: (line) => line === "b1",
      });
      await sleep(1_000);
      // The victim is busy for 200 ms (a GC pause, a loaded CPU) when it is told to stop: the kernel
      // keeps queueing its share of new connections on its listener meanwhile.
      const victim = agents[1]!;
      victim.kill("SIGSTOP");
      await sleep(200);
      victim.kill("SIGTERM");
      victim.kill("SIGCONT");
      const all = summarize(await load.done);
      const status = await victim.status();
      const reset = all.failures.filter((r) => /reset/i.test(r.error ?? ""));
      const unserved = all.failures.filter((r) => r.error === 'unexpected line ""');
      // Closed unserved after another agent handed it to the draining one, or accepted by the draining one.
      const handedToVictim = unserved.filter((r) =>
        agents.some((a) =>
          a !== victim && a.logs.some((l) =>
            l.properties.client === `${network.address(1)}:${r.localPort}` &&
            l.message.includes("handed off to") && l.properties.agent === "agent-2"
          )
        )
      );
      console.log(
        `sysctls applied in the namespace: ${applied.join(", ")}; load ${all.text}: ${reset.length} reset, ${
          unserved.length - handedToVictim.length
        } accepted by the draining agent and closed unserved, ${handedToVictim.length} handed to it and lost`,
      );
      assert.equal(status.code, 0);
      assert.equal(
        all.failed,
        0,
        `${reset.length} connections were reset (queued on the listener the drain closed: the kernel moves ` +
          `them to another listener of the port only with net.ipv4.tcp_migrate_req = 1); ${
            unserved.length - handedToVictim.length
          } were accepted by the draining agent and closed unserved; ${handedToVictim.length} were handed ` +
          `to it by another agent and lost when its drain ended; ${
            all.failed - reset.length - unserved.length
          } failed otherwise: ${all.failures.slice(0, 3).map((r) => r.error).join("; ")}`,
      );
    } finally {
      await load?.stop();
      await Promise.all(procs.map((p) => p.stop()));
      await backend?.close();
      if (dir) await Deno.remove(dir, { recursive: true });
      await network.close();
    }
  },
});
