/**
 * Health end to end: a manager and an agent as real processes, backends and agent-check responders in this
 * process. What the checks find must show in where new connections go: an agent-check reply drains a
 * backend or sets its weight; a killed backend is out after `fall` failed checks and back after `rise`.
 */
import assert from "node:assert/strict";
import { startBackend, startGreeter, type TestBackend } from "./_backends.ts";
import { agentsCaughtUp, spread, startTestCluster, type TestCluster } from "./_cluster.ts";
import { testService } from "./_config.ts";
import { eventually } from "./_helpers.ts";

interface BackendView {
  address: string;
  effective_weight: number;
  state: string;
  health: string;
  agent_check: { state: string; share: number } | null;
  checks: { passed_in_a_row: number; failed_in_a_row: number; last: unknown };
}
interface ServicesView {
  version: number;
  services: Array<{ name: string; backends: BackendView[] }>;
}

const encoder = new TextEncoder();

/** An HAProxy agent-check responder: one line, `reply`, per connection, which the test may change. */
function agentCheckResponder(host: string, port: number) {
  const state = { reply: "up\n" };
  const server = startBackend(async (conn) => {
    await conn.write(encoder.encode(state.reply));
  }, { host, port });
  return Object.assign(server, { state });
}

/** One agent serving `web` over alpha and beta, weight 100 each, checked as `health` says. */
function startPair(
  alpha: TestBackend,
  beta: TestBackend,
  health: Record<string, unknown>,
): Promise<TestCluster> {
  const backends = [alpha, beta].map((backend) => ({ address: backend.address, weight: 100 }));
  return startTestCluster({ agents: 1, services: [testService({ decide: "agent", backends, health })] });
}

/** Waits until the manager shows `health` for the backend at `address` (5 s at most). */
async function healthBecomes(cluster: TestCluster, address: string, health: string, timeoutMs = 5_000) {
  await eventually(
    async () => (await backendView(cluster, address)).health === health,
    timeoutMs,
    `${address} ${health}`,
  );
}

async function backendView(cluster: TestCluster, address: string): Promise<BackendView> {
  const view = await cluster.api<ServicesView>("/v1/services");
  const found = view.services[0]?.backends.find((backend) => backend.address === address);
  assert.ok(found, `backend ${address}`);
  return found;
}

Deno.test("an agent-check reply of drain, then up 50%, drains the backend, then gives it half its weight", async () => {
  // Each backend's agent answers on the same port of the backend's own host: 127.0.0.1 and 127.0.0.2.
  const alphaAgent = agentCheckResponder("127.0.0.1", 0);
  const betaAgent = agentCheckResponder("127.0.0.2", alphaAgent.port);
  const alpha = startGreeter("alpha", { host: "127.0.0.1" });
  const beta = startGreeter("beta", { host: "127.0.0.2" });
  const cluster = await startPair(alpha, beta, {
    kind: "agent-check",
    port: alphaAgent.port,
    interval: "100ms",
    timeout: "80ms",
    rise: 1,
    fall: 2,
  });
  try {
    const port = cluster.agents[0]!.port;
    await healthBecomes(cluster, alpha.address, "up");

    alphaAgent.state.reply = "drain\n";
    await eventually(
      async () => {
        const view = await backendView(cluster, alpha.address);
        return view.state === "drain" && view.effective_weight === 0 && view.agent_check?.state === "drain";
      },
      5_000,
      "alpha drained by its agent-check",
    );
    assert.equal((await backendView(cluster, beta.address)).state, "up", "beta's agent still says up");
    await agentsCaughtUp(cluster);
    const drained = await spread(port, 200);
    assert.deepEqual([...drained.keys()], ["beta"], "no new connection to the drained alpha");

    alphaAgent.state.reply = "up 50%\n";
    await eventually(
      async () => {
        const view = await backendView(cluster, alpha.address);
        return view.state === "up" && view.effective_weight === 50 && view.agent_check?.share === 50;
      },
      5_000,
      "alpha up at 50% from its agent-check",
    );
    await agentsCaughtUp(cluster);
    const halved = await spread(port, 1_500);
    const alphaShare = (halved.get("alpha") ?? 0) / 1_500;
    console.log(`agent-check up 50%: alpha ${halved.get("alpha")}, beta ${halved.get("beta")} of 1500`);
    assert.ok(Math.abs(alphaShare - 1 / 3) <= 0.05, `alpha share ${alphaShare}, expected 1/3 (50 of 150)`);
  } finally {
    await cluster.close();
    await Promise.all([alpha.close(), beta.close(), alphaAgent.close(), betaAgent.close()]);
  }
});

