import assert from "node:assert/strict";
import { AHEAD_DEFAULTS, type Chooser, DecisionQueues, holderOf } from "./ahead.ts";
import { check, fc } from "../tests/_property.ts";

/** Picks backends round robin, and records how many it was asked for. */
function roundRobin(backends: string[]): Chooser & { asked: number[] } {
  let next = 0;
  const asked: number[] = [];
  return {
    asked,
    chooseMany: (_service, count) => {
      asked.push(count);
      return Array.from({ length: count }, () => backends[next++ % backends.length]!);
    },
  };
}

Deno.test("a first queue holds one decision, counted as pending until the agent reports it used", () => {
  const queues = new DecisionQueues(roundRobin(["a", "b"]));
  const queue = queues.refill("edge-1", "web", { aheadMs: 50, now: 0 });
  assert.deepEqual(queue && { backends: queue.backends, ttlMs: queue.ttlMs }, {
    backends: ["a"],
    ttlMs: 1_000,
  });
  assert.equal(queues.pending("web", "a"), 1);
  assert.equal(
    queues.refill("edge-1", "web", { aheadMs: 50, now: 1 }),
    null,
    "a queue not yet half used will do",
  );
  queues.used("edge-1", { service: "web", seq: queue!.seq, used: 1 }, 5);
  assert.equal(queues.pending("web", "a"), 0);
  assert.deepEqual(queues.counts().get("web"), { made: 1, used: 1, expired: 0, takenBack: 0, asked: 0 });
});

Deno.test("a queue grows to decide_ahead of the agent's rate, and is refilled once half used", () => {
  const chooser = roundRobin(["a", "b", "c", "d"]);
  const queues = new DecisionQueues(chooser);
  let now = 0;
  let queue = queues.refill("edge-1", "web", { aheadMs: 50, now: now })!;
  // 2,000 connections a second, reported every 10 ms: the queue grows to about 100 (50 ms of them).
  let used = 0;
  for (let step = 0; step < 200; step++) {
    now += 10;
    const want = 20;
    const take = Math.min(want, queue.backends.length - used);
    used += take;
    queues.used("edge-1", { service: "web", seq: queue.seq, used: used }, now);
    const next = queues.refill("edge-1", "web", { aheadMs: 50, now: now });
    if (next) {
      assert.ok(queue.backends.length - used <= Math.max(1, queue.backends.length) / 2 || take < want);
      queue = next;
      used = 0;
    }
  }
  assert.ok(
    queue.backends.length >= 80 && queue.backends.length <= 120,
    `a queue of ${queue.backends.length}`,
  );
  // Pending is exactly what is left of the queue in force.
  const left = queue.backends.slice(used);
  for (const backend of ["a", "b", "c", "d"]) {
    assert.equal(queues.pending("web", backend), left.filter((b) => b === backend).length, backend);
  }
});

Deno.test("no queue holds more than maxQueue decisions, however fast its agent", () => {
  const queues = new DecisionQueues(roundRobin(["a"]));
  let queue = queues.refill("edge-1", "web", { aheadMs: 1_000, now: 0 })!;
  for (let now = 100; now <= 2_000; now += 100) {
    queues.used("edge-1", { service: "web", seq: queue.seq, used: queue.backends.length }, now);
    queue = queues.refill("edge-1", "web", { aheadMs: 1_000, now: now }) ?? queue;
  }
  assert.equal(queue.backends.length, AHEAD_DEFAULTS.maxQueue);
});

Deno.test("a change of the service takes every queue of it back at once; another service keeps its own", () => {
  const queues = new DecisionQueues(roundRobin(["a", "b"]));
  const web1 = queues.refill("edge-1", "web", { aheadMs: 50, now: 0 })!;
  const web2 = queues.refill("edge-2", "web", { aheadMs: 50, now: 0 })!;
  const api = queues.refill("edge-1", "api", { aheadMs: 50, now: 0 })!;
  assert.equal(queues.pending("web", "a") + queues.pending("web", "b"), 2);
  queues.invalidate("web");
  assert.equal(queues.pending("web", "a") + queues.pending("web", "b"), 0, "taken back: no longer pending");
  assert.equal(queues.queue("edge-1", "web"), null);
  assert.notEqual(queues.queue("edge-1", "api"), null);
  // A use of a queue taken back is a connection all the same: used, not taken back; it does not count
  // against what replaces the queue, and is no longer pending.
  assert.deepEqual(queues.used("edge-1", { service: "web", seq: web1.seq, used: 1 }, 1), web1.backends);
  const again = queues.refill("edge-1", "web", { aheadMs: 50, now: 2 })!;
  assert.ok(![web1.seq, web2.seq, api.seq].includes(again.seq), "a new number");
  assert.equal(queues.pending("web", again.backends[0]!), 1);
  assert.deepEqual(queues.counts().get("web"), { made: 3, used: 1, expired: 0, takenBack: 1, asked: 0 });
  // Reported again, or after the queue was replaced, the same use counts once.
  assert.deepEqual(queues.used("edge-1", { service: "web", seq: web1.seq, used: 1 }, 3), []);
  assert.deepEqual(queues.counts().get("web"), { made: 3, used: 1, expired: 0, takenBack: 1, asked: 0 });
});

Deno.test("an unused queue expires after its ttl, and no longer counts", () => {
  const queues = new DecisionQueues(roundRobin(["a"]));
  queues.refill("edge-1", "web", { aheadMs: 50, now: 0 });
  queues.expire(999);
  assert.equal(queues.pending("web", "a"), 1);
  queues.expire(1_000);
  assert.equal(queues.pending("web", "a"), 0);
  assert.equal(queues.counts().get("web")?.expired, 1);
  assert.notEqual(
    queues.refill("edge-1", "web", { aheadMs: 50, now: 1_001 }),
    null,
    "a new one is made when asked",
  );
});

