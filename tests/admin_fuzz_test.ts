/**
 * Every admin route over real HTTP, against a manager process with two agents attached and health checks
 * running: a few thousand requests a route with mutated bodies (numbers at the edges of a double among
 * them), headers, tokens, paths and methods. No answer may be a 5xx, every refusal is `{error, path}`
 * JSON, the manager stays up and serving with no internal error, the services outside the feedback token's
 * scope do not change, the agents keep their sessions, and the manager's memory stays bounded.
 *
 * It begins with the reports of issue 20, which killed the manager: a utilization of 1e-320, and a qps of
 * 1e308.
 */
import assert from "node:assert/strict";
import { startGreeter } from "./_backends.ts";
import { ADMIN_TOKEN, testService } from "./_config.ts";
import { agentsCaughtUp, startTestCluster, type TestCluster } from "./_cluster.ts";
import { fuzzSeed, mutateBytes, randomJson, Rng } from "./_fuzz.ts";
import { forEachBounded, stableView, vmRssKiB } from "./_load.ts";
import { PROPERTY_SEED } from "./_property.ts";

const WEB_TOKEN = "web-feedback-token-0123456789";
const encoder = new TextEncoder();

/** Numbers as JSON text: the edges of a double, and texts that parse to Infinity, 0 or -0. */
const NUMBERS = [
  "1e-320",
  "5e-324",
  "2.2250738585072014e-308",
  "1e308",
  "1.7976931348623157e308",
  "1e400",
  "-1e400",
  "1e-400",
  "-0",
  "0",
  "1",
  "0.5",
  "100",
  "9007199254740993",
  "-1",
  "1e3",
  "0.1e1",
];

interface HttpCase {
  readonly route: string;
  readonly method: string;
  readonly path: string;
  readonly headers: Record<string, string>;
  readonly body?: Uint8Array<ArrayBuffer>;
  /** Sent from a source address of its own: a bad token, which the manager slows down per source. */
  readonly badToken: boolean;
}

type Role = "admin" | "web" | "bad";

function authorization(rng: Rng, role: Role): string | null {
  if (role === "admin") {
    return rng.pick([`Bearer ${ADMIN_TOKEN}`, `bearer ${ADMIN_TOKEN}`, `Bearer  ${ADMIN_TOKEN} `]);
  }
  if (role === "web") return `Bearer ${WEB_TOKEN}`;
  return rng.pick([
    null,
    "",
    "Bearer",
    `Bearer ${ADMIN_TOKEN}x`,
    `Bearer ${WEB_TOKEN.slice(1)}`,
    `Basic ${btoa(`admin:${ADMIN_TOKEN}`)}`,
    `Bearer ${ADMIN_TOKEN} ${WEB_TOKEN}`,
    `Token ${ADMIN_TOKEN}`,
    "Bearer \u00e9\u00e9",
    `Bearer ${"x".repeat(4000)}`,
  ]);
}

/** Headers a client might send along, some odd, none that HTTP forbids a fetch to set. */
function extraHeaders(rng: Rng): Record<string, string> {
  const headers: Record<string, string> = {};
  for (let i = rng.int(0, 3); i > 0; i--) {
    const [name, value] = rng.pick([
      [
        "content-type",
        rng.pick(["application/json", "text/plain", "application/x-www-form-urlencoded", "", "*/*"]),
      ],
      ["accept", rng.pick(["*/*", "text/html", "application/json;q=0", ""])],
      ["x-forwarded-for", "1.2.3.4, ::1"],
      ["content-encoding", rng.pick(["gzip", "br", "identity"])],
      ["x-fuzz", "a".repeat(rng.int(0, 8000))],
      ["cookie", "session=../../etc/passwd"],
      ["authorization-extra", ADMIN_TOKEN],
    ]);
    headers[name] = value;
  }
  return headers;
}

