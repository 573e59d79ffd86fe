import assert from "node:assert/strict";
import { AuthThrottle } from "./auth_throttle.ts";

Deno.test("a source's first failures are answered at once, later ones ever later up to a second", () => {
  const throttle = new AuthThrottle();
  const delays = Array.from({ length: 60 }, () => throttle.fail("10.0.0.1", 0).delayMs);
  assert.deepEqual(delays.slice(0, 20), new Array(20).fill(0));
  assert.deepEqual(delays.slice(20, 23), [50, 100, 150]);
  assert.equal(delays[59], 1000);
  assert.equal(throttle.fail("10.0.0.2", 0).delayMs, 0, "other sources are not slowed");
});

Deno.test("failures are logged at the first and at the start of throttling, and the window resets", () => {
  const throttle = new AuthThrottle();
  const logged = Array.from({ length: 30 }, () => throttle.fail("a", 0).log);
  assert.deepEqual(logged.flatMap((log, i) => log ? [i + 1] : []), [1, 21]);
  const fresh = throttle.fail("a", 60_000);
  assert.deepEqual(fresh, { delayMs: 0, log: true, count: 1 });
});

Deno.test("at most maxSources sources are remembered", () => {
  const throttle = new AuthThrottle({ maxSources: 3 });
  for (const source of ["a", "b", "c", "d"]) throttle.fail(source, 0);
  assert.equal(throttle.size, 3);
});
