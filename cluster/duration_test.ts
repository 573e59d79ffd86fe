import assert from "node:assert/strict";
import { formatDuration, MAX_DURATION_MS, parseDuration } from "./duration.ts";
import { check, fc } from "../tests/_property.ts";

Deno.test("durations parse in every unit and as sums", () => {
  assert.equal(parseDuration("250ms"), 250);
  assert.equal(parseDuration("2s"), 2000);
  assert.equal(parseDuration("1.5s"), 1500);
  assert.equal(parseDuration("5m"), 300_000);
  assert.equal(parseDuration("1h"), 3_600_000);
  assert.equal(parseDuration("1m30s"), 90_000);
  assert.equal(parseDuration("0s"), 0);
});

Deno.test("durations without a unit or with garbage are refused with the value", () => {
  for (const bad of ["", "10", "s", "2 s", "-1s", "1d", "2s3", "abc"]) {
    assert.throws(
      () => parseDuration(bad),
      (error: Error) => error instanceof RangeError && error.message.includes(`"${bad}"`),
    );
  }
});

Deno.test("durations format to their shortest exact form and parse back", () => {
  for (const ms of [0, 1, 250, 1500, 2000, 60_000, 90_000, 300_000, 3_600_000]) {
    assert.equal(parseDuration(formatDuration(ms)), ms);
  }
  assert.equal(formatDuration(2000), "2s");
  assert.equal(formatDuration(300_000), "5m");
});

Deno.test("a duration longer than 24 days is refused, however it is written", () => {
  assert.equal(parseDuration("576h"), MAX_DURATION_MS);
  for (const text of ["576h1ms", "99999999999999999999h", `1${"0".repeat(400)}ms`, "300h300h"]) {
    assert.throws(() => parseDuration(text), RangeError, text);
  }
  assert.throws(() => parseDuration("99999999999999999999h"), /the longest is 576h \(24 days\)/);
});

Deno.test("property: any text is a whole number of ms from 0 to 24 days, or a RangeError", () => {
  const part = fc.tuple(
    fc.oneof(fc.nat().map(String), fc.constantFrom("0.5", "1.25", "99999999999999999999", "1".repeat(400))),
    fc.constantFrom("ms", "s", "m", "h", "d", ""),
  ).map(([n, unit]) => `${n}${unit}`);
  check(
    fc.property(
      fc.oneof(fc.array(part, { maxLength: 4 }).map((parts) => parts.join("")), fc.string()),
      (text) => {
        let ms: number;
        try {
          ms = parseDuration(text);
        } catch (error) {
          assert.ok(error instanceof RangeError, `unexpected ${error}`);
          assert.ok(error.message.length < 200, "the message quotes a shortened text");
          return;
        }
        assert.ok(Number.isSafeInteger(ms) && ms >= 0 && ms <= MAX_DURATION_MS, `${text} gave ${ms}`);
      },
    ),
    3_000,
  );
});
