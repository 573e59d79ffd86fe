/**
 * Feedback end to end: a manager and an agent as real processes, named test backends in this process, and
 * TCP clients. Weights the applications report must show in where new connections go, through the Maglev
 * table the manager pushes (`decide: agent`), and must fall back to the configured weights when they expire;
 * a drained backend must get no new connection while its open ones carry on.
 */
import assert from "node:assert/strict";
import { startGreeter } from "./_backends.ts";
import { ADMIN_TOKEN, testService } from "./_config.ts";
import {
  agentsCaughtUp,
  connectAndReadLine,
  spread,
  startTestCluster,
  type TestCluster,
} from "./_cluster.ts";
import { eventually, run } from "./_helpers.ts";

interface BackendView {
  address: string;
  effective_weight: number;
  state: string;
  open_connections: number;
  feedback: Record<string, unknown> | null;
}
interface ServicesView {
  version: number;
  services: Array<{ name: string; backends: BackendView[] }>;
}

function share(tally: Map<string, number>, name: string): number {
  let total = 0;
  for (const n of tally.values()) total += n;
  return (tally.get(name) ?? 0) / total;
}

function backendOf(view: ServicesView, address: string): BackendView {
  const found = view.services[0]?.backends.find((backend) => backend.address === address);
  assert.ok(found, `backend ${address}`);
  return found;
}

async function postFeedback(cluster: TestCluster, body: unknown) {
  return await cluster.api<{ accepted: number; backends: unknown[] }>("/v1/feedback", {
    method: "POST",
    body: JSON.stringify(body),
  });
}

for (const decide of ["agent", "manager"] as const) {
  Deno.test(`feedback weights 75:25 split new connections 75/25 with decide: ${decide}, and 50/50 after the ttl`, async () => {
    const alpha = startGreeter("alpha");
    const beta = startGreeter("beta");
    const cluster = await startTestCluster({
      agents: 1,
      services: [testService({
        decide,
        decision_timeout: "500ms",
        backends: [{ address: alpha.address, weight: 100 }, { address: beta.address, weight: 100 }],
        feedback: { ttl: "30s" },
        health: null,
      })],
    });
    // The application keeps reporting (a 1 s ttl refreshed every 300 ms), as a live one would.
    const report = () =>
      postFeedback(cluster, [
        { service: "web", backend: alpha.address, weight: 75, ttl: "1s" },
        { service: "web", backend: beta.address, weight: 25, ttl: "1s" },
      ]);
    let reporting = true;
    let reporter = Promise.resolve();
    try {
      const answer = await report();
      assert.deepEqual(answer.backends, [
        { service: "web", backend: alpha.address, effective_weight: 75, state: "up" },
        { service: "web", backend: beta.address, effective_weight: 25, state: "up" },
      ]);
      reporter = (async () => {
        while (reporting) {
          await new Promise((resolve) => setTimeout(resolve, 300));
          if (reporting) await report();
        }
      })();
      await agentsCaughtUp(cluster);
      const agentPort = cluster.agents[0]!.port;
      const weighted = await spread(agentPort, 4_000);
      console.log(
        `75:25 feedback, decide: ${decide}: alpha ${weighted.get("alpha")}, beta ${
          weighted.get("beta")
        } of 4000`,
      );
      assert.ok(Math.abs(share(weighted, "alpha") - 0.75) <= 0.03, `alpha share ${share(weighted, "alpha")}`);
      assert.ok(Math.abs(share(weighted, "beta") - 0.25) <= 0.03, `beta share ${share(weighted, "beta")}`);

      // The application stops reporting: after the ttl both are back at their configured weight, by the
      // manager's own timer, with no request in between.
      reporting = false;
      await reporter;
      const stoppedAt = performance.now();
      let view: ServicesView | undefined;
      await eventually(
        async () => {
          view = await cluster.api<ServicesView>("/v1/services");
          return backendOf(view, alpha.address).effective_weight === 100;
        },
        5_000,
        "the reports to expire",
      );
      const expiredAfter = performance.now() - stoppedAt;
      assert.ok(expiredAfter < 2_500, `expired ${expiredAfter} ms after the last report`);
      assert.equal(backendOf(view!, beta.address).effective_weight, 100);
      assert.equal(backendOf(view!, alpha.address).feedback, null);
      await agentsCaughtUp(cluster);
      const even = await spread(agentPort, 4_000);
      console.log(`after the ttl: alpha ${even.get("alpha")}, beta ${even.get("beta")} of 4000`);
      assert.ok(Math.abs(share(even, "alpha") - 0.5) <= 0.03, `alpha share ${share(even, "alpha")}`);
    } finally {
      reporting = false;
      await reporter.catch(() => {});
      await cluster.close();
      await alpha.close();
      await beta.close();
    }
  });
}

