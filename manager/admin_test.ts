import assert from "node:assert/strict";
import { resolvedConfig } from "../tests/_config.ts";
import { MAX_BODY_BYTES, MAX_FEEDBACK_BODY_BYTES } from "./admin.ts";
import { testAdminApp } from "./_test_admin_app.ts";
import { type Config } from "./config.ts";
import { ClusterModel } from "./state.ts";

const ADMIN = "admin-token-0123456789";
const WEB_APP = "web-app-token-0123456789";
const API_APP = "api-app-token-0123456789";
const A = "10.0.0.11:80";
const B = "10.0.0.12:80";

function configOf(feedback: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): Config {
  const service = (name: string, port: number) => ({
    name,
    listen: `0.0.0.0:${port}`,
    backends: [{ address: A, weight: 100 }, { address: B, weight: 100 }],
    feedback,
    ...extra,
  });
  const feedbackTokens = [{ token: WEB_APP, services: ["web"] }, { token: API_APP, services: ["api"] }];
  return resolvedConfig({
    manager: { tokens: { admin: ADMIN, feedback: feedbackTokens } },
    services: [service("web", 8080), service("api", 8081)],
  });
}

/** An admin app on a model with a clock the test moves; `using` closes the model. */
function harness(settings: Record<string, unknown> = {}) {
  const clock = { now: 0 };
  const model = new ClusterModel(configOf(settings), { seed: 7, now: () => clock.now });
  const app = testAdminApp(model, ADMIN);
  const request = (method: string, path: string, options: { token?: string | null; body?: unknown } = {}) => {
    const token = options.token === undefined ? ADMIN : options.token;
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (token !== null) headers.authorization = `Bearer ${token}`;
    const body = options.body === undefined
      ? undefined
      : typeof options.body === "string"
      ? options.body
      : JSON.stringify(options.body);
    return Promise.resolve(app.request(path, { method, headers, ...(body !== undefined ? { body } : {}) }));
  };
  const feedback = (body: unknown, token: string | null = ADMIN) =>
    request("POST", "/v1/feedback", { body, token });
  const services = async () => {
    const response = await request("GET", "/v1/services");
    assert.equal(response.status, 200);
    return (await response.json()) as { services: ServiceView[] };
  };
  const backend = async (service: string, address: string) => {
    const view = (await services()).services.find((s) => s.name === service);
    const found = view?.backends.find((b) => b.address === address);
    assert.ok(found, `${service} ${address} in GET /v1/services`);
    return found;
  };
  return {
    model,
    clock,
    request,
    feedback,
    services,
    backend,
    [Symbol.dispose]: () => model.close(),
  };
}

interface BackendView {
  address: string;
  weight: number;
  effective_weight: number;
  state: string;
  health: string;
  open_connections: number;
  feedback: Record<string, unknown> | null;
  why: string;
  [key: string]: unknown;
}

interface ServiceView {
  name: string;
  listen: string;
  decide: string;
  backends: BackendView[];
  table: { size: number; last_slots_moved: number; slots_moved_total: number };
}

Deno.test("POST /v1/feedback answers 202 with the new effective weight, and GET /v1/services shows it as the spec does", async () => {
  using h = harness();
  const response = await h.feedback({ service: "web", backend: A, weight: 40, ttl: "30s" }, WEB_APP);
  assert.equal(response.status, 202);
  assert.deepEqual(await response.json(), {
    accepted: 1,
    backends: [{ service: "web", backend: A, effective_weight: 40, state: "up" }],
    version: h.model.version,
  });
  h.clock.now = 1_500;
  // The weight is in force at once; its table follows within the window (here, at once).
  h.model.flushTables();
  const { services } = await h.services();
  const web = services.find((s) => s.name === "web")!;
  assert.equal(web.listen, "0.0.0.0:8080");
  assert.equal(web.decide, "manager");
  const a = web.backends[0]!;
  assert.deepEqual(
    {
      address: a.address,
      weight: a.weight,
      effective_weight: a.effective_weight,
      state: a.state,
      health: a.health,
      open_connections: a.open_connections,
    },
    { address: A, weight: 100, effective_weight: 40, state: "up", health: "unknown", open_connections: 0 },
  );
  assert.deepEqual(a.feedback, {
    source: "weight",
    weight: 40,
    reported_weight: 40,
    state: "up",
    age_s: 1.5,
    expires_in_s: 28.5,
  });
  assert.equal(a.why, "40: feedback weight 40% of configured 100");
  assert.equal(web.backends[1]!.feedback, null);
  assert.ok(web.table.last_slots_moved > 0);
  const one = await h.request("GET", "/v1/services/web");
  assert.equal(one.status, 200);
  assert.equal(((await one.json()) as ServiceView).backends[0]!.effective_weight, 40);
});

