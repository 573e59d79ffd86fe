import assert from "node:assert/strict";
import { anyDouble, check, fc } from "../tests/_property.ts";
import { parseAgentCheckReply } from "./agent_check.ts";

function summary(line: string) {
  const { operational, admin, share } = parseAgentCheckReply(line);
  return { operational, admin, share };
}

Deno.test("agent-check words set the operational state, the admin state and the share", () => {
  const cases: Array<[string, ReturnType<typeof summary>]> = [
    ["up", { operational: "up", admin: "ready", share: 100 }],
    ["down", { operational: "down", admin: "ready", share: 100 }],
    ["fail", { operational: "down", admin: "ready", share: 100 }],
    ["stopped", { operational: "down", admin: "ready", share: 100 }],
    ["ready", { operational: null, admin: "ready", share: 100 }],
    ["drain", { operational: null, admin: "drain", share: 100 }],
    ["maint", { operational: null, admin: "maint", share: 100 }],
    ["75%", { operational: null, admin: "ready", share: 75 }],
    ["0%", { operational: null, admin: "ready", share: 0 }],
    ["up 50%", { operational: "up", admin: "ready", share: 50 }],
    ["50% up", { operational: "up", admin: "ready", share: 50 }],
    ["up,drain,25%", { operational: "up", admin: "drain", share: 25 }],
    ["UP\t Ready  10%\r\n", { operational: "up", admin: "ready", share: 10 }],
    ["250%", { operational: null, admin: "ready", share: 100 }],
    ["maxconn:30 up", { operational: "up", admin: "ready", share: 100 }],
    ["", { operational: null, admin: "ready", share: 100 }],
  ];
  for (const [line, expected] of cases) assert.deepEqual(summary(line), expected, JSON.stringify(line));
});

Deno.test("agent-check text after # is a description, and unknown words are set aside", () => {
  const reply = parseAgentCheckReply("down#disk full, 90% used");
  assert.equal(reply.operational, "down");
  assert.equal(reply.share, 100);
  assert.equal(reply.description, "disk full, 90% used");
  assert.deepEqual(parseAgentCheckReply("up sleepy 5.5% -3%").ignored, ["sleepy", "5.5%", "-3%"]);
});

Deno.test("the last of conflicting agent-check words wins", () => {
  assert.deepEqual(summary("down up"), { operational: "up", admin: "ready", share: 100 });
  assert.deepEqual(summary("drain ready 10% 20%"), { operational: null, admin: "ready", share: 20 });
});

Deno.test("property: any reply line gives a share from 0 to 100 % and never throws", () => {
  const word = fc.oneof(
    fc.constantFrom("up", "down", "drain", "maint", "ready", "fail", "maxconn:10", "#", ",", " ", "\t"),
    fc.oneof(anyDouble(), fc.bigInt()).map((n) => `${n}%`),
    fc.nat().map((n) => `${n}%`),
    fc.string(),
  );
  check(
    fc.property(
      fc.oneof(fc.array(word, { maxLength: 8 }).map((words) => words.join(" ")), fc.string()),
      (line) => {
        const reply = parseAgentCheckReply(line);
        assert.ok(
          Number.isInteger(reply.share) && reply.share >= 0 && reply.share <= 100,
          `share ${reply.share}`,
        );
      },
    ),
    3_000,
  );
  assert.equal(parseAgentCheckReply("up 1e999%").share, 100, "a percentage it cannot read is left out");
  assert.equal(parseAgentCheckReply("up 99999999999999999999%").share, 100);
});
