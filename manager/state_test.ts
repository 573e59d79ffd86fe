import assert from "node:assert/strict";
import { setImmediate } from "node:timers";
import { buildTable, DEFAULT_TABLE_SIZE, NO_BACKEND } from "../cluster/maglev.ts";
import { decodeTable } from "../cluster/protocol.ts";
import { applyStateDelta, serviceDelta } from "../cluster/state_delta.ts";
import { parseReports, type Report } from "../feedback/mod.ts";
import { anyDouble, check, fc } from "../tests/_property.ts";
import { type Config, parseConfig } from "./config.ts";
import {
  ClusterModel,
  type Publication,
  RejectedReportError,
  type ServiceRuntime,
  UnknownError,
} from "./state.ts";

const A = "10.0.0.11:80";
const B = "10.0.0.12:80";
const C = "10.0.0.13:80";
const GONE = "10.0.0.99:80";

function configOf(services: Array<Record<string, unknown>>): Config {
  const result = parseConfig(
    JSON.stringify({ manager: { tokens: { cluster: "cluster-secret" } }, services }),
  );
  assert.deepEqual(result.problems, []);
  return result.config as Config;
}

function service(name: string, port: number, extra: Record<string, unknown> = {}) {
  return { name, listen: `0.0.0.0:${port}`, backends: [{ address: A }, { address: B }], ...extra };
}

/** A model on a clock the test moves. */
function modelOf(config: Config, options: { tableSize?: number } = {}) {
  const clock = { now: 0 };
  const model = new ClusterModel(config, { seed: 1, now: () => clock.now, ...options });
  return { model, clock };
}

/** Tables of the properties: a prime small enough to build thousands of them quickly. */
const SMALL_TABLE = 251;

function weights(runtime: ServiceRuntime | undefined): Record<string, number> {
  assert.ok(runtime);
  return Object.fromEntries(runtime.backends.map((b) => [b.config.id, b.effectiveWeight]));
}

function shares(runtime: ServiceRuntime | undefined): Record<string, number> {
  assert.ok(runtime);
  const counts: Record<string, number> = {};
  for (const index of runtime.table) {
    const id = index === NO_BACKEND ? "none" : runtime.tableIds[index]!;
    counts[id] = (counts[id] ?? 0) + 1;
  }
  return Object.fromEntries(
    Object.entries(counts).map(([id, n]) => [id, Math.round((n / runtime.table.length) * 1000) / 1000]),
  );
}

function report(fields: Partial<Report> & { backend: string }): Report {
  return { service: "web", ...fields };
}

Deno.test("feedback for one service never touches another, even on the same address", () => {
  const { model } = modelOf(configOf([service("web", 8080), service("api", 8081)]));
  const apiTable = model.service("api")!.table;
  model.applyFeedback([report({ backend: A, weight: 25 }), report({ backend: B, state: "drain" })]);
  assert.deepEqual(weights(model.service("web")), { [A]: 25, [B]: 0 });
  assert.deepEqual(weights(model.service("api")), { [A]: 100, [B]: 100 });
  assert.equal(model.service("api")!.table, apiTable, "api's table was not rebuilt");
  assert.equal(model.service("api")!.backends[0]!.feedback, null);
  // Load normalisation looks only at the reporting service's backends.
  model.applyFeedback([{ service: "api", backend: A, load: { utilization: 0.9, qps: 100 } }]);
  assert.deepEqual(weights(model.service("api")), { [A]: 100, [B]: 100 });
  model.close();
});

Deno.test("feedback weights 75:25 give the table 75% and 25% of the slots, and the answer says so", () => {
  const { model } = modelOf(configOf([service("web", 8080)]));
  const outcomes = model.applyFeedback([
    report({ backend: A, weight: 75 }),
    report({ backend: B, weight: 25 }),
  ]);
  assert.deepEqual(outcomes, [
    { service: "web", backend: A, effectiveWeight: 75, state: "up" },
    { service: "web", backend: B, effectiveWeight: 25, state: "up" },
  ]);
  assert.deepEqual(shares(model.service("web")), { [A]: 0.5, [B]: 0.5 }, "the table follows in its window");
  model.flushTables();
  assert.deepEqual(shares(model.service("web")), { [A]: 0.75, [B]: 0.25 });
  const runtime = model.service("web")!;
  // From 50/50 to 75/25 a quarter of the slots must move, and Maglev moves no more than that.
  const minimum = Math.round(DEFAULT_TABLE_SIZE * 0.25);
  assert.ok(
    Math.abs(runtime.lastSlotsMoved - minimum) <= 2,
    `moved ${runtime.lastSlotsMoved}, minimum ${minimum}`,
  );
  assert.equal(runtime.totalSlotsMoved, runtime.lastSlotsMoved);
  model.close();
});

