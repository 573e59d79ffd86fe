/**
 * The admin API among several managers: a standby passes writes to the leader (over a real socket, the way
 * `ha/forward.ts` does it) and answers what the leader answered, or 503 with no leader; a leader answers a
 * write once it is stored; `GET /v1/cluster` says who leads.
 */
import assert from "node:assert/strict";
import { resolvedConfig } from "../tests/_config.ts";
import { testAdminApp } from "./_test_admin_app.ts";
import { type Config } from "./config.ts";
import { Decider } from "./decide.ts";
import { PASSED_HEADER, passToLeader } from "./ha/forward.ts";
import { type ManagerRef, type ManagerRole, singleRole, type WriteTarget } from "./role.ts";
import { ClusterModel } from "./state.ts";

const ADMIN = "admin-token-0123456789";
const WEB_APP = "web-app-token-0123456789";
const A = "10.0.0.11:80";
const SANITIZE = { sanitizeOps: true, sanitizeResources: true } as const;

function config(): Config {
  return resolvedConfig({
    manager: { tokens: { admin: ADMIN, feedback: [{ token: WEB_APP, services: ["web"] }] } },
    services: [
      { name: "web", listen: "0.0.0.0:8080", backends: [A, "10.0.0.12:80"] },
      { name: "api", listen: "0.0.0.0:8081", backends: [A] },
    ],
  });
}

/** A role that is told where writes go and how storing goes. */
function role(options: { target: () => WriteTarget; store?: () => Promise<void> }): ManagerRole {
  const alone = singleRole({ id: "this", admin: "127.0.0.1:1", cluster: "127.0.0.1:2" }, () => []);
  return {
    ...alone,
    role: () => options.target().kind === "self" ? "leader" : "standby",
    leading: () => options.target().kind === "self",
    writeTarget: options.target,
    storeFeedback: () => options.store?.() ?? Promise.resolve(),
    storeOperatorState: () => options.store?.() ?? Promise.resolve(),
    pass: (request, leader) => passToLeader(request, { leader, via: "this", client: null }),
  };
}

function request(
  app: ReturnType<typeof testAdminApp>,
  path: string,
  options: { method?: string; token?: string; body?: unknown; headers?: Record<string, string> } = {},
) {
  return Promise.resolve(app.request(path, {
    method: options.method ?? "GET",
    headers: {
      authorization: `Bearer ${options.token ?? ADMIN}`,
      "content-type": "application/json",
      ...options.headers,
    },
    ...(options.body === undefined ? {} : { body: JSON.stringify(options.body) }),
  }));
}

Deno.test({
  name:
    "a standby passes feedback and drains to the leader with the caller's token, and answers as it answered",
  ...SANITIZE,
  async fn() {
    const leaderModel = new ClusterModel(config(), { seed: 1 });
    const standbyModel = new ClusterModel(config(), { seed: 1 });
    const leaderApp = testAdminApp(leaderModel, ADMIN);
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, leaderApp.fetch);
    const leader: ManagerRef = {
      id: "leader",
      admin: `127.0.0.1:${server.addr.port}`,
      cluster: "127.0.0.1:3",
    };
    const standby = testAdminApp(
      standbyModel,
      ADMIN,
      new Decider(standbyModel),
      role({ target: () => ({ kind: "leader", leader }) }),
    );
    try {
      const report = { service: "web", backend: A, weight: 40 };
      const taken = await request(standby, "/v1/feedback", { method: "POST", body: report, token: WEB_APP });
      assert.equal(taken.status, 202);
      assert.deepEqual(await taken.json(), {
        accepted: 1,
        backends: [{ service: "web", backend: A, effective_weight: 40, state: "up" }],
        // The leader's: the state version that carries the weight to its agents.
        version: leaderModel.version,
      });
      assert.equal(leaderModel.service("web")!.backends[0]!.effectiveWeight, 40);
      assert.equal(
        standbyModel.service("web")!.backends[0]!.effectiveWeight,
        100,
        "the standby took it itself",
      );

      // The leader's refusal is the answer: this token may not report for api.
      const refused = await request(standby, "/v1/feedback", {
        method: "POST",
        body: { service: "api", backend: A, weight: 1 },
        token: WEB_APP,
      });
      assert.equal(refused.status, 403);
      assert.equal(((await refused.json()) as { path: string }).path, "service");

      const drained = await request(standby, `/v1/services/web/backends/${encodeURIComponent(A)}/state`, {
        method: "POST",
        body: { state: "drain" },
      });
      assert.equal(drained.status, 200);
      assert.equal(((await drained.json()) as { operator_state: string }).operator_state, "drain");
      assert.equal(leaderModel.service("web")!.backends[0]!.operatorState, "drain");

      // A wrong token never leaves the standby.
      assert.equal(
        (await request(standby, "/v1/feedback", { method: "POST", body: report, token: "wrong-token-1" }))
          .status,
        401,
      );
    } finally {
      await server.shutdown();
      leaderModel.close();
      standbyModel.close();
    }
  },
});

