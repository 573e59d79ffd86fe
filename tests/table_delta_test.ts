/**
 * Feedback reaching the agents' tables as deltas, end to end: a real manager and agent as processes, and a
 * manager played by this test (over the real cluster protocol) that makes an agent miss a delta.
 */
import assert from "node:assert/strict";
import { proof, randomNonce } from "../cluster/auth.ts";
import { Channel } from "../cluster/channel.ts";
import { buildTable } from "../cluster/maglev.ts";
import {
  type AgentMessage,
  type ClusterState,
  encodeFrame,
  encodeTable,
  type ManagerMessage,
  parseAgentMessage,
  PROTOCOL_VERSION,
  type ServiceSpec,
  type StateDelta,
} from "../cluster/protocol.ts";
import { movedSlots, serviceDelta } from "../cluster/state_delta.ts";
import { startGreeter } from "./_backends.ts";
import { connectAndReadLine, startTestCluster } from "./_cluster.ts";
import { testService, testServiceSpec } from "./_config.ts";
import { eventually, startAgentProcess } from "./_helpers.ts";

const SANITIZE = { sanitizeOps: true, sanitizeResources: true } as const;

async function tally(port: number, count: number): Promise<Map<string, number>> {
  const seen = new Map<string, number>();
  for (let i = 0; i < count; i++) {
    const conn = await connectAndReadLine(port);
    seen.set(conn.line, (seen.get(conn.line) ?? 0) + 1);
    await conn.close();
  }
  return seen;
}

Deno.test({
  name: "a report's weight reaches the agent's table within 200 ms, as a delta",
  ...SANITIZE,
  fn: async () => {
    const alpha = startGreeter("alpha");
    const beta = startGreeter("beta");
    const cluster = await startTestCluster({
      agents: 1,
      heartbeat: "1s",
      services: [testService({
        decide: "agent",
        handoff: "local",
        backends: [alpha.address, beta.address],
        health: null,
      })],
    });
    try {
      const port = cluster.agents[0]!.port;
      await eventually(async () => (await tally(port, 10)).size === 2, 10_000, "both backends serving");
      const waits: number[] = [];
      for (const [i, weights] of [[0, 100], [100, 0], [0, 100], [100, 0], [0, 100]].entries()) {
        const sent = performance.now();
        const answer = await cluster.api<{ version: number }>("/v1/feedback", {
          method: "POST",
          body: JSON.stringify([
            { service: "web", backend: alpha.address, weight: weights[0] },
            { service: "web", backend: beta.address, weight: weights[1] },
          ]),
        });
        // Until the agent acknowledges the version that carries the weights, as the manager sees it.
        for (;;) {
          const { agents } = await cluster.api<{ agents: Array<{ state_version: number }> }>("/v1/agents");
          if ((agents[0]?.state_version ?? -1) >= answer.version) break;
          assert.ok(performance.now() - sent < 5_000, `report ${i} never reached the agent`);
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
        waits.push(performance.now() - sent);
        const seen = await tally(port, 20);
        assert.deepEqual(
          [...seen.keys()],
          [weights[0] === 0 ? "beta" : "alpha"],
          `report ${i}: ${[...seen]}`,
        );
        const logs = cluster.agents[0]!.proc.logs;
        assert.ok(
          logs.some((l) =>
            l.message.startsWith("Serving state") && l.properties.version === answer.version &&
            l.message.includes("changed")
          ),
          `version ${answer.version} came as a delta`,
        );
      }
      waits.sort((a, b) => a - b);
      assert.ok(
        waits[2]! < 200,
        `a report reached the agent's table in ${waits.map(Math.round).join(", ")} ms`,
      );
    } finally {
      await cluster.close();
      await alpha.close();
      await beta.close();
    }
  },
});

/** This test as the manager: the handshake, then the states and deltas it chooses to send. */
class ScriptedManager {
  readonly #listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  #channel: Channel<AgentMessage, ManagerMessage> | null = null;
  readonly received: AgentMessage[] = [];
  #reading: Promise<void> = Promise.resolve();

  constructor(readonly token: string) {}

  get address(): string {
    return `127.0.0.1:${this.#listener.addr.port}`;
  }

  /** Takes the agent's connection and proves the token; the agent then waits for its state. */
  async accept(): Promise<void> {
    const conn = await this.#listener.accept();
    const channel = new Channel<AgentMessage, ManagerMessage>(conn, {
      parse: parseAgentMessage,
      encode: encodeFrame,
    });
    this.#channel = channel;
    const messages = channel.messages();
    const hello = (await messages.next()).value as Extract<AgentMessage, { type: "hello" }>;
    assert.equal(hello.version, PROTOCOL_VERSION);
    const managerNonce = randomNonce();
    const parts = { agentNonce: hello.nonce, managerNonce, agent: hello.agent };
    await channel.send({
      type: "challenge",
      version: PROTOCOL_VERSION,
      nonce: managerNonce,
      proof: await proof(this.token, { role: "manager", ...parts }),
    });
    assert.equal((await messages.next()).value?.type, "auth");
    await channel.send({ type: "welcome", heartbeatMs: 200 });
    this.#reading = (async () => {
      try {
        for await (const message of messages) {
          if (message.type === "heartbeat") channel.post({ type: "heartbeat" });
          else this.received.push(message);
        }
      } catch {
        // closed
      }
    })();
  }

  async send(message: ManagerMessage): Promise<void> {
    await this.#channel!.send(message);
  }

  async close(): Promise<void> {
    this.#channel?.close();
    this.#listener.close();
    await this.#reading;
  }
}