Deno.test("a batch naming an unknown service or backend changes nothing", () => {
  const { model } = modelOf(configOf([service("web", 8080)]));
  const version = model.version;
  let notified = 0;
  model.onChange(() => notified++);
  for (
    const bad of [report({ backend: "10.9.9.9:80", weight: 1 }), {
      ...report({ backend: A, weight: 1 }),
      service: "nope",
    }]
  ) {
    assert.throws(() => model.applyFeedback([report({ backend: A, weight: 10 }), bad]), UnknownError);
  }
  assert.equal(model.version, version);
  assert.equal(notified, 0);
  assert.equal(model.service("web")!.backends[0]!.feedback, null);
  assert.deepEqual(weights(model.service("web")), { [A]: 100, [B]: 100 });
  model.close();
});

Deno.test("a report that changes no weight or state does not bump the version", () => {
  const { model, clock } = modelOf(configOf([service("web", 8080)]));
  model.applyFeedback([report({ backend: A, weight: 40 })]);
  model.flushTables();
  const version = model.version;
  clock.now = 1_000;
  model.applyFeedback([report({ backend: A, weight: 40 })]);
  assert.equal(model.version, version);
  assert.equal(
    model.service("web")!.backends[0]!.feedback?.reportedAt,
    1_000,
    "the report is still refreshed",
  );
  model.applyFeedback([report({ backend: A, weight: 41 })]);
  assert.equal(model.version, version + 1, "promised to the next publication");
  model.applyFeedback([report({ backend: A, weight: 42 })]);
  assert.equal(model.version, version + 1, "which carries every change until it is under way");
  model.flushTables();
  assert.equal(model.version, version + 1);
  assert.equal(model.snapshot().version, version + 1);
  assert.equal(model.snapshot().services[0]!.backends[0]!.weight, 42);
  model.close();
});

Deno.test("an expired report puts its backend back at its configured weight by itself, and agents hear of it", async () => {
  const model = new ClusterModel(configOf([service("web", 8080)]), { seed: 1 });
  const changes = Promise.withResolvers<void>();
  model.applyFeedback([
    report({ backend: A, weight: 75, ttlMs: 60 }),
    report({ backend: B, weight: 25, ttlMs: 30_000 }),
  ]);
  model.flushTables();
  const version = model.version;
  model.onChange(() => changes.resolve());
  await changes.promise;
  assert.equal(model.version, version + 1);
  assert.deepEqual(weights(model.service("web")), { [A]: 100, [B]: 25 });
  assert.equal(model.service("web")!.backends[0]!.feedback, null);
  assert.notEqual(model.service("web")!.backends[1]!.feedback, null);
  model.close();
});

Deno.test("feedback drain and down take a backend out of the table; up brings it back", () => {
  const { model } = modelOf(configOf([service("web", 8080)]));
  model.applyFeedback([report({ backend: A, state: "drain" })]);
  assert.equal(model.service("web")!.backends[0]!.state, "draining");
  model.flushTables();
  assert.deepEqual(shares(model.service("web")), { [B]: 1 });
  model.applyFeedback([report({ backend: A, state: "down" })]);
  assert.equal(model.service("web")!.backends[0]!.state, "down");
  model.flushTables();
  assert.deepEqual(shares(model.service("web")), { [B]: 1 });
  const snapshotBackend = model.snapshot().services[0]!.backends[0]!;
  assert.deepEqual([snapshotBackend.state, snapshotBackend.weight], ["down", 0]);
  model.applyFeedback([report({ backend: A, state: "up", weight: 50 })]);
  assert.deepEqual(weights(model.service("web")), { [A]: 50, [B]: 100 });
  model.close();
});

Deno.test("operator drain holds whatever feedback says, and feedback drain holds whatever the operator says", () => {
  const { model } = modelOf(configOf([service("web", 8080)]));
  model.setOperatorState("web", A, "drain");
  model.applyFeedback([report({ backend: A, state: "up", weight: 100 })]);
  assert.equal(model.service("web")!.backends[0]!.state, "draining");
  model.setOperatorState("web", A, "up");
  model.applyFeedback([report({ backend: A, state: "drain" })]);
  assert.equal(model.service("web")!.backends[0]!.state, "draining");
  model.close();
});

