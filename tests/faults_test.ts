/**
 * Faults under load: a bounded load generator (tests/_load.ts) runs through the agents for the whole of
 * each test while the manager is SIGKILLed and restarted, an agent is SIGKILLed or SIGTERMed, a backend is
 * killed, and the config is reloaded with SIGHUP, good and bad. Every connection is recorded; the only
 * failures allowed are those the fault itself owns (the open connections of a SIGKILLed agent), and each
 * of those is traced to that agent through the agents' own log lines.
 */
import assert from "node:assert/strict";
import { startGreeter } from "./_backends.ts";
import { testConfig, testService } from "./_config.ts";
import { agentsJoined, startTestCluster, type TestCluster } from "./_cluster.ts";
import { claimsSplit, eventually, freeFixedPort, type LogLine, type Proc } from "./_helpers.ts";
import {
  type HeldConnection,
  holdConnection,
  type LoadRecord,
  type LoadRun,
  sleep,
  stableView,
  startLoad,
  summarize,
} from "./_load.ts";

interface AgentsView {
  agents: Array<{ id: string; claim: number; state_version: number }>;
}
interface ServicesView {
  version: number;
  services: Array<{ name: string; backends: Array<{ address: string; health: string; state: string }> }>;
}

/** A service for these tests: no active health checks unless the test asks, short drains. */
function service(backends: string[], extra: Record<string, unknown> = {}): Record<string, unknown> {
  return testService({ timeouts: { connect: "1s", idle: "60s", drain: "2s" }, backends, ...extra });
}

/** Backends b1…bN that greet with their name and hold the connection, echoing (`holdConnection`). */
function holders(count: number) {
  return Array.from({ length: count }, (_, i) => startGreeter(`b${i + 1}`, { hold: true }));
}

/** The load of these tests: 150 connections/s over 6 loops for at most 20 s, each expecting a backend's name. */
function steadyLoad(targets: () => readonly number[], names: ReadonlySet<string>) {
  return startLoad({
    targets,
    concurrency: 6,
    ratePerSecond: 150,
    maxSeconds: 20,
    expect: (line) => names.has(line),
  });
}

/** Every agent in /v1/agents has acknowledged the manager's current state version. */
async function converged(cluster: TestCluster, count: number): Promise<boolean> {
  try {
    const { version } = await cluster.api<ServicesView>("/v1/services");
    const { agents } = await cluster.api<AgentsView>("/v1/agents");
    return agents.length === count && agents.every((agent) => agent.state_version === version);
  } catch {
    return false;
  }
}

/** When a log line was written, in epoch milliseconds. */
const loggedAt = (line: LogLine) =>
  Date.parse(String((line as unknown as Record<string, unknown>)["@timestamp"]));
/** A `performance.now()` time of this process in epoch milliseconds. */
const epoch = (time: number) => performance.timeOrigin + time;

/**
 * Which agent served the open connection from client port `localPort` to agent port `port`: the last
 * "served by" line with that client and destination (ports are reused by later connections, never while
 * one is open).
 */
function servedBy(procs: Proc[], localPort: number, port: number): { agent: string } | null {
  const client = `127.0.0.1:${localPort}`;
  const destination = `127.0.0.1:${port}`;
  const lines = procs.flatMap((proc) =>
    proc.logs.filter((l) =>
      l.properties.client === client && l.properties.destination === destination &&
      l.message.includes("served by")
    )
  );
  const last = lines.sort((a, b) => loggedAt(a) - loggedAt(b)).at(-1);
  return last ? { agent: String(last.properties.agent) } : null;
}

/**
 * The line of `proc` with `phrase` about the load connection `record`: logged while it lasted, or soon
 * after. The io_uring relay reports a flow's backend or handoff at the end of its turn, so a peer gone at
 * once can have closed the client before the line is written.
 */