Deno.test("load reports shift new connections toward the idle backend", async () => {
  const busy = startGreeter("busy");
  const idle = startGreeter("idle");
  const cluster = await startTestCluster({
    agents: 1,
    services: [testService({
      decide: "agent",
      backends: [{ address: busy.address, weight: 100 }, { address: idle.address, weight: 100 }],
      feedback: { ttl: "30s", smoothing: 0.5, max_step: 0.25 },
      health: null,
    })],
  });
  try {
    const weights: string[] = [];
    for (let round = 0; round < 8; round++) {
      const answer = await postFeedback(cluster, [
        { service: "web", backend: busy.address, utilization: 0.9, qps: 100 },
        { service: "web", backend: idle.address, utilization: 0.3, qps: 100 },
      ]) as { backends: Array<{ effective_weight: number }> };
      weights.push(answer.backends.map((b) => b.effective_weight).join("/"));
    }
    console.log(`busy/idle effective weights per round: ${weights.join(", ")}`);
    assert.deepEqual(weights.slice(0, 3), ["100/125", "75/137.5", "62.5/143.75"]);
    await agentsCaughtUp(cluster);
    const tally = await spread(cluster.agents[0]!.port, 2_000);
    console.log(`load feedback: busy ${tally.get("busy")}, idle ${tally.get("idle")} of 2000`);
    // Weights converge on 50 and 150: a quarter and three quarters of new connections.
    assert.ok(Math.abs(share(tally, "idle") - 0.75) <= 0.04, `idle share ${share(tally, "idle")}`);
  } finally {
    await cluster.close();
    await busy.close();
    await idle.close();
  }
});

/** Runs `switchyard feedback` against the cluster's manager for `backend` of web, with the admin token. */
function feedbackCli(cluster: TestCluster, backend: string, report: string[]) {
  const manager = `http://${cluster.admin}`;
  return run([
    "feedback",
    "--manager",
    manager,
    "--token",
    ADMIN_TOKEN,
    "--service",
    "web",
    "--backend",
    backend,
    ...report,
  ]);
}

Deno.test("drain, reported with switchyard feedback, sends a backend no new connections while its open ones finish", async () => {
  const alpha = startGreeter("alpha", { hold: true });
  const beta = startGreeter("beta", { hold: true });
  const cluster = await startTestCluster({
    agents: 1,
    services: [testService({
      decide: "agent",
      backends: [{ address: alpha.address, weight: 100 }, { address: beta.address, weight: 100 }],
      health: null,
    })],
  });
  const conns: Array<Awaited<ReturnType<typeof connectAndReadLine>>> = [];
  try {
    const port = cluster.agents[0]!.port;
    for (let i = 0; i < 40; i++) conns.push(await connectAndReadLine(port));
    const onAlpha = conns.filter((conn) => conn.line === "alpha");
    assert.ok(onAlpha.length > 0 && onAlpha.length < 40, `${onAlpha.length} of 40 on alpha`);

    const cli = await feedbackCli(cluster, alpha.address, ["--state", "drain"]);
    assert.equal(cli.code, 0, cli.stderr);
    const answer = JSON.parse(cli.stdout);
    assert.deepEqual(answer, {
      accepted: 1,
      backends: [{ service: "web", backend: alpha.address, effective_weight: 0, state: "drain" }],
      version: answer.version,
    });
    assert.ok(Number.isSafeInteger(answer.version) && answer.version > 0, "the version that carries it");
    await agentsCaughtUp(cluster);

    const fresh: typeof conns = [];
    for (let i = 0; i < 100; i++) fresh.push(await connectAndReadLine(port));
    assert.deepEqual(
      new Set(fresh.map((conn) => conn.line)),
      new Set(["beta"]),
      "no new connection to alpha",
    );
    for (const conn of fresh) await conn.close();

    // Alpha's open connections are still there, and the manager shows how many until they end.
    assert.ok(alpha.open() >= onAlpha.length);
    await eventually(
      async () => {
        const view = await cluster.api<ServicesView>("/v1/services");
        const backend = backendOf(view, alpha.address);
        return backend.state === "drain" && backend.open_connections === onAlpha.length;
      },
      5_000,
      `open_connections ${onAlpha.length} on the drained alpha`,
    );
    for (const conn of onAlpha) await conn.close();
    await eventually(
      async () => {
        const view = await cluster.api<ServicesView>("/v1/services");
        return backendOf(view, alpha.address).open_connections === 0;
      },
      5_000,
      "open_connections 0 on alpha",
    );

    // A report for a backend the service does not have is refused with the reason, exit code 2.
    const refused = await feedbackCli(cluster, "127.0.0.1:1", ["--weight", "10"]);
    assert.equal(refused.code, 2);
    assert.match(
      refused.stderr,
      /refused the report \(404\): Unknown backend "127.0.0.1:1" in service "web" \(backend\)/,
    );
  } finally {
    for (const conn of conns) await conn.close();
    await cluster.close();
    await alpha.close();
    await beta.close();
  }
});
