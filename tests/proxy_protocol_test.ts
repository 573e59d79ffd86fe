/**
 * PROXY protocol towards backends, checked against a real consumer: an agent with `proxy_protocol: v1`
 * and `v2` in front of HAProxy frontends that `accept-proxy`. HAProxy re-sends the client address it
 * learnt (send-proxy-v2) to a backend in this test, which checks it is the test client's own.
 */
import assert from "node:assert/strict";
import { decodeProxyHeader } from "../cluster/proxy_protocol.ts";
import { startBackend } from "./_backends.ts";
import { startTestCluster } from "./_cluster.ts";
import { testService } from "./_config.ts";
import { freeFixedPort, readAll, servicePort, waitForPort, writeAll } from "./_helpers.ts";

const HAPROXY = "/usr/sbin/haproxy";
const installed = (() => {
  try {
    return Deno.statSync(HAPROXY).isFile;
  } catch {
    return false;
  }
})();
const NAME = "an agent's PROXY v1 and v2 headers carry the client's address through HAProxy accept-proxy";

Deno.test({
  name: installed ? NAME : `${NAME} (ignored: ${HAPROXY} is not installed; bash .ci/run installs it)`,
  ignore: !installed,
  async fn() {
    // The test backend: reads HAProxy's header, answers with what it learnt, then echoes the payload.
    const seen: Array<{ source: string; payload: string }> = [];
    const backend = startBackend(async (conn) => {
      const bytes = await readAll(conn);
      const decoded = decodeProxyHeader(bytes);
      assert.ok(decoded, "HAProxy sent a whole header");
      const source = `${decoded.header.source?.ip}:${decoded.header.source?.port}`;
      const payload = new TextDecoder().decode(bytes.subarray(decoded.length));
      seen.push({ source, payload });
      await writeAll(conn, new TextEncoder().encode(`${source} ${payload}`));
    });
    const v1Port = freeFixedPort();
    const v2Port = freeFixedPort();
    const dir = await Deno.makeTempDir({ prefix: "switchyard-haproxy-" });
    await Deno.writeTextFile(
      `${dir}/haproxy.cfg`,
      [
        "defaults",
        "  mode tcp",
        "  timeout connect 2s",
        "  timeout client 10s",
        "  timeout server 10s",
        "frontend v1",
        `  bind 127.0.0.1:${v1Port} accept-proxy`,
        "  default_backend out",
        "frontend v2",
        `  bind 127.0.0.1:${v2Port} accept-proxy`,
        "  default_backend out",
        "backend out",
        `  server test ${backend.address} send-proxy-v2`,
        "",
      ].join("\n"),
    );
    const haproxy = new Deno.Command(HAPROXY, {
      args: ["-f", `${dir}/haproxy.cfg`, "-db"],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const cluster = await startTestCluster({
      agents: 1,
      services: [
        testService({
          name: "pp1",
          decide: "agent",
          proxy_protocol: "v1",
          backends: [`127.0.0.1:${v1Port}`],
        }),
        testService({
          name: "pp2",
          decide: "agent",
          proxy_protocol: "v2",
          backends: [`127.0.0.1:${v2Port}`],
        }),
      ],
    }).catch(async (error) => {
      haproxy.kill("SIGKILL");
      await haproxy.output();
      throw error;
    });
    try {
      await Promise.all([v1Port, v2Port].map((port) => waitForPort(port, { what: "HAProxy" })));
      const agent = cluster.agents[0]!;
      for (const service of ["pp1", "pp2"]) {
        const port = await servicePort(agent.proc, service);
        for (let i = 0; i < 5; i++) {
          const client = await Deno.connect({ hostname: "127.0.0.1", port });
          const self = client.localAddr as Deno.NetAddr;
          await writeAll(client, new TextEncoder().encode(`hello ${service} ${i}`));
          await client.closeWrite();
          const answer = new TextDecoder().decode(await readAll(client));
          client.close();
          assert.equal(answer, `127.0.0.1:${self.port} hello ${service} ${i}`, `${service} connection ${i}`);
        }
      }
      assert.equal(seen.length, 10);
    } finally {
      await cluster.close();
      haproxy.kill("SIGTERM");
      await haproxy.output();
      await backend.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
