/**
 * Both `/metrics` endpoints after known traffic: a manager and two agents as processes, a backend in the
 * test that takes a known upload and answers a known download, and exact counts of connections, bytes,
 * handoffs, decisions and connect failures on each side.
 */
import assert from "node:assert/strict";
import { agentAdmin, claimsSplit, eventually, readAll, writeAll } from "./_helpers.ts";
import { startBackend } from "./_backends.ts";
import { ADMIN_TOKEN, testService } from "./_config.ts";
import { startTestCluster } from "./_cluster.ts";
import { parseMetrics, type Series, sumOf } from "./_prometheus.ts";

const UP_BYTES = 1000;
const DOWN_BYTES = 2500;

async function scrape(address: string, token?: string): Promise<Series[]> {
  const response = await fetch(`http://${address}/metrics`, {
    headers: token ? { authorization: `Bearer ${token}` } : {},
  });
  const text = await response.text();
  assert.equal(response.status, 200, text);
  assert.equal(response.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  return parseMetrics(text);
}

/** A backend that reads the whole upload, then answers DOWN_BYTES and closes. */
function startUploadBackend() {
  let uploads = 0;
  const backend = startBackend(async (conn) => {
    const received = await readAll(conn);
    if (received.length === UP_BYTES) uploads++;
    await writeAll(conn, new Uint8Array(DOWN_BYTES).fill(7));
  });
  return { ...backend, uploads: () => uploads };
}

/** One client connection: uploads UP_BYTES, half-closes, reads the whole answer. */
async function transfer(port: number): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await writeAll(conn, new Uint8Array(UP_BYTES).fill(1));
    await conn.closeWrite();
    assert.equal((await readAll(conn)).length, DOWN_BYTES);
  } finally {
    conn.close();
  }
}

