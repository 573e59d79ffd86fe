/**
 * Bad input, thousands of cases per target, every case checked: random and mutated JSON to
 * `POST /v1/feedback` (in process with `app.request`, and a few hundred over real HTTP), garbage and
 * malformed frames on the manager's cluster port, and garbage, forged, stale and truncated PROXY headers
 * on an agent's mesh port. Every case must get a clear refusal (an error status with a JSON body, or the
 * connection closed), and nothing may change: not the services, not the agents' sessions, not the state
 * version, and no byte may reach a backend.
 */
import assert from "node:assert/strict";
import { proof, TokenSigner } from "../cluster/auth.ts";
import { closeQuietly } from "../cluster/close_quietly.ts";
import { PROTOCOL_VERSION } from "../cluster/protocol.ts";
import { decodeProxyHeader } from "../cluster/proxy_protocol.ts";
import { encodeMeshHeader } from "../agent/mesh.ts";
import { MAX_FEEDBACK_BODY_BYTES } from "../manager/admin.ts";
import { testAdminApp } from "../manager/_test_admin_app.ts";
import { type Config, parseConfig } from "../manager/config.ts";
import { ClusterModel } from "../manager/state.ts";
import { startGreeter } from "./_backends.ts";
import { ADMIN_TOKEN, CLUSTER_TOKEN, testService } from "./_config.ts";
import { agentMetric, startTestCluster, type TestCluster } from "./_cluster.ts";
import { agentAdmin, claimsSplit, eventually, type Proc, startManagerProcess, writeAll } from "./_helpers.ts";
import { fuzzSeed, mutateBytes, randomJson, Rng } from "./_fuzz.ts";
import { forEachBounded, sleep, stableView, vmRssKiB } from "./_load.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// ---------------------------------------------------------------------------------------------------------
// POST /v1/feedback

const WEB_TOKEN = "web-feedback-token-0123456789";
const A = "127.0.0.11:80";
const B = "127.0.0.12:80";
const SERVICES = ["web", "api"];

function feedbackConfig(): Record<string, unknown> {
  // No check may run during the test (testService's default): these backends do not exist.
  const service = (name: string, port: number) =>
    testService({ name, listen: `127.0.0.1:${port}`, backends: [A, B] });
  return {
    manager: {
      admin: "127.0.0.1:0",
      cluster: "127.0.0.1:0",
      tokens: {
        admin: ADMIN_TOKEN,
        cluster: CLUSTER_TOKEN,
        feedback: [{ token: WEB_TOKEN, services: ["web"] }],
      },
    },
    services: [service("web", 18080), service("api", 18081)],
  };
}

/** One request and the answers it may get. `path` is the exact `path` the error body must name. */
interface FeedbackCase {
  readonly kind: string;
  readonly body: string;
  /** The Authorization header, or null for none. */
  readonly authorization: string | null;
  readonly expect: readonly number[];
  readonly path?: string;
}

const adminAuth = `Bearer ${ADMIN_TOKEN}`;
const webAuth = `Bearer ${WEB_TOKEN}`;

/** A valid report for `web` or `api` (as the admin) or `web` (as the web token). */
function validReport(rng: Rng, service: string): Record<string, unknown> {
  const report: Record<string, unknown> = { service, backend: rng.pick([A, B]) };
  switch (rng.int(0, 2)) {
    case 0:
      report.weight = rng.int(0, 100);
      break;
    case 1:
      report.utilization = rng.next();
      if (rng.next() < 0.7) report.qps = rng.int(0, 5000);
      if (report.qps !== undefined && rng.next() < 0.5) report.eps = rng.int(0, 50);
      break;
    default:
      report.state = rng.pick(["up", "drain", "down"]);
  }
  if (rng.next() < 0.3) report.ttl = rng.pick(["1s", "30s", "5m"]);
  return report;
}

