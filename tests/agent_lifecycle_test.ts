/**
 * An agent's life as an operator sees it: SIGTERM drains (no new connections, open ones finish, exit 0,
 * /healthz 503 meanwhile), and connections reset mid-stream on either side leave nothing behind.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { startEcho } from "./_backends.ts";
import { agentMetric, startTestCluster } from "./_cluster.ts";
import { testService } from "./_config.ts";
import { agentAdmin, claimsSplit, eventually, servicePort, writeAll } from "./_helpers.ts";

async function echoOnce(conn: Deno.Conn, text: string): Promise<string> {
  await writeAll(conn, new TextEncoder().encode(text));
  const buffer = new Uint8Array(text.length);
  let got = 0;
  while (got < text.length) {
    const n = await conn.read(buffer.subarray(got));
    if (n === null) break;
    got += n;
  }
  return new TextDecoder().decode(buffer.subarray(0, got));
}

Deno.test("SIGTERM drains an agent: /healthz turns 503, new connections are refused, open ones finish, exit 0", async () => {
  const echo = startEcho();
  const cluster = await startTestCluster({
    agents: 1,
    services: [testService({
      decide: "agent",
      timeouts: { drain: "20s", connect: "1s", idle: "60s" },
      backends: [echo.address],
    })],
    agentArgs: () => ["--admin", "127.0.0.1:0"],
  });
  try {
    const agent = cluster.agents[0]!;
    const admin = await agentAdmin(agent.proc);
    assert.equal(
      await fetch(`http://${admin}/healthz`).then(async (r) => (await r.body?.cancel(), r.status)),
      200,
    );
    const held = await Deno.connect({ hostname: "127.0.0.1", port: agent.port });
    assert.equal(await echoOnce(held, "before"), "before");

    agent.proc.kill("SIGTERM");
    await agent.proc.waitForLog((l) => l.properties.signal === "SIGTERM");
    const draining = await fetch(`http://${admin}/healthz`);
    assert.equal(draining.status, 503);
    await draining.body?.cancel();
    await assert.rejects(
      Deno.connect({ hostname: "127.0.0.1", port: agent.port }),
      "new connections are refused",
    );
    assert.equal(await echoOnce(held, "during the drain"), "during the drain");
    const closedAt = performance.now();
    held.close();
    const status = await agent.proc.status();
    assert.equal(status.code, 0);
    assert.ok(performance.now() - closedAt < 5_000, "the agent exits once its last connection ends");
  } finally {
    await cluster.close();
    await echo.close();
  }
});

Deno.test("a drain ends after timeouts.drain even when a connection stays open, and the agent exits 0", async () => {
  const echo = startEcho();
  const cluster = await startTestCluster({
    agents: 1,
    services: [testService({
      decide: "agent",
      timeouts: { drain: "1s", connect: "1s", idle: "60s" },
      backends: [echo.address],
    })],
  });
  try {
    const agent = cluster.agents[0]!;
    const held = await Deno.connect({ hostname: "127.0.0.1", port: agent.port });
    assert.equal(await echoOnce(held, "x"), "x");
    const started = performance.now();
    agent.proc.kill("SIGTERM");
    const status = await agent.proc.status();
    const took = performance.now() - started;
    assert.equal(status.code, 0);
    assert.ok(took >= 900 && took < 6_000, `drained for ${took.toFixed(0)} ms`);
    assert.equal(
      await held.read(new Uint8Array(1)).catch(() => null),
      null,
      "the held connection was closed",
    );
    held.close();
  } finally {
    await cluster.close();
    await echo.close();
  }
});

Deno.test("each service's connections are closed after its own timeouts.drain, not the longest one's", async () => {
  const echo = startEcho();
  const service = (name: string, drain: string) =>
    testService({
      name,
      decide: "agent",
      timeouts: { drain, connect: "1s", idle: "60s" },
      backends: [echo.address],
    });
  const cluster = await startTestCluster({
    agents: 1,
    services: [service("short", "1s"), service("long", "4s")],
  });
  try {
    const agent = cluster.agents[0]!;
    const short = await Deno.connect({ hostname: "127.0.0.1", port: await servicePort(agent.proc, "short") });
    const long = await Deno.connect({ hostname: "127.0.0.1", port: await servicePort(agent.proc, "long") });
    assert.equal(await echoOnce(short, "s"), "s");
    assert.equal(await echoOnce(long, "l"), "l");
    const started = performance.now();
    agent.proc.kill("SIGTERM");
    assert.equal(
      await short.read(new Uint8Array(1)).catch(() => null),
      null,
      "the short service's connection ends",
    );
    const shortEnded = performance.now() - started;
    assert.equal(await echoOnce(long, "still"), "still", "the long service's connection is still served");
    assert.equal(
      await long.read(new Uint8Array(1)).catch(() => null),
      null,
      "the long service's connection ends",
    );
    const longEnded = performance.now() - started;
    assert.equal((await agent.proc.status()).code, 0);
    assert.ok(
      shortEnded >= 900 && shortEnded < 2_500,
      `the short service's connection lived ${shortEnded.toFixed(0)} ms`,
    );
    assert.ok(
      longEnded >= 3_900 && longEnded < 6_000,
      `the long service's connection lived ${longEnded.toFixed(0)} ms`,
    );
    assert.ok(
      agent.proc.logs.some((l) => l.message.startsWith("Closing") && l.properties.service === "short"),
      "the agent says what it closed",
    );
    short.close();
    long.close();
  } finally {
    await cluster.close();
    await echo.close();
  }
});

Deno.test("connections reset mid-stream on either side leak nothing, and the agent serves on", async () => {
  const flood = startEcho({ flood: 4 * 1024 * 1024 });
  const cluster = await startTestCluster({
    agents: 1,
    services: [testService({
      decide: "agent",
      backends: [flood.address],
    })],
    agentArgs: () => ["--admin", "127.0.0.1:0"],
  });
  try {
    const agent = cluster.agents[0]!;
    const admin = await agentAdmin(agent.proc);
    // Clients that read a little of a 4 MiB answer and then reset the connection (SO_LINGER 0).
    for (let i = 0; i < 50; i++) {
      const socket = net.connect({ host: "127.0.0.1", port: agent.port });
      await new Promise<void>((resolve, reject) => {
        socket.once("data", () => resolve());
        socket.once("error", reject);
      });
      if (typeof socket.resetAndDestroy === "function") socket.resetAndDestroy();
      else socket.destroy();
      await new Promise((resolve) => socket.once("close", resolve));
    }
    // Clients that send and half-close while the backend floods them, then vanish.
    for (let i = 0; i < 50; i++) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: agent.port });
      await conn.write(new Uint8Array(1000));
      conn.close();
    }
    await eventually(
      async () => (await agentMetric(admin, "switchyard_active_connections")) === 0,
      10_000,
      "no open flow",
    );
    // Still serving, and still alive.
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: agent.port });
    const n = await conn.read(new Uint8Array(1024));
    assert.ok(n !== null && n > 0);
    conn.close();
    assert.ok(!agent.proc.logs.some((l) => l.level === "ERROR" || l.level === "FATAL"), "no error logged");
    assert.ok(!agent.proc.stderr.includes("Uncaught"), "no unhandled rejection");
  } finally {
    await cluster.close();
    await flood.close();
  }
});

Deno.test("while one agent drains, new connections through the others never fail: it leaves the cluster at once", async () => {
  const echo = startEcho();
  const cluster = await startTestCluster({
    agents: 3,
    services: [testService({
      decide: "agent",
      timeouts: { drain: "3s", connect: "1s", idle: "60s" },
      backends: [echo.address],
    })],
  });
  try {
    const [first, leaving, third] = cluster.agents as [
      typeof cluster.agents[0],
      typeof cluster.agents[0],
      typeof cluster.agents[0],
    ];
    await claimsSplit(cluster.agents.map((a) => a.proc), 3, { what: "claims among three agents" });
    const held = await Deno.connect({ hostname: "127.0.0.1", port: leaving.port });
    assert.equal(await echoOnce(held, "held"), "held");
    let failures = 0;
    let served = 0;
    let running = true;
    const load = (async () => {
      const deadline = performance.now() + 15_000;
      for (let i = 0; running && performance.now() < deadline; i++) {
        try {
          const conn = await Deno.connect({ hostname: "127.0.0.1", port: (i % 2 ? first : third).port });
          if ((await echoOnce(conn, "ping")) === "ping") served++;
          else failures++;
          conn.close();
        } catch {
          failures++;
        }
      }
    })();
    await new Promise((resolve) => setTimeout(resolve, 300));
    leaving.proc.kill("SIGTERM");
    await claimsSplit([first.proc, third.proc], 2, {
      timeoutMs: 5_000,
      what: "the others to take over the leaving agent's claim",
    });
    assert.equal(
      await echoOnce(held, "still here"),
      "still here",
      "the draining agent's open flow carries on",
    );
    await new Promise((resolve) => setTimeout(resolve, 500));
    running = false;
    await load;
    held.close();
    assert.equal((await leaving.proc.status()).code, 0);
    assert.equal(failures, 0, `${failures} of ${served + failures} connections failed during the drain`);
    assert.ok(served > 50, `served ${served}`);
  } finally {
    await cluster.close();
    await echo.close();
  }
});
