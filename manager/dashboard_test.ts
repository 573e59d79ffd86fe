import assert from "node:assert/strict";
import { testAdminApp } from "./_test_admin_app.ts";
import { DASHBOARD_SCRIPT } from "./dashboard/page.ts";
import { type Config, parseConfig } from "./config.ts";
import { ClusterModel } from "./state.ts";

const ADMIN = "admin-token-0123456789";
const A = "10.0.0.11:80";

function harness() {
  const result = parseConfig(JSON.stringify({
    manager: { tokens: { admin: ADMIN, cluster: "cluster-token-0123456789" } },
    services: [{ name: "web", listen: "0.0.0.0:8080", backends: [{ address: A, weight: 100 }] }],
  }));
  assert.deepEqual(result.problems, []);
  const model = new ClusterModel(result.config as Config, { seed: 7 });
  const app = testAdminApp(model, ADMIN);
  const request = (method: string, path: string, options: { token?: string | null; body?: unknown } = {}) => {
    const token = options.token === undefined ? ADMIN : options.token;
    return Promise.resolve(app.request(path, {
      method,
      headers: token === null ? {} : { authorization: `Bearer ${token}` },
      ...(options.body === undefined ? {} : { body: JSON.stringify(options.body) }),
    }));
  };
  return { model, request, [Symbol.dispose]: () => model.close() };
}

Deno.test("GET / serves the dashboard without a token, under a strict Content-Security-Policy with a fresh nonce", async () => {
  using h = harness();
  const first = await h.request("GET", "/", { token: null });
  assert.equal(first.status, 200);
  assert.equal(first.headers.get("content-type"), "text/html; charset=utf-8");
  assert.equal(first.headers.get("cache-control"), "no-store");
  const csp = first.headers.get("content-security-policy") ?? "";
  const nonce = /script-src 'nonce-([^']+)'/.exec(csp)?.[1];
  assert.ok(nonce, csp);
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /connect-src 'self'/);
  const html = await first.text();
  assert.ok(html.includes(`<script nonce="${nonce}">`), "the inline script carries the nonce");
  assert.ok(!html.includes("__NONCE__"));
  assert.ok(!html.includes(ADMIN), "the page holds no token");
  assert.ok(!/<(script|link)[^>]+(src|href)="https?:/.test(html), "nothing is loaded from elsewhere");
  const second = await h.request("GET", "/", { token: null });
  assert.notEqual(/nonce-([^']+)'/.exec(second.headers.get("content-security-policy") ?? "")?.[1], nonce);
  await second.body?.cancel();
});

Deno.test("the dashboard's script parses, keeps the token in sessionStorage and sends it only as a header", () => {
  new Function(DASHBOARD_SCRIPT);
  assert.match(DASHBOARD_SCRIPT, /sessionStorage\.setItem\(TOKEN_KEY, token\)/);
  assert.match(DASHBOARD_SCRIPT, /authorization: `Bearer \$\{token\}`/);
  assert.ok(!/[?&]token=/.test(DASHBOARD_SCRIPT), "no token in a query string");
  assert.ok(!/<\/script/i.test(DASHBOARD_SCRIPT), "nothing in the script ends the page's script element");
});

Deno.test("GET /v1/events needs the admin token and returns what happened after a number", async () => {
  using h = harness();
  const refused = await h.request("GET", "/v1/events", { token: null });
  assert.equal(refused.status, 401);
  await refused.body?.cancel();
  const drained = await h.request("POST", `/v1/services/web/backends/${A}/state`, {
    body: { state: "drain" },
  });
  assert.equal(drained.status, 200);
  await drained.body?.cancel();
  const all = await (await h.request("GET", "/v1/events")).json() as {
    last: number;
    events: Array<{ seq: number; kind: string; message: string; backend?: string }>;
  };
  assert.deepEqual(all.events.map((event) => [event.kind, event.message]), [
    ["state", `Backend ${A} of web is drain (drained by an operator)`],
    ["operator", `Operator set ${A} of web to drain`],
  ]);
  assert.equal(all.last, 2);
  const newer = await (await h.request("GET", "/v1/events?after=1")).json() as { events: unknown[] };
  assert.equal(newer.events.length, 1);
  const bad = await h.request("GET", "/v1/events?after=-1");
  assert.equal(bad.status, 400);
  assert.equal(((await bad.json()) as { path: string }).path, "after");
});