/** A report made invalid in one known way, with the status and field the refusal must name. */
function brokenReport(
  rng: Rng,
  asAdmin: boolean,
): { report: Record<string, unknown>; status: number; field: string | null } {
  const report = validReport(rng, asAdmin ? rng.pick(SERVICES) : "web");
  const loadOnly = () => {
    delete report.weight;
    delete report.state;
    report.utilization = 0.5;
  };
  switch (rng.int(0, 12)) {
    case 0: {
      const key = rng.pick(["foo", "Service", "weight ", "__proto__", "constructor", "", "backends"]);
      Object.defineProperty(report, key, { value: randomJson(rng, 3), enumerable: true });
      return { report, status: 400, field: key };
    }
    case 1:
      report.service = rng.pick([0, null, [], {}, "", true]);
      return { report, status: 400, field: "service" };
    case 2:
      report.backend = rng.pick([
        0,
        null,
        [],
        "",
        "127.0.0.11",
        "127.0.0.11:99999",
        "127.0.0.11:0",
        "a b:80",
        "[::1]80",
        "::1:80",
        ":80",
        "127.0.0.11:8a",
      ]);
      return { report, status: 400, field: "backend" };
    case 3:
      delete report.utilization, delete report.qps, delete report.eps;
      report.weight = rng.pick([101, -1, -0.001, 100.5, "40", null, true, [], {}]);
      return { report, status: 400, field: "weight" };
    case 4:
      loadOnly();
      report.utilization = rng.pick([1.01, -0.1, "0.5", null, []]);
      return { report, status: 400, field: "utilization" };
    case 5:
      loadOnly();
      report.qps = rng.pick([-1, "100", null]);
      return { report, status: 400, field: "qps" };
    case 6:
      loadOnly();
      delete report.qps;
      report.eps = 1;
      return { report, status: 400, field: "eps" };
    case 7:
      delete report.utilization, delete report.eps;
      report.state = "up";
      report.qps = 10;
      return { report, status: 400, field: "qps" };
    case 8:
      report.weight = 50;
      report.utilization = 0.5;
      delete report.qps, delete report.eps;
      return { report, status: 400, field: "utilization" };
    case 9:
      report.state = rng.pick(["Up", "sideways", "", 1, null, "drain "]);
      return { report, status: 400, field: "state" };
    case 10:
      report.ttl = rng.pick(["0s", "25h", 30, "abc", "-1s", "", null, "1d"]);
      return { report, status: 400, field: "ttl" };
    case 11:
      delete report.weight, delete report.utilization, delete report.qps, delete report.eps;
      delete report.state;
      // The report as a whole is wrong: the path is the report's own (empty, or [i] in a batch).
      return { report, status: 400, field: null };
    default:
      // A service or backend that does not exist, or a service the web token may not report for.
      if (rng.next() < 0.5) {
        report.service = asAdmin ? rng.pick(["nope", "WEB", "web "]) : rng.pick(["api", "nope"]);
        return { report, status: asAdmin ? 404 : 403, field: "service" };
      }
      report.backend = rng.pick(["127.0.0.13:80", "127.0.0.11:81", "[::1]:80", "localhost:80"]);
      return { report, status: 404, field: "backend" };
  }
}

/** Could `value` be accepted (every report valid)? Conservative: true whenever a report names a real backend. */
function maybeValid(value: unknown): boolean {
  const items = Array.isArray(value) ? value : [value];
  return items.some((item) =>
    typeof item === "object" && item !== null &&
    typeof (item as { backend?: unknown }).backend === "string" &&
    /127\.0\.0\.1[12]/.test((item as { backend: string }).backend)
  );
}

function feedbackCase(rng: Rng): FeedbackCase {
  const asAdmin = rng.next() < 0.5;
  const authorization = asAdmin ? adminAuth : webAuth;
  const roll = rng.next();
  if (roll < 0.3) {
    for (;;) {
      const value = rng.next() < 0.8
        ? randomJson(rng)
        : Array.from({ length: rng.int(1, 5) }, () => randomJson(rng));
      if (maybeValid(value)) continue;
      return {
        kind: "random JSON",
        body: JSON.stringify(value) ?? "null",
        authorization,
        expect: [400, 403, 404],
      };
    }
  }
  if (roll < 0.6) {
    const { report, status, field } = brokenReport(rng, asAdmin);
    return {
      kind: "mutated report",
      body: JSON.stringify(report),
      authorization,
      expect: [status],
      path: field ?? "",
    };
  }
  if (roll < 0.7) {
    // A batch of valid reports with one broken one: the whole batch is refused, naming the item.
    const size = rng.int(2, 20);
    const at = rng.int(0, size - 1);
    const broken = brokenReport(rng, asAdmin);
    const batch = Array.from(
      { length: size },
      (_, i) => i === at ? broken.report : validReport(rng, asAdmin ? rng.pick(SERVICES) : "web"),
    );
    return {
      kind: "batch with one broken report",
      body: JSON.stringify(batch),
      authorization,
      expect: [broken.status],
      path: `[${at}]${broken.field === null ? "" : `.${broken.field}`}`,
    };
  }
  if (roll < 0.8) {
    // Broken JSON text: a valid body mutated until it no longer parses.
    for (;;) {
      const text = JSON.stringify(rng.next() < 0.5 ? validReport(rng, "web") : [validReport(rng, "web")]);
      const bytes = mutateBytes(rng, encoder.encode(text));
      const body = decoder.decode(bytes);
      try {
        JSON.parse(body);
        continue;
      } catch {
        return { kind: "broken JSON", body, authorization, expect: [400], path: "" };
      }
    }
  }
  if (roll < 0.85) {
    // Every body is 1 byte to 64 KiB over the limit of POST /v1/feedback, whichever way it is padded.
    const over = rng.int(1, 64 * 1024);
    const valid = JSON.stringify(validReport(rng, "web"));
    const wrapper = `{"service":""}`;
    const body = rng.next() < 0.5
      ? valid + " ".repeat(MAX_FEEDBACK_BODY_BYTES - valid.length + over)
      : `{"service":"${"w".repeat(MAX_FEEDBACK_BODY_BYTES - wrapper.length + over)}"}`;
    return { kind: "oversized body", body, authorization, expect: [413] };
  }
  if (roll < 0.9) {
    // A valid report with no or a wrong token: a refused request that would change something if let in.
    const body = JSON.stringify(validReport(rng, "web"));
    const bad = rng.pick([
      null,
      "",
      "Bearer",
      "Bearer ",
      `Basic ${btoa(`admin:${ADMIN_TOKEN}`)}`,
      `Bearer ${ADMIN_TOKEN}x`,
      `Bearer ${ADMIN_TOKEN.slice(0, -1)}`,
      `Bearer ${WEB_TOKEN} extra`,
      `Token ${ADMIN_TOKEN}`,
      "Bearer \u00e9",
    ]);
    return { kind: "bad token", body, authorization: bad, expect: [401], path: "authorization" };
  }
  if (roll < 0.95) {
    const body = rng.pick([
      "[]",
      JSON.stringify(Array.from({ length: 1001 }, () => ({ service: "web", backend: A, weight: 50 }))),
    ]);
    return { kind: "batch of 0 or 1001", body, authorization, expect: [400], path: "" };
  }
  const depth = rng.int(100, 30_000);
  const body = rng.next() < 0.5 ? "[".repeat(depth) + "]".repeat(depth) : '{"a":'.repeat(depth / 5) + "1" +
    "}".repeat(depth / 5);
  return { kind: "deep nesting", body, authorization, expect: [400] };
}

