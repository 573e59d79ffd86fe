/**
 * Logs as an operator and an auditor read them: a manager and agents at `--log-level debug`, in text and
 * in JSON lines, through a session that touches every token (agents joining with the right and a wrong
 * cluster token, admin and feedback calls with good and bad tokens, the feedback CLI, reloads, traffic,
 * a drain) never print a configured token, and every line about a flow, agent or backend names it.
 */
import assert from "node:assert/strict";
import { startGreeter } from "./_backends.ts";
import {
  claimsSplit,
  eventually,
  type LogLine,
  Proc,
  run,
  servicePort,
  startManagerProcess,
} from "./_helpers.ts";
import { agentsCaughtUp, connectAndReadLine } from "./_cluster.ts";
import { testConfig, testService } from "./_config.ts";

const ADMIN = "admin-secret-4f1c9a7be2d8";
const CLUSTER = "cluster-secret-9d03e6c1a5b7";
const FEEDBACK = "feedback-secret-72b4f0d9c3e1";
const WRONG_CLUSTER = "wrong-cluster-secret-1a2b3c";
const WRONG_ADMIN = "wrong-admin-secret-4d5e6f";

/** Each JSON line that is about a flow, an agent or a backend carries that id as a property. */
function assertIdsCarried(logs: readonly LogLine[], who: string): void {
  const rules: Array<[RegExp, string]> = [
    [/\bflow\b/i, "flow"],
    [/\bagent\b/i, "agent"],
    [/\bbackend\b/i, "backend"],
  ];
  for (const line of logs) {
    for (const [pattern, property] of rules) {
      if (pattern.test(line.message)) {
        assert.ok(
          line.properties[property] !== undefined && line.properties[property] !== null,
          `${who}'s line "${line.message}" is about a ${property} but has no "${property}" property`,
        );
      }
    }
  }
}

/** One connection through an agent: the test backend answers its name. */
async function get(port: number): Promise<void> {
  const conn = await connectAndReadLine(port);
  await conn.close();
  assert.equal(conn.line, "b1");
}

function assertNoSecret(texts: Record<string, string>, secrets: readonly string[]): void {
  for (const [where, text] of Object.entries(texts)) {
    assert.ok(text.length > 0 || where.endsWith("stdout"), `${where} is not empty`);
    for (const secret of secrets) assert.ok(!text.includes(secret), `${where} holds the secret ${secret}`);
  }
}

async function stderrMatch(proc: Proc, pattern: RegExp, what: string): Promise<RegExpExecArray> {
  let match: RegExpExecArray | null = null;
  await eventually(() => (match = pattern.exec(proc.stderr)) !== null, 15_000, what);
  return match as unknown as RegExpExecArray;
}

function agentArgs(manager: string, tokenFile: string, id: string, format: "text" | "json") {
  return [
    "agent",
    "--manager",
    manager,
    "--token-file",
    tokenFile,
    "--id",
    id,
    "--mesh",
    "127.0.0.1:0",
    "--admin",
    "127.0.0.1:0",
    "--log-level",
    "debug",
    "--log-format",
    format,
  ];
}

/** With `adminToken` null, the config names none and the manager generates one. */
function configYaml(backend: string, adminToken: string | null): string {
  return testConfig({
    manager: {
      tokens: { admin: adminToken ?? undefined, feedback: [{ token: "${APP_TOKEN}", services: ["web"] }] },
    },
    services: [testService({
      decide: "manager",
      health: { interval: "500ms", timeout: "250ms" },
      backends: [backend],
    })],
  });
}