Deno.test("fall failures in a row, active or from agents, take a backend down; rise passes bring it back", () => {
  const { model } = modelOf(configOf([service("web", 8080, { health: { rise: 2, fall: 3 } })]));
  const backend = () => model.service("web")!.backends[0]!;
  assert.equal(backend().health, "unknown");
  assert.equal(backend().effectiveWeight, 100, "unknown counts as up");
  model.recordCheck("web", A, { ok: true, detail: "connected" });
  assert.equal(backend().health, "up");
  model.reportConnectFailures("agent-1", [{ service: "web", backend: A, count: 2 }]);
  assert.equal(backend().health, "up");
  model.recordCheck("web", A, { ok: true, detail: "connected" });
  model.reportConnectFailures("agent-2", [{ service: "web", backend: A, count: 2 }]);
  assert.equal(backend().health, "up", "a pass in between breaks the row");
  model.reportConnectFailures("agent-1", [{ service: "web", backend: A, count: 1 }]);
  assert.equal(backend().health, "down");
  model.flushTables();
  assert.deepEqual(shares(model.service("web")), { [B]: 1 });
  model.recordCheck("web", A, { ok: true, detail: "connected" });
  assert.equal(backend().health, "down");
  model.recordCheck("web", A, { ok: false, detail: "connection refused" });
  model.recordCheck("web", A, { ok: true, detail: "connected" });
  assert.equal(backend().health, "down", "a failure in between starts the rise over");
  model.recordCheck("web", A, { ok: true, detail: "connected" });
  assert.equal(backend().health, "up");
  assert.deepEqual(backend().lastCheck, { at: 0, ok: true, detail: "connected" });
  // Failures for a backend or service the model does not know are skipped.
  model.reportConnectFailures("agent-1", [{ service: "web", backend: "10.9.9.9:1", count: 9 }, {
    service: "x",
    backend: A,
    count: 9,
  }]);
  model.close();
});

Deno.test("an agent-check reply sets the admin state and scales the weight", () => {
  const { model } = modelOf(
    configOf([service("web", 8080, { health: { kind: "agent-check", port: 9999 } })]),
  );
  const reply = (admin: "ready" | "drain" | "maint", share: number) => ({
    ok: true,
    detail: "agent-check",
    agent: { operational: "up" as const, admin, share, description: "", ignored: [] },
  });
  model.recordCheck("web", A, reply("drain", 100));
  assert.equal(model.service("web")!.backends[0]!.state, "draining");
  model.recordCheck("web", A, reply("ready", 50));
  assert.deepEqual(weights(model.service("web")), { [A]: 50, [B]: 100 });
  model.applyFeedback([report({ backend: A, weight: 50 })]);
  assert.deepEqual(weights(model.service("web")), { [A]: 25, [B]: 100 }, "feedback × agent-check share");
  model.recordCheck("web", A, reply("maint", 50));
  assert.equal(model.service("web")!.backends[0]!.state, "down");
  model.close();
});

Deno.test("load feedback is normalised among the service's reporters and moves by max_step", () => {
  const { model } = modelOf(configOf([service("web", 8080, { feedback: { smoothing: 0, max_step: 0.25 } })]));
  const step = () =>
    model.applyFeedback([
      report({ backend: A, load: { utilization: 0.9, qps: 100 } }),
      report({ backend: B, load: { utilization: 0.3, qps: 100 } }),
    ]).map((outcome) => outcome.effectiveWeight);
  assert.deepEqual(step(), [100, 125]);
  assert.deepEqual(step(), [75, 150]);
  assert.deepEqual(step(), [50, 150]);
  assert.deepEqual(step(), [50, 150]);
  model.close();
});

Deno.test("a backend configured at weight 0 stays out whatever its feedback says", () => {
  const { model } = modelOf(
    configOf([{ ...service("web", 8080), backends: [{ address: A, weight: 0 }, { address: B }] }]),
  );
  model.applyFeedback([report({ backend: A, weight: 100 })]);
  model.applyFeedback([
    report({ backend: A, load: { utilization: 0.1 } }),
    report({ backend: B, load: { utilization: 0.9 } }),
  ]);
  assert.deepEqual(weights(model.service("web")), { [A]: 0, [B]: 100 });
  model.close();
});

Deno.test("a reload keeps the feedback and health of backends that stay", () => {
  const { model } = modelOf(configOf([service("web", 8080)]));
  model.applyFeedback([report({ backend: A, weight: 30 })]);
  model.setHealth("web", B, "down");
  model.reload(
    configOf([{
      ...service("web", 8080),
      backends: [{ address: A }, { address: B }, { address: "10.0.0.13:80" }],
    }]),
  );
  assert.deepEqual(weights(model.service("web")), { [A]: 30, [B]: 0, "10.0.0.13:80": 100 });
  model.close();
});

Deno.test("restore replaces every backend's operator state and feedback, and what it does not name is reset", () => {
  const { model, clock } = modelOf(configOf([service("web", 8080)]));
  model.setOperatorState("web", B, "drain");
  model.applyFeedback([report({ backend: B, weight: 10 })]);
  model.flushTables();
  const version = model.version;
  const record = { ...model.service("web")!.backends[1]!.feedback!, weight: 40, reportedWeight: 40 };
  model.restore(
    new Map([["web", new Map([[A, "drain" as const], ["10.9.9.9:80", "drain" as const]])]]),
    new Map([["web", new Map([[B, record]])]]),
  );
  assert.deepEqual(model.service("web")!.backends.map((b) => [b.operatorState, b.state]), [
    ["drain", "draining"],
    ["up", "up"],
  ]);
  assert.deepEqual(weights(model.service("web")), { [A]: 0, [B]: 40 });
  // In force at once; agents learn it with the next table's publication.
  model.flushTables();
  assert.ok(model.version > version);
  // A restored record expires by itself, like one reported here.
  clock.now = record.expiresAt;
  model.restore(new Map(), new Map([["web", new Map([[B, record]])]]));
  assert.deepEqual(weights(model.service("web")), { [A]: 100, [B]: 100 });
  model.close();
});