Deno.test("a batch answers each reported backend once, in order, and is applied as a whole", async () => {
  using h = harness();
  const response = await h.feedback([
    { service: "web", backend: B, weight: 25 },
    { service: "api", backend: A, state: "drain" },
    { service: "web", backend: B, weight: 20 },
  ]);
  assert.equal(response.status, 202);
  assert.deepEqual(await response.json(), {
    accepted: 3,
    backends: [
      { service: "web", backend: B, effective_weight: 20, state: "up" },
      { service: "api", backend: A, effective_weight: 0, state: "drain" },
    ],
    version: h.model.version,
  });
});

Deno.test("a batch of 1000 reports of some 160 bytes each fits in one request; other routes keep 64 KiB", async () => {
  using h = harness();
  const batch = Array.from(
    { length: 1000 },
    (_, i) => ({
      service: "web",
      backend: i % 2 ? A : B,
      utilization: 0.5,
      qps: 1000 + i,
      eps: 1,
      ttl: "30s",
    }),
  );
  // Written as a client might, indented: about 160 bytes a report.
  const body = JSON.stringify(batch, null, 4);
  assert.ok(
    body.length > 2 * MAX_BODY_BYTES && body.length < MAX_FEEDBACK_BODY_BYTES,
    `${body.length} bytes`,
  );
  const response = await h.feedback(body, WEB_APP);
  assert.equal(response.status, 202);
  assert.equal(((await response.json()) as { accepted: number }).accepted, 1000);
  // The same bytes on another route are too many.
  const state = await h.request("POST", `/v1/services/web/backends/${A}/state`, {
    body: JSON.stringify({ state: "drain", pad: "x".repeat(MAX_BODY_BYTES) }),
  });
  assert.equal(state.status, 413);
  assert.match(((await state.json()) as { error: string }).error, /larger than 65536 bytes/);
  assert.equal(h.model.service("web")!.backends[0]!.operatorState, "up");
});

