import assert from "node:assert/strict";
import { EventLog } from "./events.ts";

const change = (effectiveWeight: number, state = "up") => ({
  service: "web",
  backend: "10.0.0.11:80",
  configured: 100,
  effectiveWeight,
  state,
  reported: "utilization 0.5",
});

Deno.test("events are numbered from 1 and read back after a number, oldest first", () => {
  const log = new EventLog({ now: () => 1000 });
  assert.equal(log.last, 0);
  log.add({ kind: "agent", agent: "a1", message: "Agent a1 joined" });
  log.add({ kind: "agent", agent: "a2", message: "Agent a2 joined" });
  log.add({ kind: "config", message: "Config reloaded" });
  assert.equal(log.last, 3);
  assert.deepEqual(log.after(1).map((event) => event.seq), [2, 3]);
  assert.deepEqual(log.after(3), []);
  assert.deepEqual(log.after(0)[0], {
    seq: 1,
    at: 1000,
    severity: "info",
    kind: "agent",
    agent: "a1",
    message: "Agent a1 joined",
  });
  assert.deepEqual(log.after(0, 2).map((event) => event.seq), [2, 3], "a short page holds the newest");
});

Deno.test("the log keeps only its capacity, dropping the oldest", () => {
  const log = new EventLog({ capacity: 3 });
  for (let i = 1; i <= 5; i++) log.add({ kind: "config", message: `event ${i}` });
  assert.deepEqual(log.after(0).map((event) => event.message), ["event 3", "event 4", "event 5"]);
  assert.equal(log.last, 5);
});

Deno.test("feedback is recorded at first, on a change of state, and when the weight moved by a tenth", () => {
  const log = new EventLog();
  assert.ok(log.feedback(change(80)), "the first report");
  assert.equal(log.feedback(change(85)), null, "5 of 100 is not enough");
  assert.equal(log.feedback(change(71)), null, "9 of 100 is not enough");
  const moved = log.feedback(change(70));
  assert.ok(moved, "10 of 100 is");
  assert.equal(
    moved.message,
    "Feedback for 10.0.0.11:80 of web: utilization 0.5; effective weight 70 of 100",
  );
  assert.match(log.feedback(change(70, "drain"))?.message ?? "", /state drain/);
  log.forgetFeedback("web", "10.0.0.11:80");
  assert.ok(log.feedback(change(70, "drain")), "after forgetting, the next report is recorded");
  assert.equal(log.after(0).length, 4);
});

Deno.test("a batch of feedback writes out only the newest events the log keeps, and says each lazily", () => {
  const log = new EventLog({ capacity: 3 });
  let said = 0;
  const changes = Array.from({ length: 10 }, (_, i) => ({
    ...change(50),
    backend: `10.0.0.${i + 1}:80`,
    reported: () => `weight ${++said}`,
  }));
  log.feedbackAll(changes);
  assert.deepEqual(log.after(0).map((event) => event.backend), [
    "10.0.0.8:80",
    "10.0.0.9:80",
    "10.0.0.10:80",
  ]);
  assert.equal(said, 3, "only the events written out are said");
  // Every backend of the batch was told, so the same weights again tell nothing.
  log.feedbackAll(changes);
  assert.equal(log.last, 3);
});
