import assert from "node:assert/strict";
import { InFlight } from "./in_flight.ts";

Deno.test("InFlight counts tasks until they settle and wakes whenIdle waiters at zero", async () => {
  const errors: unknown[] = [];
  const inFlight = new InFlight((error) => errors.push(error));
  await inFlight.whenIdle();
  const a = Promise.withResolvers<void>();
  const b = Promise.withResolvers<void>();
  inFlight.track(a.promise);
  inFlight.track(b.promise);
  assert.equal(inFlight.size, 2);
  let idle = false;
  const waiting = inFlight.whenIdle().then(() => (idle = true));
  a.resolve();
  await a.promise;
  await Promise.resolve();
  assert.equal(inFlight.size, 1);
  assert.equal(idle, false);
  b.reject(new Error("boom"));
  await waiting;
  assert.equal(idle, true);
  assert.equal(inFlight.size, 0);
  assert.deepEqual(errors.map(String), ["Error: boom"]);
});

Deno.test("InFlight can go idle and busy again", async () => {
  const inFlight = new InFlight(() => assert.fail("no task rejects"));
  for (let round = 0; round < 3; round++) {
    const task = Promise.withResolvers<void>();
    inFlight.track(task.promise);
    const idle = inFlight.whenIdle();
    task.resolve();
    await idle;
    assert.equal(inFlight.size, 0);
  }
});
