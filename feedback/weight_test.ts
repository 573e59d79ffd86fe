import assert from "node:assert/strict";
import { type Report, ReportError } from "./report.ts";
import { anyDouble, check, fc } from "../tests/_property.ts";
import {
  applyReport,
  FEEDBACK_DEFAULTS,
  type FeedbackRecord,
  type FeedbackSettings,
  feedbackState,
  feedbackWeight,
  isLive,
  liveRaw,
  type LoadPeer,
  loadTarget,
  loadWeight,
  smoothStep,
} from "./weight.ts";

const SETTINGS: FeedbackSettings = { ttlMs: 30_000, smoothing: 0.5, maxStep: 0.25 };

function near(actual: number | null, expected: number, what = "value", epsilon = 1e-9): void {
  assert.ok(
    actual !== null && Math.abs(actual - expected) <= epsilon,
    `${what}: expected ${expected}, got ${actual}`,
  );
}

function report(fields: Partial<Report>): Report {
  return { service: "web", backend: "10.0.0.11:80", ...fields };
}

Deno.test("load weight is gRPC's qps / (utilization + eps / qps × penalty)", () => {
  near(loadWeight({ utilization: 0.5, qps: 100 }), 200);
  near(loadWeight({ utilization: 0.9, qps: 100 }), 100 / 0.9);
  near(loadWeight({ utilization: 0.3, qps: 100 }), 100 / 0.3);
  // 10 errors per 100 queries count as 0.1 of utilization at the default penalty of 1.0.
  near(loadWeight({ utilization: 0.4, qps: 100, eps: 10 }), 100 / 0.5);
  near(loadWeight({ utilization: 0.4, qps: 100, eps: 10 }, { errorUtilizationPenalty: 2 }), 100 / 0.6);
  near(loadWeight({ utilization: 0.4, qps: 100, eps: 10 }, { errorUtilizationPenalty: 0 }), 100 / 0.4);
  near(loadWeight({ utilization: 0.4, qps: 100, eps: 0 }), 100 / 0.4);
  assert.equal(FEEDBACK_DEFAULTS.errorUtilizationPenalty, 1.0);
});

Deno.test("load weight without qps is 1 / utilization, and a zero signal is no weight", () => {
  near(loadWeight({ utilization: 0.25 }), 4);
  near(loadWeight({ utilization: 1 }), 1);
  assert.equal(loadWeight({ utilization: 0 }), null);
  assert.equal(loadWeight({ utilization: 0, qps: 100 }), null);
  assert.equal(loadWeight({ utilization: 0, qps: 100, eps: 5 }), null);
  assert.equal(loadWeight({ utilization: 0.5, qps: 0 }), null);
  assert.equal(loadWeight({ utilization: 0.5, qps: 0, eps: 0 }), null);
});

Deno.test("load targets map the mean of the reporting backends to their configured weight", () => {
  const busy = loadWeight({ utilization: 0.9, qps: 100 });
  const idle = loadWeight({ utilization: 0.3, qps: 100 });
  near(loadTarget(busy, 100, [{ configured: 100, raw: idle }]), 50, "busy");
  near(loadTarget(idle, 100, [{ configured: 100, raw: busy }]), 150, "idle");
  // Alone, a backend's load says nothing relative: it keeps its configured weight.
  near(loadTarget(busy, 100, []), 100);
  near(loadTarget(busy, 100, [{ configured: 100, raw: null }, { configured: 300, raw: null }]), 100);
  // Without a signal of its own, a backend targets its configured weight.
  near(loadTarget(null, 80, [{ configured: 100, raw: idle }]), 80);
});

Deno.test("load targets share out the reporters' configured total by raw weight", () => {
  // A backend configured twice as heavy that serves twice the qps at the same utilization is worth
  // twice as much, not four times: the raw weight already measures its capacity.
  const small = loadWeight({ utilization: 0.5, qps: 100 });
  const big = loadWeight({ utilization: 0.5, qps: 200 });
  const targetSmall = loadTarget(small, 100, [{ configured: 200, raw: big }]);
  const targetBig = loadTarget(big, 200, [{ configured: 100, raw: small }]);
  near(targetSmall, 100);
  near(targetBig, 200);
  near(targetSmall + targetBig, 300, "total");
  // Three reporters and one silent backend: the silent one is left out of the mean.
  const peers: LoadPeer[] = [{ configured: 100, raw: 2 }, { configured: 100, raw: 3 }, {
    configured: 100,
    raw: null,
  }];
  near(loadTarget(1, 100, peers), 50);
});