/** Checks one answer: an expected status and a JSON `{error, path}` body. */
async function checkAnswer(c: FeedbackCase, response: Response): Promise<string | null> {
  const text = await response.text();
  const where = `${c.kind} (${c.body.slice(0, 120)}${c.body.length > 120 ? "…" : ""}, ${c.authorization})`;
  if (!c.expect.includes(response.status)) return `${where}: status ${response.status} ${text.slice(0, 300)}`;
  let body: { error?: unknown; path?: unknown };
  try {
    body = JSON.parse(text);
  } catch {
    return `${where}: body is not JSON: ${text.slice(0, 200)}`;
  }
  if (typeof body.error !== "string" || body.error === "" || typeof body.path !== "string") {
    return `${where}: body is not {error, path}: ${text.slice(0, 200)}`;
  }
  if (c.path !== undefined && body.path !== c.path) {
    return `${where}: path ${JSON.stringify(body.path)}, want ${c.path}`;
  }
  return null;
}

function feedbackRequest(c: FeedbackCase): RequestInit {
  return {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(c.authorization === null ? {} : { authorization: c.authorization }),
    },
    body: c.body,
  };
}

Deno.test("4,000 random and mutated feedback bodies (in process): each gets its 4xx with {error, path}, never 500, and nothing changes", async () => {
  const parsed = parseConfig(JSON.stringify(feedbackConfig()));
  assert.deepEqual(parsed.problems, []);
  const model = new ClusterModel(parsed.config as Config, { seed: 7 });
  const app = testAdminApp(model, ADMIN_TOKEN);
  const services = async () =>
    await (await app.request("/v1/services", { headers: { authorization: adminAuth } })).json();
  try {
    const before = await services();
    const versionBefore = model.version;
    const rng = new Rng(fuzzSeed("feedback fuzz, in process"));
    const kinds = new Map<string, number>();
    const problems: string[] = [];
    for (let i = 0; i < 4_000; i++) {
      const c = feedbackCase(rng);
      kinds.set(c.kind, (kinds.get(c.kind) ?? 0) + 1);
      // Each case from its own address, as Deno.serve would tell: failed logins are slowed per source.
      const source = { remoteAddr: { hostname: `10.${i >> 16}.${(i >> 8) & 255}.${i & 255}` } };
      const problem = await checkAnswer(c, await app.request("/v1/feedback", feedbackRequest(c), source));
      if (problem) problems.push(problem);
    }
    console.log(`cases by kind: ${JSON.stringify(Object.fromEntries(kinds))}`);
    assert.deepEqual(problems.slice(0, 10), [], `${problems.length} of 4000 answers were wrong`);
    assert.deepEqual(await services(), before, "GET /v1/services changed");
    assert.equal(model.version, versionBefore, "the state version moved");

    // The canary: a valid report does change the view, so the comparison above could have failed.
    const ok = await app.request(
      "/v1/feedback",
      feedbackRequest({
        kind: "valid",
        body: JSON.stringify({ service: "web", backend: A, weight: 10 }),
        authorization: webAuth,
        expect: [202],
      }),
    );
    assert.equal(ok.status, 202);
    await ok.body?.cancel();
    assert.notDeepEqual(await services(), before);
  } finally {
    model.close();
  }
});

