import assert from "node:assert/strict";
import { testAdminApp } from "./_test_admin_app.ts";
import { type Config, parseConfig } from "./config.ts";
import { Decider } from "./decide.ts";
import { escapeLabelValue, Exposition, formatNumber, Histogram, METRICS_CONTENT_TYPE } from "./metrics.ts";
import { ClusterModel } from "./state.ts";

const ADMIN = "admin-token-0123456789";
const WEB_APP = "web-app-token-0123456789";
const A = "10.0.0.11:80";
const B = "10.0.0.12:80";

/** Every sample line of a page: its name, its labels parsed back, its value. */
function samples(text: string) {
  const out: Array<{ name: string; labels: Record<string, string>; value: string }> = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(match, `not a sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    const pairs = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/g;
    let consumed = 0;
    for (const pair of (match[2] ?? "").matchAll(pairs)) {
      labels[pair[1] as string] = (pair[2] as string).replace(/\\(.)/g, (_, c) => c === "n" ? "\n" : c);
      consumed += pair[0].length;
    }
    assert.equal(consumed, (match[2] ?? "").length, `labels of ${line} parse completely`);
    out.push({ name: match[1] as string, labels, value: match[3] as string });
  }
  return out;
}

Deno.test("the exposition writes HELP and TYPE once per family, then its samples, one per line", () => {
  const text = new Exposition()
    .counter("demo_requests_total", "Requests served.", [[{ code: "200" }, 3], [{ code: "500" }, 1]])
    .gauge("demo_up", "1 while up.", 1)
    .text();
  assert.equal(
    text,
    [
      "# HELP demo_requests_total Requests served.",
      "# TYPE demo_requests_total counter",
      'demo_requests_total{code="200"} 3',
      'demo_requests_total{code="500"} 1',
      "# HELP demo_up 1 while up.",
      "# TYPE demo_up gauge",
      "demo_up 1",
      "",
    ].join("\n"),
  );
});

Deno.test("label values escape backslash, double quote and newline; HELP escapes backslash and newline", () => {
  const nasty = 'a\\b"c\nd';
  assert.equal(escapeLabelValue(nasty), 'a\\\\b\\"c\\nd');
  const text = new Exposition().gauge("demo_info", 'Says "hi"\\n and\nmore.', [[{ v: nasty }, 1]]).text();
  assert.equal(text.split("\n")[0], '# HELP demo_info Says "hi"\\\\n and\\nmore.');
  assert.equal(text.split("\n")[2], 'demo_info{v="a\\\\b\\"c\\nd"} 1');
  assert.deepEqual(samples(text)[0]?.labels, { v: nasty }, "the escaped value reads back as written");
});

Deno.test('a histogram writes cumulative buckets ending at le="+Inf", then _sum and _count', () => {
  const histogram = new Histogram([0.001, 0.01, 0.1]);
  for (const value of [0.0005, 0.001, 0.002, 0.05, 0.05, 3]) histogram.observe(value);
  const text = new Exposition().histogram("demo_seconds", "Time.", [[{ service: "web" }, histogram]]).text();
  assert.equal(
    text,
    [
      "# HELP demo_seconds Time.",
      "# TYPE demo_seconds histogram",
      'demo_seconds_bucket{service="web",le="0.001"} 2',
      'demo_seconds_bucket{service="web",le="0.01"} 3',
      'demo_seconds_bucket{service="web",le="0.1"} 5',
      'demo_seconds_bucket{service="web",le="+Inf"} 6',
      'demo_seconds_sum{service="web"} 3.1035',
      'demo_seconds_count{service="web"} 6',
      "",
    ].join("\n"),
  );
});

Deno.test("numbers are written as Prometheus reads them: NaN, +Inf, -Inf, exponents", () => {
  assert.equal(formatNumber(NaN), "NaN");
  assert.equal(formatNumber(Infinity), "+Inf");
  assert.equal(formatNumber(-Infinity), "-Inf");
  assert.equal(formatNumber(0.00001), "0.00001");
  assert.equal(formatNumber(1e-7), "1e-7");
  assert.equal(formatNumber(42), "42");
});

Deno.test("the exposition refuses bad names, reserved labels, counters without _total and a family twice", () => {
  assert.throws(() => new Exposition().gauge("2bad", "x", 1), TypeError);
  assert.throws(() => new Exposition().gauge("ok", "x", [[{ "bad-label": "v" }, 1]]), TypeError);
  assert.throws(() => new Exposition().gauge("ok", "x", [[{ __name: "v" }, 1]]), TypeError);
  assert.throws(() => new Exposition().counter("demo_requests", "x", 1), /ends in _total/);
  assert.throws(() => new Exposition().gauge("demo", "x", 1).gauge("demo", "x", 2), /twice/);
  assert.throws(
    () => new Exposition().histogram("demo_seconds", "x", [[{ le: "1" }, new Histogram([1])]]),
    /reserved/,
  );
  assert.throws(() => new Histogram([0.1, 0.1]), RangeError);
  assert.throws(() => new Histogram([1, Infinity]), RangeError);
});

function configOf(): Config {
  const result = parseConfig(JSON.stringify({
    manager: {
      tokens: {
        admin: ADMIN,
        cluster: "cluster-token-0123456789",
        feedback: [{ token: WEB_APP, services: ["web"] }],
      },
    },
    services: [{
      name: "web",
      listen: "0.0.0.0:8080",
      backends: [{ address: A, weight: 100 }, { address: B, weight: 50 }],
      slow_start: "10s",
    }],
  }));
  assert.deepEqual(result.problems, []);
  return result.config as Config;
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
  for (let i = 0; i < 7; i++) h.decider.decide("agent-1", "web", `10.1.0.${i}`);
  h.decider.decide("agent-1", "nosuch", "10.1.0.1");
  h.model.applyFeedback([{ service: "web", backend: B, weight: 40 }]);
  h.model.setOperatorState("web", A, "drain");
  h.model.flushTables();
  h.clock.now = 2_500;
  const response = await h.get("/metrics");
  const text = await response.text();
  const all = samples(text);
  const value = (name: string, labels: Record<string, string> = {}) => {
    const found = all.filter((s) =>
      s.name === name && Object.entries(labels).every(([key, v]) => s.labels[key] === v)
    );
    assert.equal(found.length, 1, `one ${name} ${JSON.stringify(labels)} in:\n${text}`);
    return Number(found[0]!.value);
  };
  assert.equal(value("switchyard_decision_seconds_count", { service: "web" }), 7);
  assert.equal(value("switchyard_decision_seconds_bucket", { service: "web", le: "+Inf" }), 7);
  assert.ok(value("switchyard_decision_seconds_sum", { service: "web" }) > 0);
  assert.ok(!text.includes('service="nosuch"'), "no series for a service that is not configured");
  const decided = all.filter((s) => s.name === "switchyard_decisions_total");
  assert.equal(decided.reduce((sum, s) => sum + Number(s.value), 0), 7);
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
  const all = samples(await (await h.get("/metrics")).text());
  const ratio = (backend: string) =>
    all.find((s) => s.name === "switchyard_backend_slow_start_ratio" && s.labels.backend === backend)?.value;
  assert.equal(ratio(A), "1");
  assert.equal(ratio(B), "0.01", "the share in force until the model's timer takes the next step");
  assert.equal(
    all.find((s) => s.name === "switchyard_backend_effective_weight" && s.labels.backend === B)?.value,
    "0.5",
  );
});