Deno.test("load targets are clamped to 0.1 and 10 times the mean", () => {
  const peers = (raw: number): LoadPeer[] => Array.from({ length: 99 }, () => ({ configured: 100, raw }));
  // One backend among 100 with 1000× the raw weight of the rest would be ~91× the mean.
  near(loadTarget(1000, 100, peers(1)), 100 * FEEDBACK_DEFAULTS.maxRatio);
  near(loadTarget(1, 100, [{ configured: 100, raw: 1000 }]), 100 * FEEDBACK_DEFAULTS.minRatio);
  near(loadTarget(1, 100, [{ configured: 100, raw: 17 }]), 100 * 0.1111111111111111);
});

Deno.test("a smoothing step moves (1 − smoothing) of the way, at most max_step × configured", () => {
  const step = (previous: number, target: number, smoothing: number, maxStep: number, configured = 100) =>
    smoothStep(previous, target, { smoothing, maxStep, configured });
  near(step(100, 50, 0, 1), 50, "no smoothing");
  near(step(100, 50, 0.5, 1), 75, "halfway");
  near(step(100, 50, 0.8, 1), 90, "a fifth of the way");
  near(step(100, 50, 1, 1), 100, "smoothing 1 never moves");
  near(step(100, 50, 0, 0.25), 75, "capped down");
  near(step(100, 200, 0, 0.25), 125, "capped up");
  near(step(100, 200, 0.5, 0.25), 125, "smoothing 50, cap 25");
  near(step(100, 140, 0.5, 0.25), 120, "under the cap");
  near(step(100, 140, 0.5, 0.25, 40), 110, "the cap is a share of the configured weight");
  near(step(100, 100, 0.5, 0.25), 100, "at the target");
});

Deno.test("smoothing steps never overshoot and always reach the target, for every setting", () => {
  for (const smoothing of [0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]) {
    for (const maxStep of [0.01, 0.05, 0.1, 0.25, 0.5, 1]) {
      for (const [start, target] of [[100, 10], [100, 1000], [0, 150], [150, 0]] as const) {
        let weight: number = start;
        for (let i = 0; i < 5_000 && Math.abs(weight - target) > 1e-6; i++) {
          const next = smoothStep(weight, target, { smoothing, maxStep, configured: 100 });
          assert.ok(Math.abs(next - weight) <= maxStep * 100 + 1e-9, "no step over the cap");
          assert.ok(Math.abs(target - next) <= Math.abs(target - weight), "never farther from the target");
          assert.ok(Math.sign(target - next) !== -Math.sign(target - weight), "never past the target");
          weight = next;
        }
        near(weight, target, `smoothing ${smoothing} max_step ${maxStep} ${start}→${target}`, 1e-6);
      }
    }
  }
});

Deno.test("an explicit weight is a share of the configured weight, at once, whatever the smoothing", () => {
  const record = applyReport(report({ weight: 40 }), {
    configured: 200,
    current: null,
    peers: [],
    settings: { ttlMs: 30_000, smoothing: 0.9, maxStep: 0.01 },
    now: 1_000,
  });
  assert.deepEqual(record, {
    source: "weight",
    reportedWeight: 40,
    load: null,
    raw: null,
    target: 80,
    weight: 80,
    state: "up",
    reportedAt: 1_000,
    expiresAt: 31_000,
  });
  const zero = applyReport(report({ weight: 0 }), {
    configured: 100,
    current: record,
    peers: [],
    settings: SETTINGS,
    now: 2_000,
  });
  assert.equal(zero.weight, 0);
});

Deno.test("a report's own ttl wins over the service's", () => {
  const context = { configured: 100, current: null, peers: [], settings: SETTINGS, now: 5_000 };
  assert.equal(applyReport(report({ weight: 10, ttlMs: 1_000 }), context).expiresAt, 6_000);
  assert.equal(applyReport(report({ weight: 10 }), context).expiresAt, 35_000);
});

Deno.test("a state-only report sets the state and leaves the configured weight", () => {
  const record = applyReport(report({ state: "drain" }), {
    configured: 100,
    current: null,
    peers: [],
    settings: SETTINGS,
    now: 0,
  });
  assert.equal(record.source, "state");
  assert.equal(record.weight, null);
  assert.equal(record.state, "drain");
  assert.equal(feedbackWeight(record, 100, 1), 100);
  assert.equal(feedbackState(record, 1), "drain");
  // A weight report without a state is up: each report is the backend's whole statement.
  const next = applyReport(report({ weight: 50 }), {
    configured: 100,
    current: record,
    peers: [],
    settings: SETTINGS,
    now: 2,
  });
  assert.equal(next.state, "up");
});