Deno.test("a weight change moves close to the fewest table slots it can, and the count adds up", () => {
  const backends = Array.from({ length: 10 }, (_, i) => ({ address: `10.0.1.${i + 1}:80` }));
  const { model } = modelOf(configOf([{ ...service("web", 8080), backends }]));
  const runtime = () => model.service("web")!;
  const moves: number[] = [];
  // One backend of ten at 90%: its share falls from 10% to 90/990, so 1/110 of the table must move.
  model.applyFeedback([report({ backend: "10.0.1.10:80", weight: 90 })]);
  model.flushTables();
  moves.push(runtime().lastSlotsMoved);
  const minimum = DEFAULT_TABLE_SIZE * (0.1 - 90 / 990);
  assert.ok(moves[0]! >= minimum - 1 && moves[0]! <= minimum * 1.25, `moved ${moves[0]}, minimum ${minimum}`);
  // Out entirely: its tenth moves, and only a little more.
  model.applyFeedback([report({ backend: "10.0.1.10:80", state: "down" })]);
  model.flushTables();
  moves.push(runtime().lastSlotsMoved);
  assert.ok(moves[1]! <= DEFAULT_TABLE_SIZE * (90 / 990) * 1.1, `moved ${moves[1]}`);
  // Back to the configured weight: the very same table as at the start (the table depends only on weights).
  const start = new ClusterModel(configOf([{ ...service("web", 8080), backends }]), { seed: 1 });
  model.applyFeedback([report({ backend: "10.0.1.10:80", state: "up" })]);
  model.flushTables();
  moves.push(runtime().lastSlotsMoved);
  assert.deepEqual(runtime().table, start.service("web")!.table);
  assert.equal(runtime().totalSlotsMoved, moves.reduce((a, b) => a + b, 0));
  start.close();
  model.close();
});

// ---------------------------------------------------------------------------------------------------------
// Tables follow the weights in force: once per window, only when worth a slot, as deltas agents can apply

/** A model on the real clock, whose tables are rebuilt by its window timer; every publication is kept. */
function windowedModel(config: Config, options: { tableSize?: number } = {}) {
  const model = new ClusterModel(config, { seed: 1, ...options });
  const publications: Publication[] = [];
  const published = { wait: Promise.withResolvers<void>() };
  model.onChange((publication) => {
    publications.push(publication);
    published.wait.resolve();
    published.wait = Promise.withResolvers<void>();
  });
  return { model, publications, nextPublication: () => published.wait.promise };
}

Deno.test("reports are in force at once, and a window of them makes one rebuild and one publication", async () => {
  const backends = Array.from({ length: 50 }, (_, i) => ({ address: `10.0.2.${i + 1}:80` }));
  const { model, publications, nextPublication } = windowedModel(
    configOf([{ ...service("web", 8080), backends }]),
  );
  try {
    const version = model.version;
    const table = model.service("web")!.table;
    const published = nextPublication();
    for (let i = 0; i < 50; i++) {
      const [outcome] = model.applyFeedback([report({ backend: `10.0.2.${i + 1}:80`, weight: 10 + i })]);
      assert.equal(outcome!.effectiveWeight, 10 + i, "the answer tells the weight in force");
      assert.equal(model.service("web")!.backends[i]!.effectiveWeight, 10 + i);
    }
    assert.equal(model.version, version + 1, "all of them promised to one version");
    assert.equal(model.service("web")!.table, table, "no table was built in the reports' turn");
    await published;
    assert.equal(publications.length, 1);
    const [publication] = publications;
    assert.equal(publication!.version, version + 1);
    assert.equal(publication!.base, version);
    const runtime = model.service("web")!;
    assert.deepEqual(runtime.tableWeights, backends.map((_, i) => 10 + i));
    assert.deepEqual(
      runtime.table,
      buildTable(backends.map((b, i) => ({ id: b.address, weight: 10 + i }))),
      "the table of the weights in force",
    );
    assert.equal(publication!.services![0]!.backends.length, 50);
    assert.equal(publication!.services![0]!.moved.length, runtime.lastSlotsMoved);
  } finally {
    model.close();
  }
});