/** A feedback-report-like JSON text for `services`, with its numbers written as raw JSON text. */
function reportText(rng: Rng, services: readonly string[], backends: readonly string[]): string {
  const fields: string[] = [];
  const string = (value: string) => JSON.stringify(value);
  if (rng.next() < 0.95) fields.push(`"service":${string(rng.pick(services))}`);
  if (rng.next() < 0.95) fields.push(`"backend":${string(rng.pick(backends))}`);
  const number = () => rng.next() < 0.7 ? rng.pick(NUMBERS) : String(rng.next() * 10 ** rng.int(-3, 3));
  switch (rng.int(0, 3)) {
    case 0:
      fields.push(`"weight":${number()}`);
      break;
    case 1:
      fields.push(`"utilization":${number()}`);
      if (rng.next() < 0.7) fields.push(`"qps":${number()}`);
      if (rng.next() < 0.4) fields.push(`"eps":${number()}`);
      break;
    case 2:
      fields.push(`"state":${string(rng.pick(["up", "drain", "down", "Up", ""]))}`);
      break;
    default:
      fields.push(`"utilization":${number()}`, `"weight":${number()}`);
  }
  if (rng.next() < 0.3) {
    fields.push(`"ttl":${string(rng.pick(["1s", "30s", "24h", "25h", "1e400ms", `${"9".repeat(30)}h`]))}`);
  }
  for (let i = fields.length - 1; i > 0; i--) {
    const j = rng.int(0, i);
    [fields[i], fields[j]] = [fields[j]!, fields[i]!];
  }
  return `{${fields.join(",")}}`;
}

/** A body: JSON that fits the route, random JSON, mutated bytes, or nothing. */
function body(rng: Rng, fitting: () => string): Uint8Array<ArrayBuffer> | undefined {
  const roll = rng.next();
  if (roll < 0.6) return encoder.encode(fitting());
  if (roll < 0.75) return encoder.encode(JSON.stringify(randomJson(rng)) ?? "null");
  if (roll < 0.9) return new Uint8Array(mutateBytes(rng, encoder.encode(fitting())));
  return rng.next() < 0.5 ? undefined : new Uint8Array(rng.bytes(rng.int(0, 300)));
}

/** A path mutated the way a client gets one wrong: a slash more or less, case, a query, an encoding. */
function mutatePath(rng: Rng, path: string): string {
  if (rng.next() < 0.75) return path;
  switch (rng.int(0, 5)) {
    case 0:
      return `${path}/`;
    case 1:
      return path.replace("/v1/", "/v1//");
    case 2:
      return path.toUpperCase();
    case 3:
      return `${path}?${rng.pick(["x=1", "service=api", "%zz", "a=" + "b".repeat(2000)])}`;
    case 4:
      return `${path}/..%2F..%2Fetc%2Fpasswd`;
    default:
      return path.replace(
        /\/[^/]*$/,
        `/${encodeURIComponent(String.fromCharCode(...rng.bytes(rng.int(1, 6))))}`,
      );
  }
}

const METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "PURGE"];

interface Scope {
  /** The web service's backends: the only ones admin requests may change. */
  readonly web: readonly string[];
  /** Backends of services outside the feedback token's scope. */
  readonly others: readonly string[];
}

