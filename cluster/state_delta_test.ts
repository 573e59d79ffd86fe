import assert from "node:assert/strict";
import { testServiceSpec } from "../tests/_config.ts";
import { check, fc } from "../tests/_property.ts";
import { buildTable, NO_BACKEND } from "./maglev.ts";
import {
  type BackendSpec,
  type ClusterState,
  decodeTable,
  encodeTable,
  type ServiceDelta,
  type ServiceSpec,
  type StateDelta,
} from "./protocol.ts";
import {
  applyServiceDelta,
  applyStateDelta,
  DeltaError,
  movedSlots,
  serviceDelta,
  tableHash,
} from "./state_delta.ts";

/** Tables of the properties: a prime small enough to build hundreds of them quickly. */
const SIZE = 251;

const ids = Array.from({ length: 6 }, (_, i) => `10.0.0.${i + 1}:80`);

function table(weights: readonly number[], size = SIZE): Uint16Array {
  return buildTable(ids.map((id, i) => ({ id, weight: weights[i] ?? 0 })), { size });
}

function backends(weights: readonly number[]): BackendSpec[] {
  return ids.map((id, i) => ({
    id,
    host: "10.0.0.1",
    port: 80,
    weight: weights[i] ?? 0,
    state: (weights[i] ?? 0) > 0 ? "up" : "down",
  }));
}

function spec(name: string, weights: readonly number[], size = SIZE): ServiceSpec {
  return testServiceSpec({
    name,
    listen: { host: "127.0.0.1", port: 8080 },
    backends: backends(weights),
    table: encodeTable(table(weights, size)),
  });
}

function stateOf(version: number, services: ServiceSpec[]): ClusterState {
  return { version, epoch: "e1", seed: 7, heartbeatMs: 1_000, services, agents: [], meshTls: null };
}

function tablesOf(state: ClusterState): Map<string, Uint16Array> {
  return new Map(state.services.map((s) => [s.name, decodeTable(s.table, s.backends.length)]));
}

/** The delta the manager sends from the weights `before` to `after` of service `web`. */
function deltaOf(before: readonly number[], after: readonly number[], base: number): StateDelta {
  const next = table(after);
  const changed = backends(after).flatMap((backend, index) =>
    backend.weight !== (before[index] ?? 0) ? [{ index, weight: backend.weight, state: backend.state }] : []
  );
  return {
    base,
    version: base + 1,
    epoch: "e1",
    services: [
      serviceDelta("web", { after: next, moved: movedSlots(table(before), next), backends: changed }),
    ],
  };
}

Deno.test("movedSlots lists the slots whose entries differ, ascending", () => {
  const before = Uint16Array.from([0, 1, 2, 3, NO_BACKEND]);
  const after = Uint16Array.from([0, 2, 2, NO_BACKEND, 1]);
  assert.deepEqual([...movedSlots(before, after)], [1, 3, 4]);
  assert.deepEqual([...movedSlots(before, before)], []);
  assert.throws(() => movedSlots(before, after.subarray(1)), RangeError);
});

Deno.test("a delta sends the slots that moved while they are fewer bytes than the table, else the table", () => {
  const one = deltaOf([1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0.9], 1).services[0]!;
  assert.notEqual(one.slots, null);
  assert.equal(one.table, null);
  // 6 bytes a moved slot against 2 a slot: past a third of the table moved, the table is shorter.
  const most = deltaOf([1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], 1).services[0]!;
  assert.equal(most.slots, null);
  assert.equal(most.table, encodeTable(table([0, 1, 0, 0, 0, 0])));
  assert.equal(most.hash, tableHash(table([0, 1, 0, 0, 0, 0])));
});

Deno.test("a delta applied to the version it is from gives that version's table and backends", () => {
  const state = stateOf(4, [spec("web", [1, 1, 1, 1, 1, 1]), spec("api", [2, 1])]);
  const before = structuredClone(state);
  const delta = deltaOf([1, 1, 1, 1, 1, 1], [1, 2, 1, 1, 1, 0], 4);
  const next = applyStateDelta(state, tablesOf(state), delta);
  assert.equal(next.state.version, 5);
  assert.deepEqual(next.state.services[0], spec("web", [1, 2, 1, 1, 1, 0]));
  assert.equal(next.state.services[1], state.services[1], "a service the delta does not name is shared");
  assert.deepEqual(next.tables.get("web"), table([1, 2, 1, 1, 1, 0]));
  assert.deepEqual(state, before, "the state given is left as it was");
});