Deno.test("a killed backend gets no new connections after fall failed checks and gets them again after rise", async () => {
  let alpha = startGreeter("alpha");
  const beta = startGreeter("beta");
  const alphaPort = alpha.port;
  const cluster = await startPair(alpha, beta, {
    kind: "tcp",
    interval: "200ms",
    timeout: "100ms",
    rise: 2,
    fall: 2,
  });
  try {
    const port = cluster.agents[0]!.port;
    await healthBecomes(cluster, alpha.address, "up");
    const before = await spread(port, 200);
    assert.ok((before.get("alpha") ?? 0) > 50, `alpha served ${before.get("alpha")} of 200 while up`);

    await alpha.close();
    const killedAt = performance.now();
    await healthBecomes(cluster, alpha.address, "down");
    const downAfter = performance.now() - killedAt;
    const down = await backendView(cluster, alpha.address);
    assert.ok(down.checks.failed_in_a_row >= 2, `failed ${down.checks.failed_in_a_row} in a row`);
    assert.deepEqual([down.state, down.effective_weight], ["down", 0]);
    // Two checks 200 ms apart, plus up to one interval until the first of them.
    assert.ok(downAfter < 1_500, `down ${Math.round(downAfter)} ms after it was killed`);
    await agentsCaughtUp(cluster);
    const without = await spread(port, 200);
    assert.deepEqual([...without.keys()], ["beta"], "no new connection to the killed alpha");

    alpha = startGreeter("alpha", { port: alphaPort });
    const revivedAt = performance.now();
    await healthBecomes(cluster, alpha.address, "up");
    const upAfter = performance.now() - revivedAt;
    console.log(
      `killed alpha down after ${Math.round(downAfter)} ms; revived alpha up after ${Math.round(upAfter)} ms`,
    );
    await agentsCaughtUp(cluster);
    const again = await spread(port, 400);
    const alphaShare = (again.get("alpha") ?? 0) / 400;
    assert.ok(alphaShare > 0.35 && alphaShare < 0.65, `alpha share ${alphaShare} after it came back`);
  } finally {
    await cluster.close();
    await alpha.close();
    await beta.close();
  }
});

Deno.test("connect failures the agents report take a backend out after fall of them, between active checks", async () => {
  const alpha = startGreeter("alpha");
  const beta = startGreeter("beta");
  // No active check comes in the first 15 s, long after this test: only the agents can take alpha out.
  const cluster = await startPair(alpha, beta, {
    kind: "tcp",
    interval: "30s",
    timeout: "1s",
    rise: 1,
    fall: 3,
  });
  try {
    const port = cluster.agents[0]!.port;
    assert.equal((await backendView(cluster, alpha.address)).health, "unknown");
    await alpha.close();
    // Clients whose flow hashes to alpha are retried on beta by the agent, which reports each failure.
    const served = await spread(port, 60, 10);
    assert.deepEqual([...served.keys()], ["beta"]);
    await healthBecomes(cluster, alpha.address, "down", 3_000);
    const view = await backendView(cluster, alpha.address);
    assert.ok(view.checks.failed_in_a_row >= 3, `failed ${view.checks.failed_in_a_row} in a row`);
    assert.equal(view.checks.last, null, "no active check ran");
    assert.equal(view.effective_weight, 0);
  } finally {
    await cluster.close();
    await beta.close();
    await alpha.close();
  }
});