Deno.test("420 random, mutated and streamed feedback bodies over HTTP to a manager process: each refused with {error, path}, nothing changes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "switchyard-fuzz-" });
  const { proc, admin } = await startManagerProcess(dir, JSON.stringify(feedbackConfig()));
  const api = async (path: string) =>
    await (await fetch(`http://${admin}${path}`, { headers: { authorization: adminAuth } })).json();
  try {
    const before = stableView(await api("/v1/services"));
    const rng = new Rng(fuzzSeed("feedback fuzz, over HTTP"));
    const cases = Array.from({ length: 400 }, () => feedbackCase(rng));
    const problems: string[] = (await forEachBounded(cases, 16, async (c) => {
      try {
        return await checkAnswer(c, await fetch(`http://${admin}/v1/feedback`, feedbackRequest(c)));
      } catch (error) {
        return `${c.kind}: ${error}`;
      }
    })).filter((p) => p !== null);
    // Bodies streamed without a length (chunked), past the limit: refused as they arrive.
    for (let i = 0; i < 20; i++) {
      const valid = encoder.encode(JSON.stringify({ service: "web", backend: A, weight: 10 }));
      const pad = encoder.encode(" ".repeat(4096));
      // 4 KiB each: past 256 KiB from the 65th on.
      const chunks = rng.int(65, 300);
      const body = new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(valid);
          for (let j = 0; j < chunks; j++) controller.enqueue(pad);
          controller.close();
        },
      });
      const c: FeedbackCase = {
        kind: "streamed oversized body",
        body: "",
        authorization: adminAuth,
        expect: [413],
      };
      const problem = await checkAnswer(
        c,
        await fetch(`http://${admin}/v1/feedback`, { ...feedbackRequest(c), body }),
      );
      if (problem) problems.push(problem);
    }
    assert.deepEqual(problems.slice(0, 10), [], `${problems.length} of 420 answers were wrong`);
    assert.deepEqual(stableView(await api("/v1/services")), before, "GET /v1/services changed");
    assert.ok(
      !proc.logs.some((l) => l.level === "ERROR" || l.level === "FATAL"),
      "the manager logged an error",
    );
    assert.equal(
      await fetch(`http://${admin}/healthz`).then(async (r) => (await r.body?.cancel(), r.status)),
      200,
    );
  } finally {
    await proc.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------------------
// The cluster port

interface AgentsView {
  agents: Array<{ id: string; claim: number; state_version: number; address: string }>;
}

function frame(body: Uint8Array | string): Uint8Array {
  const bytes = typeof body === "string" ? encoder.encode(body) : body;
  const out = new Uint8Array(4 + bytes.length);
  new DataView(out.buffer).setUint32(0, bytes.length);
  out.set(bytes, 4);
  return out;
}

/** A case on a raw TCP port: bytes to send (in steps), and whether the peer may wait for more before closing. */
interface WireCase {
  readonly kind: string;
  /** Sent in order; a function step gets what the peer has sent so far and returns the next bytes. */
  readonly steps: ReadonlyArray<Uint8Array | ((received: Uint8Array) => Promise<Uint8Array>)>;
  /** True when the bytes are an unfinished message: the peer closes only at its timeout. */
  readonly stalls: boolean;
}

interface WireResult {
  readonly kind: string;
  readonly localPort: number;
  readonly closedAfterMs: number;
  /** null when the peer closed; else what went wrong. */
  readonly problem: string | null;
}

/** Sends a case and waits for the peer to close the connection (end of stream or reset). */
async function runWireCase(port: number, c: WireCase, timeoutMs: number): Promise<WireResult> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const localPort = (conn.localAddr as Deno.NetAddr).port;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      conn.close();
    } catch {
      // closed
    }
  }, timeoutMs);
  const started = performance.now();
  const chunks: Uint8Array[] = [];
  let received = new Uint8Array(0);
  const readSome = async (): Promise<boolean> => {
    const buffer = new Uint8Array(16 * 1024);
    const n = await conn.read(buffer);
    if (n === null) return false;
    chunks.push(buffer.slice(0, n));
    const all = new Uint8Array(received.length + n);
    all.set(received);
    all.set(buffer.subarray(0, n), received.length);
    received = all;
    return true;
  };
  try {
    for (const step of c.steps) {
      if (typeof step === "function") {
        // Wait for the peer's answer (the manager's challenge) before the next step.
        while (framesIn(received).length === 0 && await readSome().catch(() => false)) { /* more */ }
      }
      const bytes = typeof step === "function" ? await step(received) : step;
      await writeAll(conn, bytes).catch(() => {});
    }
    try {
      while (await readSome()) { /* until the peer closes */ }
    } catch {
      // reset by the peer: closed too
    }
    const closedAfterMs = performance.now() - started;
    return {
      kind: c.kind,
      localPort,
      closedAfterMs,
      problem: timedOut ? `not closed within ${timeoutMs} ms` : null,
    };
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch {
      // closed by the timer
    }
  }
}

/**
 * Runs every case: those that stall (and wait for the peer's timeout) all at once, the others 100 at a
 * time alongside. Results come back in the order of `cases`.
 */
async function runWireCases(port: number, cases: readonly WireCase[]): Promise<WireResult[]> {
  const results: WireResult[] = new Array(cases.length);
  const indexes = cases.map((_, i) => i);
  const run = (group: number[], concurrency: number) =>
    forEachBounded(group, concurrency, async (i) => {
      results[i] = await runWireCase(port, cases[i]!, 9_000);
    });
  await Promise.all([
    run(indexes.filter((i) => cases[i]!.stalls), 1_000),
    run(indexes.filter((i) => !cases[i]!.stalls), 100),
  ]);
  return results;
}

/** Reads whole frames out of what the manager sent. */
function framesIn(bytes: Uint8Array): unknown[] {
  const out: unknown[] = [];
  let offset = 0;
  while (bytes.length - offset >= 4) {
    const size = new DataView(bytes.buffer, bytes.byteOffset + offset).getUint32(0);
    if (bytes.length - offset - 4 < size) break;
    out.push(JSON.parse(decoder.decode(bytes.subarray(offset + 4, offset + 4 + size))));
    offset += 4 + size;
  }
  return out;
}

function hello(rng: Rng, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: "hello",
    version: PROTOCOL_VERSION,
    agent: `fuzz-${rng.int(0, 1e9)}`,
    nonce: btoa(String.fromCharCode(...rng.bytes(16))),
    ...overrides,
  };
}