Deno.test("with no leader known a standby answers writes 503 and still answers reads", async () => {
  const model = new ClusterModel(config(), { seed: 1 });
  const app = testAdminApp(model, ADMIN, new Decider(model), role({ target: () => ({ kind: "none" }) }));
  try {
    for (
      const [path, body] of [
        ["/v1/feedback", { service: "web", backend: A, weight: 1 }],
        [`/v1/services/web/backends/${encodeURIComponent(A)}/state`, { state: "drain" }],
        ["/v1/reload", {}],
      ] as const
    ) {
      const response = await request(app, path, { method: "POST", body });
      assert.equal(response.status, 503, path);
      assert.deepEqual(await response.json(), { error: "No manager leads now; try again shortly", path: "" });
    }
    assert.equal(model.service("web")!.backends[0]!.operatorState, "up");
    assert.equal((await request(app, "/v1/services")).status, 200);
  } finally {
    model.close();
  }
});

Deno.test("a write another manager passed on is never passed again: 503 from a manager that does not lead", async () => {
  const model = new ClusterModel(config(), { seed: 1 });
  const leader: ManagerRef = { id: "x", admin: "127.0.0.1:1", cluster: "127.0.0.1:2" };
  const app = testAdminApp(
    model,
    ADMIN,
    new Decider(model),
    role({ target: () => ({ kind: "leader", leader }) }),
  );
  try {
    const response = await request(app, "/v1/feedback", {
      method: "POST",
      body: { service: "web", backend: A, weight: 1 },
      headers: { [PASSED_HEADER]: "other" },
    });
    assert.equal(response.status, 503);
  } finally {
    model.close();
  }
});

Deno.test("a leader answers a write once it is stored, and 503 when it cannot be", async () => {
  const model = new ClusterModel(config(), { seed: 1 });
  let store = Promise.withResolvers<void>();
  const app = testAdminApp(
    model,
    ADMIN,
    new Decider(model),
    role({ target: () => ({ kind: "self" }), store: () => store.promise }),
  );
  try {
    let answered = false;
    const pending = request(app, "/v1/feedback", {
      method: "POST",
      body: { service: "web", backend: A, weight: 30 },
    })
      .then((response) => {
        answered = true;
        return response;
      });
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(answered, false, "answered before the feedback was stored");
    store.resolve();
    assert.equal((await pending).status, 202);

    store = Promise.withResolvers<void>();
    store.reject(new Error("This manager no longer leads"));
    const failed = await request(app, `/v1/services/web/backends/${encodeURIComponent(A)}/state`, {
      method: "POST",
      body: { state: "drain" },
    });
    assert.equal(failed.status, 503);
    assert.match(
      ((await failed.json()) as { error: string }).error,
      /Cannot store the backend's state: .*no longer leads/,
    );
  } finally {
    model.close();
  }
});

Deno.test("GET /v1/cluster of a manager alone: role single, itself the leader", async () => {
  const model = new ClusterModel(config(), { seed: 1 });
  const self = { id: "m1", admin: "10.0.0.10:9090", cluster: "10.0.0.10:9091" };
  const app = testAdminApp(model, ADMIN, new Decider(model), singleRole(self, () => []));
  try {
    const response = await request(app, "/v1/cluster");
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), {
      role: "single",
      id: "m1",
      leader: self,
      managers: [{ ...self, role: "single", config_version: "" }],
      leader_changes: 0,
      ha: null,
    });
    assert.equal((await request(app, "/v1/cluster", { token: WEB_APP })).status, 403);
    const metrics = await (await request(app, "/metrics")).text();
    assert.match(metrics, /^switchyard_manager_role\{role="single"\} 1$/m);
    assert.match(metrics, /^switchyard_manager_role\{role="leader"\} 0$/m);
  } finally {
    model.close();
  }
});