function lineAbout(proc: Proc, record: LoadRecord, phrase: string): LogLine | undefined {
  const client = `127.0.0.1:${record.localPort}`;
  return proc.logs.find((l) =>
    l.properties.client === client && l.message.includes(phrase) &&
    loggedAt(l) >= Math.floor(epoch(record.start)) - 1 && loggedAt(l) <= epoch(record.end) + 500
  );
}

/** The agent `proc` handed the load connection `record` to, if it did. */
function handedOffTo(proc: Proc, record: LoadRecord): string | null {
  const line = lineAbout(proc, record, "handed off to");
  return line ? String(line.properties.agent) : null;
}

/** The backend `proc` served the load connection `record` by, if it did. */
function servedVia(proc: Proc, record: LoadRecord): string | null {
  const line = lineAbout(proc, record, "served by");
  return line ? String(line.properties.backend) : null;
}

function describeFailures(records: readonly LoadRecord[], t0: number): string {
  return records.slice(0, 10).map((r) =>
    `port ${r.port} client ${r.localPort} at +${((r.start - t0) / 1000).toFixed(2)} s: ${r.error}`
  ).join("\n");
}

Deno.test("the manager SIGKILLed and restarted under load through all three agents: 0 failed connections, and the agents converge", async () => {
  const backends = holders(2);
  const names = new Set(backends.map((b) => b.name));
  const cluster = await startTestCluster({
    agents: 3,
    cluster: `127.0.0.1:${freeFixedPort()}`,
    services: [service(backends.map((b) => b.address), { decide: "manager", decision_timeout: "50ms" })],
  });
  const load = steadyLoad(() => cluster.agents.map((agent) => agent.port), names);
  try {
    await agentsJoined(cluster, 3);
    await sleep(1_000);
    cluster.manager.kill("SIGKILL");
    await cluster.manager.status();
    const killedAt = performance.now();
    await sleep(2_500);
    await cluster.restartManager();
    const restartedAt = performance.now();
    await eventually(() => converged(cluster, 3), 5_000, "all three agents to rejoin and ack the new state");
    const convergedAt = performance.now();
    await sleep(1_500);
    const records = await load.stop();
    const all = summarize(records);
    const down = records.filter((r) => r.start >= killedAt && r.start < restartedAt);
    const byPort = [...all.byPort.entries()].map(([port, c]) => `${port}: ${c.ok} ok`).join(", ");
    console.log(
      `load ${all.text}; ${down.length} while the manager was down (${
        ((restartedAt - killedAt) / 1000).toFixed(1)
      } s); agents converged ${
        (convergedAt - restartedAt).toFixed(0)
      } ms after the restart; by agent ${byPort}`,
    );
    assert.equal(
      all.failed,
      0,
      `failed connections:\n${describeFailures(all.failures, records[0]?.start ?? 0)}`,
    );
    assert.ok(down.length > 200, `only ${down.length} connections while the manager was down`);
    for (const agent of cluster.agents) {
      assert.ok(
        down.filter((r) => r.port === agent.port).length > 50,
        `${agent.id} served few connections while the manager was down`,
      );
    }
  } finally {
    await load.stop();
    await cluster.close();
    await Promise.all(backends.map((b) => b.close()));
  }
});

