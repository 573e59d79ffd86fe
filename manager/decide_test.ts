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
      const { backend } = decider.decide("edge-1", "web", `10.1.0.${i % 250}`);
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
    const picks = Array.from({ length: 20 }, () => decider.decide("edge-2", "web", "10.1.0.1").backend);
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
    decider.decide("edge-1", "web", "10.1.0.1");
    decider.decide("edge-1", "web", "10.1.0.2");
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
    const first = decider.decide("edge-1", "web", "10.9.9.9", clock.now);
    for (let i = 0; i < 20; i++) {
      assert.equal(decider.decide(`edge-${i % 3}`, "web", "10.9.9.9", 5_000).backend, first.backend);
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
    const decision = decider.decide("edge-1", "web", "10.1.0.1");
    assert.equal(decision.backend, null);
    assert.match(decision.reason, /no backend is up/);
    assert.equal(decider.decide("edge-1", "nope", "10.1.0.1").backend, null);
  } finally {
    model.close();
  }
});