/** The cases of each route: its name, how many, and how to make one. */
function routes(scope: Scope): Array<{ route: string; count: number; make: (rng: Rng) => HttpCase }> {
  const allBackends = [...scope.web, ...scope.others, "127.0.0.1:1", "[::1]:80", "127.0.0.1", "x:99999"];
  /** A case of `route`: `role` decides the token; a bad token also comes with its own source address. */
  const make = (
    route: string,
    role: Role,
    rng: Rng,
    method: string,
    path: string,
    fitting: (() => string) | null,
  ): HttpCase => {
    const auth = authorization(rng, role);
    const odd = rng.next() < 0.1;
    const sent = odd ? rng.pick(METHODS) : method;
    return {
      route,
      method: sent,
      path: mutatePath(rng, path),
      headers: {
        ...extraHeaders(rng),
        ...(auth === null ? {} : { authorization: auth }),
      },
      ...(fitting !== null && sent !== "GET" && sent !== "HEAD" ? { body: body(rng, fitting) } : {}),
      badToken: role === "bad",
    } as HttpCase;
  };
  const role = (rng: Rng, weights: [number, number, number]): Role => {
    const roll = rng.next() * (weights[0] + weights[1] + weights[2]);
    return roll < weights[0] ? "admin" : roll < weights[0] + weights[1] ? "web" : "bad";
  };
  return [
    {
      route: "POST /v1/feedback",
      count: 3_000,
      make: (rng) => {
        const who = role(rng, [3, 6, 1]);
        // The admin may report for any service: its reports name only web (or nothing real), so that the
        // services outside the web token's scope stay as they were.
        const services = who === "admin" ? ["web", "WEB", "nope"] : ["web", "web", "api", "db", "nope"];
        return make("POST /v1/feedback", who, rng, "POST", "/v1/feedback", () => {
          // A report within the documented ranges, at their edges: taken, with a finite weight.
          if (rng.next() < 0.25) {
            const edge = () =>
              rng.pick(["1e-320", "5e-324", "2.2250738585072014e-308", "1e-300", "0", "0.5", "1"]);
            const big = () =>
              rng.pick(["1e308", "1.7976931348623157e308", "9007199254740993", "0", "5e-324"]);
            const figures = rng.next() < 0.3
              ? `"weight":${rng.pick(["0", "5e-324", "100", "99.99999999999999"])}`
              : `"utilization":${edge()},"qps":${big()}${rng.next() < 0.5 ? `,"eps":${big()}` : ""}`;
            return `{"service":"web","backend":${JSON.stringify(rng.pick(scope.web))},${figures}}`;
          }
          if (rng.next() < 0.2) {
            return `[${
              Array.from({ length: rng.int(0, 8) }, () => reportText(rng, services, allBackends)).join(",")
            }]`;
          }
          return reportText(rng, services, allBackends);
        });
      },
    },
    {
      route: "POST /v1/services/:name/backends/:address/state",
      count: 2_000,
      make: (rng) => {
        const who = role(rng, [6, 3, 1]);
        // The admin drains and brings back web's backends only; any other name must be a 404.
        const name = who === "admin"
          ? rng.pick(["web", "web", "nope", "WEB", "web%20", "%00"])
          : rng.pick(["web", "api", "db"]);
        const address = rng.pick([
          ...(who === "admin" ? scope.web : allBackends),
          "127.0.0.1%3A1",
          "%5B%3A%3A1%5D%3A80",
          "%E0%A4%A",
          "%25",
          "%",
          "",
        ]);
        const state = () => JSON.stringify({ state: rng.pick(["up", "drain", "down", "DRAIN", null, 1]) });
        return make(
          "POST /v1/services/:name/backends/:address/state",
          who,
          rng,
          "POST",
          `/v1/services/${name}/backends/${address}/state`,
          state,
        );
      },
    },
    {
      route: "GET /v1/services",
      count: 1_500,
      make: (rng) => make("GET /v1/services", role(rng, [7, 2, 1]), rng, "GET", "/v1/services", null),
    },
    {
      route: "GET /v1/services/:name",
      count: 2_000,
      make: (rng) => {
        const name = rng.pick([
          "web",
          "api",
          "db",
          "nope",
          "%00",
          "..%2F..",
          "%F0%9F%A6%95",
          "a".repeat(300),
          "web%20",
          "",
        ]);
        return make("GET /v1/services/:name", role(rng, [7, 2, 1]), rng, "GET", `/v1/services/${name}`, null);
      },
    },
    {
      route: "GET /v1/agents",
      count: 1_500,
      make: (rng) => make("GET /v1/agents", role(rng, [7, 2, 1]), rng, "GET", "/v1/agents", null),
    },
    {
      route: "GET /v1/explain",
      count: 2_000,
      make: (rng) => {
        const query = new URLSearchParams();
        if (rng.next() < 0.9) query.set("service", rng.pick(["web", "api", "nope", "", "WEB"]));
        if (rng.next() < 0.9) {
          query.set(
            "client",
            rng.pick([
              "1.2.3.4:5555",
              "[::1]:80",
              "1.2.3.4",
              "1.2.3.4:99999",
              "::1:80",
              "",
              "a:b",
              "999.1.1.1:1",
            ]),
          );
        }
        if (rng.next() < 0.3) query.set("service_address", rng.pick(["127.0.0.1:8080", "x", "[::]:0", ""]));
        return make("GET /v1/explain", role(rng, [7, 2, 1]), rng, "GET", `/v1/explain?${query}`, null);
      },
    },
    {
      route: "GET /v1/events",
      count: 1_500,
      make: (rng) => {
        const after = rng.pick([
          "0",
          "5",
          "-1",
          "1e3",
          "9007199254740993",
          "abc",
          "",
          "1.5",
          `${"9".repeat(400)}`,
        ]);
        return make("GET /v1/events", role(rng, [7, 2, 1]), rng, "GET", `/v1/events?after=${after}`, null);
      },
    },
    {
      route: "GET /v1/history",
      count: 500,
      make: (rng) => make("GET /v1/history", role(rng, [7, 2, 1]), rng, "GET", "/v1/history", null),
    },
    {
      route: "GET /metrics",
      count: 1_500,
      make: (rng) => make("GET /metrics", role(rng, [7, 2, 1]), rng, "GET", "/metrics", null),
    },
    {
      route: "POST /v1/reload",
      count: 1_500,
      // A reload of the same file as the admin changes no service; the web token may not reload.
      make: (rng) =>
        make(
          "POST /v1/reload",
          role(rng, [1, 6, 3]),
          rng,
          "POST",
          "/v1/reload",
          () => JSON.stringify(randomJson(rng)),
        ),
    },
    {
      route: "GET /healthz and GET /",
      count: 1_500,
      make: (rng) =>
        make("GET /healthz and GET /", role(rng, [2, 2, 1]), rng, "GET", rng.pick(["/healthz", "/"]), null),
    },
    {
      route: "no such route",
      count: 1_500,
      make: (rng) => {
        const path = rng.pick([
          "/v2/feedback",
          "/v1",
          "/v1/cluster/x",
          "/%2e%2e/",
          "/metrics/x",
          "/v1/services/web/backends",
        ]);
        const c = make("no such route", role(rng, [5, 3, 1]), rng, rng.pick(METHODS), path, () => "{}");
        return c;
      },
    },
  ];
}