Deno.test("an agent SIGKILLed under load: only flows through it fail; connections held through the others survive and new ones never fail", async () => {
  const backends = holders(2);
  const names = new Set(backends.map((b) => b.name));
  const cluster = await startTestCluster({
    agents: 3,
    services: [service(backends.map((b) => b.address), { decide: "agent" })],
  });
  const victim = cluster.agents[1]!;
  let targets = cluster.agents.map((agent) => agent.port);
  const load = steadyLoad(() => targets, names);
  const held: HeldConnection[] = [];
  let burst: LoadRun | null = null;
  try {
    await agentsJoined(cluster, 3);
    for (const agent of cluster.agents) {
      for (let i = 0; i < 12; i++) held.push(await holdConnection(agent.port));
    }
    for (const conn of held) {
      assert.ok(await conn.echo("before\n"), "a held connection echoes before the kill");
    }
    await sleep(1_500);
    targets = targets.filter((port) => port !== victim.port);
    const survivors = cluster.agents.filter((agent) => agent !== victim);
    victim.proc.kill("SIGKILL");
    // A burst through the survivors while they still hand the victim's share to its dead mesh port.
    burst = startLoad({
      targets: () => survivors.map((agent) => agent.port),
      concurrency: 40,
      ratePerSecond: 800,
      maxSeconds: 0.5,
      expect: (line) => names.has(line),
    });
    await victim.proc.status();
    const killedAt = performance.now();
    await claimsSplit(survivors.map((a) => a.proc), 2, {
      timeoutMs: 5_000,
      what: "the survivors to take over the victim's claim",
    });
    const movedAt = performance.now();
    await sleep(1_500);

    // Held connections: those relayed through the victim (accepted by it, or handed off to it) are gone;
    // every other one still carries bytes both ways.
    const procs = cluster.agents.map((agent) => agent.proc);
    let throughVictim = 0;
    for (const conn of held) {
      const served = servedBy(procs, conn.localPort, conn.port);
      assert.ok(served, `no "served by" line for held client port ${conn.localPort}`);
      const viaVictim = conn.port === victim.port || served.agent === victim.id;
      const alive = await conn.echo("after\n");
      if (viaVictim) throughVictim++;
      assert.equal(
        alive,
        !viaVictim,
        `held connection from ${conn.localPort} accepted on ${conn.port} (the victim's is ${victim.port}), served by ${served.agent}: ${
          alive ? "alive" : "broken"
        }`,
      );
    }
    assert.ok(throughVictim >= 12, `${throughVictim} held connections went through the victim`);

    const records = [...await load.stop(), ...await burst.done].sort((a, b) => a.start - b.start);
    const all = summarize(records);
    const fellBack = survivors.reduce(
      (n, a) => n + a.proc.logs.filter((l) => l.message.startsWith("Cannot hand a flow")).length,
      0,
    );
    // A failure is the victim's if it was accepted by the victim or handed off to it.
    const owned = (r: LoadRecord) =>
      r.port === victim.port ||
      survivors.some((a) => a.port === r.port && handedOffTo(a.proc, r) === victim.id);
    const others = all.failures.filter((r) => !owned(r));
    const afterMove = records.filter((r) => r.start > movedAt);
    console.log(
      `load ${all.text}: ${all.failed - others.length} owned by the SIGKILLed agent; claims moved ${
        (movedAt - killedAt).toFixed(0)
      } ms after the kill (${burst.records.length} in a burst then, ${fellBack} served by the survivors when the victim's mesh port refused); ${afterMove.length} connections after; ${held.length} held, ${throughVictim} through the victim`,
    );
    assert.equal(
      others.length,
      0,
      `connections not through the victim failed:\n${describeFailures(others, records[0]?.start ?? 0)}`,
    );
    assert.equal(afterMove.filter((r) => !r.ok).length, 0, "a connection failed after the claims moved");
    assert.ok(afterMove.length > 100, `only ${afterMove.length} connections after the claims moved`);
  } finally {
    for (const conn of held) conn.close();
    await load.stop();
    await burst?.stop();
    await cluster.close();
    await Promise.all(backends.map((b) => b.close()));
  }
});