Deno.test({
  name: "an agent that misses a delta asks for the whole state, serves it, and takes deltas from it on",
  ...SANITIZE,
  fn: async () => {
    const backends = [startGreeter("alpha"), startGreeter("beta"), startGreeter("gamma")];
    const dir = await Deno.makeTempDir({ prefix: "switchyard-delta-" });
    const token = "delta-test-cluster-token-0123456789";
    await Deno.writeTextFile(`${dir}/cluster.token`, token);
    const manager = new ScriptedManager(token);
    const ids = backends.map((backend) => backend.address);
    const spec = (weights: number[]): ServiceSpec =>
      testServiceSpec({
        timeouts: { connectMs: 2_000, idleMs: 300_000, drainMs: 1_000 },
        maxConnections: 1_000,
        backends: backends.map((backend, i) => ({
          id: backend.address,
          host: "127.0.0.1",
          port: backend.port,
          weight: weights[i]!,
          state: "up",
        })),
        table: encodeTable(table(weights)),
      });
    const table = (weights: number[]) => buildTable(ids.map((id, i) => ({ id, weight: weights[i]! })));
    const state = (version: number, weights: number[]): ClusterState => ({
      version,
      epoch: "scripted",
      seed: 7,
      heartbeatMs: 200,
      services: [spec(weights)],
      agents: [{ id: "agent-1", mesh: null }],
      meshTls: null,
    });
    const delta = (base: number, before: number[], after: number[]): StateDelta => ({
      base,
      version: base + 1,
      epoch: "scripted",
      services: [serviceDelta("web", {
        after: table(after),
        moved: movedSlots(table(before), table(after)),
        backends: after.flatMap((weight, index) =>
          weight !== before[index] ? [{ index, weight, state: "up" }] : []
        ),
      })],
    });
    const acks = () =>
      manager.received.filter((m) => m.type === "ack").map((m) => m.type === "ack" && m.version);
    let agent: Awaited<ReturnType<typeof startAgentProcess>> | null = null;
    try {
      const accepted = manager.accept();
      const starting = startAgentProcess({
        manager: manager.address,
        tokenFile: `${dir}/cluster.token`,
        id: "agent-1",
        service: "web",
      });
      await accepted;
      await manager.send({ type: "state", state: state(1, [100, 0, 0]) });
      agent = await starting;
      await eventually(() => acks().includes(1), 5_000, "the ack of version 1");
      assert.deepEqual([...(await tally(agent.port, 10)).keys()], ["alpha"]);

      // Version 2 never reaches it: the delta from 2 to 3 does not apply to version 1.
      await manager.send({ type: "delta", delta: delta(2, [0, 100, 0], [0, 100, 0.001]) });
      await eventually(() => manager.received.some((m) => m.type === "resync"), 5_000, "a resync");
      assert.ok(!acks().includes(3), "a delta that does not apply is not acknowledged");
      assert.deepEqual([...(await tally(agent.port, 10)).keys()], ["alpha"], "it serves version 1 meanwhile");

      await manager.send({ type: "state", state: state(3, [0, 100, 0]) });
      await eventually(() => acks().includes(3), 5_000, "the ack of version 3");
      assert.deepEqual([...(await tally(agent.port, 10)).keys()], ["beta"]);

      // From the whole state on, deltas apply: gamma takes about 2 slots in 7 (sent as the slots moved).
      const next = delta(3, [0, 100, 0], [0, 100, 40]);
      assert.notEqual(next.services[0]!.slots, null);
      await manager.send({ type: "delta", delta: next });
      await eventually(() => acks().includes(4), 5_000, "the ack of version 4");
      const seen = await tally(agent.port, 60);
      assert.deepEqual([...seen.keys()].sort(), ["beta", "gamma"], `${[...seen]}`);
      assert.ok(seen.get("gamma")! >= 4 && seen.get("gamma")! <= 36, `${[...seen]}`);
      assert.equal(manager.received.filter((m) => m.type === "resync").length, 1);
    } finally {
      await agent?.proc.stop();
      await manager.close();
      for (const backend of backends) await backend.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
