import assert from "node:assert/strict";
import { anyDouble, check, fc } from "../tests/_property.ts";
import { MAX_REPORT_TTL_MS, MAX_REPORTS, parseReport, parseReports, ReportError } from "./report.ts";

/** The error `parseReports` throws for `body`, as `{message, path}`. */
function rejection(body: unknown): { message: string; path: string } {
  try {
    parseReports(body);
  } catch (error) {
    assert.ok(error instanceof ReportError, `expected a ReportError, got ${error}`);
    return { message: error.message, path: error.path };
  }
  assert.fail(`expected ${JSON.stringify(body)} to be rejected`);
}

const OK = { service: "web", backend: "10.0.0.11:80" };

Deno.test("a report with every field is read as written, ttl in ms", () => {
  assert.deepEqual(
    parseReport({ ...OK, utilization: 0.72, qps: 950, eps: 3, state: "up", ttl: "30s" }),
    { ...OK, load: { utilization: 0.72, qps: 950, eps: 3 }, state: "up", ttlMs: 30_000 },
  );
  assert.deepEqual(parseReport({ ...OK, weight: 40 }), { ...OK, weight: 40 });
  assert.deepEqual(parseReport({ ...OK, state: "drain" }), { ...OK, state: "drain" });
  assert.deepEqual(parseReport({ ...OK, utilization: 0.5 }), { ...OK, load: { utilization: 0.5 } });
});

Deno.test("weight and load bounds are inclusive: 0 and 100, 0 and 1", () => {
  for (const weight of [0, 0.5, 100]) assert.equal(parseReport({ ...OK, weight }).weight, weight);
  for (const utilization of [0, 1]) {
    assert.equal(parseReport({ ...OK, utilization }).load?.utilization, utilization);
  }
  assert.equal(parseReport({ ...OK, utilization: 0.1, qps: 0, eps: 0 }).load?.qps, 0);
});

Deno.test("a backend address is written back the way the config writes it", () => {
  assert.equal(parseReport({ service: "web", backend: "[::1]:8080", weight: 1 }).backend, "[::1]:8080");
  assert.equal(
    parseReport({ service: "web", backend: "db.internal:5432", weight: 1 }).backend,
    "db.internal:5432",
  );
});

Deno.test("a single report's problems name the field alone", () => {
  const cases: Array<[unknown, string, RegExp]> = [
    [{ ...OK, utilization: 1.5 }, "utilization", /utilization to be a number from 0 to 1, got 1.5/],
    [{ ...OK, utilization: "0.5" }, "utilization", /got "0.5"/],
    [{ ...OK, weight: 101 }, "weight", /weight to be a number from 0 to 100, got 101/],
    [{ ...OK, weight: -1 }, "weight", /got -1/],
    [{ ...OK, weight: null }, "weight", /got null/],
    [{ ...OK, utilization: 0.5, qps: -1 }, "qps", /qps to be a number ≥ 0, got -1/],
    [{ ...OK, utilization: 0.5, qps: 1, eps: Number.NaN }, "eps", /got NaN/],
    [{ ...OK, state: "maint" }, "state", /Expected state up, drain or down, got "maint"/],
    [{ ...OK, weight: 1, ttl: 30 }, "ttl", /Expected ttl to be a duration such as "30s", got 30/],
    [{ ...OK, weight: 1, ttl: "soon" }, "ttl", /Cannot parse duration "soon"/],
    [{ ...OK, weight: 1, ttl: "0s" }, "ttl", /Expected ttl from 1ms to 24h, got "0s"/],
    [{ ...OK, weight: 1, ttl: "25h" }, "ttl", /got "25h"/],
    [{ ...OK, weight: 1, colour: "red" }, "colour", /Unknown field "colour"/],
    [{ backend: OK.backend, weight: 1 }, "service", /Expected a service name, got nothing/],
    [{ ...OK, service: "", weight: 1 }, "service", /got ""/],
    [{ service: "web", weight: 1 }, "backend", /Expected a backend address host:port, got nothing/],
    [{ service: "web", backend: "10.0.0.11", weight: 1 }, "backend", /Cannot parse address "10.0.0.11"/],
    [{ service: "web", backend: "10.0.0.11:0", weight: 1 }, "backend", /port must be 1-65535/],
    [{ ...OK, qps: 5 }, "qps", /qps goes with utilization, which is missing/],
    [{ ...OK, eps: 5, weight: 1 }, "eps", /eps goes with utilization/],
    [{ ...OK, utilization: 0.5, eps: 5 }, "eps", /eps needs qps/],
    [{ ...OK, weight: 50, utilization: 0.5 }, "utilization", /Give weight or the load figures, not both/],
    [{ ...OK }, "", /Give at least one of weight, utilization or state/],
    [{ ...OK, ttl: "5s" }, "", /at least one of/],
    [null, "", /Expected a report object, got null/],
    ["up", "", /got "up"/],
    [42, "", /got 42/],
  ];
  for (const [body, path, message] of cases) {
    const { message: got, path: gotPath } = rejection(body);
    assert.equal(gotPath, path, `path of ${JSON.stringify(body)}`);
    assert.match(got, message);
  }
});