Deno.test("an agent SIGTERMed under load: no connection fails, held ones through it included, and it exits 0 when they close", async () => {
  const backends = holders(2);
  const names = new Set(backends.map((b) => b.name));
  const cluster = await startTestCluster({
    agents: 3,
    services: [service(backends.map((b) => b.address), {
      decide: "manager",
      decision_timeout: "50ms",
      timeouts: { connect: "1s", idle: "60s", drain: "30s" },
    })],
  });
  const victim = cluster.agents[2]!;
  let targets = cluster.agents.map((agent) => agent.port);
  const load = steadyLoad(() => targets, names);
  const held: HeldConnection[] = [];
  try {
    await agentsJoined(cluster, 3);
    for (const agent of cluster.agents) {
      for (let i = 0; i < 12; i++) held.push(await holdConnection(agent.port));
    }
    await sleep(1_500);
    // Whatever sits in front of the agents stops sending it new clients, then it is told to stop.
    targets = targets.filter((port) => port !== victim.port);
    await sleep(300);
    victim.proc.kill("SIGTERM");
    const termAt = performance.now();
    const survivors = cluster.agents.filter((agent) => agent !== victim);
    await claimsSplit(survivors.map((a) => a.proc), 2, {
      timeoutMs: 5_000,
      what: "the survivors to take over the draining agent's claim",
    });
    await sleep(1_500);
    const procs = cluster.agents.map((agent) => agent.proc);
    let throughVictim = 0;
    for (const conn of held) {
      const served = servedBy(procs, conn.localPort, conn.port);
      if (conn.port === victim.port || served?.agent === victim.id) throughVictim++;
      assert.ok(
        await conn.echo("during the drain\n"),
        `held connection from ${conn.localPort} (accepted on ${conn.port}, served by ${served?.agent}) broke`,
      );
    }
    assert.ok(throughVictim >= 12, `${throughVictim} held connections went through the draining agent`);
    const records = await load.stop();
    for (const conn of held) conn.close();
    const closedAt = performance.now();
    const status = await victim.proc.status();
    const exitAfter = performance.now() - closedAt;
    const all = summarize(records);
    console.log(
      `load ${all.text}; ${held.length} held (${throughVictim} through the draining agent) all alive ${
        ((closedAt - termAt) / 1000).toFixed(1)
      } s into the drain; it exited ${status.code} ${exitAfter.toFixed(0)} ms after they closed`,
    );
    assert.equal(
      all.failed,
      0,
      `failed connections:\n${describeFailures(all.failures, records[0]?.start ?? 0)}`,
    );
    assert.equal(status.code, 0);
    assert.ok(
      exitAfter < 5_000,
      `the drained agent exited ${exitAfter.toFixed(0)} ms after its last connection`,
    );
  } finally {
    for (const conn of held) conn.close();
    await load.stop();
    await cluster.close();
    await Promise.all(backends.map((b) => b.close()));
  }
});

Deno.test("a backend killed under load: no client connection fails, and after fall checks no agent even tries it", async () => {
  const backends = holders(3);
  const names = new Set(backends.map((b) => b.name));
  const victim = backends[1]!;
  const cluster = await startTestCluster({
    agents: 2,
    services: [service(backends.map((b) => b.address), {
      decide: "manager",
      decision_timeout: "50ms",
      health: { kind: "tcp", interval: "300ms", timeout: "200ms", rise: 2, fall: 2 },
    })],
  });
  const load = steadyLoad(() => cluster.agents.map((agent) => agent.port), names);
  const triedVictim = () =>
    cluster.agents.reduce(
      (n, agent) =>
        n +
        agent.proc.logs.filter((l) => l.message.includes("failed") && l.properties.backend === victim.address)
          .length,
      0,
    );
  try {
    await agentsJoined(cluster, 2);
    await sleep(1_500);
    const servedBefore = victim.accepted();
    await victim.kill();
    const killedAt = performance.now();
    await eventually(
      async () =>
        (await cluster.api<ServicesView>("/v1/services")).services[0]!.backends.find((b) =>
          b.address === victim.address
        )?.health === "down",
      5_000,
      "the killed backend to be down",
    );
    const downAfter = performance.now() - killedAt;
    await eventually(() => converged(cluster, 2), 5_000, "the agents to serve the state without it");
    await sleep(300);
    const triedBefore = triedVictim();
    const caughtUpAt = performance.now();
    await sleep(2_000);
    const records = await load.stop();
    const all = summarize(records);
    const afterKill = records.filter((r) => r.start > killedAt);
    console.log(
      `load ${all.text}; the killed backend had served ${servedBefore}, was down ${
        downAfter.toFixed(0)
      } ms after the kill; ${triedBefore} connects to it were retried on another backend; ${afterKill.length} connections after the kill, by backend ${
        JSON.stringify(Object.fromEntries(all.byLine))
      }`,
    );
    // A connection the victim's kernel had accepted but its process had not yet taken when it stopped
    // listening is reset by that kernel after the connect succeeded: no proxy can save it (HAProxy and nginx
    // retry only failed connects). Those, and only those, may fail.
    const inVictimQueue = (r: LoadRecord) =>
      r.start <= killedAt && cluster.agents.some((agent) => servedVia(agent.proc, r) === victim.address);
    assert.ok(
      records.some((r) => r.ok && inVictimQueue(r)),
      "no connection served by the victim before the kill was found by its served-by line",
    );
    const failures = all.failures.filter((r) => !inVictimQueue(r));
    assert.equal(
      failures.length,
      0,
      `failed connections:\n${describeFailures(failures, records[0]?.start ?? 0)}`,
    );
    assert.ok(servedBefore > 20, `the victim served only ${servedBefore} before it was killed`);
    assert.ok(
      triedBefore > 0,
      "no connect to the killed backend was retried: the test did not exercise retries",
    );
    assert.equal(
      triedVictim(),
      triedBefore,
      "an agent still tried the killed backend after it was marked down",
    );
    assert.ok(records.filter((r) => r.start > caughtUpAt).length > 150, "too little load after the fault");
  } finally {
    await load.stop();
    await cluster.close();
    await Promise.all(backends.map((b) => b.close()));
  }
});