Deno.test("no configured token appears in the logs of a manager (JSON) and agents (text) at debug level", async () => {
  const backend = startGreeter("b1");
  const dir = await Deno.makeTempDir({ prefix: "switchyard-logs-" });
  Deno.env.set("APP_TOKEN", FEEDBACK);
  const procs: Proc[] = [];
  try {
    await Deno.writeTextFile(`${dir}/cluster.token`, CLUSTER);
    await Deno.writeTextFile(`${dir}/wrong.token`, WRONG_CLUSTER);
    const manager = await startManagerProcess(dir, configYaml(backend.address, ADMIN));
    procs.push(manager.proc);
    const agent = new Proc(agentArgs(manager.cluster, `${dir}/cluster.token`, "edge-1", "text"));
    const intruder = new Proc(agentArgs(manager.cluster, `${dir}/wrong.token`, "intruder", "text"));
    procs.push(agent, intruder);
    const port = Number((await stderrMatch(agent, /listening on "?[\d.]+:(\d+)/, "the agent to listen"))[1]);
    await manager.proc.waitForLog((l) => l.message.startsWith("Refused peer"));

    const api = (path: string, token: string, init: RequestInit = {}) =>
      fetch(`http://${manager.admin}${path}`, {
        ...init,
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      }).then(async (response) => {
        await response.body?.cancel();
        return response.status;
      });
    assert.equal(await api("/v1/services", ADMIN), 200);
    assert.equal(await api("/v1/services", WRONG_ADMIN), 401);
    assert.equal(await api("/metrics", ADMIN), 200);
    assert.equal(await api("/metrics", FEEDBACK), 403);
    assert.equal(await api("/v1/events", ADMIN), 200);
    const report = { service: "web", backend: backend.address, utilization: 0.4 };
    assert.equal(await api("/v1/feedback", FEEDBACK, { method: "POST", body: JSON.stringify(report) }), 202);
    assert.equal(
      await api("/v1/feedback", FEEDBACK, {
        method: "POST",
        body: JSON.stringify({ ...report, service: "x" }),
      }),
      403,
    );
    const cli = await run([
      "feedback",
      "--manager",
      `http://${manager.admin}`,
      "--token",
      FEEDBACK,
      "--service",
      "web",
      "--backend",
      backend.address,
      "--weight",
      "50",
      "--log-level",
      "debug",
    ]);
    assert.equal(cli.code, 0, cli.stderr);
    const drain = JSON.stringify({ state: "drain" });
    assert.equal(
      await api(`/v1/services/web/backends/${backend.address}/state`, ADMIN, { method: "POST", body: drain }),
      200,
    );
    const up = JSON.stringify({ state: "up" });
    assert.equal(
      await api(`/v1/services/web/backends/${backend.address}/state`, ADMIN, { method: "POST", body: up }),
      200,
    );
    // The agent learns the backend is up again from the manager, a moment after the answer above.
    await agentsCaughtUp({
      api: <T>(path: string) =>
        fetch(`http://${manager.admin}${path}`, { headers: { authorization: `Bearer ${ADMIN}` } })
          .then((response) => response.json() as Promise<T>),
    });
    for (let i = 0; i < 5; i++) await get(port);
    await stderrMatch(agent, /Flow \d+ of "?web"? from .* served by/, "a flow line at debug level");

    // A good reload, then one the manager rejects (a feedback token equal to the admin token).
    manager.proc.kill("SIGHUP");
    await manager.proc.waitForLog((l) => l.message.startsWith("Reloaded the config"));
    await Deno.writeTextFile(
      manager.config,
      configYaml(backend.address, ADMIN).replace('"${APP_TOKEN}"', JSON.stringify(ADMIN)),
    );
    manager.proc.kill("SIGHUP");
    await manager.proc.waitForLog((l) => l.message.startsWith("Rejected the new config"));

    agent.kill("SIGTERM");
    assert.equal((await agent.status()).code, 0);
    await manager.proc.waitForLog((l) => l.message.includes("left") && l.properties.agent === "edge-1");
    for (const proc of procs) await proc.stop();

    assertNoSecret({
      "manager stdout": manager.proc.stdout,
      "manager stderr": manager.proc.stderr,
      "agent stdout": agent.stdout,
      "agent stderr": agent.stderr,
      "intruder stdout": intruder.stdout,
      "intruder stderr": intruder.stderr,
      "feedback CLI stdout": cli.stdout,
    }, [ADMIN, CLUSTER, FEEDBACK, WRONG_CLUSTER, WRONG_ADMIN]);
    assert.ok(manager.proc.logs.some((l) => l.level === "DEBUG"), "the manager logged at debug level");
    assert.match(agent.stderr, /\[DBG\]/, "the agent logged at debug level, as text");
    assertIdsCarried(manager.proc.logs, "the manager");
  } finally {
    for (const proc of procs) await proc.stop();
    Deno.env.delete("APP_TOKEN");
    await backend.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a generated admin token is printed once on stdout, never logged; agents' JSON lines carry their ids", async () => {
  const backend = startGreeter("b1");
  const dir = await Deno.makeTempDir({ prefix: "switchyard-logs-" });
  const procs: Proc[] = [];
  try {
    await Deno.writeTextFile(`${dir}/cluster.token`, CLUSTER);
    await Deno.writeTextFile(`${dir}/switchyard.yaml`, configYaml(backend.address, null));
    const manager = new Proc(
      ["manager", "--config", `${dir}/switchyard.yaml`, "--log-level", "debug", "--log-format", "text"],
      { env: { APP_TOKEN: FEEDBACK } },
    );
    procs.push(manager);
    const [, admin, cluster] = await stderrMatch(
      manager,
      /admin on "?([\d.]+:\d+)"? and cluster on "?([\d.]+:\d+)/,
      "the manager to serve",
    );
    await manager.waitForStdout("admin token is:");
    const generated = /admin token is: (\S+)/.exec(manager.stdout)?.[1] as string;
    assert.match(generated, /^[0-9a-f]{64}$/);

    const agents = ["edge-1", "edge-2"].map((id) =>
      new Proc(agentArgs(cluster as string, `${dir}/cluster.token`, id, "json"))
    );
    procs.push(...agents);
    const ports = await Promise.all(agents.map((agent) => servicePort(agent, "web")));
    await claimsSplit(agents, 2, { what: "both agents to know both claims" });
    const services = await fetch(`http://${admin}/v1/services`, {
      headers: { authorization: `Bearer ${generated}` },
    });
    assert.equal(services.status, 200);
    await services.body?.cancel();
    for (let i = 0; i < 20; i++) await get(ports[i % 2] as number);
    await eventually(
      () => agents.some((agent) => agent.logs.some((l) => /handed off to/.test(l.message))),
      10_000,
      "a handed-off flow to be logged",
    );
    for (const agent of agents) agent.kill("SIGTERM");
    for (const agent of agents) assert.equal((await agent.status()).code, 0);
    await manager.stop();

    assert.equal(
      manager.stdout.split(generated).length - 1,
      1,
      "the generated token is printed exactly once",
    );
    assertNoSecret({
      "manager stderr": manager.stderr,
      ...Object.fromEntries(agents.flatMap((agent, i) => [
        [`agent ${i + 1} stdout`, agent.stdout],
        [`agent ${i + 1} stderr`, agent.stderr],
      ])),
    }, [generated, CLUSTER, FEEDBACK]);
    assert.ok(!manager.stdout.includes(CLUSTER) && !manager.stdout.includes(FEEDBACK));
    assert.match(manager.stderr, /\[DBG\]/, "the manager logged at debug level, as text");
    for (const [i, agent] of agents.entries()) {
      assert.ok(agent.logs.some((l) => l.level === "DEBUG"), "the agent logged at debug level, as JSON");
      assertIdsCarried(agent.logs, `agent ${i + 1}`);
    }
  } finally {
    for (const proc of procs) await proc.stop();
    await backend.close();
    await Deno.remove(dir, { recursive: true });
  }
});
