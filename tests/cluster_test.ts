/**
 * The cluster end to end, with the manager and three agents as separate processes: claims over the
 * 5-tuple, handoff to the claimant, manager decisions with exact open counts, affinity, and serving on
 * while the manager is gone.
 */
import assert from "node:assert/strict";
import { startGreeter } from "./_backends.ts";
import { claimsSplit, eventually, freeFixedPort, type LogLine, Proc } from "./_helpers.ts";
import { agentsJoined, agentsListed, connectAndReadLine, startTestCluster } from "./_cluster.ts";
import { testService } from "./_config.ts";

interface AgentsView {
  agents: Array<
    { id: string; claim: number; connections: { served: number; handed_off: number; open: number } }
  >;
}
interface ExplainView {
  claim: { agent: string | null };
  backend: string | null;
}

const servedLines = (proc: Proc): LogLine[] =>
  proc.logs.filter((line) => line.message.startsWith("Flow") && line.message.includes("served by"));

Deno.test("every connection is served by exactly its claimant, and the three agents share 3,000 connections evenly", async () => {
  const backend = startGreeter("b1");
  const cluster = await startTestCluster({
    agents: 3,
    services: [testService({ decide: "agent", backends: [backend.address], health: null })],
  });
  try {
    await agentsJoined(cluster, 3);
    const claims = (await cluster.api<AgentsView>("/v1/agents")).agents;
    assert.ok(Math.abs(claims.reduce((sum, a) => sum + a.claim, 0) - 1) < 0.001, "claims sum to 1");

    const total = 3000;
    for (let i = 0; i < total; i += 50) {
      await Promise.all(Array.from({ length: 50 }, async (_, j) => {
        const agent = cluster.agents[(i + j) % 3]!;
        const conn = await connectAndReadLine(agent.port);
        assert.equal(conn.line, "b1");
        await conn.close();
      }));
    }
    await eventually(
      () => cluster.agents.reduce((sum, a) => sum + servedLines(a.proc).length, 0) === total,
      10_000,
      "every connection to be logged as served",
    );
    // Each served flow was served by the agent that claims its 5-tuple, whichever agent accepted it.
    let handedOff = 0;
    for (const agent of cluster.agents) {
      const lines = servedLines(agent.proc);
      const share = lines.length / total;
      assert.ok(Math.abs(share - 1 / 3) < 0.05, `${agent.id} served ${lines.length} of ${total}`);
      for (const line of lines.slice(0, 300)) {
        const explain = await cluster.api<ExplainView>(
          `/v1/explain?service=web&client=${line.properties.client}&service_address=${line.properties.destination}`,
        );
        assert.equal(
          explain.claim.agent,
          agent.id,
          `flow from ${line.properties.client} claimed by ${explain.claim.agent}`,
        );
      }
      handedOff += lines.filter((line) => line.properties.handed_off_by !== null).length;
    }
    // Two thirds of the flows arrive at an agent that does not claim them.
    assert.ok(Math.abs(handedOff / total - 2 / 3) < 0.05, `${handedOff} handed off`);
    const view = await cluster.api<AgentsView>("/v1/agents");
    assert.equal(view.agents.reduce((sum, a) => sum + a.connections.served, 0), total);
  } finally {
    await cluster.close();
    await backend.close();
  }
});

Deno.test("when an agent is killed its claim moves to the others within three heartbeats, and no other claim moves", async () => {
  const backend = startGreeter("b1");
  const cluster = await startTestCluster({
    agents: 3,
    heartbeat: "200ms",
    services: [testService({ decide: "agent", backends: [backend.address], health: null })],
  });
  try {
    await agentsListed(cluster, 3);
    const clients = Array.from({ length: 300 }, (_, i) => `10.9.${i >> 8}.${i & 255}:${1000 + i}`);
    const owners = async () =>
      await Promise.all(
        clients.map(async (client) =>
          (await cluster.api<ExplainView>(`/v1/explain?service=web&client=${client}`)).claim.agent
        ),
      );
    const before = await owners();
    const victim = cluster.agents[1]!;
    victim.proc.kill("SIGKILL");
    await victim.proc.status();
    const killedAt = performance.now();
    await eventually(
      async () => (await cluster.api<AgentsView>("/v1/agents")).agents.length === 2,
      5_000,
      "2 agents",
    );
    const movedAfter = performance.now() - killedAt;
    assert.ok(movedAfter <= 3 * 200 + 300, `claims moved after ${movedAfter.toFixed(0)} ms`);
    const after = await owners();
    let moved = 0;
    before.forEach((owner, index) => {
      if (owner === victim.id) {
        moved++;
        assert.notEqual(after[index], victim.id);
      } else {
        assert.equal(after[index], owner, `a flow of ${owner} moved to ${after[index]}`);
      }
    });
    assert.ok(moved > 50, `the victim claimed ${moved} of 300 flows`);
    const shares = (await cluster.api<AgentsView>("/v1/agents")).agents.map((a) => a.claim);
    assert.ok(Math.abs(shares.reduce((a, b) => a + b, 0) - 1) < 0.001);
    // The survivors learn the new claims and serve everything: no connection is lost to the dead agent.
    for (const agent of [cluster.agents[0]!, cluster.agents[2]!]) {
      await claimsSplit([agent.proc], 2, { timeoutMs: 5_000, what: "new claims" });
      for (let i = 0; i < 30; i++) {
        const conn = await connectAndReadLine(agent.port);
        assert.equal(conn.line, "b1");
        await conn.close();
      }
    }
  } finally {
    await cluster.close();
    await backend.close();
  }
});