/** A wrong-shape message: a known message with a field of the wrong type, missing, extra, or out of order. */
function wrongShape(rng: Rng): Record<string, unknown> {
  const pick = rng.int(0, 9);
  switch (pick) {
    case 0:
      return hello(rng, { version: rng.pick(["1", null, 1.5, PROTOCOL_VERSION + 1, 0, -1]) });
    case 1:
      return hello(rng, { agent: rng.pick(["", 5, null, "a".repeat(129), []]) });
    case 2:
      return hello(rng, { nonce: rng.pick(["not base64!", 7, null, "%%%"]) });
    case 3:
      return hello(rng, { extra: randomJson(rng, 3) });
    case 4: {
      const h = hello(rng);
      delete h[rng.pick(["type", "version", "agent", "nonce"])];
      return h;
    }
    case 5:
      return hello(rng, { type: rng.pick(["HELLO", "helo", "", "challenge", "welcome", 1, null]) });
    case 6:
      return { type: "auth", proof: btoa("x".repeat(32)), mesh: null };
    case 7:
      return { type: "heartbeat", connections: { served: 0, handed_off: 0, open: 0 }, backends: [] };
    case 8:
      return { type: rng.pick(["decide", "ack", "open_counts", "connect_failures"]), version: 1, id: 1 };
    default: {
      const value = randomJson(rng);
      return typeof value === "object" && value !== null && !Array.isArray(value)
        ? value as Record<string, unknown>
        : { value };
    }
  }
}

function clusterCases(rng: Rng): WireCase[] {
  const cases: WireCase[] = [];
  const add = (kind: string, count: number, make: () => WireCase["steps"], stalls = false) => {
    for (let i = 0; i < count; i++) cases.push({ kind, steps: make(), stalls });
  };
  // Random bytes: the first four are a length; most announce more than 16 MiB and are cut off at once.
  for (let i = 0; i < 1_500; i++) {
    const bytes = rng.bytes(rng.int(1, 400));
    const size = bytes.length >= 4 ? new DataView(bytes.buffer).getUint32(0) : -1;
    const stalls = size < 0 || (size <= 16 * 1024 * 1024 && size > bytes.length - 4);
    cases.push({ kind: "random bytes", steps: [bytes], stalls });
  }
  add("oversized frame", 200, () => {
    const head = new Uint8Array(4 + rng.int(0, 64));
    new DataView(head.buffer).setUint32(0, rng.int(16 * 1024 * 1024 + 1, 0xffffffff));
    return [head];
  });
  add("truncated frame", 150, () => {
    const whole = frame(JSON.stringify(hello(rng)));
    return [whole.subarray(0, rng.int(1, whole.length - 1))];
  }, true);
  add("invalid JSON in a valid-length frame", 800, () => {
    for (;;) {
      const text = JSON.stringify(hello(rng));
      const body = rng.next() < 0.7 ? mutateBytes(rng, encoder.encode(text)) : rng.bytes(rng.int(0, 200));
      try {
        JSON.parse(decoder.decode(body));
      } catch {
        return [frame(body)];
      }
    }
  });
  add("valid JSON of the wrong shape", 800, () => [frame(JSON.stringify(wrongShape(rng)))]);
  add("hello, then a wrong proof", 300, () => {
    const first = hello(rng);
    const kind = rng.next();
    const junk = rng.pick([
      "",
      "x",
      btoa("0".repeat(32)),
      btoa(ADMIN_TOKEN),
      btoa(String.fromCharCode(...rng.bytes(32))),
    ]);
    return [
      frame(JSON.stringify(first)),
      async (received) => {
        const challenge = framesIn(received)[0] as { nonce?: string } | undefined;
        // The right proof under another token (an attacker without it), or not a proof at all.
        const answer = kind < 0.6 && challenge?.nonce
          ? await proof("not-the-cluster-token-0123456789", {
            role: "agent",
            agentNonce: String(first.nonce),
            managerNonce: challenge.nonce,
            agent: String(first.agent),
          })
          : junk;
        return frame(JSON.stringify({ type: "auth", proof: answer, mesh: null }));
      },
    ];
  });
  add("hello, then a wrong-shape frame", 150, () => [
    frame(JSON.stringify(hello(rng))),
    frame(JSON.stringify(wrongShape(rng))),
  ]);
  add("hello, then silence", 50, () => [frame(JSON.stringify(hello(rng)))], true);
  return cases;
}

/** What must not move while the cluster port is attacked. */
async function clusterSnapshot(cluster: TestCluster) {
  const agents = await cluster.api<AgentsView>("/v1/agents");
  const services = await cluster.api<{ version: number }>("/v1/services");
  return {
    version: services.version,
    agents: agents.agents.map((a) => ({
      id: a.id,
      claim: a.claim,
      state_version: a.state_version,
      address: a.address,
    })),
  };
}

/** Waits until `count` agents have joined and acknowledged the manager's current state: nothing is settling. */
async function untilSettled(cluster: TestCluster, count: number): Promise<void> {
  await eventually(
    async () => {
      const snapshot = await clusterSnapshot(cluster);
      return snapshot.agents.length === count &&
        snapshot.agents.every((a) => a.state_version === snapshot.version);
    },
    10_000,
    `${count} agent(s) serving the current state`,
  );
}

const joins = (proc: Proc) => proc.logs.filter((l) => l.message.startsWith("Joined the manager")).length;

