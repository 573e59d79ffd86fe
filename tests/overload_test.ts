/**
 * Abuse of a service listener: slowloris clients (connections that send one byte every few seconds, or
 * nothing) must be closed by `timeouts.idle` while normal clients are served; a flood of connections beyond
 * `limits.max_connections` must be closed at once without reaching a backend, with the agent's memory
 * bounded, and normal service must resume after it.
 */
import assert from "node:assert/strict";
import { startEcho, startGreeter } from "./_backends.ts";
import { agentMetric, startTestCluster } from "./_cluster.ts";
import { testService } from "./_config.ts";
import { agentAdmin, eventually, servicePort } from "./_helpers.ts";
import {
  forEachBounded,
  type HeldConnection,
  holdConnection,
  sleep,
  startLoad,
  summarize,
  vmRssKiB,
} from "./_load.ts";

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

/**
 * A slowloris client: connects, then sends one byte at once and one every `everyMs` after (none at all
 * when null), at most `bytes` times, and returns how long after its last byte (or its connect) the agent closed the connection.
 */
async function slowClient(
  port: number,
  options: { everyMs: number | null; bytes: number; limitMs: number },
): Promise<{ idleMs: number; sent: number; problem: string | null }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  let lastActive = performance.now();
  let sent = 0;
  let closed = false;
  const started = performance.now();
  const reading = (async () => {
    const buffer = new Uint8Array(1024);
    try {
      while ((await conn.read(buffer)) !== null) lastActive = performance.now();
    } catch {
      // reset: closed too
    }
    closed = true;
  })();
  const timer = setTimeout(() => {
    try {
      conn.close();
    } catch {
      // closed
    }
  }, options.limitMs);
  try {
    if (options.everyMs !== null) {
      while (!closed && sent < options.bytes) {
        if (sent > 0) {
          let timer: ReturnType<typeof setTimeout> | undefined;
          await Promise.race([
            new Promise((resolve) => timer = setTimeout(resolve, options.everyMs!)),
            reading,
          ]);
          clearTimeout(timer);
        }
        if (closed) break;
        try {
          await conn.write(new Uint8Array([0x41]));
          sent++;
          lastActive = performance.now();
        } catch {
          break;
        }
      }
    }
    await reading;
    const total = performance.now() - started;
    return {
      idleMs: performance.now() - lastActive,
      sent,
      problem: total >= options.limitMs ? `still open after ${options.limitMs} ms` : null,
    };
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch {
      // closed by the agent's close or the timer
    }
  }
}

Deno.test("400 slowloris connections are closed by timeouts.idle while the agent serves normal clients", async () => {
  const backend = startEcho();
  const normal = startGreeter("b1", { hold: true });
  const cluster = await startTestCluster({
    agents: 1,
    services: [
      testService({
        name: "slow",
        decide: "agent",
        timeouts: { connect: "1s", idle: "1500ms", drain: "1s" },
        backends: [backend.address],
      }),
      testService({
        decide: "agent",
        timeouts: { connect: "1s", idle: "1500ms", drain: "1s" },
        backends: [normal.address],
      }),
    ],
    agentArgs: () => ["--admin", "127.0.0.1:0"],
  });
  try {
    const agent = cluster.agents[0]!;
    const web = await servicePort(agent.proc, "web");
    const admin = await agentAdmin(agent.proc);
    const load = startLoad({
      targets: () => [web],
      concurrency: 4,
      ratePerSecond: 100,
      maxSeconds: 6,
      expect: (line) => line === "b1",
    });
    // 200 that never send a byte and 200 that send one every 3 s (longer than the 1.5 s idle timeout).
    const started = performance.now();
    const slow = await Promise.all(Array.from(
      { length: 400 },
      (_, i) => slowClient(agent.port, { everyMs: i % 2 === 0 ? null : 3_000, bytes: 3, limitMs: 8_000 }),
    ));
    const slowDone = performance.now() - started;
    const records = await load.done;
    const all = summarize(records);
    const idle = slow.map((s) => s.idleMs);
    const latencies = records.map((r) => r.end - r.start);
    console.log(
      `400 slow clients closed ${percentile(idle, 0).toFixed(0)}–${
        percentile(idle, 100).toFixed(0)
      } ms after their last byte (all within ${slowDone.toFixed(0)} ms); meanwhile ${all.text}, latency p50 ${
        percentile(latencies, 50).toFixed(1)
      } ms, p99 ${percentile(latencies, 99).toFixed(1)} ms`,
    );
    const problems = slow.filter((s) => s.problem !== null);
    assert.equal(problems.length, 0, `${problems.length} slow clients were never closed`);
    // Closed once idle for 1.5 s (the sweep runs every 250 ms), and not before.
    assert.ok(
      percentile(idle, 0) >= 1_400,
      `a slow client was closed ${percentile(idle, 0).toFixed(0)} ms idle`,
    );
    assert.ok(
      percentile(idle, 100) < 2_800,
      `a slow client stayed ${percentile(idle, 100).toFixed(0)} ms idle`,
    );
    assert.ok(slow.filter((s) => s.sent > 0).length === 200, "the byte-senders sent before they were closed");
    assert.equal(all.failed, 0, `${all.failed} normal clients failed`);
    assert.ok(all.total > 400, `only ${all.total} normal clients`);
    assert.ok(
      percentile(latencies, 99) < 1_000,
      `normal clients waited ${percentile(latencies, 99)} ms (p99)`,
    );
    await eventually(
      async () => (await agentMetric(admin, "switchyard_active_connections")) === 0 && backend.open() === 0,
      5_000,
      "no connection left open in the agent or the backend",
    );
  } finally {
    await cluster.close();
    await backend.close();
    await normal.close();
  }
});