Deno.test("every error of the spec is returned for its case, and the state is unchanged after each", async () => {
  using h = harness();
  // Some state to keep: one report in force, one operator drain.
  assert.equal((await h.feedback({ service: "web", backend: A, weight: 60 })).status, 202);
  assert.equal(
    (await h.request("POST", `/v1/services/api/backends/${B}/state`, { body: { state: "drain" } })).status,
    200,
  );
  // Their tables now, not when the rebuild window ends in the middle of the cases.
  h.model.flushTables();
  const fingerprint = async () => ({ version: h.model.version, services: (await h.services()).services });
  const before = await fingerprint();
  const big = JSON.stringify({
    service: "web",
    backend: A,
    weight: 1,
    pad: "x".repeat(MAX_FEEDBACK_BODY_BYTES),
  });
  const cases: Array<
    { name: string; response: () => Promise<Response>; status: number; path: string; error: RegExp }
  > = [
    {
      name: "malformed JSON",
      response: () => h.feedback("{not json"),
      status: 400,
      path: "",
      error: /Cannot parse JSON body/,
    },
    {
      name: "a bad field of one report",
      response: () => h.feedback({ service: "web", backend: A, utilization: 2 }),
      status: 400,
      path: "utilization",
      error: /from 0 to 1, got 2/,
    },
    {
      name: "a bad field in a batch, after good reports",
      response: () =>
        h.feedback([
          { service: "web", backend: A, weight: 1 },
          { service: "web", backend: B, weight: 2 },
          { service: "api", backend: A, weight: 3 },
          { service: "web", backend: B, utilization: -0.1 },
        ]),
      status: 400,
      path: "[3].utilization",
      error: /got -0.1/,
    },
    {
      name: "too many reports",
      response: () =>
        h.feedback(Array.from({ length: 1001 }, () => ({ service: "web", backend: A, state: "up" }))),
      status: 400,
      path: "",
      error: /1 to 1000 reports/,
    },
    {
      name: "weight and load together",
      response: () => h.feedback({ service: "web", backend: A, weight: 5, utilization: 0.5 }),
      status: 400,
      path: "utilization",
      error: /not both/,
    },
    {
      name: "a bad operator state",
      response: () => h.request("POST", `/v1/services/web/backends/${A}/state`, { body: { state: "down" } }),
      status: 400,
      path: "state",
      error: /Expected state "up" or "drain"/,
    },
    {
      name: "an operator state with a field it does not take",
      response: () =>
        h.request("POST", `/v1/services/web/backends/${A}/state`, { body: { state: "drain", reason: "x" } }),
      status: 400,
      path: "reason",
      error: /Unknown field "reason"/,
    },
    {
      name: "an operator state that is not an object",
      response: () => h.request("POST", `/v1/services/web/backends/${A}/state`, { body: ["drain"] }),
      status: 400,
      path: "",
      error: /Expected an object/,
    },
    {
      name: "no token",
      response: () => h.feedback({ service: "web", backend: A, weight: 1 }, null),
      status: 401,
      path: "authorization",
      error: /Missing bearer token/,
    },
    {
      name: "a bad token",
      response: () => h.feedback({ service: "web", backend: A, weight: 1 }, "not-a-token-at-all"),
      status: 401,
      path: "authorization",
      error: /Bad token/,
    },
    {
      name: "a feedback token for another service",
      response: () => h.feedback({ service: "web", backend: A, weight: 1 }, API_APP),
      status: 403,
      path: "service",
      error: /may not report for service "web"/,
    },
    {
      name: "a feedback token for another service, in a batch",
      response: () =>
        h.feedback(
          [{ service: "web", backend: A, weight: 1 }, { service: "api", backend: A, weight: 1 }],
          WEB_APP,
        ),
      status: 403,
      path: "[1].service",
      error: /service "api"/,
    },
    {
      name: "a feedback token for a service that does not exist",
      response: () => h.feedback({ service: "nope", backend: A, weight: 1 }, WEB_APP),
      status: 403,
      path: "service",
      error: /service "nope"/,
    },
    {
      name: "a feedback token on an admin route",
      response: () => h.request("GET", "/v1/services", { token: WEB_APP }),
      status: 403,
      path: "authorization",
      error: /may only post feedback/,
    },
    {
      name: "a feedback token setting operator state",
      response: () =>
        h.request("POST", `/v1/services/web/backends/${A}/state`, {
          token: WEB_APP,
          body: { state: "drain" },
        }),
      status: 403,
      path: "authorization",
      error: /may only post feedback/,
    },
    {
      name: "an unknown service",
      response: () => h.feedback({ service: "nope", backend: A, weight: 1 }),
      status: 404,
      path: "service",
      error: /Unknown service "nope"/,
    },
    {
      name: "an unknown backend",
      response: () => h.feedback({ service: "web", backend: "10.0.0.99:80", weight: 1 }, WEB_APP),
      status: 404,
      path: "backend",
      error: /Unknown backend "10.0.0.99:80" in service "web"/,
    },
    {
      name: "an unknown backend in a batch, after good reports",
      response: () =>
        h.feedback([{ service: "web", backend: A, weight: 1 }, {
          service: "web",
          backend: "10.0.0.11:81",
          weight: 1,
        }]),
      status: 404,
      path: "[1].backend",
      error: /10.0.0.11:81/,
    },
    {
      name: "an unknown service on GET",
      response: () => h.request("GET", "/v1/services/nope"),
      status: 404,
      path: "name",
      error: /Unknown service "nope"/,
    },
    {
      name: "an unknown backend for operator state",
      response: () =>
        h.request("POST", "/v1/services/web/backends/10.0.0.99:80/state", { body: { state: "drain" } }),
      status: 404,
      path: "address",
      error: /Unknown backend/,
    },
    {
      name: "a body over 256 KiB",
      response: () => h.feedback(big),
      status: 413,
      path: "",
      error: /larger than 262144 bytes/,
    },
    {
      name: "a batch over 256 KiB",
      response: () =>
        h.feedback(Array.from({ length: 6000 }, () => ({ service: "web", backend: A, weight: 1 }))),
      status: 413,
      path: "",
      error: /larger than 262144 bytes/,
    },
    {
      name: "a batch of more than 1000 reports",
      response: () =>
        h.feedback(Array.from({ length: 1001 }, () => ({ service: "web", backend: A, weight: 1 }))),
      status: 400,
      path: "",
      error: /Expected 1 to 1000 reports in the array, got 1001/,
    },
  ];
  for (const { name, response, status, path, error } of cases) {
    const answer = await response();
    const body = (await answer.json()) as { error: string; path: string };
    assert.equal(answer.status, status, `${name}: ${JSON.stringify(body)}`);
    assert.equal(body.path, path, name);
    assert.match(body.error, error, name);
    assert.deepEqual(await fingerprint(), before, `${name} changed nothing`);
  }
});

Deno.test("the admin token may report for any service; a feedback token only for its own", async () => {
  using h = harness();
  assert.equal((await h.feedback({ service: "api", backend: A, weight: 10 })).status, 202);
  assert.equal((await h.feedback({ service: "web", backend: A, weight: 10 }, WEB_APP)).status, 202);
  assert.equal((await h.feedback({ service: "api", backend: B, weight: 10 }, API_APP)).status, 202);
  assert.equal((await h.backend("web", B)).effective_weight, 100);
  assert.equal((await h.backend("api", B)).effective_weight, 10);
});

