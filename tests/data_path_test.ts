/**
 * The data path end to end: a manager and an agent as real processes, test backends on port 0, and TCP
 * clients. Bytes must arrive unchanged both ways with half-close, a refusing backend must be skipped
 * before any byte is sent, and limits and timeouts must hold.
 */
import assert from "node:assert/strict";
import { startBackend } from "./_backends.ts";
import { startTestCluster } from "./_cluster.ts";
import { testService } from "./_config.ts";
import { blackhole, eventually, randomBytes, readAll, writeAll } from "./_helpers.ts";

/**
 * A manager and one agent serving `svc` over `backends` (weight 100 each), with the keys of `service` over
 * the test defaults (no active health checks: the test backends count every connection they get).
 */
async function startCluster(backends: string[], service: Record<string, unknown> = {}) {
  const cluster = await startTestCluster({
    agents: 1,
    services: [testService({
      name: "svc",
      decide: "agent",
      backends: backends.map((address) => ({ address, weight: 100 })),
      ...service,
    })],
  });
  const agent = cluster.agents[0]!;
  return { port: agent.port, agent: agent.proc, close: () => cluster.close() };
}

Deno.test("1 MiB of random bytes each way arrives unchanged, client half-closing first", async () => {
  const up = randomBytes(1024 * 1024);
  const down = randomBytes(1024 * 1024);
  let received: Uint8Array | null = null;
  const backend = startBackend(async (conn) => {
    // Read the whole upload first (the client has half-closed), then answer: the reply can only
    // arrive if the agent kept the client's read side open after the client's FIN.
    received = await readAll(conn);
    await writeAll(conn, down);
    await conn.closeWrite();
  });
  const cluster = await startCluster([backend.address]);
  try {
    const client = await Deno.connect({ hostname: "127.0.0.1", port: cluster.port });
    await writeAll(client, up);
    await client.closeWrite();
    const reply = await readAll(client);
    client.close();
    assert.equal(reply.length, down.length);
    assert.deepEqual(reply, down);
    assert.ok(received !== null);
    assert.deepEqual(received, up);
  } finally {
    await cluster.close();
    await backend.close();
  }
});

Deno.test("1 MiB of random bytes each way arrives unchanged, backend half-closing first", async () => {
  const up = randomBytes(1024 * 1024);
  const down = randomBytes(1024 * 1024);
  const uploads: Promise<Uint8Array>[] = [];
  const backend = startBackend(async (conn) => {
    // Send everything and half-close before reading a byte: the client must still be able to upload.
    const reading = readAll(conn);
    uploads.push(reading);
    await writeAll(conn, down);
    await conn.closeWrite();
    await reading;
  });
  const cluster = await startCluster([backend.address]);
  try {
    const client = await Deno.connect({ hostname: "127.0.0.1", port: cluster.port });
    const reply = await readAll(client); // ends at the backend's FIN, passed on by the agent
    assert.deepEqual(reply, down);
    await writeAll(client, up); // the other direction is still open
    await client.closeWrite();
    await eventually(() => uploads.length === 1, 5_000, "the backend to see the connection");
    assert.deepEqual(await uploads[0], up);
    client.close();
  } finally {
    await cluster.close();
    await backend.close();
  }
});

Deno.test("a backend that refuses connections is skipped without the client noticing", async () => {
  const names: string[] = [];
  const alive = startBackend(async (conn) => {
    names.push("alive");
    await writeAll(conn, new TextEncoder().encode("alive\n"));
  });
  // Port 1 on loopback: nothing listens there, so every connect is refused at once.
  const cluster = await startCluster(["127.0.0.1:1", alive.address]);
  try {
    for (let i = 0; i < 100; i++) {
      const client = await Deno.connect({ hostname: "127.0.0.1", port: cluster.port });
      const reply = new TextDecoder().decode(await readAll(client));
      client.close();
      assert.equal(reply, "alive\n", `connection ${i} got ${JSON.stringify(reply)}`);
    }
    assert.equal(names.length, 100);
    // About half the flows hash to the dead backend first; each of those was retried on the other.
    const retried = cluster.agent.logs.filter((line) =>
      line.message.includes("failed") && line.properties.backend === "127.0.0.1:1"
    );
    assert.ok(retried.length > 20, `expected many retries, saw ${retried.length}`);
  } finally {
    await cluster.close();
    await alive.close();
  }
});