Deno.test("about 4,000 garbage, oversized, truncated and wrong-shape frames on the cluster port: each closed by the manager, nothing changes", async () => {
  const backend = startGreeter("b1", { hold: true });
  const cluster = await startTestCluster({
    agents: 2,
    services: [testService({
      backends: [backend.address],
    })],
  });
  try {
    await untilSettled(cluster, 2);
    const before = await clusterSnapshot(cluster);
    const joinsBefore = cluster.agents.map((a) => joins(a.proc));
    const refusedBefore = cluster.manager.logs.filter((l) => l.message.startsWith("Refused peer")).length;
    const port = Number(cluster.cluster.split(":").pop());
    const rng = new Rng(fuzzSeed("cluster port fuzz"));
    const cases = clusterCases(rng);
    const started = performance.now();
    const results = await runWireCases(port, cases);
    const took = performance.now() - started;

    const kinds = new Map<string, { count: number; maxMs: number }>();
    const problems: string[] = [];
    for (const [index, result] of results.entries()) {
      const c = cases[index]!;
      const entry = kinds.get(c.kind) ?? { count: 0, maxMs: 0 };
      entry.count++;
      entry.maxMs = Math.max(entry.maxMs, result.closedAfterMs);
      kinds.set(c.kind, entry);
      if (result.problem) problems.push(`${c.kind}: ${result.problem}`);
      // A complete bad message is refused at once; only an unfinished one waits for the handshake timeout.
      else if (!c.stalls && result.closedAfterMs > 2_000) {
        problems.push(`${c.kind}: closed only after ${result.closedAfterMs.toFixed(0)} ms`);
      }
    }
    console.log(
      `${cases.length} cases in ${(took / 1000).toFixed(1)} s: ${
        [...kinds].map(([kind, { count, maxMs }]) =>
          `${kind} ${count} (closed within ${maxMs.toFixed(0)} ms)`
        ).join(
          "; ",
        )
      }`,
    );
    assert.deepEqual(problems.slice(0, 10), [], `${problems.length} cases went wrong`);
    // Each one was refused and logged as such, by its own port.
    await eventually(
      () =>
        cluster.manager.logs.filter((l) => l.message.startsWith("Refused peer")).length >=
          refusedBefore + cases.length,
      5_000,
      "a refusal logged for every case",
    );
    const refusedPorts = new Set(
      cluster.manager.logs.filter((l) => l.message.startsWith("Refused peer")).map((l) =>
        Number(String(l.properties.remote).split(":").pop())
      ),
    );
    const unlogged = results.filter((r) => !refusedPorts.has(r.localPort));
    assert.equal(
      unlogged.length,
      0,
      `no refusal logged for ${unlogged.slice(0, 5).map((r) => r.kind).join(", ")}`,
    );
    // Nothing changed: the same agents with the same sessions, claims and state version.
    assert.deepEqual(await clusterSnapshot(cluster), before);
    assert.deepEqual(cluster.agents.map((a) => joins(a.proc)), joinsBefore, "an agent lost its session");
    assert.ok(!cluster.manager.logs.some((l) => l.message.includes(" left")), "an agent left");
    assert.ok(
      !cluster.manager.logs.some((l) => l.level === "ERROR" || l.level === "FATAL"),
      "the manager logged an error",
    );
    for (const agent of cluster.agents) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: agent.port });
      const buffer = new Uint8Array(16);
      const n = await conn.read(buffer);
      conn.close();
      assert.equal(decoder.decode(buffer.subarray(0, n ?? 0)), "b1\n", `${agent.id} still serves`);
    }
  } finally {
    await cluster.close();
    await backend.close();
  }
});

Deno.test("unauthenticated peers streaming frames of up to 16 MiB on the cluster port: each is cut off, and the manager's memory stays bounded", async () => {
  const cluster = await startTestCluster({
    agents: 1,
    services: [testService({
      backends: ["127.0.0.1:9"],
    })],
  });
  try {
    await untilSettled(cluster, 1);
    const before = await clusterSnapshot(cluster);
    const port = Number(cluster.cluster.split(":").pop());
    const pid = cluster.manager.pid;
    const rssBefore = await vmRssKiB(pid);
    let peak = rssBefore;
    const peers = 40;
    const mib = new Uint8Array(1024 * 1024).fill(0x20);
    // Each peer announces a frame of exactly the 16 MiB a frame may have, then sends 15 MiB of it: a
    // stranger that has proven nothing yet.
    const results = await forEachBounded(Array.from({ length: peers }), peers, async () => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      const started = performance.now();
      try {
        const head = new Uint8Array(4);
        new DataView(head.buffer).setUint32(0, 16 * 1024 * 1024);
        let sent = 0;
        try {
          await writeAll(conn, head);
          for (let i = 0; i < 15; i++) {
            await writeAll(conn, mib);
            sent++;
          }
        } catch {
          // cut off by the manager
        }
        peak = Math.max(peak, await vmRssKiB(pid));
        try {
          while ((await conn.read(new Uint8Array(4096))) !== null) { /* until the manager closes */ }
        } catch {
          // reset: closed too
        }
        return { sentMiB: sent, closedAfterMs: performance.now() - started };
      } finally {
        conn.close();
      }
    });
    peak = Math.max(peak, await vmRssKiB(pid));
    const grew = (peak - rssBefore) / 1024;
    const slowest = Math.max(...results.map((r) => r.closedAfterMs));
    console.log(
      `${peers} peers sent ${
        results.reduce((n, r) => n + r.sentMiB, 0)
      } MiB before being cut off (the last after ${slowest.toFixed(0)} ms); manager VmRSS ${
        (rssBefore / 1024).toFixed(0)
      } MiB before, peak ${(peak / 1024).toFixed(0)} MiB`,
    );
    assert.ok(
      grew < 100,
      `the manager grew ${grew.toFixed(0)} MiB buffering frames of ${peers} unauthenticated peers`,
    );
    // Announcing more than a handshake can need is refused at once, not at the handshake timeout.
    assert.ok(
      slowest < 2_000,
      `a peer announcing a 16 MiB frame was cut off only after ${slowest.toFixed(0)} ms`,
    );
    assert.deepEqual(await clusterSnapshot(cluster), before);
  } finally {
    await cluster.close();
  }
});

