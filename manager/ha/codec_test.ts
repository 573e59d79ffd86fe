import assert from "node:assert/strict";
import type { FeedbackRecord } from "../../feedback/mod.ts";
import { type Config, parseConfig } from "../config.ts";
import {
  applyKey,
  type Clock,
  configVersion,
  decodeAgents,
  decodeFeedback,
  decodeManager,
  emptyState,
  encodeAgents,
  encodeFeedback,
  encodeManager,
  Keys,
  type StoredAgent,
} from "./codec.ts";

const keys = new Keys("/switchyard/prod");

Deno.test("every key of a cluster parses back to what it names, and others are not its", () => {
  assert.deepEqual(keys.parse(keys.leader), { kind: "leader" });
  assert.deepEqual(keys.parse(keys.agents), { kind: "agents" });
  assert.deepEqual(keys.parse(keys.config), { kind: "config" });
  assert.deepEqual(keys.parse(keys.manager("edge/1")), { kind: "manager", id: "edge/1" });
  assert.deepEqual(keys.parse(keys.operator("web", "[::1]:80")), {
    kind: "operator",
    service: "web",
    backend: "[::1]:80",
  });
  assert.deepEqual(keys.parse(keys.feedback("web", "10.0.0.1:80")), {
    kind: "feedback",
    service: "web",
    backend: "10.0.0.1:80",
  });
  for (
    const other of [
      "/switchyard/prodx/leader",
      "/switchyard/prod/leader/x",
      "/switchyard/prod/feedback/web",
      "/other",
    ]
  ) {
    assert.equal(keys.parse(other), null, other);
  }
});

Deno.test("a feedback record keeps its expiry across managers whose model clocks differ", () => {
  const record: FeedbackRecord = {
    source: "load",
    reportedWeight: null,
    load: { utilization: 0.5, qps: 100 },
    raw: 200,
    target: 80,
    weight: 90,
    state: "up",
    reportedAt: 1_000,
    expiresAt: 31_000,
  };
  // Written by a manager whose model clock reads 11_000 at wall time 1_700_000_000_000…
  const written = encodeFeedback(record, { model: 11_000, wall: 1_700_000_000_000 });
  // …and read 5 s later by one whose model clock reads 400_000 then.
  const read = decodeFeedback(written, { model: 400_000, wall: 1_700_000_005_000 });
  assert.deepEqual(read, { ...record, reportedAt: 400_000 - 15_000, expiresAt: 400_000 + 15_000 });
  // Once its wall-clock expiry has passed it is gone.
  assert.equal(decodeFeedback(written, { model: 0, wall: 1_700_000_020_000 }), null);
  assert.equal(decodeFeedback('{"source":"weight"}', { model: 0, wall: 0 }), null);
  assert.equal(decodeFeedback("not json", { model: 0, wall: 0 }), null);
});

Deno.test("managers and agents read back as written; a bad value reads as nothing", () => {
  const info = {
    id: "m1",
    admin: "10.0.0.1:9090",
    cluster: "10.0.0.1:9091",
    configVersion: "ab",
    startedAt: 5,
  };
  assert.deepEqual(decodeManager(encodeManager(info)), info);
  assert.equal(decodeManager('{"id":""}'), null);
  const agents: StoredAgent[] = [{
    id: "edge-1",
    mesh: "10.0.0.11:7000",
    remote: "10.0.0.11:40000",
    joinedAt: 1,
    heardAt: 2,
    connections: { served: 3, handed_off: 4, open: 5 },
    stateVersion: 6,
  }];
  assert.deepEqual(decodeAgents(encodeAgents(agents)), agents);
  assert.equal(decodeAgents('[{"id":"x"}]'), null);
});

Deno.test("applyKey follows puts and deletes key by key, and leaves out what it cannot read", () => {
  const state = emptyState();
  const clock: Clock = { model: 0, wall: 1_000 };
  const put = (key: string, value: string | null, createRevision = 1) =>
    applyKey(state, { key, value, createRevision, lease: "7" }, { keys, clock });
  const info = { id: "m1", admin: "a:1", cluster: "c:2", configVersion: "v", startedAt: 0 };
  assert.equal(put(keys.leader, encodeManager(info), 42), "leader");
  assert.deepEqual(state.leader, { info, createRevision: 42, lease: "7" });
  assert.equal(put(keys.operator("web", "b:1"), "drain"), "operator");
  assert.equal(put(keys.operator("web", "b:2"), "sideways"), null);
  assert.deepEqual([...state.operator.get("web")!], [["b:1", "drain"]]);
  assert.equal(put(keys.operator("web", "b:1"), null), "operator");
  assert.equal(state.operator.size, 0);
  assert.equal(put(keys.leader, null), "leader");
  assert.equal(state.leader, null);
  assert.equal(put("/elsewhere", "x"), null);
});

Deno.test("the config version is the same for managers that differ only in their addresses", async () => {
  const config = (admin: string, services = "[10.0.0.1:80]") => (parseConfig(
    `manager: { admin: "${admin}", tokens: { cluster: cluster-secret } }\nservices:\n  - { name: web, listen: 0.0.0.0:80, backends: ${services} }\n`,
  ).config as Config);
  const a = await configVersion(config("10.0.0.1:9090"));
  assert.match(a, /^[0-9a-f]{16}$/);
  assert.equal(await configVersion(config("10.0.0.2:9090")), a);
  assert.notEqual(await configVersion(config("10.0.0.1:9090", "[10.0.0.2:80]")), a);
});