Deno.test("SIGHUP reloads under load: bad configs are rejected with their reasons and change nothing; good ones add a backend that gets traffic and remove one whose open connections carry on", async () => {
  const b1 = startGreeter("b1", { hold: true });
  const b2 = startGreeter("b2", { hold: true });
  const names = new Set(["b1", "b2"]);
  const cluster = await startTestCluster({
    agents: 2,
    services: [service([b1.address], { decide: "manager" })],
  });
  const config = `${cluster.dir}/switchyard.yaml`;
  const load = startLoad({
    targets: () => cluster.agents.map((agent) => agent.port),
    concurrency: 4,
    ratePerSecond: 100,
    maxSeconds: 25,
    expect: (line) => names.has(line),
  });
  const yaml = (services: Record<string, unknown>[], manager: Record<string, unknown> = {}) =>
    testConfig({ services, manager });
  const bad: Array<{ kind: string; text: string; reason: RegExp }> = [
    {
      kind: "YAML syntax",
      text: "manager:\n  admin: [127.0.0.1:0\nservices: {",
      reason: /switchyard\.yaml:\d+:\d+/,
    },
    {
      kind: "unknown key and a bad backend",
      text: yaml([{ ...service([b1.address, "127.0.0.1:99999"]), backendz: [] }]),
      reason: /switchyard\.yaml:\d+:\d+: services\[0\]/,
    },
    {
      kind: "duplicate service",
      text: yaml([service([b1.address]), { ...service([b2.address]), listen: "127.0.0.1:1" }]),
      reason: /switchyard\.yaml:\d+:\d+:.*(duplicate|twice|already)/i,
    },
    {
      kind: "missing variable",
      text: yaml([service([b1.address])], {
        tokens: { admin: "${SWITCHYARD_FAULTS_TEST_UNSET}" },
      }),
      reason: /SWITCHYARD_FAULTS_TEST_UNSET/,
    },
  ];
  const stable = async () => stableView(await cluster.api<ServicesView>("/v1/services"));
  try {
    await agentsJoined(cluster, 2);
    await eventually(() => converged(cluster, 2), 5_000, "the agents to serve the first state");
    const before = await stable();
    const versionBefore = (await cluster.api<ServicesView>("/v1/services")).version;
    for (const [index, { kind, text, reason }] of bad.entries()) {
      await Deno.writeTextFile(config, text);
      cluster.manager.kill("SIGHUP");
      const rejected = (l: LogLine) => l.message.startsWith("Rejected the new config");
      await cluster.manager.waitForLog(() => cluster.manager.logs.filter(rejected).length > index);
      const line = cluster.manager.logs.filter(rejected)[index]!;
      const problems = line.properties.problems as string[];
      assert.ok(Array.isArray(problems) && problems.length > 0, `${kind}: no problems logged`);
      assert.ok(problems.some((p) => reason.test(p)), `${kind}: problems ${JSON.stringify(problems)}`);
      assert.deepEqual(await stable(), before, `${kind}: GET /v1/services changed`);
      const agents = (await cluster.api<AgentsView>("/v1/agents")).agents;
      assert.deepEqual(agents.map((a) => a.state_version), [versionBefore, versionBefore], kind);
      console.log(`rejected ${kind}: ${problems.join(" | ")}`);
      await sleep(400);
    }
    assert.ok(!cluster.manager.logs.some((l) => l.message.startsWith("Reloaded")), "a bad config was loaded");
    const b2Before = b2.accepted();
    const loadBeforeGood = load.records.length;

    await Deno.writeTextFile(config, yaml([service([b1.address, b2.address], { decide: "manager" })]));
    cluster.manager.kill("SIGHUP");
    await cluster.manager.waitForLog((l) => l.message.startsWith("Reloaded the config"));
    const reloadedAt = performance.now();
    await eventually(() => converged(cluster, 2), 5_000, "the agents to serve the reloaded state");
    const view = await cluster.api<ServicesView>("/v1/services");
    assert.ok(view.version > versionBefore);
    assert.deepEqual(view.services[0]!.backends.map((b) => b.address), [b1.address, b2.address]);
    await eventually(() => b2.accepted() > 50, 5_000, "the added backend to get traffic");
    const b2Got = b2.accepted() - b2Before;
    const addedAfter = performance.now() - reloadedAt;

    // Another good reload takes b1 out: connections open to it carry on, new ones go to b2 alone.
    const held: HeldConnection[] = [];
    for (const agent of cluster.agents) {
      for (let i = 0; held.filter((c) => c.port === agent.port).length < 5 && i < 100; i++) {
        const conn = await holdConnection(agent.port);
        if (conn.line === "b1") held.push(conn);
        else conn.close();
      }
    }
    await Deno.writeTextFile(config, yaml([service([b2.address], { decide: "manager" })]));
    cluster.manager.kill("SIGHUP");
    await cluster.manager.waitForLog(() =>
      cluster.manager.logs.filter((m) => m.message.startsWith("Reloaded the config")).length === 2
    );
    await eventually(() => converged(cluster, 2), 5_000, "the agents to serve the state without b1");
    await sleep(200);
    const b1AtRemoval = b1.accepted();
    await sleep(1_000);
    const b1After = b1.accepted() - b1AtRemoval;
    let heldAlive = 0;
    for (const conn of held) if (await conn.echo("still b1\n")) heldAlive++;
    for (const conn of held) conn.close();
    const records = await load.stop();
    const all = summarize(records);
    console.log(
      `load ${all.text}; ${loadBeforeGood} connections during the ${bad.length} rejected reloads; the added backend got ${b2Got} connections within ${
        addedAfter.toFixed(0)
      } ms of the good reload; after b1 was removed it got ${b1After} new ones, and ${heldAlive} of ${held.length} connections held to it carried on`,
    );
    assert.equal(held.length, 10);
    assert.equal(heldAlive, held.length, "a connection open to the removed backend was cut");
    assert.equal(b1After, 0, "the removed backend still got new connections");
    assert.equal(b2Before, 0, "b2 got traffic before it was configured");
    assert.equal(
      all.failed,
      0,
      `failed connections:\n${describeFailures(all.failures, records[0]?.start ?? 0)}`,
    );
  } finally {
    await load.stop();
    await cluster.close();
    await Promise.all([b1.close(), b2.close()]);
  }
});