Deno.test("a delta for another version, epoch or service, or with a wrong hash or slot, is a DeltaError", () => {
  const state = stateOf(4, [spec("web", [1, 1, 1, 1, 1, 1])]);
  const tables = tablesOf(state);
  const good = deltaOf([1, 1, 1, 1, 1, 1], [1, 1, 3, 1, 1, 1], 4);
  const web = good.services[0]!;
  const bad: Array<[string, StateDelta]> = [
    ["a missed version", { ...good, base: 3 }],
    ["another epoch", { ...good, epoch: "e2" }],
    ["an unknown service", { ...good, services: [{ ...web, name: "nope" }] }],
    ["a service twice", { ...good, services: [web, web] }],
    ["a wrong hash", { ...good, services: [{ ...web, hash: (web.hash + 1) >>> 0 }] }],
    ["no such backend", {
      ...good,
      services: [{ ...web, backends: [{ index: 6, weight: 1, state: "up" }] }],
    }],
  ];
  const slots = (records: Array<[number, number]>): ServiceDelta => {
    const bytes = new Uint8Array(records.length * 6);
    const view = new DataView(bytes.buffer);
    records.forEach(([slot, entry], i) => {
      view.setUint32(i * 6, slot, true);
      view.setUint16(i * 6 + 4, entry, true);
    });
    return { ...web, slots: btoa(String.fromCharCode(...bytes)), table: null };
  };
  bad.push(["a slot out of range", { ...good, services: [slots([[SIZE, 0]])] }]);
  bad.push(["slots out of order", { ...good, services: [slots([[5, 0], [5, 1]])] }]);
  bad.push(["an entry of no backend", { ...good, services: [slots([[5, 6]])] }]);
  bad.push(["a partial record", { ...good, services: [{ ...web, slots: btoa("abcd"), table: null }] }]);
  bad.push(["a table of another size", {
    ...good,
    services: [{ ...web, slots: null, table: encodeTable(table([1, 1, 3, 1, 1, 1], 257)) }],
  }]);
  for (const [name, delta] of bad) {
    assert.throws(() => applyStateDelta(state, tables, delta), DeltaError, name);
  }
  assert.deepEqual(applyStateDelta(state, tables, good).tables.get("web"), table([1, 1, 3, 1, 1, 1]));
});

Deno.test("property: applying any sequence of deltas to a table yields exactly the full table of each version", () => {
  const weights = fc.array(
    fc.oneof(
      fc.constant(0),
      fc.integer({ min: 1, max: 100 }),
      fc.double({ min: 0.01, max: 1e6, noNaN: true }),
    ),
    { minLength: 6, maxLength: 6 },
  );
  check(
    fc.property(weights, fc.array(weights, { minLength: 1, maxLength: 8 }), (first, steps) => {
      let state = stateOf(0, [spec("web", first), spec("api", [1, 2, 3])]);
      let tables = tablesOf(state);
      let previous = first;
      for (const [i, next] of steps.entries()) {
        ({ state, tables } = applyStateDelta(state, tables, deltaOf(previous, next, i)));
        previous = next;
        // Slot for slot the table a manager would send whole for this version, and the same backends.
        assert.deepEqual(tables.get("web"), table(next));
        assert.deepEqual(state.services[0], spec("web", next));
        assert.equal(state.version, i + 1);
      }
      assert.deepEqual(tables.get("api"), table([1, 2, 3]));
    }),
    200,
  );
});

Deno.test("property: a delta's slots either apply whole or change nothing", () => {
  check(
    fc.property(fc.uint8Array({ maxLength: 60 }), fc.nat(0xffffffff), (bytes, hash) => {
      const state = stateOf(1, [spec("web", [1, 1, 1, 1, 1, 1])]);
      const tables = tablesOf(state);
      const before = tables.get("web")!.slice();
      const delta: ServiceDelta = {
        name: "web",
        backends: [],
        slots: btoa(String.fromCharCode(...bytes)),
        table: null,
        hash,
      };
      try {
        const next = applyServiceDelta(tables.get("web")!, delta, 6);
        assert.equal(tableHash(next), hash);
      } catch (error) {
        assert.ok(error instanceof DeltaError, `unexpected ${error}`);
      }
      assert.deepEqual(tables.get("web"), before, "the table given is never changed");
    }),
    1_000,
  );
});
