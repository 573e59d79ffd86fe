/** `switchyard demo` as a user runs it: one command, then curl. */
import assert from "node:assert/strict";
import { eventually, httpGet, Proc } from "./_helpers.ts";

// The demo's documented ports are 8080 and 9090; the test moves them (--listen, --admin) below the
// ephemeral range so that a demo someone left running does not collide with it.
const LISTEN = "127.0.0.1:18080";
const ADMIN = "127.0.0.1:19090";

Deno.test("the demo serves web from all three demo backends over 300 connections, and stops on SIGINT", async () => {
  const demo = new Proc(["demo", "--listen", LISTEN, "--admin", ADMIN, "--duration", "120"]);
  try {
    await demo.waitForStdout("Press Ctrl-C", 30_000);
    const counts = new Map<string, number>();
    for (let i = 0; i < 300; i++) {
      const name = (await httpGet(18080)).trim();
      counts.set(name, (counts.get(name) ?? 0) + 1);
    }
    assert.deepEqual([...counts.keys()].sort(), ["demo-a", "demo-b", "demo-c"]);
    for (const [name, count] of counts) assert.ok(count > 50, `${name} answered ${count} of 300`);

    const token = /Admin token:\s+(\S+)/.exec(demo.stdout)?.[1];
    assert.ok(token, "the demo prints its admin token");
    const health = await fetch(`http://${ADMIN}/healthz`);
    assert.equal(health.status, 200);
    await health.body?.cancel();
    const unauthorized = await fetch(`http://${ADMIN}/v1/services`);
    assert.equal(unauthorized.status, 401);
    await unauthorized.body?.cancel();
    const services =
      await (await fetch(`http://${ADMIN}/v1/services`, { headers: { authorization: `Bearer ${token}` } }))
        .json() as { services: Array<{ name: string; backends: unknown[] }> };
    assert.equal(services.services[0]?.name, "web");
    assert.equal(services.services[0]?.backends.length, 3);
    const agents =
      await (await fetch(`http://${ADMIN}/v1/agents`, { headers: { authorization: `Bearer ${token}` } }))
        .json() as { agents: Array<{ id: string }> };
    assert.deepEqual(agents.agents.map((agent) => agent.id), ["demo-agent-1", "demo-agent-2"]);
    // The agents have mesh ports: a connection the kernel gives the agent that does not claim it is handed
    // to the one that does (about half of them with two agents on one port).
    await eventually(
      async () => {
        const view =
          await (await fetch(`http://${ADMIN}/v1/agents`, { headers: { authorization: `Bearer ${token}` } }))
            .json() as { agents: Array<{ mesh: string | null; connections: { handed_off: number } }> };
        return view.agents.every((agent) => agent.mesh !== null) &&
          view.agents.reduce((sum, agent) => sum + agent.connections.handed_off, 0) > 30;
      },
      5_000,
      "handoffs between the demo's agents",
    );

    demo.kill("SIGINT");
    const status = await demo.status();
    assert.equal(status.code, 0);
  } finally {
    await demo.stop();
  }
});

Deno.test("the demo on a port already taken exits 1 at once, naming the address and the service", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const listen = `127.0.0.1:${taken.addr.port}`;
    const demo = new Proc(["demo", "--listen", listen, "--admin", "127.0.0.1:19093", "--duration", "30"]);
    const started = performance.now();
    const status = await demo.status();
    assert.equal(status.code, 1, demo.stderr);
    assert.ok(performance.now() - started < 8_000, "it did not wait for its 10 s deadline");
    assert.match(
      demo.stderr.trim().split("\n").at(-1) ?? "",
      new RegExp(`^switchyard: Cannot listen on ${listen} for service web: Address already in use`),
    );
  } finally {
    taken.close();
  }
});