Deno.test("decide_ahead 0s takes back what an agent holds and makes no queue", () => {
  const chooser = roundRobin(["a"]);
  const queues = new DecisionQueues(chooser);
  queues.refill("edge-1", "web", { aheadMs: 50, now: 0 });
  assert.equal(queues.refill("edge-1", "web", { aheadMs: 0, now: 1 }), null);
  assert.equal(queues.pending("web", "a"), 0);
  assert.equal(queues.refill("edge-1", "web", { aheadMs: 0, now: 2 }), null);
  assert.deepEqual(chooser.asked, [1]);
});

Deno.test("an agent that leaves gives its queues back", () => {
  const queues = new DecisionQueues(roundRobin(["a", "b"]));
  queues.refill("edge-1", "web", { aheadMs: 50, now: 0 });
  queues.refill("edge-2", "web", { aheadMs: 50, now: 0 });
  queues.forgetAgent("edge-1");
  assert.equal(queues.pending("web", "a") + queues.pending("web", "b"), 1);
  assert.equal(queues.queue("edge-1", "web"), null);
});

Deno.test("property: under any sequence of refills, uses, changes and expiries, pending is what the queues in force hold", () => {
  const agents = ["edge-1", "edge-2", holderOf("edge-1", "mesh")];
  const services = ["web", "api"];
  const operation = fc.oneof(
    fc.record({
      kind: fc.constant("refill" as const),
      agent: fc.constantFrom(...agents),
      service: fc.constantFrom(...services),
      aheadMs: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 10_000 })),
    }),
    fc.record({
      kind: fc.constant("used" as const),
      agent: fc.constantFrom(...agents),
      service: fc.constantFrom(...services),
      // One of the last queues made (its holder and number), or any counter the protocol lets through.
      recent: fc.option(fc.nat({ max: 4 }), { nil: null }),
      seq: fc.oneof(fc.nat({ max: 40 }), fc.constant(Number.MAX_SAFE_INTEGER)),
      used: fc.oneof(fc.nat({ max: 2_000 }), fc.constant(Number.MAX_SAFE_INTEGER), fc.constant(1e300)),
    }),
    fc.record({
      kind: fc.constant("asked" as const),
      agent: fc.constantFrom(...agents),
      service: fc.constantFrom(...services),
    }),
    fc.record({ kind: fc.constant("invalidate" as const), service: fc.constantFrom(...services) }),
    fc.record({ kind: fc.constant("expire" as const) }),
    fc.record({ kind: fc.constant("forgetAgent" as const), agent: fc.constantFrom("edge-1", "edge-2") }),
    fc.record({ kind: fc.constant("forgetService" as const), service: fc.constantFrom(...services) }),
  );
  check(
    fc.property(
      fc.array(fc.tuple(operation, fc.nat({ max: 2_000 })), { maxLength: 80, size: "medium" }),
      (steps) => {
        const queues = new DecisionQueues(roundRobin(["a", "b", "c"]));
        // The queues made so far: uses name one of them, or a number never made.
        const made: Array<{ agent: string; service: string; seq: number }> = [];
        let now = 0;
        for (const [step, elapsed] of steps) {
          now += elapsed;
          switch (step.kind) {
            case "refill": {
              const queue = queues.refill(step.agent, step.service, { aheadMs: step.aheadMs, now: now });
              if (queue) {
                assert.ok(queue.backends.length >= 1 && queue.backends.length <= AHEAD_DEFAULTS.maxQueue);
                assert.ok(Number.isFinite(queue.ttlMs) && queue.ttlMs >= AHEAD_DEFAULTS.minTtlMs);
                made.push({ agent: step.agent, service: step.service, seq: queue.seq });
              }
              break;
            }
            case "used": {
              // A queue in force, replaced or taken back, or a number never made.
              const target = step.recent !== null && step.recent < made.length
                ? made[made.length - 1 - step.recent]!
                : { agent: step.agent, service: step.service, seq: step.seq };
              const backends = queues.used(target.agent, {
                service: target.service,
                seq: target.seq,
                used: step.used,
              }, now);
              for (const backend of backends) assert.ok(["a", "b", "c"].includes(backend));
              break;
            }
            case "asked":
              queues.asked(step.agent, step.service, now);
              break;
            case "invalidate":
              queues.invalidate(step.service);
              break;
            case "expire":
              queues.expire(now);
              break;
            case "forgetAgent":
              queues.forgetAgent(step.agent);
              break;
            case "forgetService":
              queues.forgetService(step.service);
              break;
          }
          // Pending is never negative, and is exactly what the live queues have left.
          for (const service of services) {
            let left = 0;
            for (const agent of agents) left += queues.queue(agent, service)?.left ?? 0;
            let pending = 0;
            for (const backend of ["a", "b", "c"]) {
              const count = queues.pending(service, backend);
              assert.ok(Number.isInteger(count) && count >= 0, `pending ${count}`);
              pending += count;
            }
            assert.equal(pending, left, `${service}: pending ${pending}, queues hold ${left}`);
          }
          for (const counts of queues.counts().values()) {
            assert.ok(Object.values(counts).every((n) => Number.isSafeInteger(n) && n >= 0));
            assert.ok(counts.used + counts.expired + counts.takenBack <= counts.made);
          }
        }
      },
    ),
    300,
  );
});
