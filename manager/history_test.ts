import assert from "node:assert/strict";
import { resolvedConfig } from "../tests/_config.ts";
import { check, fc } from "../tests/_property.ts";
import { testAdminApp } from "./_test_admin_app.ts";
import { type AgentSample, type BackendSample, History, sampleOf } from "./history.ts";
import { ClusterModel } from "./state.ts";

const A = "10.0.0.11:80";
const B = "10.0.0.12:80";

function backend(address: string, started: number, open = 0, weight = 100): BackendSample {
  return { service: "web", backend: address, started, open, weight };
}

function agent(id: string, served: number, handedOff = 0, decided = 0): AgentSample {
  return { id, served, handedOff, decided };
}

Deno.test("a backend's new connections per second are its counter's rise between samples, beside its open count and weight", () => {
  const history = new History();
  history.record(1_000, { backends: [backend(A, 10, 2, 1), backend(B, 0, 0, 100)], agents: [] });
  history.record(6_000, { backends: [backend(A, 60, 4, 50), backend(B, 5, 1, 100)], agents: [] });
  history.record(11_000, { backends: [backend(A, 61, 3, 100), backend(B, 5, 0, 100)], agents: [] });
  assert.deepEqual(history.view(), {
    interval_s: 5,
    window_s: 900,
    times: [1_000, 6_000, 11_000],
    services: [{
      name: "web",
      backends: [
        {
          address: A,
          connections_per_s: [null, 10, 0.2],
          open_connections: [2, 4, 3],
          effective_weight: [1, 50, 100],
        },
        {
          address: B,
          connections_per_s: [null, 1, 0],
          open_connections: [0, 1, 0],
          effective_weight: [100, 100, 100],
        },
      ],
    }],
    agents: [],
  });
});

Deno.test("an agent's decisions, handoffs and served connections per second; a counter that fell counts from 0", () => {
  const history = new History({ intervalMs: 1_000 });
  history.record(0, { backends: [], agents: [agent("edge-1", 100, 10, 90)] });
  history.record(2_000, { backends: [], agents: [agent("edge-1", 140, 30, 120), agent("edge-2", 5)] });
  // edge-1 restarted: its counters start again from 0.
  history.record(4_000, { backends: [], agents: [agent("edge-1", 8, 2, 6), agent("edge-2", 9)] });
  assert.deepEqual(history.view().agents, [
    {
      id: "edge-1",
      decisions_per_s: [null, 15, 3],
      handoffs_per_s: [null, 10, 1],
      served_per_s: [null, 20, 4],
    },
    {
      id: "edge-2",
      decisions_per_s: [null, null, 0],
      handoffs_per_s: [null, null, 0],
      served_per_s: [null, null, 2],
    },
  ]);
});

Deno.test("the ring keeps the last window's samples; a series missing from a sample is null there, and gone once out of the window", () => {
  const history = new History({ intervalMs: 5_000, windowMs: 20_000 });
  assert.equal(history.capacity, 4);
  const at = (i: number) => i * 5_000;
  history.record(at(0), { backends: [backend(A, 0), backend(B, 0)], agents: [agent("edge-1", 0)] });
  history.record(at(1), { backends: [backend(A, 5)], agents: [] });
  history.record(at(2), { backends: [backend(A, 10), backend(B, 10)], agents: [] });
  let view = history.view();
  assert.deepEqual(view.times, [at(0), at(1), at(2)]);
  assert.deepEqual(view.services[0]?.backends[1], {
    address: B,
    // Back after a gap: no rate until it has been in two samples in a row.
    connections_per_s: [null, null, null],
    open_connections: [0, null, 0],
    effective_weight: [100, null, 100],
  });
  assert.deepEqual(view.agents.map((a) => a.served_per_s), [[null, null, null]]);
  for (let i = 3; i <= 5; i++) history.record(at(i), { backends: [backend(A, 5 * i)], agents: [] });
  view = history.view();
  assert.deepEqual(view.times, [at(2), at(3), at(4), at(5)]);
  assert.deepEqual(view.services[0]?.backends.map((b) => b.address), [A, B]);
  assert.deepEqual(view.services[0]?.backends[0]?.connections_per_s, [1, 1, 1, 1]);
  assert.deepEqual(view.agents, [], "an agent with no value left in the window is dropped");
  history.record(at(6), { backends: [backend(A, 30)], agents: [] });
  assert.deepEqual(history.view().services[0]?.backends.map((b) => b.address), [A]);
});