Deno.test("weight changes worth less than a slot are held until together they are worth one", () => {
  // Two backends of 100 in a table of 251 slots: one slot is worth 200 / 251 ≈ 0.8 of weight.
  const { model } = modelOf(configOf([service("web", 8080)]), { tableSize: SMALL_TABLE });
  const version = model.version;
  model.applyFeedback([report({ backend: A, weight: 99.7 })]);
  assert.equal(model.service("web")!.backends[0]!.effectiveWeight, 99.7, "in force for decisions");
  assert.equal(model.version, version, "0.3 of weight is not worth a slot");
  model.flushTables();
  assert.equal(model.snapshot().services[0]!.backends[0]!.weight, 100, "agents keep the table's weights");
  model.applyFeedback([report({ backend: B, weight: 99.5 })]);
  assert.equal(model.version, version + 1, "0.8 together is");
  model.flushTables();
  assert.deepEqual(model.snapshot().services[0]!.backends.map((b) => b.weight), [99.7, 99.5]);
  // A backend that goes to weight 0 leaves the table whatever its weight was worth.
  const { model: small } = modelOf(
    configOf([{
      ...service("web", 8080),
      backends: [{ address: A, weight: 1 }, { address: B, weight: 10_000 }],
    }]),
    { tableSize: SMALL_TABLE },
  );
  const smallVersion = small.version;
  small.applyFeedback([report({ backend: A, weight: 0 })]);
  assert.equal(small.version, smallVersion + 1);
  small.flushTables();
  assert.ok(small.service("web")!.table.every((index) => index === 1));
  small.close();
  model.close();
});

Deno.test("a publication's delta, applied to the state agents had, gives the state published", () => {
  const backends = Array.from({ length: 20 }, (_, i) => ({ address: `10.0.3.${i + 1}:80` }));
  const { model } = modelOf(configOf([{ ...service("web", 8080), backends }, service("api", 8081)]));
  const publications: Publication[] = [];
  model.onChange((publication) => publications.push(publication));
  let state = model.snapshot();
  let tables = new Map(
    state.services.map((spec) => [spec.name, decodeTable(spec.table, spec.backends.length)]),
  );
  for (let round = 0; round < 5; round++) {
    model.applyFeedback(
      backends.slice(round, round + 3).map((b, i) => report({ backend: b.address, weight: 20 * i + round })),
    );
    if (round === 2) model.applyFeedback([report({ backend: "10.0.3.9:80", state: "drain" })]);
    model.flushTables();
    const publication = publications.at(-1)!;
    assert.equal(publication.base, state.version);
    assert.equal(publication.services!.length, 1, "only web changed");
    const delta = {
      base: publication.base,
      version: publication.version,
      epoch: state.epoch,
      services: publication.services!.map((change) =>
        serviceDelta(change.service.config.name, {
          after: change.table,
          moved: change.moved,
          backends: change.backends,
        })
      ),
    };
    ({ state, tables } = applyStateDelta(state, tables, delta));
    assert.deepEqual(state, model.snapshot(), `round ${round}`);
    assert.deepEqual(tables.get("web"), model.service("web")!.table);
  }
  model.close();
});

Deno.test("a table is rebuilt a slice per turn of the event loop, and published when whole", async () => {
  const backends = Array.from({ length: 1_000 }, (_, i) => ({ address: `10.1.${i >> 8}.${i & 255}:80` }));
  const { model } = windowedModel(configOf([{ ...service("web", 8080), backends }]));
  const sliced = new ClusterModel(configOf([{ ...service("web", 8080), backends }]), {
    seed: 1,
    // Every slice as short as can be: one fill of sliceWork steps, then the event loop's turn.
    tables: { windowMs: 0, sliceMs: 0, sliceWork: 20_000 },
  });
  try {
    const published = Promise.withResolvers<void>();
    sliced.onChange(() => published.resolve());
    sliced.applyFeedback([report({ backend: "10.1.0.0:80", weight: 1 })]);
    let turns = 0;
    let done = false;
    published.promise.then(() => done = true);
    for (let i = 0; i < 10_000 && !done; i++) {
      await new Promise((resolve) => setImmediate(resolve));
      if (sliced.rebuilding) turns++;
    }
    assert.ok(done, "published");
    // Each slot takes a step, and most of the last ones many more.
    assert.ok(turns >= Math.floor(DEFAULT_TABLE_SIZE / 20_000), `the rebuild took ${turns} turns`);
    // The same table as built in one piece.
    model.applyFeedback([report({ backend: "10.1.0.0:80", weight: 1 })]);
    model.flushTables();
    assert.deepEqual(sliced.service("web")!.table, model.service("web")!.table);
  } finally {
    sliced.close();
    model.close();
  }
});

Deno.test("the connections agents started add up per backend, across agents and reloads; what is not known is skipped", () => {
  const { model } = modelOf(configOf([service("web", 8080)]));
  model.reportStarted([{ service: "web", backend: A, count: 3 }, { service: "web", backend: B, count: 1 }]);
  model.reportStarted([
    { service: "web", backend: A, count: 2 },
    { service: "web", backend: GONE, count: 5 },
    { service: "nope", backend: A, count: 5 },
    { service: "web", backend: B, count: -1 },
    { service: "web", backend: B, count: 0.5 },
  ]);
  model.reload(configOf([service("web", 8080, { slow_start: "1s" })]));
  assert.deepEqual(model.service("web")!.backends.map((b) => b.started), [5, 1]);
  model.close();
});