Deno.test("a flood of 4,000 idle connections to the cluster port: the manager's memory stays bounded, agents keep their sessions, and one can join after", async () => {
  const cluster = await startTestCluster({
    agents: 2,
    services: [testService({
      backends: ["127.0.0.1:9"],
    })],
  });
  const flood: Deno.Conn[] = [];
  try {
    await untilSettled(cluster, 2);
    const before = await clusterSnapshot(cluster);
    const joinsBefore = cluster.agents.map((a) => joins(a.proc));
    const port = Number(cluster.cluster.split(":").pop());
    const pid = cluster.manager.pid;
    const rssBefore = await vmRssKiB(pid);
    // Strangers that connect and say nothing, each for as long as the manager lets it.
    for (let i = 0; i < 4_000; i++) flood.push(await Deno.connect({ hostname: "127.0.0.1", port }));
    await sleep(1_000);
    const rssFlooded = await vmRssKiB(pid);
    const during = await clusterSnapshot(cluster);
    const started = performance.now();
    const closedAfter = await Promise.all(flood.map(async (conn) => {
      try {
        while ((await conn.read(new Uint8Array(64))) !== null) { /* until the manager closes it */ }
      } catch {
        // reset: closed too
      }
      return performance.now() - started;
    }));
    const grew = (rssFlooded - rssBefore) / 1024;
    console.log(
      `4000 idle peers: manager VmRSS ${(rssBefore / 1024).toFixed(0)} MiB before, ${
        (rssFlooded / 1024).toFixed(0)
      } MiB flooded; all closed by the manager within ${(Math.max(...closedAfter) + 1_000).toFixed(0)} ms`,
    );
    assert.ok(grew < 150, `the manager grew ${grew.toFixed(0)} MiB holding idle strangers`);
    assert.deepEqual(during, before, "the flood changed the agents or the state");
    assert.deepEqual(cluster.agents.map((a) => joins(a.proc)), joinsBefore, "an agent lost its session");
    // Once the flood is over, a new agent joins.
    await cluster.startAgent("agent-3");
    await eventually(
      async () => (await clusterSnapshot(cluster)).agents.length === 3,
      10_000,
      "agent-3 to join",
    );
  } finally {
    flood.forEach(closeQuietly);
    await cluster.close();
  }
});

// ---------------------------------------------------------------------------------------------------------
// The mesh port

const V2_SIGNATURE = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];

/** The byte ranges of a v2 header's signed parts: addresses and ports, and each TLV's value. */
function signedRanges(header: Uint8Array): Array<[number, number]> {
  const ranges: Array<[number, number]> = [[16, 28]];
  const end = 16 + new DataView(header.buffer, header.byteOffset).getUint16(14);
  for (let at = 28; at + 3 <= end;) {
    const length = new DataView(header.buffer, header.byteOffset).getUint16(at + 1);
    if (length > 0) ranges.push([at + 3, at + 3 + length]);
    at += 3 + length;
  }
  return ranges;
}

/**
 * Whether a PROXY header parser would wait for more of `bytes` (a prefix of a header that could still be
 * whole): the mesh port then closes it only at its header timeout.
 */
function unfinished(bytes: Uint8Array): boolean {
  try {
    return decodeProxyHeader(bytes) === null;
  } catch {
    return false;
  }
}

