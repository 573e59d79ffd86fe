import assert from "node:assert/strict";
import { type Config, parseConfig } from "./config.ts";
import { Decider } from "./decide.ts";
import { ClusterModel } from "./state.ts";

const A = "10.0.0.11:80";
const B = "10.0.0.12:80";

function setup(service: Record<string, unknown> = {}) {
  const result = parseConfig(JSON.stringify({
    manager: { tokens: { cluster: "cluster-secret" } },
    services: [{
      name: "web",
      listen: "0.0.0.0:80",
      decide: "manager",
      backends: [{ address: A, weight: 300 }, { address: B, weight: 100 }],
      ...service,
    }],
  }));
  assert.deepEqual(result.problems, []);
  const clock = { now: 0 };
  const model = new ClusterModel(result.config as Config, { seed: 1, now: () => clock.now });
  return { model, decider: new Decider(model), clock };
}

Deno.test("short-lived connections are decided in proportion to effective weight", () => {
  const { model, decider } = setup();
  try {
    const counts = new Map<string, number>();
    for (let i = 0; i < 4000; i++) {
      const { backend } = decider.decide("edge-1", { service: "web", clientIp: `10.1.0.${i % 250}` });
      counts.set(String(backend), (counts.get(String(backend)) ?? 0) + 1);
      // Every connection has already closed when the agent next reports.
      if (i % 10 === 9) decider.reportOpen("edge-1", []);
    }
    assert.equal(counts.get(A), 3000);
    assert.equal(counts.get(B), 1000);
  } finally {
    model.close();
  }
});

Deno.test("a backend holding many open connections gets fewer new ones", () => {
  const { model, decider } = setup({ backends: [A, B] });
  try {
    decider.reportOpen("edge-1", [{ service: "web", backend: A, open: 50 }]);
    // B's load (open + recently started) stays below A's 50 open for the next 20 decisions.
    const picks = Array.from(
      { length: 20 },
      () => decider.decide("edge-2", { service: "web", clientIp: "10.1.0.1" }).backend,
    );
    assert.deepEqual(picks.filter((b) => b === A), []);
    const explained = decider.preview("web", "10.1.0.1");
    assert.match(explained.reason, /weighted least connections/);
  } finally {
    model.close();
  }
});

Deno.test("open counts are reports plus decisions since, and a report replaces an agent's decisions", () => {
  const { model, decider } = setup({ backends: [A, B] });
  try {
    const service = model.service("web")!;
    const [a, b] = service.backends as [typeof service.backends[0], typeof service.backends[0]];
    decider.decide("edge-1", { service: "web", clientIp: "10.1.0.1" });
    decider.decide("edge-1", { service: "web", clientIp: "10.1.0.2" });
    assert.equal(decider.openCount(service, a) + decider.openCount(service, b), 2);
    decider.reportOpen("edge-1", [{ service: "web", backend: A, open: 1 }]);
    assert.equal(decider.openCount(service, a), 1);
    assert.equal(decider.openCount(service, b), 0);
    decider.forgetAgent("edge-1");
    model.forgetAgent("edge-1");
    assert.equal(decider.openCount(service, a), 0);
  } finally {
    model.close();
  }
});

Deno.test("client_ip affinity returns the same backend within the ttl, and re-decides after it", () => {
  const { model, decider, clock } = setup({ backends: [A, B], affinity: { key: "client_ip", ttl: "10s" } });
  try {
    const first = decider.decide("edge-1", { service: "web", clientIp: "10.9.9.9" }, clock.now);
    for (let i = 0; i < 20; i++) {
      assert.equal(
        decider.decide(`edge-${i % 3}`, { service: "web", clientIp: "10.9.9.9" }, 5_000).backend,
        first.backend,
      );
    }
    assert.match(decider.preview("web", "10.9.9.9", 5_000).reason, /client affinity/);
    assert.doesNotMatch(decider.preview("web", "10.9.9.9", 10_001).reason, /client affinity/);
  } finally {
    model.close();
  }
});

Deno.test("no backend up means no decision, with the reason", () => {
  const { model, decider } = setup({ backends: [{ address: A, weight: 0 }] });
  try {
    const decision = decider.decide("edge-1", { service: "web", clientIp: "10.1.0.1" });
    assert.equal(decision.backend, null);
    assert.match(decision.reason, /no backend is up/);
    assert.equal(decider.decide("edge-1", { service: "nope", clientIp: "10.1.0.1" }).backend, null);
  } finally {
    model.close();
  }
});

/**
 * A simulated cluster deciding ahead: `agents` claimants each take new connections from their queue
 * (asking when it is empty), report what they used and, now and then, their exact open counts, as real
 * agents do; connections last `lifetime(backend)` steps. The clock moves 1 ms a step.
 */