Deno.test("load reports move effective_weight toward the idle backend, step by step, smoothed and capped", async () => {
  using h = harness({ ttl: "30s", smoothing: 0.5, max_step: 0.1 });
  const steps: Array<[string, number]> = [];
  for (let round = 0; round < 6; round++) {
    for (const [address, utilization] of [[A, 0.9], [B, 0.3]] as const) {
      h.clock.now += 100;
      const response = await h.feedback({ service: "web", backend: address, utilization, qps: 100 }, WEB_APP);
      assert.equal(response.status, 202);
      steps.push([address === A ? "busy" : "idle", (await h.backend("web", address)).effective_weight]);
    }
  }
  assert.deepEqual(steps, [
    ["busy", 100],
    ["idle", 110],
    ["busy", 90],
    ["idle", 120],
    ["busy", 80],
    ["idle", 130],
    ["busy", 70],
    ["idle", 140],
    ["busy", 60],
    ["idle", 145],
    ["busy", 55],
    ["idle", 147.5],
  ]);
  const idle = await h.backend("web", B);
  assert.deepEqual(idle.feedback, {
    source: "load",
    weight: 147.5,
    utilization: 0.3,
    qps: 100,
    load_weight: 333.3333,
    target_weight: 150,
    state: "up",
    age_s: 0,
    expires_in_s: 30,
  });
  assert.equal(idle.why, "147.5: load feedback: target 150, smoothed to 147.5");
});

Deno.test("an operator drains a backend and brings it back; the answer shows the backend", async () => {
  using h = harness();
  const address = encodeURIComponent(A);
  const drained = await h.request("POST", `/v1/services/web/backends/${address}/state`, {
    body: { state: "drain" },
  });
  assert.equal(drained.status, 200);
  const view = (await drained.json()) as BackendView;
  assert.deepEqual([view.state, view.effective_weight, view.operator_state], ["drain", 0, "drain"]);
  assert.equal(view.why, "0: drained by an operator");
  assert.equal((await h.backend("api", A)).state, "up", "only that service's backend");
  const back = await h.request("POST", `/v1/services/web/backends/${address}/state`, {
    body: { state: "up" },
  });
  assert.equal(((await back.json()) as BackendView).effective_weight, 100);
});

Deno.test("a backend address that is not valid percent-encoding is an unknown backend, not an internal error", async () => {
  using h = harness();
  for (const address of ["%E0%A4%A", "%25", "%", "10.0.0.11%3A80%"]) {
    const response = await h.request("POST", `/v1/services/web/backends/${address}/state`, {
      body: { state: "drain" },
    });
    assert.equal(response.status, 404, address);
    assert.equal(((await response.json()) as { path: string }).path, "address");
  }
  assert.equal((await h.backend("web", A)).state, "up");
});

Deno.test("/healthz needs no token", async () => {
  using h = harness();
  const response = await h.request("GET", "/healthz", { token: null });
  assert.equal(response.status, 200);
});

Deno.test("GET /v1/services shows a backend's slow start: how far, the share of its weight, and why", async () => {
  using h = harness();
  h.model.reload(configOf({}, { slow_start: "20s" }));
  const drained = await h.request("POST", `/v1/services/web/backends/${A}/state`, {
    body: { state: "drain" },
  });
  await drained.body?.cancel();
  h.clock.now = 1_000;
  const undrained = await h.request("POST", `/v1/services/web/backends/${A}/state`, {
    body: { state: "up" },
  });
  const answer = await undrained.json() as BackendView & { slow_start: unknown; why: string };
  assert.deepEqual(answer.slow_start, { progress: 0, share: 0.01, ends_in_s: 20 });
  assert.equal(answer.effective_weight, 1);
  h.clock.now = 6_000;
  const a = await h.backend("web", A) as BackendView & { slow_start: unknown; why: string };
  // The share in force until the model's timer takes its next step, which the clock of this test never lets
  // it take; a feedback report makes a transition of the backend, which takes the step at once.
  assert.deepEqual(a.slow_start, { progress: 0.25, share: 0.01, ends_in_s: 15 });
  await (await h.feedback({ service: "web", backend: A, weight: 50 })).body?.cancel();
  const fed = await h.backend("web", A) as BackendView & { slow_start: unknown; why: string };
  assert.deepEqual(fed.slow_start, { progress: 0.25, share: 0.25, ends_in_s: 15 });
  assert.equal(fed.why, "12.5: feedback weight 50% of configured 100, × slow start 25% (full in 15 s)");
  const b = await h.backend("web", B) as BackendView & { slow_start: unknown };
  assert.equal(b.slow_start, null);
  const web = (await h.services()).services.find((s) => s.name === "web") as ServiceView & {
    slow_start_s: number;
  };
  assert.equal(web.slow_start_s, 20);
});