async function meshCases(rng: Rng, target: { port: number }): Promise<WireCase[]> {
  const good = new TokenSigner(CLUSTER_TOKEN);
  const wrong = new TokenSigner("not-the-cluster-token-0123456789");
  const request = encoder.encode("GET / HTTP/1.0\r\n\r\n");
  const flow = () => ({
    service: rng.next() < 0.9 ? "web" : rng.pick(["api", "", "x".repeat(200)]),
    sender: rng.pick(["agent-1", "agent-2", "mallory"]),
    client: { ip: `10.${rng.int(0, 255)}.${rng.int(0, 255)}.${rng.int(1, 254)}`, port: rng.int(1, 65535) },
    destination: { ip: "127.0.0.1", port: target.port },
  });
  const withRequest = (header: Uint8Array) => rng.next() < 0.5 ? [header] : [header, request];
  const cases: WireCase[] = [];
  for (let i = 0; i < 900; i++) {
    // Random bytes that do not start like a PROXY header (those could wait for more).
    const bytes = rng.bytes(rng.int(1, 600));
    while (bytes[0] === 0x0d || bytes[0] === 0x50) bytes[0] = rng.int(0, 255);
    cases.push({ kind: "random bytes", steps: [bytes], stalls: false });
  }
  for (let i = 0; i < 150; i++) {
    const bytes = new Uint8Array([...V2_SIGNATURE, ...rng.bytes(rng.int(4, 600))]);
    cases.push({ kind: "v2 signature, then random bytes", steps: [bytes], stalls: unfinished(bytes) });
  }
  for (let i = 0; i < 100; i++) {
    const text = rng.pick([
      `PROXY TCP4 10.1.2.3 127.0.0.1 ${rng.int(1, 65535)} ${target.port}\r\n`,
      "PROXY UNKNOWN\r\n",
      `PROXY TCP6 ::1 ::1 1 ${target.port}\r\n`,
      `PROXY TCP4 10.1.2.3 127.0.0.1 1 ${target.port}\n`,
      `PROXY ${"A".repeat(120)}\r\n`,
    ]);
    cases.push({ kind: "PROXY v1 header", steps: withRequest(encoder.encode(text)), stalls: false });
  }
  for (let i = 0; i < 300; i++) {
    cases.push({
      kind: "header signed with the wrong token",
      steps: withRequest(await encodeMeshHeader(wrong, flow())),
      stalls: false,
    });
  }
  for (let i = 0; i < 800; i++) {
    // A wrong-token header, then mutated; keep those still complete (a longer length would only wait).
    const mutated = mutateBytes(rng, await encodeMeshHeader(wrong, flow()));
    if (mutated.length === 0) continue;
    cases.push({ kind: "mutated wrong-token header", steps: [mutated], stalls: unfinished(mutated) });
  }
  for (let i = 0; i < 300; i++) {
    const header = await encodeMeshHeader(good, flow());
    cases.push({
      kind: "truncated header",
      steps: [header.subarray(0, rng.int(1, header.length - 1))],
      stalls: true,
    });
  }
  for (let i = 0; i < 400; i++) {
    // Signed with the cluster token, but more than the allowed skew (60 s) away from now.
    const skew = (rng.next() < 0.5 ? -1 : 1) * rng.int(61_000, 7 * 24 * 3_600_000);
    cases.push({
      kind: "stale or future timestamp",
      steps: withRequest(await encodeMeshHeader(good, flow(), Date.now() + skew)),
      stalls: false,
    });
  }
  for (let i = 0; i < 400; i++) {
    // Signed with the cluster token, then one byte of a signed part changed: the signature no longer holds.
    const header = await encodeMeshHeader(good, flow());
    const [from, to] = rng.pick(signedRanges(header));
    const at = rng.int(from, to - 1);
    header[at] = header[at]! ^ (1 << rng.int(0, 7));
    cases.push({
      kind: "signed header with a signed byte changed",
      steps: withRequest(header),
      stalls: false,
    });
  }
  return cases;
}

Deno.test("about 3,300 garbage, forged, stale and truncated PROXY headers on the mesh port: each refused and closed, none reaches a backend", async () => {
  const backend = startGreeter("b1", { hold: true });
  const cluster = await startTestCluster({
    agents: 2,
    services: [testService({
      backends: [backend.address],
    })],
    agentArgs: () => ["--admin", "127.0.0.1:0"],
  });
  try {
    const target = cluster.agents[0]!;
    const mesh = Number(
      String(
        (await target.proc.waitForLog((l) => l.message.includes("takes handed-off flows"))).properties.mesh,
      )
        .split(":").pop(),
    );
    const admin = await agentAdmin(target.proc);
    await claimsSplit(cluster.agents.map((a) => a.proc), 2, { what: "both agents to know each other" });
    const rng = new Rng(fuzzSeed("mesh port fuzz"));
    const cases = await meshCases(rng, target);
    const refusedBefore = await agentMetric(admin, "switchyard_mesh_refused_total");
    const started = performance.now();
    const results = await runWireCases(mesh, cases);
    const took = performance.now() - started;
    const kinds = new Map<string, number>();
    const problems: string[] = [];
    for (const [index, result] of results.entries()) {
      const c = cases[index]!;
      kinds.set(c.kind, (kinds.get(c.kind) ?? 0) + 1);
      if (result.problem) problems.push(`${c.kind}: ${result.problem}`);
      else if (!c.stalls && result.closedAfterMs > 2_000) {
        problems.push(`${c.kind}: closed only after ${result.closedAfterMs.toFixed(0)} ms`);
      }
    }
    console.log(
      `${cases.length} cases in ${(took / 1000).toFixed(1)} s: ${JSON.stringify(Object.fromEntries(kinds))}`,
    );
    assert.deepEqual(problems.slice(0, 10), [], `${problems.length} cases went wrong`);
    assert.equal(backend.accepted(), 0, "a forged flow reached the backend");
    const served = cluster.agents.reduce(
      (n, a) => n + a.proc.logs.filter((l) => l.message.includes("served by")).length,
      0,
    );
    assert.equal(served, 0, "an agent served a forged flow");
    assert.equal(
      (await agentMetric(admin, "switchyard_mesh_refused_total")) - refusedBefore,
      cases.length,
      "every case is counted as refused",
    );
    // The agents still serve, handing off as before.
    for (let i = 0; i < 20; i++) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: cluster.agents[i % 2]!.port });
      const buffer = new Uint8Array(16);
      const n = await conn.read(buffer);
      conn.close();
      assert.equal(decoder.decode(buffer.subarray(0, n ?? 0)), "b1\n");
    }
    assert.equal(backend.accepted(), 20);
  } finally {
    await cluster.close();
    await backend.close();
  }
});
