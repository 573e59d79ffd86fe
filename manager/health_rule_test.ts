import assert from "node:assert/strict";
import { type HealthTrack, nextHealth } from "./health_rule.ts";

const RULE = { rise: 2, fall: 3 };

Deno.test("health: a pass from unknown is up; from down it takes rise passes; fall failures are down", () => {
  const unknown: HealthTrack = { health: "unknown", successes: 0, failures: 0 };
  assert.deepEqual(nextHealth(unknown, { ok: true }, RULE), { health: "up", successes: 1, failures: 0 });
  assert.deepEqual(nextHealth(unknown, { ok: false }, RULE), {
    health: "unknown",
    successes: 0,
    failures: 1,
  });
  assert.deepEqual(nextHealth(unknown, { ok: false, count: 3 }, RULE), {
    health: "down",
    successes: 0,
    failures: 3,
  });
  const up: HealthTrack = { health: "up", successes: 5, failures: 0 };
  assert.deepEqual(nextHealth(up, { ok: false }, RULE), { health: "up", successes: 0, failures: 1 });
  assert.deepEqual(nextHealth({ health: "up", successes: 0, failures: 2 }, { ok: false }, RULE), {
    health: "down",
    successes: 0,
    failures: 3,
  });
  const down: HealthTrack = { health: "down", successes: 0, failures: 7 };
  assert.deepEqual(nextHealth(down, { ok: true }, RULE), { health: "down", successes: 1, failures: 0 });
  assert.deepEqual(nextHealth({ health: "down", successes: 1, failures: 0 }, { ok: true }, RULE), {
    health: "up",
    successes: 2,
    failures: 0,
  });
  assert.deepEqual(nextHealth(down, { ok: true, count: 0 }, RULE), down, "a count of 0 changes nothing");
  // rise 1 and fall 1: every check decides.
  assert.equal(nextHealth(down, { ok: true }, { rise: 1, fall: 1 }).health, "up");
  assert.equal(nextHealth(up, { ok: false }, { rise: 1, fall: 1 }).health, "down");
});
