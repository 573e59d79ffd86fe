import assert from "node:assert/strict";
import { formatDuration, parseDuration } from "./duration.ts";

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