/** Two backends reporting utilization 0.9 and 0.3 at equal qps, alternately, as the manager applies them. */
function alternate(settings: FeedbackSettings, rounds: number): Array<[string, number]> {
  const records: Record<string, FeedbackRecord | null> = { busy: null, idle: null };
  const utilization: Record<string, number> = { busy: 0.9, idle: 0.3 };
  const steps: Array<[string, number]> = [];
  let now = 0;
  for (let i = 0; i < rounds; i++) {
    for (const name of ["busy", "idle"]) {
      const other = name === "busy" ? "idle" : "busy";
      now += 100;
      const record = applyReport(report({ load: { utilization: utilization[name]!, qps: 100 } }), {
        configured: 100,
        current: records[name]!,
        peers: [{ configured: 100, raw: liveRaw(records[other]!, now) }],
        settings,
        now,
      });
      records[name] = record;
      steps.push([name, Math.round(record.weight! * 100) / 100]);
    }
  }
  return steps;
}

Deno.test("load reports move weights toward the idle backend, smoothed and capped step by step", () => {
  // smoothing 0.5 halves each remaining distance; max_step 0.1 caps a step at 10 of the configured 100.
  assert.deepEqual(alternate({ ttlMs: 30_000, smoothing: 0.5, maxStep: 0.1 }, 6), [
    ["busy", 100], // alone, its load says nothing yet
    ["idle", 110], // target 150: halfway is 125, capped at +10
    ["busy", 90], // target 50: halfway is 75, capped at −10
    ["idle", 120],
    ["busy", 80],
    ["idle", 130],
    ["busy", 70],
    ["idle", 140], // 140 + 10 = 150 − 10: the cap and the halfway step meet
    ["busy", 60],
    ["idle", 145], // now under the cap: halfway
    ["busy", 55],
    ["idle", 147.5],
  ]);
  // Without smoothing, only the cap limits the step; without either, the first pair lands on target.
  assert.deepEqual(alternate({ ttlMs: 30_000, smoothing: 0, maxStep: 0.25 }, 3).map(([, w]) => w), [
    100,
    125,
    75,
    150,
    50,
    150,
  ]);
  assert.deepEqual(alternate({ ttlMs: 30_000, smoothing: 0, maxStep: 1 }, 2).map(([, w]) => w), [
    100,
    150,
    50,
    150,
  ]);
});

Deno.test("a load report starts from the weight in force: the last live one, else the configured one", () => {
  const context = (current: FeedbackRecord | null, now: number) => ({
    configured: 100,
    current,
    peers: [{ configured: 100, raw: 1 / 0.3 }],
    settings: { ttlMs: 1_000, smoothing: 0, maxStep: 0.25 },
    now,
  });
  const explicit = applyReport(report({ weight: 20 }), context(null, 0));
  // Live explicit weight 20, load target 50: one step of at most 25 from 20.
  const fromExplicit = applyReport(report({ load: { utilization: 0.9 } }), context(explicit, 500));
  near(fromExplicit.weight, 45);
  near(fromExplicit.target, 50);
  // Expired: from the configured 100.
  const fromConfigured = applyReport(report({ load: { utilization: 0.9 } }), context(explicit, 1_000));
  near(fromConfigured.weight, 75);
});

Deno.test("a load report without a usable signal steers back toward the configured weight", () => {
  const record = applyReport(report({ load: { utilization: 0, qps: 0 } }), {
    configured: 100,
    current: {
      ...applyReport(report({ weight: 10 }), {
        configured: 100,
        current: null,
        peers: [],
        settings: SETTINGS,
        now: 0,
      }),
    },
    peers: [{ configured: 100, raw: 5 }],
    settings: SETTINGS,
    now: 10,
  });
  assert.equal(record.raw, null);
  assert.equal(record.target, 100);
  near(record.weight, 35); // halfway is 55, capped at +25 from 10
  assert.equal(liveRaw(record, 11), null);
});

