import assert from "node:assert/strict";
import { anyDouble, check, fc } from "../tests/_property.ts";
import { nextRampStep, rampedWeight, rampShare, rampStepMs, SLOW_START_DEFAULTS } from "./slow_start.ts";

/** The longest duration a config takes: 24 days. */
const MAX_WINDOW_MS = 576 * 3_600_000;

Deno.test("a 10 s ramp starts at a trickle, rises by a tenth of a second's worth, and is whole at 10 s", () => {
  assert.equal(rampStepMs(10_000), 100);
  assert.equal(rampShare(0, 10_000), SLOW_START_DEFAULTS.minShare);
  assert.equal(rampShare(99, 10_000), SLOW_START_DEFAULTS.minShare);
  assert.equal(rampShare(100, 10_000), 0.01);
  assert.equal(rampShare(2_000, 10_000), 0.2);
  assert.equal(rampShare(2_099, 10_000), 0.2);
  assert.equal(rampShare(5_000, 10_000), 0.5);
  assert.equal(rampShare(9_999, 10_000), 0.99);
  assert.equal(rampShare(10_000, 10_000), 1);
  assert.equal(rampShare(60_000, 10_000), 1);
  assert.equal(nextRampStep(0, 10_000), 100);
  assert.equal(nextRampStep(2_050, 10_000), 2_100);
  assert.equal(nextRampStep(9_950, 10_000), 10_000);
  assert.equal(nextRampStep(10_000, 10_000), null);
});

Deno.test("a long ramp takes 100 steps, a short one steps at the table window, and none is whole at once", () => {
  assert.equal(rampStepMs(300_000), 3_000);
  assert.equal(rampShare(4_500, 300_000), 0.01);
  assert.equal(rampShare(150_000, 300_000), 0.5);
  assert.equal(rampStepMs(1_000), SLOW_START_DEFAULTS.minStepMs);
  assert.equal(rampShare(250, 1_000), 0.2);
  // A window shorter than a step: a trickle, then whole.
  assert.equal(rampShare(50, 150), SLOW_START_DEFAULTS.minShare);
  assert.equal(nextRampStep(50, 150), 100);
  assert.equal(rampShare(120, 150), 100 / 150);
  assert.equal(nextRampStep(120, 150), 150);
  for (const window of [0, -1, NaN]) {
    assert.equal(rampShare(0, window), 1);
    assert.equal(nextRampStep(0, window), null);
  }
});

Deno.test("a ramped weight keeps two decimals, never passes the weight and never falls to 0", () => {
  assert.equal(rampedWeight(100, 0.01), 1);
  assert.equal(rampedWeight(100, 0.333), 33.3);
  assert.equal(rampedWeight(0.01, 0.01), 0.01);
  assert.equal(rampedWeight(3, 0.001), 0.01);
  assert.equal(rampedWeight(0, 0.5), 0);
  assert.equal(rampedWeight(42.5, 1), 42.5);
});

const anyWindow = fc.oneof(
  fc.integer({ min: 0, max: MAX_WINDOW_MS }),
  fc.constantFrom(1, 99, 100, 101, 10_000, 10_001, MAX_WINDOW_MS),
);
const anyElapsed = fc.oneof(fc.integer({ min: -1_000, max: MAX_WINDOW_MS + 1_000 }), anyDouble());

Deno.test("property: a ramp's share is from the trickle to 1, rises with time, and is 1 exactly once its window is over", () => {
  check(
    fc.property(anyWindow, anyElapsed, anyElapsed, (window, a, b) => {
      const share = rampShare(a, window);
      assert.ok(share >= SLOW_START_DEFAULTS.minShare && share <= 1, `share ${share}`);
      assert.equal(share === 1, window === 0 || a >= window, `share ${share} at ${a} of ${window}`);
      if (!Number.isNaN(a) && !Number.isNaN(b)) {
        const [early, late] = a <= b ? [a, b] : [b, a];
        assert.ok(rampShare(early, window) <= rampShare(late, window), `${early} and ${late} of ${window}`);
      }
    }),
    2_000,
  );
});

Deno.test("property: a ramp's share holds until its next step, which is later and within the window, at most 100 of them", () => {
  check(
    fc.property(anyWindow, anyElapsed, fc.double({ min: 0, max: 1, noNaN: true }), (window, elapsed, at) => {
      const next = nextRampStep(elapsed, window);
      const share = rampShare(elapsed, window);
      assert.equal(next === null, share === 1);
      if (next === null) return;
      assert.ok(next > (elapsed > 0 ? elapsed : 0) && next <= window, `next ${next} after ${elapsed}`);
      const from = elapsed > 0 ? elapsed : 0;
      const between = from + (next - from) * at;
      if (between < next) assert.equal(rampShare(between, window), share);
      assert.ok(rampShare(next, window) >= share);
      assert.ok(window / rampStepMs(window) <= SLOW_START_DEFAULTS.steps * (1 + 1e-12));
    }),
    2_000,
  );
});

Deno.test("property: a ramped weight is above 0 and at most the weight, whole at share 1, and rises with the share", () => {
  const anyWeight = fc.integer({ min: 0, max: 1_000_000_000 }).map((n) => n / 100);
  check(
    fc.property(anyWeight, anyWindow, anyElapsed, anyElapsed, (weight, window, a, b) => {
      const share = rampShare(a, window);
      const ramped = rampedWeight(weight, share);
      assert.ok(Number.isFinite(ramped));
      if (weight === 0) assert.equal(ramped, 0);
      else assert.ok(ramped > 0 && ramped <= weight, `${ramped} of ${weight}`);
      if (share === 1) assert.equal(ramped, weight);
      const other = rampShare(b, window);
      if (share <= other) assert.ok(ramped <= rampedWeight(weight, other));
    }),
    2_000,
  );
});