function simulate(
  decider: Decider,
  clock: { now: number },
  options: {
    agents: number;
    steps: number;
    perStep: number;
    lifetime: (backend: string) => number;
    onStep?: (step: number) => void;
  },
) {
  const open = new Map<string, Array<{ backend: string; ends: number }>>();
  const queues = new Map<string, { seq: number; backends: readonly string[]; used: number }>();
  const formers = new Map<string, { seq: number; backends: readonly string[]; used: number }>();
  const started = new Map<string, number>();
  const counts = (agent: string) => {
    const byBackend = new Map<string, number>();
    for (const conn of open.get(agent) ?? []) {
      byBackend.set(conn.backend, (byBackend.get(conn.backend) ?? 0) + 1);
    }
    return [...byBackend].map(([backend, n]) => ({ service: "web", backend, open: n }));
  };
  for (let step = 0; step < options.steps; step++) {
    clock.now = step;
    options.onStep?.(step);
    for (let a = 0; a < options.agents; a++) {
      const agent = `edge-${a}`;
      const conns = (open.get(agent) ?? []).filter((conn) => conn.ends > step);
      open.set(agent, conns);
      for (let n = 0; n < options.perStep; n++) {
        const queue = queues.get(agent);
        let backend: string | null;
        if (queue && queue.used < queue.backends.length) backend = queue.backends[queue.used++]!;
        else {
          backend = decider.decide(agent, { service: "web", clientIp: "10.9.0.1" }, step).backend;
          const refilled = decider.refill(agent, { service: "web" }, step);
          if (refilled) {
            // The queue replaced: its last uses are told after the next one came, as a real agent does.
            if (queue) formers.set(agent, queue);
            queues.set(agent, { seq: refilled.seq, backends: refilled.backends, used: 0 });
          }
        }
        if (backend === null) continue;
        conns.push({ backend, ends: step + options.lifetime(backend) });
        started.set(backend, (started.get(backend) ?? 0) + 1);
      }
      const former = formers.get(agent);
      if (former) decider.used(agent, { service: "web", seq: former.seq, used: former.used }, step);
      formers.delete(agent);
      const queue = queues.get(agent);
      if (queue && queue.used > 0) {
        decider.used(agent, { service: "web", seq: queue.seq, used: queue.used }, step);
        const refilled = decider.refill(agent, { service: "web" }, step);
        if (refilled) queues.set(agent, { seq: refilled.seq, backends: refilled.backends, used: 0 });
      }
      if (step % 25 === 0) decider.reportOpen(agent, counts(agent));
    }
  }
  return { started, queues, open };
}

Deno.test("decided ahead by three agents, short connections split by weight 3:1 within a point", () => {
  const { model, decider, clock } = setup();
  try {
    const { started } = simulate(decider, clock, { agents: 3, steps: 2_000, perStep: 2, lifetime: () => 3 });
    const total = (started.get(A) ?? 0) + (started.get(B) ?? 0);
    assert.equal(total, 12_000);
    const share = (started.get(A) ?? 0) / total;
    assert.ok(Math.abs(share - 0.75) <= 0.01, `A got ${(share * 100).toFixed(2)}%`);
    const counts = decider.ahead.counts().get("web")!;
    assert.ok(counts.used > 10 * counts.asked, `${counts.used} used, ${counts.asked} asked`);
    // Every flow counts once among the flows decided by backend: asked about, or taken from a queue (its use
    // told even after the queue was replaced: an agent that empties its queue asks, and the refill replaces
    // it before the agent tells its last uses).
    assert.deepEqual(Object.fromEntries(decider.counts.get("web")!), Object.fromEntries(started));
    assert.equal(counts.used + counts.asked, 12_000);
  } finally {
    model.close();
  }
});

Deno.test("decided ahead, a backend whose connections are held long gets far fewer new ones", () => {
  const C = "10.0.0.13:80";
  const { model, decider, clock } = setup({ backends: [A, B, C] });
  try {
    // A's connections last the whole run; the others' 2 ms.
    const { started } = simulate(decider, clock, {
      agents: 2,
      steps: 1_500,
      perStep: 1,
      lifetime: (backend) => backend === A ? 1_000_000 : 2,
    });
    const total = [A, B, C].reduce((sum, backend) => sum + (started.get(backend) ?? 0), 0);
    assert.equal(total, 3_000);
    assert.ok((started.get(A) ?? 0) < total / 6, `A got ${started.get(A)} of ${total}`);
  } finally {
    model.close();
  }
});

Deno.test("decided ahead, a drained backend is in no queue made after the drain", () => {
  const { model, decider, clock } = setup({ backends: [A, B] });
  try {
    let drainedAt = -1;
    const { queues } = simulate(decider, clock, {
      agents: 2,
      steps: 400,
      perStep: 3,
      lifetime: () => 5,
      onStep: (step) => {
        if (step !== 200) return;
        model.setOperatorState("web", A, "drain");
        drainedAt = step;
        // What the cluster server does on the publication of the change.
        decider.ahead.invalidate("web");
      },
    });
    assert.equal(drainedAt, 200);
    for (const [agent, queue] of queues) {
      assert.ok(!queue.backends.includes(A), `${agent}'s queue ${queue.seq}`);
    }
    assert.equal(decider.ahead.pending("web", A), 0);
  } finally {
    model.close();
  }
});