Deno.test("records hold until their expiry and not at it", () => {
  const record = applyReport(report({ weight: 30, state: "down", ttlMs: 1_000 }), {
    configured: 100,
    current: null,
    peers: [],
    settings: SETTINGS,
    now: 0,
  });
  assert.equal(isLive(record, 999), true);
  assert.equal(isLive(record, 1_000), false);
  assert.equal(isLive(null, 0), false);
  assert.equal(feedbackWeight(record, 100, 999), 30);
  assert.equal(feedbackWeight(record, 100, 1_000), 100);
  assert.equal(feedbackWeight(null, 100, 0), 100);
  assert.equal(feedbackState(record, 999), "down");
  assert.equal(feedbackState(record, 1_000), "up");
  assert.equal(liveRaw(record, 0), null, "an explicit weight is no load signal");
  const load = applyReport(report({ load: { utilization: 0.5 }, ttlMs: 10 }), {
    configured: 100,
    current: null,
    peers: [],
    settings: SETTINGS,
    now: 0,
  });
  assert.equal(liveRaw(load, 9), 2);
  assert.equal(liveRaw(load, 10), null);
});

// ---------------------------------------------------------------------------------------------------------
// Properties over every double: subnormals, ±0, MAX_VALUE, ±Infinity, NaN, huge integers

const anyLoad = fc.record({ utilization: anyDouble(), qps: anyDouble(), eps: anyDouble() }, {
  requiredKeys: ["utilization"],
});
const anyPeer = fc.record({ configured: anyDouble(), raw: fc.option(anyDouble(), { nil: null }) });

/** Whether `value` is a number the configured weight of a backend may be. */
const validConfigured = (value: number) => value >= 0 && value <= Number.MAX_VALUE;

Deno.test("property: a load weight is null or a finite number above 0, for any figures", () => {
  check(
    fc.property(anyLoad, fc.option(anyDouble(), { nil: undefined }), (load, penalty) => {
      const raw = loadWeight(load, penalty === undefined ? {} : { errorUtilizationPenalty: penalty });
      assert.ok(raw === null || (raw >= Number.MIN_VALUE && raw <= Number.MAX_VALUE), `raw weight ${raw}`);
      if (load.utilization > 0 && load.utilization <= 1 && load.qps === undefined) assert.notEqual(raw, null);
    }),
    2_000,
  );
});

Deno.test("property: a load target is finite and within 0.1 and 10 times the mean, for any raw weights", () => {
  check(
    fc.property(
      fc.option(anyDouble(), { nil: null }),
      anyDouble(),
      fc.array(anyPeer, { maxLength: 8 }),
      (raw, configured, peers) => {
        const signal = (value: number | null): value is number =>
          value !== null && value > 0 && Number.isFinite(value);
        const counted = signal(raw) ? peers.filter((peer) => signal(peer.raw)) : [];
        const configuredWeights = [configured, ...counted.map((peer) => peer.configured)];
        let target: number;
        try {
          target = loadTarget(raw, configured, peers);
        } catch (error) {
          assert.ok(error instanceof RangeError, `unexpected ${error}`);
          assert.ok(!configuredWeights.every(validConfigured), `refused valid weights: ${error.message}`);
          return;
        }
        assert.ok(
          configuredWeights.every(validConfigured),
          "took a configured weight that is not finite ≥ 0",
        );
        assert.ok(Number.isFinite(target) && target >= 0, `target ${target}`);
        if (!signal(raw)) return assert.equal(target, configured);
        const largest = Math.max(...configuredWeights);
        const mean = configuredWeights.reduce((sum, w) => sum + w / configuredWeights.length, 0);
        assert.ok(
          target <= Math.min(FEEDBACK_DEFAULTS.maxRatio * largest, Number.MAX_VALUE),
          `target ${target}`,
        );
        assert.ok(
          target >= FEEDBACK_DEFAULTS.minRatio * mean * (1 - 1e-9),
          `target ${target} under the mean`,
        );
      },
    ),
    2_000,
  );
});