// ---------------------------------------------------------------------------------------------------------
// Slow start: a backend that comes up ramps to its full weight, stepped by the model's timer

/** Waits, a few milliseconds at a time and at most 2 s, until `done` holds: a ramp steps on a timer. */
async function until(done: () => boolean, what: string): Promise<void> {
  const deadline = performance.now() + 2_000;
  while (!done()) {
    if (performance.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

Deno.test("an undrained backend ramps over slow_start, in force at once and in the tables, then has its full weight", async () => {
  const { model, clock } = modelOf(configOf([service("web", 8080, { slow_start: "10s" })]));
  try {
    const backend = () => model.service("web")!.backends[0]!;
    model.setOperatorState("web", A, "drain");
    clock.now = 1_000;
    model.setOperatorState("web", A, "up");
    assert.deepEqual(backend().slowStart, { at: 1_000, share: 0.01 });
    assert.deepEqual(weights(model.service("web")), { [A]: 1, [B]: 100 }, "a trickle at first");
    model.flushTables();
    assert.equal(shares(model.service("web"))[A], 0.01);
    assert.equal(model.snapshot().services[0]!.backends[0]!.weight, 1, "agents get the ramped weight");
    const events = model.events.after(0, 100).map((event) => event.message);
    assert.ok(
      events.includes(`Backend ${A} of web is up, ramping to its full weight over 10s (slow start)`),
      events.join("\n"),
    );

    // The model's timer steps the ramp as its clock moves on; every step is a transition like any other.
    clock.now = 6_000;
    await until(() => backend().effectiveWeight === 50, "the ramp's step at 5 s");
    model.flushTables();
    assert.equal(shares(model.service("web"))[A], 0.333);
    clock.now = 11_000;
    await until(() => backend().slowStart === null, "the end of the ramp");
    assert.deepEqual(weights(model.service("web")), { [A]: 100, [B]: 100 });
    assert.equal(
      model.events.after(0, 100).at(-1)?.message,
      `Backend ${A} of web has its full weight: its slow start of 10s is over`,
    );
  } finally {
    model.close();
  }
});

Deno.test("feedback and drains apply on top of a ramp; a drain ends it and the next undrain starts it over", () => {
  const { model, clock } = modelOf(configOf([service("web", 8080, { slow_start: "10s" })]));
  const backend = () => model.service("web")!.backends[0]!;
  model.setOperatorState("web", A, "drain");
  model.setOperatorState("web", A, "up");
  clock.now = 4_000;
  const [outcome] = model.applyFeedback([report({ backend: A, weight: 50, ttlMs: 60_000 })]);
  assert.equal(outcome?.effectiveWeight, 20, "the feedback weight, at the ramp's share");
  model.applyFeedback([report({ backend: A, state: "drain" })]);
  assert.deepEqual([backend().state, backend().effectiveWeight, backend().slowStart], [
    "draining",
    0,
    null,
  ]);
  clock.now = 20_000;
  model.applyFeedback([report({ backend: A, state: "up", weight: 50, ttlMs: 60_000 })]);
  assert.deepEqual([backend().effectiveWeight, backend().slowStart?.at], [0.5, 20_000], "a trickle again");
  model.close();
});

Deno.test("a backend ramps when its health rises and when a reload adds it, not when the manager starts", () => {
  const config = configOf([service("web", 8080, { slow_start: "1m", health: { rise: 1, fall: 1 } })]);
  const { model, clock } = modelOf(config);
  assert.deepEqual(model.service("web")!.backends.map((b) => b.slowStart), [null, null]);
  assert.deepEqual(weights(model.service("web")), { [A]: 100, [B]: 100 });
  model.recordCheck("web", B, { ok: false, detail: "connection refused" });
  clock.now = 30_000;
  model.recordCheck("web", B, { ok: true, detail: "connected" });
  assert.deepEqual(weights(model.service("web")), { [A]: 100, [B]: 1 });
  clock.now = 45_000;
  model.reload(configOf([{
    ...service("web", 8080, { slow_start: "1m", health: { rise: 1, fall: 1 } }),
    backends: [{ address: A }, { address: B }, { address: C }],
  }]));
  assert.deepEqual(weights(model.service("web")), { [A]: 100, [B]: 25, [C]: 1 }, "B's ramp goes on");
  assert.deepEqual(model.events.after(0, 100).slice(-2).map((event) => event.message), [
    `Backend ${C} of web was added, ramping to its full weight over 1m (slow start)`,
    "Config reloaded: 1 services",
  ]);
  // Without slow_start, a backend comes back at its full weight at once.
  model.reload(configOf([service("web", 8080, { health: { rise: 1, fall: 1 } })]));
  assert.deepEqual(weights(model.service("web")), { [A]: 100, [B]: 100 });
  model.recordCheck("web", A, { ok: false, detail: "connection refused" });
  model.recordCheck("web", A, { ok: true, detail: "connected" });
  assert.deepEqual(weights(model.service("web")), { [A]: 100, [B]: 100 });
  model.close();
});

// ---------------------------------------------------------------------------------------------------------
// Properties: any sequence of transitions, with any doubles in them

/** Two services: web (three backends of weights 0 to 10000) and api, checked with agent-check. */
function propertyConfig(weights: readonly number[]): Config {
  return configOf([
    service("web", 8080, {
      backends: [A, B, C].map((address, i) => ({ address, weight: weights[i] ?? 100 })),
      feedback: { smoothing: 0.3, max_step: 0.5 },
      slow_start: "20s",
    }),
    service("api", 8081, { health: { kind: "agent-check", port: 9000 } }),
  ]);
}

const anyReportFor = fc.record({
  service: fc.constantFrom("web", "api", "web", "nope"),
  backend: fc.constantFrom(A, B, C, A, GONE),
  weight: anyDouble(),
  load: fc.record({ utilization: anyDouble(), qps: anyDouble(), eps: anyDouble() }, {
    requiredKeys: ["utilization"],
  }),
  state: fc.constantFrom("up" as const, "drain" as const, "down" as const),
  ttlMs: anyDouble(),
}, { requiredKeys: ["service", "backend"] }) as fc.Arbitrary<Report>;

type Step =
  | { kind: "feedback"; reports: Report[] }
  | { kind: "check"; service: string; backend: string; ok: boolean; share: number | null }
  | { kind: "failures"; service: string; backend: string; count: number }
  | { kind: "operator"; service: string; backend: string; state: "up" | "drain" }
  | { kind: "clock"; ms: number }
  | { kind: "reload"; weights: number[] };

const anyStep: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant("feedback" as const),
      reports: fc.array(anyReportFor, { minLength: 1, maxLength: 4 }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant("check" as const),
      service: fc.constantFrom("web", "api"),
      backend: fc.constantFrom(A, B, C),
      ok: fc.boolean(),
      share: fc.option(fc.oneof(fc.integer({ min: 0, max: 100 }), anyDouble()), { nil: null }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant("failures" as const),
      service: fc.constantFrom("web", "api", "nope"),
      backend: fc.constantFrom(A, B, GONE),
      count: fc.oneof(fc.integer({ min: 0, max: 5 }), anyDouble()),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant("operator" as const),
      service: fc.constantFrom("web", "api", "nope"),
      backend: fc.constantFrom(A, B, GONE),
      state: fc.constantFrom("up" as const, "drain" as const),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant("clock" as const), ms: fc.integer({ min: 0, max: 40_000 }) }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant("reload" as const),
      weights: fc.array(fc.integer({ min: 0, max: 10_000 }), { minLength: 3, maxLength: 3 }),
    }),
  },
);

