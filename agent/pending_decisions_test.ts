import assert from "node:assert/strict";
import { PendingDecisions } from "./pending_decisions.ts";

const SANITIZE = { sanitizeOps: true, sanitizeResources: true } as const;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

Deno.test({
  name: "PendingDecisions gives each waiter its own answer, in any order, and its timer ends by then",
  ...SANITIZE,
  fn: async () => {
    const pending = new PendingDecisions<string>();
    const waits = [1, 2, 3, 4].map((id) => pending.wait(id, 50));
    assert.equal(pending.size, 4);
    assert.equal(pending.settle(3, "c"), true);
    assert.equal(pending.settle(1, "a"), true);
    assert.equal(pending.settle(1, "again"), false, "an answered decision is not answered twice");
    assert.equal(pending.settle(9, "unknown"), false);
    assert.equal(pending.settle(4, "d"), true);
    assert.equal(pending.settle(2, "b"), true);
    assert.deepEqual(await Promise.all(waits), ["a", "b", "c", "d"]);
    assert.equal(pending.size, 0);
    // The timer set for the first deadline fires once, finds nothing and is not set again: the ops
    // sanitizer fails the test should it still be pending.
    await sleep(80);
  },
});

Deno.test({
  name: "PendingDecisions resolves null at each waiter's own timeout, not before",
  ...SANITIZE,
  fn: async () => {
    const pending = new PendingDecisions<string>();
    const started = performance.now();
    const elapsed = (promise: Promise<string | null>) =>
      promise.then((value) => ({ value, ms: performance.now() - started }));
    const long = elapsed(pending.wait(1, 300));
    const short = elapsed(pending.wait(2, 60));
    const answered = elapsed(pending.wait(3, 60));
    pending.settle(3, "yes");
    const [a, b, c] = await Promise.all([long, short, answered]);
    assert.equal(c.value, "yes");
    assert.equal(b.value, null);
    assert.ok(b.ms >= 59 && b.ms < 250, `the 60 ms wait ended after ${b.ms} ms`);
    assert.equal(a.value, null);
    assert.ok(a.ms >= 299, `the 300 ms wait ended after ${a.ms} ms`);
    assert.equal(pending.settle(1, "late"), false, "an answer after the timeout is dropped");
  },
});

Deno.test({
  name: "PendingDecisions.settleAll answers every waiter with null",
  ...SANITIZE,
  fn: async () => {
    const pending = new PendingDecisions<string>();
    const waits = [1, 2, 3].map((id) => pending.wait(id, 5_000));
    pending.settle(2, "b");
    pending.settleAll();
    assert.deepEqual(await Promise.all(waits), [null, "b", null]);
    assert.equal(pending.size, 0);
  },
});

Deno.test({
  name: "PendingDecisions refuses an id that does not grow",
  ...SANITIZE,
  fn: async () => {
    const pending = new PendingDecisions<string>();
    const first = pending.wait(5, 1_000);
    assert.throws(() => pending.wait(5, 1_000), RangeError);
    assert.throws(() => pending.wait(4, 1_000), RangeError);
    pending.settle(5, "x");
    assert.equal(await first, "x");
    // As the link does when it closes: the timer still set for the first deadline is cleared.
    pending.settleAll();
  },
});

Deno.test({
  name: "PendingDecisions over 20,000 decisions answered out of order with some timing out",
  ...SANITIZE,
  fn: async () => {
    const pending = new PendingDecisions<number>();
    const waits: Array<Promise<number | null>> = [];
    let seed = 7;
    const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    const open: number[] = [];
    for (let id = 1; id <= 20_000; id++) {
      waits.push(pending.wait(id, 50));
      open.push(id);
      // Answer a random earlier decision most of the time; every 10th is never answered.
      if (open.length > 20 || random() < 0.5) {
        const at = Math.floor(random() * open.length);
        const answer = open.splice(at, 1)[0] as number;
        if (answer % 10 !== 0) pending.settle(answer, answer);
      }
      if (id % 5_000 === 0) await sleep(1);
    }
    for (const id of open) if (id % 10 !== 0) pending.settle(id, id);
    const results = await Promise.all(waits);
    results.forEach((value, i) => {
      const id = i + 1;
      if (id % 10 === 0) assert.equal(value, null, `decision ${id} was never answered`);
      else assert.equal(value, id, `decision ${id}`);
    });
    assert.equal(pending.size, 0);
  },
});
