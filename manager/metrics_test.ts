import assert from "node:assert/strict";
import { resolvedConfig } from "../tests/_config.ts";
import { METRICS_CONTENT_TYPE } from "../cluster/prometheus.ts";
import { parseMetrics } from "../tests/_prometheus.ts";
import { testAdminApp } from "./_test_admin_app.ts";
import { type Config } from "./config.ts";
import { Decider } from "./decide.ts";
import { ClusterModel } from "./state.ts";

const ADMIN = "admin-token-0123456789";
const WEB_APP = "web-app-token-0123456789";
const A = "10.0.0.11:80";
const B = "10.0.0.12:80";

function configOf(): Config {
  return resolvedConfig({
    manager: { tokens: { admin: ADMIN, feedback: [{ token: WEB_APP, services: ["web"] }] } },
    services: [{
      name: "web",
      listen: "0.0.0.0:8080",
      backends: [{ address: A, weight: 100 }, { address: B, weight: 50 }],
      slow_start: "10s",
    }],
  });
}

function harness() {
  const clock = { now: 0 };
  const model = new ClusterModel(configOf(), { seed: 7, now: () => clock.now });
  const decider = new Decider(model);
  const app = testAdminApp(model, ADMIN, decider);
  const get = (path: string, token: string | null = ADMIN) =>
    Promise.resolve(
      app.request(path, { headers: token === null ? {} : { authorization: `Bearer ${token}` } }),
    );
  return { model, clock, decider, app, get, [Symbol.dispose]: () => model.close() };
}

Deno.test("GET /metrics needs the admin token: 401 without, 403 with a feedback token", async () => {
  using h = harness();
  const none = await h.get("/metrics", null);
  assert.equal(none.status, 401);
  await none.body?.cancel();
  const feedback = await h.get("/metrics", WEB_APP);
  assert.equal(feedback.status, 403);
  await feedback.body?.cancel();
  const admin = await h.get("/metrics");
  assert.equal(admin.status, 200);
  assert.equal(admin.headers.get("content-type"), METRICS_CONTENT_TYPE);
  await admin.body?.cancel();
});

Deno.test("the manager's /metrics counts decisions in the histogram and shows weights, states and feedback age", async () => {
  using h = harness();
  for (let i = 0; i < 7; i++) h.decider.decide("agent-1", { service: "web", clientIp: `10.1.0.${i}` });
  h.decider.decide("agent-1", { service: "nosuch", clientIp: "10.1.0.1" });
  h.model.applyFeedback([{ service: "web", backend: B, weight: 40 }]);
  h.model.setOperatorState("web", A, "drain");
  h.model.flushTables();
  h.clock.now = 2_500;
  const response = await h.get("/metrics");
  const text = await response.text();
  const all = parseMetrics(text);
  const value = (name: string, labels: Record<string, string> = {}) => {
    const found = all.filter((s) =>
      s.name === name && Object.entries(labels).every(([key, v]) => s.labels[key] === v)
    );
    assert.equal(found.length, 1, `one ${name} ${JSON.stringify(labels)} in:\n${text}`);
    return found[0]!.value;
  };
  assert.equal(value("switchyard_decision_seconds_count", { service: "web" }), 7);
  assert.equal(value("switchyard_decision_seconds_bucket", { service: "web", le: "+Inf" }), 7);
  assert.ok(value("switchyard_decision_seconds_sum", { service: "web" }) > 0);
  assert.ok(!text.includes('service="nosuch"'), "no series for a service that is not configured");
  const decided = all.filter((s) => s.name === "switchyard_decisions_total");
  assert.equal(decided.reduce((sum, s) => sum + s.value, 0), 7);
  assert.equal(value("switchyard_backend_weight", { backend: B }), 50);
  assert.equal(value("switchyard_backend_effective_weight", { backend: B }), 20);
  assert.equal(value("switchyard_backend_effective_weight", { backend: A }), 0);
  assert.equal(value("switchyard_backend_state", { backend: A, state: "drain" }), 1);
  assert.equal(value("switchyard_backend_state", { backend: A, state: "up" }), 0);
  assert.equal(value("switchyard_feedback_age_seconds", { backend: B }), 2.5);
  assert.equal(
    all.filter((s) => s.name === "switchyard_feedback_age_seconds").length,
    1,
    "A has no feedback",
  );
  assert.equal(value("switchyard_feedback_reports_total", { service: "web" }), 1);
  assert.equal(value("switchyard_agents_live"), 0);
  assert.ok(value("switchyard_table_slots_moved_total", { service: "web" }) > 0, "the drain moved slots");
  assert.equal(value("switchyard_state_version"), h.model.version);
});

Deno.test("the manager's /metrics shows how far into its slow start each backend is", async () => {
  using h = harness();
  h.model.setOperatorState("web", B, "drain");
  h.model.setOperatorState("web", B, "up");
  h.clock.now = 2_500;
  const all = parseMetrics(await (await h.get("/metrics")).text());
  const ratio = (backend: string) =>
    all.find((s) => s.name === "switchyard_backend_slow_start_ratio" && s.labels.backend === backend)?.text;
  assert.equal(ratio(A), "1");
  assert.equal(ratio(B), "0.01", "the share in force until the model's timer takes the next step");
  assert.equal(
    all.find((s) => s.name === "switchyard_backend_effective_weight" && s.labels.backend === B)?.text,
    "0.5",
  );
});