Deno.test("property: a smoothing step lands between the weight and its target, at most max_step away", () => {
  check(
    fc.property(anyDouble(), anyDouble(), anyDouble(), anyDouble(), anyDouble(), (p, t, s, m, c) => {
      const valid = Number.isFinite(p) && Number.isFinite(t) && s >= 0 && s <= 1 && m >= 0 && m <= 1 &&
        validConfigured(c);
      let next: number;
      try {
        next = smoothStep(p, t, { smoothing: s, maxStep: m, configured: c });
      } catch (error) {
        assert.ok(error instanceof RangeError, `unexpected ${error}`);
        assert.ok(!valid, `refused valid arguments: ${error.message}`);
        return;
      }
      assert.ok(valid, "took arguments out of range");
      assert.ok(next >= Math.min(p, t) && next <= Math.max(p, t), `${next} is not between ${p} and ${t}`);
      // The limit m × c and p ± it may round: allow one part in 1e12 of the limit and a unit of p's last place.
      const slack = m * c * 1e-12 + Math.abs(p) * Number.EPSILON;
      assert.ok(Math.abs(next - p) <= m * c + slack, `${next} is more than ${m * c} from ${p}`);
    }),
    3_000,
  );
});

/** A report with any numbers in it, as a caller that skipped `parseReport` might pass. */
const anyReport: fc.Arbitrary<Report> = fc.record({
  service: fc.constant("web"),
  backend: fc.constant("10.0.0.11:80"),
  weight: anyDouble(),
  load: anyLoad,
  state: fc.constantFrom("up" as const, "drain" as const, "down" as const),
  ttlMs: anyDouble(),
}, { requiredKeys: ["service", "backend"] });

/** Whether `parseReport` would have let each number of `report` through. */
function figuresValid(report: Report): boolean {
  const within = (value: number | undefined, max: number) =>
    value === undefined || (value >= 0 && value <= max);
  return within(report.weight, 100) && (report.load === undefined || (
    within(report.load.utilization, 1) && within(report.load.qps, Number.MAX_VALUE) &&
    within(report.load.eps, Number.MAX_VALUE)
  )) && (report.ttlMs === undefined || (report.ttlMs >= 1 && report.ttlMs <= 24 * 3_600_000));
}

Deno.test("property: a report's record has a finite weight within bounds, or the report is refused by field", () => {
  check(
    fc.property(
      anyReport,
      fc.integer({ min: 0, max: 10_000 }),
      fc.option(anyReport, { nil: null }),
      fc.array(
        fc.record({
          configured: fc.integer({ min: 0, max: 10_000 }),
          raw: fc.option(anyDouble(), { nil: null }),
        }),
        { maxLength: 6 },
      ),
      (report, configured, earlier, peers) => {
        // The current record, if any, is one that a valid report left.
        let current: FeedbackRecord | null = null;
        if (earlier !== null && figuresValid(earlier)) {
          current = applyReport(earlier, { configured, current: null, peers, settings: SETTINGS, now: 0 });
        }
        let record: FeedbackRecord;
        try {
          record = applyReport(report, { configured, current, peers, settings: SETTINGS, now: 1 });
        } catch (error) {
          assert.ok(error instanceof ReportError, `unexpected ${error}`);
          assert.ok(!figuresValid(report), `refused a valid report: ${error.message}`);
          assert.match(error.path, /^(weight|utilization|qps|eps|ttl)$/);
          return;
        }
        assert.ok(figuresValid(report), `took ${JSON.stringify(report)}`);
        assert.ok(Number.isFinite(record.expiresAt));
        const ceiling = FEEDBACK_DEFAULTS.maxRatio * Math.max(configured, ...peers.map((p) => p.configured));
        for (const value of [record.weight, record.target]) {
          assert.ok(
            value === null || (value >= 0 && value <= ceiling),
            `weight ${value} out of [0, ${ceiling}]`,
          );
        }
        assert.ok(record.raw === null || (record.raw > 0 && Number.isFinite(record.raw)));
      },
    ),
    3_000,
  );
});

Deno.test("the reports of issue 20 give finite weights: utilization 1e-320, and qps 1e308", () => {
  const context = (raw: number | null) => ({
    configured: 100,
    current: null,
    peers: [{ configured: 100, raw }],
    settings: { ttlMs: 30_000, smoothing: 0, maxStep: 1 },
    now: 0,
  });
  const tiny = applyReport(report({ load: { utilization: 1e-320 } }), context(2));
  assert.equal(tiny.raw, Number.MAX_VALUE);
  // Next to a raw weight of 2, MAX_VALUE is all of the raw total: twice the mean of two.
  near(tiny.target, 200, "twice the mean");
  const huge = applyReport(report({ load: { utilization: 0.5, qps: 1e308 } }), context(Number.MAX_VALUE));
  assert.equal(huge.raw, Number.MAX_VALUE);
  near(huge.target, 100, "two equal raw weights of MAX_VALUE share equally");
});