Deno.test("a flood of 3,000 connections beyond max_connections: each closed at once, none reaches a backend, memory stays bounded, service resumes", async () => {
  const backend = startGreeter("b1", { hold: true });
  const limit = 200;
  const cluster = await startTestCluster({
    agents: 1,
    services: [testService({
      decide: "agent",
      timeouts: { connect: "1s", idle: "60s", drain: "1s" },
      limits: { max_connections: limit },
      backends: [backend.address],
    })],
    agentArgs: () => ["--admin", "127.0.0.1:0"],
  });
  const held: HeldConnection[] = [];
  try {
    const agent = cluster.agents[0]!;
    const admin = await agentAdmin(agent.proc);
    for (let i = 0; i < limit; i++) held.push(await holdConnection(agent.port));
    assert.ok(held.every((conn) => conn.line === "b1"));
    await eventually(() => backend.accepted() === limit, 5_000, "the held connections to reach the backend");
    const rejectedBefore = await agentMetric(admin, "switchyard_rejected_connections_total");
    const rssBefore = await vmRssKiB(agent.proc.pid);

    const flood = 3_000;
    let peakRss = rssBefore;
    let floodDone = false;
    const sampling = (async () => {
      // Sample the agent's memory while the flood lasts (bounded: at most 300 samples).
      for (let i = 0; i < 300 && !floodDone; i++) {
        peakRss = Math.max(peakRss, await vmRssKiB(agent.proc.pid));
        await sleep(50);
      }
    })();
    const started = performance.now();
    const results = await forEachBounded(Array.from({ length: flood }), 200, async () => {
      const t0 = performance.now();
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: agent.port });
      const timer = setTimeout(() => {
        try {
          conn.close();
        } catch {
          // closed
        }
      }, 3_000);
      try {
        const n = await conn.read(new Uint8Array(16)).catch(() => null);
        return { closedMs: performance.now() - t0, bytes: n ?? 0 };
      } finally {
        clearTimeout(timer);
        try {
          conn.close();
        } catch {
          // closed by the timer
        }
      }
    });
    floodDone = true;
    await sampling;
    const took = performance.now() - started;
    const rssAfter = await vmRssKiB(agent.proc.pid);
    const closed = results.map((r) => r.closedMs);
    console.log(
      `${flood} connections over the limit in ${(took / 1000).toFixed(1)} s (${
        (flood / (took / 1000)).toFixed(0)
      }/s): closed after p50 ${percentile(closed, 50).toFixed(1)} ms, p99 ${
        percentile(closed, 99).toFixed(1)
      } ms, max ${percentile(closed, 100).toFixed(1)} ms; agent VmRSS ${
        (rssBefore / 1024).toFixed(1)
      } MiB before, peak ${(peakRss / 1024).toFixed(1)}, after ${(rssAfter / 1024).toFixed(1)}`,
    );
    assert.equal(results.filter((r) => r.bytes > 0).length, 0, "an excess connection got a byte");
    assert.ok(
      percentile(closed, 99) < 1_000,
      `excess connections were closed after ${percentile(closed, 99)} ms`,
    );
    assert.equal(backend.accepted(), limit, "an excess connection reached the backend");
    assert.equal((await agentMetric(admin, "switchyard_rejected_connections_total")) - rejectedBefore, flood);
    assert.ok(
      peakRss - rssBefore < 50 * 1024,
      `the agent grew ${((peakRss - rssBefore) / 1024).toFixed(1)} MiB`,
    );
    // The held connections still work, and once they close, new clients are served again.
    for (const conn of held) assert.ok(await conn.echo("x"), "a held connection broke during the flood");
    for (const conn of held) conn.close();
    held.length = 0;
    await eventually(
      async () => (await agentMetric(admin, "switchyard_active_connections")) === 0,
      5_000,
      "no open flow",
    );
    const load = startLoad({
      targets: () => [agent.port],
      ratePerSecond: 150,
      maxSeconds: 2,
      expect: (l) => l === "b1",
    });
    const after = summarize(await load.done);
    console.log(`after the flood: ${after.text}`);
    assert.equal(after.failed, 0);
    assert.ok(after.total > 200);
  } finally {
    for (const conn of held) conn.close();
    await cluster.close();
    await backend.close();
  }
});