/** What is wrong with an answer, or null: no 5xx, and every 4xx a `{error, path}` JSON body. */
async function checkAnswer(c: HttpCase, response: Response): Promise<string | null> {
  const text = await response.text();
  const where = `${c.route}: ${c.method} ${c.path.slice(0, 100)}`;
  if (response.status >= 500) return `${where}: status ${response.status} ${text.slice(0, 200)}`;
  if (response.status >= 400 && c.method !== "HEAD") {
    try {
      const body = JSON.parse(text) as { error?: unknown; path?: unknown };
      if (typeof body.error !== "string" || body.error === "" || typeof body.path !== "string") {
        return `${where}: ${response.status} body is not {error, path}: ${text.slice(0, 200)}`;
      }
    } catch {
      return `${where}: ${response.status} body is not JSON: ${text.slice(0, 200)}`;
    }
  }
  return null;
}

function mib(kib: number): string {
  return `${(kib / 1024).toFixed(0)} MiB`;
}

async function outside(cluster: TestCluster): Promise<unknown> {
  return stableView(await Promise.all(["api", "db"].map((name) => cluster.api(`/v1/services/${name}`))));
}

Deno.test("about 20,000 mutated requests to every admin route of a manager with agents attached, sent three times: no 5xx, nothing outside the token's scope changes, the manager stays up, and the last round does not grow it", async () => {
  const backends = Array.from({ length: 5 }, (_, i) => startGreeter(`b${i}`, { hold: true }));
  const [w1, w2, w3, a1, d1] = backends.map((b) => b.address) as [string, string, string, string, string];
  const cluster = await startTestCluster({
    agents: 2,
    // The product's default: agents keep their sessions through 3 s of a busy manager on a loaded machine.
    heartbeat: "1s",
    feedbackTokens: [{ token: WEB_TOKEN, services: ["web"] }],
    services: [
      // web is checked every 100 ms, so its table is rebuilt by the health checker while reports arrive.
      testService({
        health: { interval: "100ms", timeout: "50ms" },
        backends: [w1, { address: w2, weight: 10_000 }, { address: w3, weight: 1 }],
      }),
      testService({ name: "api", backends: [a1] }),
      testService({ name: "db", backends: [d1, w1] }),
    ],
  });
  const sources = Array.from(
    { length: 200 },
    (_, i) => Deno.createHttpClient({ localAddress: `127.1.${i >> 8}.${(i & 255) + 1}` }),
  );
  try {
    const admin = cluster.admin;
    const post = async (body: string, token = WEB_TOKEN) => {
      const response = await fetch(`http://${admin}/v1/feedback`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body,
      });
      return { status: response.status, body: await response.json() };
    };

    // Issue 20: each report was a 500 that left a NaN weight, and the next health check killed the manager.
    for (
      const report of [
        { service: "web", backend: w1, utilization: 1e-320 },
        { service: "web", backend: w2, utilization: 0.5, qps: 1e308 },
        { service: "web", backend: w3, utilization: 1, qps: 1e308, eps: 1e308 },
      ]
    ) {
      const answer = await post(JSON.stringify(report));
      assert.equal(answer.status, 202, JSON.stringify(answer.body));
      for (const backend of answer.body.backends) {
        assert.ok(Number.isFinite(backend.effective_weight), JSON.stringify(answer.body));
      }
    }
    // Let the health checker rebuild web's table a few times from those weights.
    await new Promise((resolve) => setTimeout(resolve, 500));
    assert.equal(
      await fetch(`http://${admin}/healthz`).then(async (r) => (await r.body?.cancel(), r.status)),
      200,
    );

    const before = await outside(cluster);
    const joinsBefore = cluster.manager.logs.filter((l) =>
      l.message.startsWith("Agent") && l.message.includes("joined")
    )
      .length;
    const pid = cluster.manager.pid;
    const rssBefore = await vmRssKiB(pid);
    // The peak of each round: V8's heap is a sawtooth some 50 MiB high under this load, so single samples
    // cannot be compared; a leak shows as a last round that peaks higher than the first.
    const rssPeaks = [rssBefore, rssBefore, rssBefore];

    const seed = Deno.env.get("SWITCHYARD_FUZZ") === "1" || Deno.env.get("SWITCHYARD_FUZZ_SEED")
      ? fuzzSeed("admin routes over HTTP")
      : PROPERTY_SEED;
    const rng = new Rng(seed);
    const plan = routes({ web: [w1, w2, w3], others: [a1, d1] });
    const round = plan.flatMap(({ count, make }) => Array.from({ length: count }, () => make(rng)));
    // Interleave the routes, so that reads, reloads and writes run against each other.
    for (let i = round.length - 1; i > 0; i--) {
      const j = rng.int(0, i);
      [round[i], round[j]] = [round[j]!, round[i]!];
    }
    // The same requests three times: whatever the first round left behind, the others leave again.
    const cases = [...round, ...round, ...round];
    let badSent = 0;
    const statuses = new Map<string, Map<string, number>>();
    const started = performance.now();
    const problems = (await forEachBounded(cases, 24, async (c, index) => {
      if (index % 500 === 0) {
        const which = Math.floor(index / round.length);
        rssPeaks[which] = Math.max(rssPeaks[which]!, await vmRssKiB(pid));
      }
      const client = c.badToken ? sources[badSent++ % sources.length]! : undefined;
      let request: RequestInit & { client?: Deno.HttpClient };
      try {
        request = {
          method: c.method,
          headers: c.headers,
          ...(c.body !== undefined ? { body: c.body } : {}),
          ...(client ? { client } : {}),
        };
        const response = await fetch(`http://${admin}${c.path}`, request);
        const key = `${response.status}`;
        const counts = statuses.get(c.route) ?? new Map<string, number>();
        statuses.set(c.route, counts.set(key, (counts.get(key) ?? 0) + 1));
        return await checkAnswer(c, response);
      } catch (error) {
        return `${c.route}: ${c.method} ${c.path.slice(0, 100)}: ${error}`;
      }
    })).filter((problem) => problem !== null);
    const took = (performance.now() - started) / 1000;
    const rssAfter = await vmRssKiB(pid);
    rssPeaks[2] = Math.max(rssPeaks[2]!, rssAfter);
    const rssPeak = Math.max(...rssPeaks);
    console.log(
      `${cases.length} requests in ${took.toFixed(1)} s (${
        plan.map(({ route, count }) => `${route} ${count}`).join(", ")
      }); manager VmRSS ${mib(rssBefore)} before, at most ${rssPeaks.map(mib).join(", ")} in the rounds, ${
        mib(rssAfter)
      } after`,
    );
    console.log(
      `statuses: ${
        [...statuses].map(([route, counts]) => `${route} ${JSON.stringify(Object.fromEntries(counts))}`).join(
          "; ",
        )
      }`,
    );
    assert.deepEqual(problems.slice(0, 10), [], `${problems.length} of ${cases.length} answers were wrong`);

    // The manager is up, serving, and never failed a turn; the agents kept their sessions.
    assert.equal(
      await fetch(`http://${admin}/healthz`).then(async (r) => (await r.body?.cancel(), r.status)),
      200,
    );
    const metrics =
      await (await fetch(`http://${admin}/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } }))
        .text();
    const internal = metrics.split("\n").filter((line) =>
      line.startsWith("switchyard_internal_errors_total{")
    );
    assert.ok(internal.length > 0, "no switchyard_internal_errors_total on /metrics");
    assert.deepEqual(internal.filter((line) => !line.endsWith(" 0")), [], "the manager failed a turn");
    assert.deepEqual(
      cluster.manager.logs.filter((l) => l.level === "ERROR" || l.level === "FATAL").map((l) => l.message)
        .slice(0, 5),
      [],
      "the manager logged an error",
    );
    assert.equal(
      cluster.manager.logs.filter((l) => l.message.startsWith("Agent") && l.message.includes("joined"))
        .length,
      joinsBefore,
      "an agent joined again: it had lost its session",
    );
    assert.equal((await cluster.api<{ agents: unknown[] }>("/v1/agents")).agents.length, 2);
    assert.deepEqual(await outside(cluster), before, "a service outside the web token's scope changed");
    // Bounded: the heap settles in the first round (V8 sizes it to the load); a leak of 1.6 KiB a request
    // would add 64 MiB by the third.
    assert.ok(rssPeak - rssBefore < 256 * 1024, `the manager grew from ${mib(rssBefore)} to ${mib(rssPeak)}`);
    assert.ok(
      rssPeaks[2]! - rssPeaks[0]! < 64 * 1024,
      `the manager peaked at ${mib(rssPeaks[0]!)} in the first round and ${mib(rssPeaks[2]!)} in the third`,
    );
    // The agents still serve web from the manager's latest state, once its backends are back in.
    for (const backend of [w1, w2, w3]) {
      assert.equal((await post(JSON.stringify({ service: "web", backend, weight: 100 }))).status, 202);
      await cluster.api(`/v1/services/web/backends/${backend}/state`, {
        method: "POST",
        body: JSON.stringify({ state: "up" }),
      });
    }
    await agentsCaughtUp(cluster);
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: cluster.agents[0]!.port });
    const buffer = new Uint8Array(16);
    const n = await conn.read(buffer);
    conn.close();
    assert.match(new TextDecoder().decode(buffer.subarray(0, n ?? 0)), /^b[0-4]\n$/);
  } finally {
    for (const client of sources) client.close();
    await cluster.close();
    await Promise.all(backends.map((b) => b.close()));
  }
});