Deno.test("a batch's problems name the report's index and the field", () => {
  const batch = [{ ...OK, weight: 1 }, { ...OK, weight: 2 }, { ...OK, weight: 3 }, { ...OK, utilization: 2 }];
  assert.deepEqual(rejection(batch).path, "[3].utilization");
  assert.deepEqual(rejection([{ ...OK, weight: 1 }, "x"]).path, "[1]");
  assert.deepEqual(rejection([{ ...OK }]).path, "[0]");
  assert.deepEqual(rejection([{ ...OK, weight: 1, extra: 1 }]).path, "[0].extra");
  assert.deepEqual(rejection([[{ ...OK, weight: 1 }]]), {
    message: "Expected a report object, got an array",
    path: "[0]",
  });
});

Deno.test("the first problem in a batch is the one reported", () => {
  const { path } = rejection([{ ...OK, weight: 1 }, { ...OK, weight: 200 }, { ...OK, state: "x" }]);
  assert.equal(path, "[1].weight");
});

Deno.test("a batch holds 1 to 1000 reports, in order", () => {
  const many = Array.from({ length: MAX_REPORTS }, (_, i) => ({ ...OK, weight: i % 101 }));
  const reports = parseReports(many);
  assert.equal(reports.length, MAX_REPORTS);
  assert.equal(reports[999]?.weight, 999 % 101);
  assert.deepEqual(rejection([]), { message: "Expected 1 to 1000 reports in the array, got 0", path: "" });
  assert.equal(
    rejection([...many, { ...OK, weight: 1 }]).message,
    "Expected 1 to 1000 reports in the array, got 1001",
  );
  assert.deepEqual(parseReports({ ...OK, weight: 7 }), [{ ...OK, weight: 7 }]);
  assert.deepEqual(parseReports([{ ...OK, weight: 7 }]), [{ ...OK, weight: 7 }]);
});

Deno.test("the longest ttl is accepted and one millisecond more is not", () => {
  assert.equal(parseReport({ ...OK, weight: 1, ttl: "24h" }).ttlMs, MAX_REPORT_TTL_MS);
  assert.equal(parseReport({ ...OK, weight: 1, ttl: "1ms" }).ttlMs, 1);
  assert.equal(rejection({ ...OK, weight: 1, ttl: "24h1ms" }).path, "ttl");
});

/** A JSON value shaped like a report or a batch, with any value in any field, and stray keys. */
const reportLike = fc.record({
  service: fc.oneof(fc.constant("web"), fc.jsonValue()),
  backend: fc.oneof(fc.constantFrom("10.0.0.11:80", "[::1]:80", "10.0.0.11:99999"), fc.jsonValue()),
  weight: fc.oneof(anyDouble(), fc.jsonValue()),
  utilization: fc.oneof(anyDouble(), fc.jsonValue()),
  qps: fc.oneof(anyDouble(), fc.jsonValue()),
  eps: fc.oneof(anyDouble(), fc.jsonValue()),
  state: fc.oneof(fc.constantFrom("up", "drain", "down"), fc.jsonValue()),
  ttl: fc.oneof(fc.constantFrom("30s", "0s", "25h", "1ms", "1e400ms", `${"9".repeat(400)}h`), fc.string()),
  extra: fc.jsonValue(),
}, { requiredKeys: [] });

Deno.test("property: any JSON body gives checked reports or one ReportError, never another error", () => {
  check(
    fc.property(fc.oneof(reportLike, fc.array(reportLike, { maxLength: 5 }), fc.jsonValue()), (body) => {
      let reports;
      try {
        reports = parseReports(body);
      } catch (error) {
        assert.ok(error instanceof ReportError, `unexpected ${error}`);
        assert.ok(error.message !== "" && !error.message.endsWith("."), error.message);
        return;
      }
      for (const report of reports) {
        const inRange = (value: number | undefined, max: number) =>
          value === undefined || (value >= 0 && value <= max);
        assert.ok(inRange(report.weight, 100) && inRange(report.load?.utilization, 1));
        assert.ok(inRange(report.load?.qps, Number.MAX_VALUE) && inRange(report.load?.eps, Number.MAX_VALUE));
        assert.ok(inRange(report.ttlMs, MAX_REPORT_TTL_MS) && report.ttlMs !== 0);
      }
    }),
    3_000,
  );
});