Deno.test("property: whatever comes and goes, the history holds at most a window of samples, aligned, finite and never negative", () => {
  const entry = fc.record({
    present: fc.boolean(),
    counter: fc.nat({ max: 1_000_000 }),
    open: fc.nat({ max: 1_000 }),
    weight: fc.integer({ min: 0, max: 1_000_000 }).map((n) => n / 100),
  });
  const names = ["a", "b", "c"];
  check(
    fc.property(
      fc.array(
        fc.record({
          gap: fc.integer({ min: 0, max: 20_000 }),
          entries: fc.array(entry, { minLength: 3, maxLength: 3 }),
        }),
        {
          maxLength: 40,
        },
      ),
      (samples) => {
        const history = new History({ intervalMs: 5_000, windowMs: 30_000 });
        let at = 0;
        const lastSeen = new Map<string, number>();
        samples.forEach(({ gap, entries }, i) => {
          at += gap;
          const present = entries.flatMap((e, j) => (e.present ? [{ ...e, name: names[j]! }] : []));
          for (const { name } of present) lastSeen.set(name, i);
          history.record(at, {
            backends: present.map((e) => backend(e.name, e.counter, e.open, e.weight)),
            agents: present.map((e) => agent(e.name, e.counter, e.counter, e.counter)),
          });
        });
        const view = history.view();
        const length = Math.min(samples.length, history.capacity);
        assert.equal(view.times.length, length);
        const inWindow = [...lastSeen].filter(([, i]) => i >= samples.length - history.capacity).map(([n]) =>
          n
        );
        assert.deepEqual(view.agents.map((a) => a.id).sort(), inWindow.sort());
        const all = [
          ...view.services.flatMap((s) =>
            s.backends.flatMap((b) => [b.connections_per_s, b.open_connections, b.effective_weight])
          ),
          ...view.agents.flatMap((a) => [a.decisions_per_s, a.handoffs_per_s, a.served_per_s]),
        ];
        for (const points of all) {
          assert.equal(points.length, length);
          for (const value of points) {
            assert.ok(value === null || (Number.isFinite(value) && value >= 0), `${value}`);
          }
        }
      },
    ),
    300,
  );
});

Deno.test("GET /v1/history answers the admin alone, with what the manager sampled of its model", async () => {
  const config = resolvedConfig({
    manager: {
      tokens: {
        admin: "admin-token-0123456789",
        feedback: [{ token: "web-app-token-0123456789", services: ["web"] }],
      },
    },
    services: [{ name: "web", listen: "0.0.0.0:8080", backends: [A, B] }],
  });
  const model = new ClusterModel(config, { seed: 7 });
  const history = new History();
  const app = testAdminApp(model, "admin-token-0123456789", undefined, undefined, history);
  const get = (token: string) =>
    Promise.resolve(app.request("/v1/history", { headers: { authorization: `Bearer ${token}` } }));
  try {
    history.record(1_000, sampleOf(model.services(), []));
    model.reportStarted([{ service: "web", backend: A, count: 25 }]);
    model.reportOpen("edge-1", [{ service: "web", backend: A, open: 3 }]);
    model.applyFeedback([{ service: "web", backend: B, weight: 40 }]);
    history.record(6_000, sampleOf(model.services(), []));
    const refused = await get("web-app-token-0123456789");
    assert.equal(refused.status, 403);
    await refused.body?.cancel();
    const response = await get("admin-token-0123456789");
    assert.equal(response.status, 200);
    const view = await response.json();
    assert.deepEqual(view.times, [1_000, 6_000]);
    assert.deepEqual(view.services, [{
      name: "web",
      backends: [
        { address: A, connections_per_s: [null, 5], open_connections: [0, 3], effective_weight: [100, 100] },
        { address: B, connections_per_s: [null, 0], open_connections: [0, 0], effective_weight: [100, 40] },
      ],
    }]);
  } finally {
    model.close();
  }
});