Deno.test("a backend whose connects hang is given up after timeouts.connect and the next one serves", async () => {
  const alive = startBackend(async (conn) => {
    await writeAll(conn, new TextEncoder().encode("alive\n"));
  });
  const hole = await blackhole();
  const cluster = await startCluster([`127.0.0.1:${hole.port}`, alive.address], {
    timeouts: { connect: "400ms", idle: "10s", drain: "1s" },
  });
  try {
    // Concurrent clients, so several connects to the hanging backend are under way at once.
    const elapsed = await Promise.all(Array.from({ length: 12 }, async (_, i) => {
      const started = performance.now();
      const client = await Deno.connect({ hostname: "127.0.0.1", port: cluster.port });
      const reply = new TextDecoder().decode(await readAll(client));
      client.close();
      assert.equal(reply, "alive\n", `connection ${i} got ${JSON.stringify(reply)}`);
      return performance.now() - started;
    }));
    // Flows that hashed to the hanging backend first waited out the connect timeout, and no longer.
    const waited = elapsed.filter((ms) => ms >= 400);
    assert.ok(waited.length > 0, `no flow tried the hanging backend first: ${elapsed.map(Math.round)}`);
    for (const ms of waited) assert.ok(ms < 400 + 1_000, `a flow took ${Math.round(ms)} ms`);
    // The log line may come a moment after the client was served (the io_uring relay reports by message).
    const timedOut = () =>
      cluster.agent.logs.filter((line) =>
        line.message.includes("failed") && String(line.properties.error).includes("within 400 ms")
      ).length;
    await eventually(() => timedOut() >= waited.length, 2_000, "a connect timeout line for each wait").catch(
      () => {},
    );
    assert.equal(timedOut(), waited.length, "each wait is logged as a connect timeout");
  } finally {
    await cluster.close();
    hole.close();
    await alive.close();
  }
});

Deno.test("an idle connection is closed after timeouts.idle", async () => {
  const backend = startBackend(async (conn) => {
    await readAll(conn);
  });
  const cluster = await startCluster([backend.address], {
    timeouts: { idle: "500ms", connect: "1s", drain: "1s" },
  });
  try {
    const client = await Deno.connect({ hostname: "127.0.0.1", port: cluster.port });
    const started = performance.now();
    const buffer = new Uint8Array(16);
    const n = await client.read(buffer); // nothing is ever sent: the agent must close the connection
    const elapsed = performance.now() - started;
    client.close();
    assert.equal(n, null);
    assert.ok(elapsed >= 500 && elapsed < 3_000, `closed after ${elapsed.toFixed(0)} ms`);
  } finally {
    await cluster.close();
    await backend.close();
  }
});

Deno.test("connections beyond limits.max_connections are closed at once", async () => {
  let accepted = 0;
  const backend = startBackend(async (conn) => {
    accepted++;
    const buffer = new Uint8Array(1024);
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      await writeAll(conn, buffer.subarray(0, n));
    }
  });
  const cluster = await startCluster([backend.address], { limits: { max_connections: 3 } });
  try {
    const held: Deno.Conn[] = [];
    for (let i = 0; i < 3; i++) held.push(await Deno.connect({ hostname: "127.0.0.1", port: cluster.port }));
    await eventually(() => accepted === 3, 5_000, "three connections to reach the backend");
    const extra = await Deno.connect({ hostname: "127.0.0.1", port: cluster.port });
    const n = await extra.read(new Uint8Array(1)).catch(() => null);
    extra.close();
    assert.equal(n, null, "the fourth connection must be closed without a byte");
    assert.equal(accepted, 3);
    for (const conn of held) {
      await writeAll(conn, new Uint8Array([7]));
      const echo = new Uint8Array(1);
      assert.equal(await conn.read(echo), 1, "the held connections keep working");
      conn.close();
    }
  } finally {
    await cluster.close();
    await backend.close();
  }
});
