/**
 * A reload that changes a service's settings but not its listen address: the agents keep their
 * listeners, and what they serve from then on follows the new limits, idle timeout and PROXY header.
 */
import assert from "node:assert/strict";
import { closeQuietly } from "../cluster/close_quietly.ts";
import { startGreeter } from "./_backends.ts";
import { agentsCaughtUp, startTestCluster } from "./_cluster.ts";
import { testConfig, testService } from "./_config.ts";
import { writeAll } from "./_helpers.ts";

const decoder = new TextDecoder();

/**
 * Reads until `until` holds for what arrived, or the connection ends (`ended`), or `timeoutMs` passes (then it
 * is closed here: `timedOut` too).
 */
async function readUntil(conn: Deno.Conn, until: (text: string) => boolean, timeoutMs = 5_000) {
  const buffer = new Uint8Array(1024);
  let text = "";
  let ended = false;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    conn.close();
  }, timeoutMs);
  try {
    while (!until(text)) {
      const n = await conn.read(buffer);
      if (n === null) {
        ended = true;
        break;
      }
      text += decoder.decode(buffer.subarray(0, n));
    }
  } catch {
    // reset, or closed by the timer
    ended = true;
  } finally {
    clearTimeout(timer);
  }
  return { text, ended, timedOut };
}

Deno.test("a reload's new max_connections, idle timeout and PROXY header reach a running agent's listener", async () => {
  const greeter = startGreeter("b1", { hold: true });
  const service = (settings: Record<string, unknown>) =>
    testService({ backends: [greeter.address], decide: "agent", ...settings });
  const cluster = await startTestCluster({ agents: 1, services: [service({})] });
  const opened: Deno.Conn[] = [];
  const connect = async () => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: cluster.agents[0]!.port });
    opened.push(conn);
    return conn;
  };
  try {
    await agentsCaughtUp(cluster);
    const held = [await connect(), await connect()];
    for (const conn of held) {
      assert.equal((await readUntil(conn, (text) => text.includes("\n"))).text, "b1\n");
    }

    await Deno.writeTextFile(
      `${cluster.dir}/switchyard.yaml`,
      testConfig({
        services: [service({
          proxy_protocol: "v1",
          limits: { max_connections: 2 },
          timeouts: { connect: "2s", idle: "2s", drain: "1s" },
        })],
      }),
    );
    cluster.manager.kill("SIGHUP");
    await cluster.manager.waitForLog((line) => line.message.startsWith("Reloaded the config"));
    await agentsCaughtUp(cluster);

    // Two flows are open, each just active so that the new 2 s idle timeout has not closed it (the reload may
    // take longer than that on a loaded machine): a third is refused at once, unserved.
    for (const conn of held) {
      await writeAll(conn, new TextEncoder().encode("x"));
      assert.equal((await readUntil(conn, (text) => text === "x")).text, "x");
    }
    const refused = await readUntil(await connect(), () => false, 3_000);
    assert.deepEqual(
      refused,
      { text: "", ended: true, timedOut: false },
      "the third connection was closed unserved",
    );

    // The two held are idle: the new idle timeout closes them.
    const started = performance.now();
    for (const conn of held) {
      assert.deepEqual(await readUntil(conn, () => false, 6_000), { text: "", ended: true, timedOut: false });
    }
    const idleFor = performance.now() - started;
    assert.ok(
      idleFor < 5_000,
      `the idle flows were closed ${idleFor.toFixed(0)} ms after the third was refused`,
    );

    // A new flow is served, with the PROXY header before the client's bytes (the backend echoes both).
    const conn = await connect();
    await writeAll(conn, new TextEncoder().encode("hi"));
    const { text } = await readUntil(conn, (text) => text.endsWith("hi"));
    const localPort = (conn.localAddr as Deno.NetAddr).port;
    assert.equal(text, `b1\nPROXY TCP4 127.0.0.1 127.0.0.1 ${localPort} ${cluster.agents[0]!.port}\r\nhi`);
  } finally {
    opened.forEach(closeQuietly);
    await cluster.close();
    await greeter.close();
  }
});
