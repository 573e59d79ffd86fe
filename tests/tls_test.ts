/**
 * TLS with manager.tls: a CA made in the test signs the manager's certificate; the admin API, the
 * cluster port and the agents' mesh ports all speak TLS, and plaintext peers are refused.
 */
import assert from "node:assert/strict";
import { TokenSigner } from "../cluster/auth.ts";
import { encodeMeshHeader } from "../agent/mesh.ts";
import { startGreeter } from "./_backends.ts";
import { CLUSTER_TOKEN, testService } from "./_config.ts";
import { connectAndReadLine, startTestCluster } from "./_cluster.ts";
import { eventually, Proc, readAll } from "./_helpers.ts";

const OPENSSL = "/usr/bin/openssl";
const hasOpenssl = (() => {
  try {
    return Deno.statSync(OPENSSL).isFile;
  } catch {
    return false;
  }
})();

/** A throwaway CA and a certificate for 127.0.0.1 and localhost signed by it. */
async function makeCertificates(dir: string): Promise<{ ca: string; cert: string; key: string }> {
  const run = async (...args: string[]) => {
    const output = await new Deno.Command(OPENSSL, { args, cwd: dir, stdout: "null", stderr: "piped" })
      .output();
    if (!output.success) {
      throw new Error(`openssl ${args[0]} failed: ${new TextDecoder().decode(output.stderr)}`);
    }
  };
  await run(
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "2",
    "-subj",
    "/CN=switchyard test CA",
  );
  await run(
    "req",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    "server.key",
    "-out",
    "server.csr",
    "-subj",
    "/CN=127.0.0.1",
  );
  await Deno.writeTextFile(`${dir}/ext.cnf`, "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  await run(
    "x509",
    "-req",
    "-in",
    "server.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "server.pem",
    "-days",
    "2",
    "-extfile",
    "ext.cnf",
  );
  return {
    ca: await Deno.readTextFile(`${dir}/ca.pem`),
    cert: await Deno.readTextFile(`${dir}/server.pem`),
    key: await Deno.readTextFile(`${dir}/server.key`),
  };
}

Deno.test({
  name: hasOpenssl
    ? "with manager.tls the admin API, cluster port and mesh ports speak TLS and refuse plaintext peers"
    : "TLS end to end (ignored: openssl is not installed)",
  ignore: !hasOpenssl,
  async fn() {
    const certDir = await Deno.makeTempDir({ prefix: "switchyard-ca-" });
    const pems = await makeCertificates(certDir);
    const backend = startGreeter("b1");
    const cluster = await startTestCluster({
      agents: 2,
      tls: pems,
      services: [testService({
        decide: "manager",
        health: { interval: "1h" },
        backends: [backend.address],
      })],
      agentArgs: (_id, dir) => ["--ca-file", `${dir}/ca.pem`],
    });
    const plaintextAgent = new Proc([
      "agent",
      "--manager",
      cluster.cluster,
      "--token-file",
      `${cluster.dir}/cluster.token`,
      "--id",
      "plaintext",
      "--log-format",
      "json",
    ]);
    try {
      // The admin API over https with the test CA, and not over plain http.
      const view = await cluster.api<{ agents: Array<{ id: string }> }>("/v1/agents");
      await eventually(
        async () => (await cluster.api<{ agents: unknown[] }>("/v1/agents")).agents.length === 2,
        10_000,
        "both TLS agents to join",
      );
      assert.ok(view.agents.length <= 2);
      await assert.rejects(fetch(`http://${cluster.admin}/healthz`), "plain http to the admin port fails");

      // Every agent switches its mesh port to TLS, and flows handed off over it are served.
      for (const agent of cluster.agents) {
        await agent.proc.waitForLog((l) =>
          l.message.includes("now speaks") && l.properties.protocol === "TLS"
        );
      }
      for (let i = 0; i < 60; i++) {
        const conn = await connectAndReadLine(cluster.agents[i % 2]!.port);
        assert.equal(conn.line, "b1");
        await conn.close();
      }
      const handedOff = cluster.agents.flatMap((a) => a.proc.logs).filter((l) =>
        l.message.includes("served by") && l.properties.handed_off_by !== null
      );
      assert.ok(handedOff.length > 5, `${handedOff.length} flows crossed the TLS mesh`);

      // A correctly signed mesh header sent in plaintext is refused: the mesh only speaks TLS now.
      const meshLine = await cluster.agents[0]!.proc.waitForLog((l) =>
        l.message.includes("takes handed-off flows")
      );
      const meshPort = Number(String(meshLine.properties.mesh).split(":").pop());
      const header = await encodeMeshHeader(new TokenSigner(CLUSTER_TOKEN), {
        service: "web",
        sender: "agent-2",
        client: { ip: "10.1.2.3", port: 4444 },
        destination: { ip: "127.0.0.1", port: cluster.agents[0]!.port },
      });
      const plain = await Deno.connect({ hostname: "127.0.0.1", port: meshPort });
      await plain.write(header).catch(() => 0);
      // The TLS server answers plaintext with at most a TLS alert record (type 0x15), then closes.
      const answer = await readAll(plain).catch(() => new Uint8Array(0));
      plain.close();
      assert.ok(answer.length === 0 || answer[0] === 0x15, `plaintext mesh peer got ${answer.length} bytes`);
      await cluster.agents[0]!.proc.waitForLog((l) => l.message.startsWith("Refused mesh connection"));

      // An agent that talks plaintext to the TLS cluster port never joins.
      await plaintextAgent.waitForLog((l) => l.message.startsWith("Cannot reach the manager"));
      const agents = await cluster.api<{ agents: Array<{ id: string }> }>("/v1/agents");
      assert.deepEqual(agents.agents.map((a) => a.id).sort(), ["agent-1", "agent-2"]);
    } finally {
      await plaintextAgent.stop();
      await cluster.close();
      await backend.close();
      await Deno.remove(certDir, { recursive: true });
    }
  },
});