Deno.test("with decide: manager, open-connection counts in the manager equal the truth, and long-held backends get fewer new flows", async () => {
  const holder = startGreeter("holder", { hold: true });
  const quick = startGreeter("quick", { hold: true });
  const cluster = await startTestCluster({
    agents: 3,
    services: [testService({
      decide: "manager",
      decision_timeout: "500ms",
      backends: [holder.address, quick.address],
      health: null,
    })],
  });
  const held: Array<{ close(): Promise<void> }> = [];
  try {
    await agentsListed(cluster, 3);
    // 2,000 connections through all three agents: those that reach "holder" stay open, the rest close.
    const got = { holder: 0, quick: 0 } as Record<string, number>;
    for (let i = 0; i < 2000; i += 40) {
      await Promise.all(Array.from({ length: 40 }, async (_, j) => {
        const conn = await connectAndReadLine(cluster.agents[(i + j) % 3]!.port);
        got[conn.line] = (got[conn.line] ?? 0) + 1;
        if (conn.line === "holder" && held.length < 300) held.push(conn);
        else await conn.close();
      }));
    }
    assert.equal(got.holder! + got.quick!, 2000);
    // Weighted least connections: the backend holding connections gets fewer new ones.
    assert.ok(got.holder! < got.quick! / 2, `holder got ${got.holder}, quick got ${got.quick}`);
    interface ServicesView {
      services: Array<{ backends: Array<{ address: string; open_connections: number }> }>;
    }
    const counts = async () => {
      const view = await cluster.api<ServicesView>("/v1/services/web".replace("/web", "")).catch(() => null);
      const backends = view?.services[0]?.backends ?? [];
      return Object.fromEntries(backends.map((b) => [b.address, b.open_connections]));
    };
    await eventually(
      async () => {
        const c = await counts();
        return c[holder.address] === holder.open() && c[quick.address] === quick.open();
      },
      2_000,
      "the manager's open counts to equal the backends' own",
    ).catch(async (error) => {
      throw new Error(
        `${error.message}: manager ${JSON.stringify(await counts())}, truth ${holder.open()}/${quick.open()}`,
      );
    });
    assert.ok(holder.open() > 0);
  } finally {
    await Promise.all(held.map((conn) => conn.close()));
    await cluster.close();
    await holder.close();
    await quick.close();
  }
});

Deno.test("with affinity client_ip, every connection of one client reaches one backend, whichever agent accepts it", async () => {
  const backends = [startGreeter("b1"), startGreeter("b2"), startGreeter("b3")];
  const cluster = await startTestCluster({
    agents: 3,
    services: [testService({
      decide: "manager",
      decision_timeout: "500ms",
      affinity: { key: "client_ip", ttl: "60s" },
      backends: backends.map((b) => b.address),
      health: null,
    })],
  });
  try {
    await agentsListed(cluster, 3);
    const seen = new Map<string, Set<string>>();
    for (let client = 2; client < 22; client++) {
      const localAddress = `127.0.0.${client}`;
      for (let i = 0; i < 15; i++) {
        const conn = await connectAndReadLine(cluster.agents[i % 3]!.port, { localAddress });
        if (!seen.has(localAddress)) seen.set(localAddress, new Set());
        seen.get(localAddress)!.add(conn.line);
        await conn.close();
      }
    }
    for (const [client, names] of seen) {
      assert.equal(names.size, 1, `${client} reached ${[...names].join(", ")}`);
    }
    const used = new Set([...seen.values()].flatMap((names) => [...names]));
    assert.ok(used.size >= 2, "the 20 clients are spread over the backends");
  } finally {
    await cluster.close();
    await Promise.all(backends.map((b) => b.close()));
  }
});