/** Everything a transition may change, with tables by identity (a rebuilt table is a new array). */
function modelView(model: ClusterModel) {
  return {
    version: model.version,
    reports: [...model.feedbackReports],
    failures: [...model.connectFailures].map(([service, counts]) => [service, [...counts]]),
    services: model.services().map((service) => ({
      name: service.config.name,
      table: service.table,
      tableIds: [...service.tableIds],
      totalSlotsMoved: service.totalSlotsMoved,
      backends: service.backends.map((backend) => ({
        id: backend.config.id,
        weight: backend.config.weight,
        operatorState: backend.operatorState,
        health: backend.health,
        checks: { ...backend.checks },
        lastCheck: backend.lastCheck,
        agentCheck: backend.agentCheck,
        feedback: backend.feedback,
        effectiveWeight: backend.effectiveWeight,
        state: backend.state,
        slowStart: backend.slowStart,
      })),
    })),
  };
}

/**
 * Every effective weight finite and within bounds, and, once due tables are rebuilt, every table slot held
 * by a backend that has weight.
 */
function assertSound(model: ClusterModel): void {
  model.flushTables();
  for (const service of model.services()) {
    const weightsNow = service.backends.map((backend) => backend.effectiveWeight);
    for (const weight of weightsNow) {
      assert.ok(
        Number.isFinite(weight) && weight >= 0 && weight <= 10 * 10_000,
        `effective weight ${weight}`,
      );
    }
    const held = new Set<number>(service.table);
    assert.equal(service.table.length, SMALL_TABLE);
    for (const index of held) {
      assert.ok(
        index === NO_BACKEND || (weightsNow[index] ?? 0) > 0,
        `slot of backend ${index} without weight`,
      );
    }
    assert.equal(held.has(NO_BACKEND), weightsNow.every((w) => w === 0), "a table with a hole, or all holes");
  }
}

