import assert from "node:assert/strict";
import { QueuedDecisions } from "./queued_decisions.ts";

Deno.test("queued decisions are taken in order, once each, until none is left or the queue expires", () => {
  const queue = new QueuedDecisions();
  assert.equal(queue.take(0), -1, "an empty queue gives none");
  queue.set({ seq: 7, backends: new Uint16Array([2, 0, 2]), ttlMs: 100 }, 1_000);
  assert.equal(queue.reported(), false);
  assert.deepEqual([queue.take(1_001), queue.take(1_002)], [2, 0]);
  assert.equal(queue.reported(), true, "taken since the last report");
  assert.equal(queue.reported(), false);
  assert.deepEqual({ seq: queue.seq, taken: queue.taken, left: queue.left }, { seq: 7, taken: 2, left: 1 });
  assert.equal(queue.take(1_100), -1, "past its ttl the queue is not taken from");
  queue.set({ seq: 8, backends: new Uint16Array([1]), ttlMs: 100 }, 1_100);
  assert.deepEqual(
    { taken: queue.taken, left: queue.left },
    { taken: 0, left: 1 },
    "a new queue replaces the old",
  );
  assert.deepEqual([queue.take(1_101), queue.take(1_102)], [1, -1]);
});
