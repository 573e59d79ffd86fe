/**
 * Slow start end to end: a manager and an agent as processes, two services of two equal backends each with
 * `slow_start: 10s`, one decided by the manager and one by the agent's table. A backend undrained by an
 * operator gets a trickle of new connections at first and its full half once its ramp is over.
 */
import assert from "node:assert/strict";
import { startGreeter } from "./_backends.ts";
import { connectAndReadLine, startTestCluster } from "./_cluster.ts";
import { testService } from "./_config.ts";
import { eventually, servicePort } from "./_helpers.ts";

const SLOW_START_S = 10;
/** New connections are counted for this long right after the undrain, and again from `LATE_MS` after it. */
const EARLY_MS = 2_000;
const LATE_MS = 12_000;
const LATE_WINDOW_MS = 2_500;
/** Connections each service's load keeps in flight. */
const CONCURRENCY = 6;

interface BackendView {
  address: string;
  effective_weight: number;
  slow_start: { progress: number; share: number; ends_in_s: number } | null;
  why: string;
}

/** Opens connections to `port`, `CONCURRENCY` at a time, until `until`; counts the name each one reads. */
async function tallyUntil(port: number, until: number): Promise<Map<string, number>> {
  const seen = new Map<string, number>();
  const worker = async () => {
    while (performance.now() < until) {
      const conn = await connectAndReadLine(port);
      seen.set(conn.line, (seen.get(conn.line) ?? 0) + 1);
      await conn.close();
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  return seen;
}

function shareOf(seen: Map<string, number>, name: string): { share: number; total: number } {
  let total = 0;
  for (const count of seen.values()) total += count;
  return { share: (seen.get(name) ?? 0) / total, total };
}

const sleepUntil = (at: number) =>
  new Promise((resolve) => setTimeout(resolve, Math.max(0, at - performance.now())));

Deno.test("a backend undrained with slow_start: 10s gets under 15% of new connections in its first 2 s and half after 12 s, decided by the manager or by the table", async () => {
  const backends = ["m-warm", "m-cold", "a-warm", "a-cold"].map((name) => startGreeter(name));
  const [mWarm, mCold, aWarm, aCold] = backends as [
    ReturnType<typeof startGreeter>,
    ReturnType<typeof startGreeter>,
    ReturnType<typeof startGreeter>,
    ReturnType<typeof startGreeter>,
  ];
  const service = (name: string, decide: "manager" | "agent", pair: Array<{ address: string }>) =>
    testService({
      name,
      decide,
      handoff: "local",
      slow_start: `${SLOW_START_S}s`,
      backends: pair.map((backend) => ({ address: backend.address, weight: 100 })),
    });
  const cluster = await startTestCluster({
    agents: 1,
    heartbeat: "1s",
    services: [
      service("by-manager", "manager", [mWarm, mCold]),
      service("by-table", "agent", [aWarm, aCold]),
    ],
    agentArgs: () => ["--log-level", "info"],
  });
  try {
    const agent = cluster.agents[0]!;
    const ports = { manager: agent.port, table: await servicePort(agent.proc, "by-table") };
    const state = (service: string, address: string, value: "up" | "drain") =>
      cluster.api(`/v1/services/${service}/backends/${address}/state`, {
        method: "POST",
        body: JSON.stringify({ state: value }),
      });
    await state("by-manager", mCold.address, "drain");
    await state("by-table", aCold.address, "drain");
    // Drained in the agent's table too: every new connection goes to the warm backends.
    await eventually(
      async () => {
        const [m, t] = await Promise.all([
          tallyUntil(ports.manager, performance.now() + 200),
          tallyUntil(ports.table, performance.now() + 200),
        ]);
        return m.size === 1 && m.has("m-warm") && t.size === 1 && t.has("a-warm");
      },
      10_000,
      "the drained backends to get no new connections",
    );

    await state("by-manager", mCold.address, "up");
    await state("by-table", aCold.address, "up");
    const undrained = performance.now();
    const [earlyManager, earlyTable] = await Promise.all([
      tallyUntil(ports.manager, undrained + EARLY_MS),
      tallyUntil(ports.table, undrained + EARLY_MS),
    ]);

    // Mid-ramp, the manager shows how far each ramp is, and why the weight is what it is.
    const { services } = await cluster.api<{ services: Array<{ name: string; backends: BackendView[] }> }>(
      "/v1/services",
    );
    for (const [name, cold] of [["by-manager", mCold], ["by-table", aCold]] as const) {
      const view = services.find((s) => s.name === name)?.backends.find((b) => b.address === cold.address);
      assert.ok(view?.slow_start, `${name}: ${JSON.stringify(view)}`);
      assert.ok(view.slow_start.progress > 0.15 && view.slow_start.progress < 0.5, JSON.stringify(view));
      assert.ok(view.slow_start.ends_in_s > 5 && view.slow_start.ends_in_s < 8.5, JSON.stringify(view));
      assert.ok(view.effective_weight > 1 && view.effective_weight < 50, JSON.stringify(view));
      assert.match(view.why, /× slow start \d+(\.\d)?% \(full in \d+(\.\d)? s\)$/);
    }

    await sleepUntil(undrained + LATE_MS);
    const lateFrom = performance.now();
    const [lateManager, lateTable] = await Promise.all([
      tallyUntil(ports.manager, lateFrom + LATE_WINDOW_MS),
      tallyUntil(ports.table, lateFrom + LATE_WINDOW_MS),
    ]);
    const figures = {
      manager: { early: shareOf(earlyManager, "m-cold"), late: shareOf(lateManager, "m-cold") },
      table: { early: shareOf(earlyTable, "a-cold"), late: shareOf(lateTable, "a-cold") },
    };
    console.log(`slow start, share of the undrained backend: ${JSON.stringify(figures)}`);
    for (const [mode, { early, late }] of Object.entries(figures)) {
      assert.ok(
        early.total >= 100 && late.total >= 300,
        `${mode}: too few connections ${JSON.stringify(figures)}`,
      );
      assert.ok(early.share > 0 && early.share < 0.15, `${mode}: first 2 s ${JSON.stringify(figures)}`);
      assert.ok(late.share >= 0.45 && late.share <= 0.55, `${mode}: after 12 s ${JSON.stringify(figures)}`);
    }
  } finally {
    await cluster.close();
    await Promise.all(backends.map((backend) => backend.close()));
  }
});