Deno.test("property: any sequence of transitions keeps every weight finite and every table sound; a refused one changes nothing", () => {
  check(
    fc.property(
      fc.array(fc.integer({ min: 0, max: 10_000 }), { minLength: 3, maxLength: 3 }),
      fc.array(anyStep, { minLength: 1, maxLength: 12 }),
      (initial, steps) => {
        const { model, clock } = modelOf(propertyConfig(initial), { tableSize: SMALL_TABLE });
        try {
          for (const step of steps) {
            const before = modelView(model);
            try {
              switch (step.kind) {
                case "feedback":
                  model.applyFeedback(step.reports);
                  break;
                case "check": {
                  const agent = step.share === null ? {} : {
                    agent: {
                      operational: "up" as const,
                      admin: "ready" as const,
                      share: step.share,
                      description: "",
                      ignored: [],
                    },
                  };
                  model.recordCheck(step.service, step.backend, { ok: step.ok, detail: "checked", ...agent });
                  break;
                }
                case "failures":
                  model.reportConnectFailures("agent-1", [{
                    service: step.service,
                    backend: step.backend,
                    count: step.count,
                  }]);
                  break;
                case "operator":
                  model.setOperatorState(step.service, step.backend, step.state);
                  break;
                case "clock":
                  clock.now += step.ms;
                  break;
                case "reload":
                  model.reload(propertyConfig(step.weights));
                  break;
              }
            } catch (error) {
              assert.ok(
                error instanceof UnknownError || error instanceof RejectedReportError ||
                  error instanceof RangeError,
                `unexpected ${error}`,
              );
              assert.deepStrictEqual(
                modelView(model),
                before,
                `${step.kind} was refused but changed the model`,
              );
            }
            assertSound(model);
          }
        } finally {
          model.close();
        }
      },
    ),
    500,
  );
});

Deno.test("property: a feedback report the model takes from parseReport is never refused for its numbers", () => {
  // Through the edge, every number is in range: only unknown names may be refused, and all weights stay sound.
  check(
    fc.property(fc.array(anyReportFor, { minLength: 1, maxLength: 6 }), (reports) => {
      const { model } = modelOf(propertyConfig([100, 1, 10_000]), { tableSize: SMALL_TABLE });
      try {
        const body = reports.map(({ load, ttlMs, ...rest }) => ({
          ...rest,
          ...(load ?? {}),
          ...(ttlMs === undefined ? {} : { ttl: `${ttlMs}ms` }),
        }));
        let parsed: Report[];
        try {
          parsed = parseReports(body);
        } catch {
          return;
        }
        try {
          model.applyFeedback(parsed);
        } catch (error) {
          assert.ok(error instanceof UnknownError, `refused ${JSON.stringify(body)}: ${error}`);
        }
        assertSound(model);
      } finally {
        model.close();
      }
    }),
    1_000,
  );
});

Deno.test("the reports of issue 20 are taken with finite weights, and the next rebuild builds its table", () => {
  const { model } = modelOf(configOf([service("web", 8080)]), { tableSize: SMALL_TABLE });
  try {
    model.applyFeedback([report({ backend: A, load: { utilization: 1e-320 } })]);
    model.applyFeedback([report({ backend: B, load: { utilization: 0.5, qps: 1e308 } })]);
    model.applyFeedback([report({ backend: A, load: { utilization: 0.5, qps: 1e308, eps: 1e308 } })]);
    assertSound(model);
    // What killed the manager: the health checker's next check rebuilds the table from these weights.
    model.recordCheck("web", A, { ok: true, detail: "connected" });
    assertSound(model);
    assert.ok(weights(model.service("web"))[A]! > 0 && weights(model.service("web"))[B]! > 0);
  } finally {
    model.close();
  }
});

Deno.test("a report the model refuses names its place and field, and changes nothing", () => {
  const { model } = modelOf(configOf([service("web", 8080)]), { tableSize: SMALL_TABLE });
  try {
    const before = modelView(model);
    assert.throws(
      () => model.applyFeedback([report({ backend: A, weight: 50 }), report({ backend: B, weight: NaN })]),
      (error: unknown) =>
        error instanceof RejectedReportError && error.index === 1 && error.field === "weight",
    );
    assert.throws(
      () => model.applyFeedback([report({ backend: A, load: { utilization: 0.5, qps: Infinity } })]),
      (error: unknown) => error instanceof RejectedReportError && error.index === 0 && error.field === "qps",
    );
    assert.deepStrictEqual(modelView(model), before);
    // An agent-check share that is not a number is refused by the model too: nothing changes.
    assert.throws(
      () =>
        model.recordCheck("web", A, {
          ok: true,
          detail: "x",
          agent: { operational: "up", admin: "ready", share: NaN, description: "", ignored: [] },
        }),
      RangeError,
    );
    assert.deepStrictEqual(modelView(model), before);
  } finally {
    model.close();
  }
});