Deno.test("/metrics on the agents and the manager count 37 then 40 known connections exactly", async () => {
  const backend = startUploadBackend();
  // Nothing listens on the first backend: the manager prefers it at first, so connects fail and are retried.
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const dead = `127.0.0.1:${probe.addr.port}`;
  probe.close();
  const cluster = await startTestCluster({
    agents: 1,
    agentArgs: () => ["--admin", "127.0.0.1:0"],
    services: [testService({
      decide: "manager",
      // Each connection asked about, so that every decision shows in the asked flows' counts and times.
      decide_ahead: "0s",
      decision_timeout: "2s",
      handoff: "claimant",
      backends: [dead, backend.address],
    })],
  });
  try {
    const agent1 = cluster.agents[0]!;
    const admin1 = await agentAdmin(agent1.proc);

    // Unauthenticated scrapes of the manager are refused; the agent's admin port is open by design.
    const refused = await fetch(`http://${cluster.admin}/metrics`);
    assert.equal(refused.status, 401);
    await refused.body?.cancel();

    for (let i = 0; i < 37; i++) await transfer(agent1.port);
    assert.equal(backend.uploads(), 37);
    // Ended too: the relay's byte counts reach the agent's thread with the flow events of a turn, or alone
    // at most every 100 ms, so a flow counted as connected may not have all its bytes counted yet.
    await eventually(
      async () => {
        const metrics = await scrape(admin1);
        return sumOf(metrics, "switchyard_connections_total") === 37 &&
          sumOf(metrics, "switchyard_active_connections") === 0;
      },
      10_000,
      "37 connections, all ended, on the agent's /metrics",
    );
    let a1 = await scrape(admin1);
    assert.equal(sumOf(a1, "switchyard_connections_total", { service: "web", backend: backend.address }), 37);
    assert.equal(sumOf(a1, "switchyard_connections_total", { backend: dead }), 0);
    assert.equal(sumOf(a1, "switchyard_agent_connections_served_total"), 37);
    assert.equal(sumOf(a1, "switchyard_bytes_total", { direction: "up" }), 37 * UP_BYTES);
    assert.equal(sumOf(a1, "switchyard_bytes_total", { direction: "down" }), 37 * DOWN_BYTES);
    assert.equal(sumOf(a1, "switchyard_active_connections"), 0);
    assert.equal(sumOf(a1, "switchyard_handoffs_total"), 0);
    assert.equal(sumOf(a1, "switchyard_manager_decisions_total", { result: "answered" }), 37);
    assert.equal(sumOf(a1, "switchyard_manager_decisions_total", { result: "fallback" }), 0);
    const failures = sumOf(a1, "switchyard_connect_failures_total", { service: "web", backend: dead });
    assert.ok(failures >= 1, "the dead backend was tried and failed");
    assert.equal(sumOf(a1, "switchyard_manager_connected"), 1);

    await eventually(
      async () =>
        sumOf(await scrape(cluster.admin, ADMIN_TOKEN), "switchyard_backend_connect_failures_total", {
          backend: dead,
        }) === failures,
      10_000,
      "the manager to have every connect failure the agent saw",
    );
    let m = await scrape(cluster.admin, ADMIN_TOKEN);
    assert.equal(sumOf(m, "switchyard_decision_seconds_count", { service: "web" }), 37);
    assert.equal(sumOf(m, "switchyard_decision_seconds_bucket", { service: "web", le: "+Inf" }), 37);
    assert.equal(sumOf(m, "switchyard_decisions_total", { service: "web" }), 37);
    assert.equal(sumOf(m, "switchyard_agents_live"), 1);
    assert.equal(sumOf(m, "switchyard_agent_claim_ratio", { agent: "agent-1" }), 1);
    assert.equal(sumOf(m, "switchyard_backend_effective_weight", { backend: backend.address }), 100);
    assert.equal(sumOf(m, "switchyard_backend_state", { backend: dead, state: "down" }), 1);

    // A second agent takes about half of the flow-hash space: flows accepted by agent-1 that agent-2
    // claims are handed off to it, and agent-2 asks the manager for each of them.
    const agent2 = await cluster.startAgent("agent-2", ["--admin", "127.0.0.1:0"]);
    const admin2 = await agentAdmin(agent2.proc);
    await claimsSplit([agent1.proc], 2, { what: "agent-1 to know both claims" });
    for (let i = 0; i < 40; i++) await transfer(agent1.port);
    await eventually(
      async () => {
        const [one, two] = [await scrape(admin1), await scrape(admin2)];
        return sumOf(one, "switchyard_connections_total") + sumOf(one, "switchyard_handoffs_total") === 77 &&
          sumOf(two, "switchyard_connections_total") === sumOf(one, "switchyard_handoffs_total") &&
          sumOf(one, "switchyard_active_connections") + sumOf(two, "switchyard_active_connections") === 0;
      },
      10_000,
      "every flow to be counted as served or handed off",
    );
    a1 = await scrape(admin1);
    const a2 = await scrape(admin2);
    const handedOff = sumOf(a1, "switchyard_handoffs_total");
    assert.ok(handedOff > 0 && handedOff < 40, `${handedOff} of 40 handed off`);
    assert.equal(sumOf(a2, "switchyard_connections_total", { service: "web" }), handedOff);
    assert.equal(sumOf(a2, "switchyard_handoffs_total"), 0);
    // The accepting agent forwarded every byte; the claimant forwarded the handed-off flows' bytes again.
    assert.equal(sumOf(a1, "switchyard_bytes_total", { direction: "up" }), 77 * UP_BYTES);
    assert.equal(sumOf(a1, "switchyard_bytes_total", { direction: "down" }), 77 * DOWN_BYTES);
    assert.equal(sumOf(a2, "switchyard_bytes_total", { direction: "up" }), handedOff * UP_BYTES);
    assert.equal(sumOf(a2, "switchyard_bytes_total", { direction: "down" }), handedOff * DOWN_BYTES);

    await eventually(
      async () => {
        const page = await scrape(cluster.admin, ADMIN_TOKEN);
        // Handoffs are counted as they are made, served flows as they connect: wait for a heartbeat of
        // agent-1's sent after both, not one between.
        return sumOf(page, "switchyard_agent_reported_handoffs_total", { agent: "agent-1" }) === handedOff &&
          sumOf(page, "switchyard_agent_reported_served_total", { agent: "agent-1" }) === 77 - handedOff &&
          sumOf(page, "switchyard_agent_reported_served_total", { agent: "agent-2" }) === handedOff &&
          sumOf(page, "switchyard_backend_connections_total", { backend: backend.address }) === 77;
      },
      10_000,
      "the agents' heartbeats to report what they served and handed off",
    );
    m = await scrape(cluster.admin, ADMIN_TOKEN);
    assert.equal(sumOf(m, "switchyard_decision_seconds_count", { service: "web" }), 77);
    assert.equal(sumOf(m, "switchyard_agents_live"), 2);
    assert.ok(Math.abs(sumOf(m, "switchyard_agent_claim_ratio") - 1) < 1e-9, "claims add up to 1");
    assert.equal(sumOf(m, "switchyard_agent_reported_served_total", { agent: "agent-1" }), 77 - handedOff);
    // Every flow was decided by the manager, for the agent that served it; none was started to the dead one.
    assert.equal(sumOf(m, "switchyard_agent_reported_decisions_total"), 77);
    assert.equal(sumOf(m, "switchyard_agent_reported_decisions_total", { agent: "agent-2" }), handedOff);
    assert.equal(sumOf(m, "switchyard_backend_connections_total", { backend: dead }), 0);
  } finally {
    await cluster.close();
    await backend.close();
  }
});