Deno.test("killing the manager under load fails no connection; agents rejoin and one restarted alone serves from its saved state", async () => {
  const backend = startGreeter("b1");
  const cluster = await startTestCluster({
    agents: 2,
    cluster: `127.0.0.1:${freeFixedPort()}`,
    services: [testService({ decide: "manager", backends: [backend.address], health: null })],
    agentArgs: (id, dir) => ["--state-dir", `${dir}/${id}-state`],
  });
  let failures = 0;
  let served = 0;
  let running = true;
  const load = (async () => {
    const deadline = performance.now() + 20_000;
    while (running && performance.now() < deadline) {
      for (const agent of cluster.agents) {
        try {
          const conn = await connectAndReadLine(agent.port);
          if (conn.line === "b1") served++;
          else failures++;
          await conn.close();
        } catch {
          failures++;
        }
      }
    }
  })();
  try {
    await agentsListed(cluster, 2);
    await new Promise((resolve) => setTimeout(resolve, 500));
    cluster.manager.kill("SIGKILL");
    await cluster.manager.status();
    const servedBefore = served;
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    running = false;
    await load;
    assert.ok(served > servedBefore + 20, `served ${served - servedBefore} while the manager was down`);
    assert.equal(failures, 0, `${failures} failed connections while the manager was down`);

    // An agent restarted while the manager is down serves from its saved state.
    const restarted = cluster.agents[1]!;
    restarted.proc.kill("SIGKILL");
    await restarted.proc.status();
    await cluster.startAgent(restarted.id);
    const fresh = cluster.agents[1]!;
    assert.ok(fresh.proc.logs.some((l) => l.message.startsWith("Serving from the saved state")));
    const direct = await connectAndReadLine(fresh.port);
    assert.equal(direct.line, "b1");
    await direct.close();

    await cluster.restartManager();
    const back = performance.now();
    await eventually(
      async () => {
        const view = await cluster.api<{ agents: Array<{ state_version: number }> }>("/v1/agents")
          .catch(() => ({ agents: [] }));
        // Rejoined, and each has acknowledged the new manager's state: the cluster has converged.
        return view.agents.length === 2 && view.agents.every((agent) => agent.state_version >= 0);
      },
      2_000,
      "both agents to rejoin and acknowledge the state within 2 s",
    );
    console.log(`agents rejoined ${(performance.now() - back).toFixed(0)} ms after the manager came back`);
  } finally {
    running = false;
    await load;
    await cluster.close();
    await backend.close();
  }
});

Deno.test("a forged mesh connection and garbage frames on the cluster port are refused and logged, and nothing changes", async () => {
  const { TokenSigner } = await import("../cluster/auth.ts");
  const { encodeMeshHeader } = await import("../agent/mesh.ts");
  const backend = startGreeter("b1");
  const cluster = await startTestCluster({
    agents: 2,
    services: [testService({ decide: "agent", backends: [backend.address], health: null })],
  });
  try {
    await agentsListed(cluster, 2);
    const before = await cluster.api<AgentsView>("/v1/agents");
    const target = cluster.agents[0]!;
    const meshLine = await target.proc.waitForLog((l) => l.message.includes("takes handed-off flows"));
    const meshPort = Number(String(meshLine.properties.mesh).split(":").pop());

    // A mesh header signed with the wrong token, followed by a request.
    const forged = await encodeMeshHeader(new TokenSigner("not-the-cluster-token"), {
      service: "web",
      sender: "mallory",
      client: { ip: "10.1.2.3", port: 4444 },
      destination: { ip: "127.0.0.1", port: target.port },
    });
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: meshPort });
    await conn.write(forged);
    await conn.write(new TextEncoder().encode("GET / HTTP/1.0\r\n\r\n"));
    assert.equal(
      await conn.read(new Uint8Array(16)).catch(() => null),
      null,
      "the forged flow is closed unanswered",
    );
    conn.close();
    // Plain garbage on the mesh port too.
    const garbage = await Deno.connect({ hostname: "127.0.0.1", port: meshPort });
    await garbage.write(crypto.getRandomValues(new Uint8Array(300)));
    assert.equal(await garbage.read(new Uint8Array(16)).catch(() => null), null);
    garbage.close();
    await target.proc.waitForLog((l) =>
      l.message.startsWith("Refused mesh connection") && /signature/i.test(l.message)
    );
    // (The backend does see the manager's health checks, so count what the agents served instead.)
    assert.equal(
      cluster.agents.reduce((n, a) => n + servedLines(a.proc).length, 0),
      0,
      "no forged flow was served",
    );

    // Garbage and an oversized frame on the cluster port.
    const [host, port] = [cluster.cluster.split(":")[0]!, Number(cluster.cluster.split(":")[1])];
    for (
      const bytes of [
        crypto.getRandomValues(new Uint8Array(200)),
        new Uint8Array([0x7f, 0xff, 0xff, 0xff, 1, 2, 3]),
      ]
    ) {
      const peer = await Deno.connect({ hostname: host, port });
      await peer.write(bytes).catch(() => 0);
      const buffer = new Uint8Array(4096);
      while (
        (await peer.read(buffer).catch(() => null)) !== null
      ) { /* the manager answers with an error, then closes */ }
      peer.close();
    }
    await cluster.manager.waitForLog((l) => l.message.startsWith("Refused peer"));
    const after = await cluster.api<AgentsView>("/v1/agents");
    assert.deepEqual(after.agents.map((a) => a.id), before.agents.map((a) => a.id));
    assert.deepEqual(after.agents.map((a) => a.claim), before.agents.map((a) => a.claim));
    const ok = await connectAndReadLine(target.port);
    assert.equal(ok.line, "b1");
    await ok.close();
  } finally {
    await cluster.close();
    await backend.close();
  }
});
