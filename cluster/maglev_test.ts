import assert from "node:assert/strict";
import { anyDouble, check, fc } from "../tests/_property.ts";
import {
  buildTable,
  candidates,
  DEFAULT_TABLE_SIZE,
  NO_BACKEND,
  slotsMoved,
  type TableBackend,
} from "./maglev.ts";

const M = DEFAULT_TABLE_SIZE;

function equalBackends(count: number): TableBackend[] {
  return Array.from({ length: count }, (_, i) => ({ id: `10.0.${i >> 8}.${i & 0xff}:80`, weight: 1 }));
}

/** Slots held by each index of the caller's array. */
function slotCounts(table: Uint16Array, count: number): number[] {
  const counts = new Array<number>(count).fill(0);
  for (const index of table) {
    if (index !== NO_BACKEND) counts[index] = counts[index]! + 1;
  }
  return counts;
}

function ids(backends: readonly TableBackend[]): string[] {
  return backends.map((backend) => backend.id);
}

Deno.test("ten equal backends each get 10% of the slots, within half a point", () => {
  const table = buildTable(equalBackends(10));
  assert.equal(table.length, M);
  for (const [index, count] of slotCounts(table, 10).entries()) {
    const share = count / M;
    assert.ok(Math.abs(share - 0.1) <= 0.005, `backend ${index} holds ${(share * 100).toFixed(3)}%`);
  }
});

Deno.test("weights 1:2:3 give shares within one point of 1/6, 2/6 and 3/6", () => {
  const backends = [1, 2, 3].map((weight, i) => ({ id: `10.0.0.${11 + i}:80`, weight }));
  const counts = slotCounts(buildTable(backends), 3);
  for (const [index, count] of counts.entries()) {
    const expected = backends[index]!.weight / 6;
    const share = count / M;
    assert.ok(Math.abs(share - expected) <= 0.01, `weight ${backends[index]!.weight} holds ${share}`);
  }
});

Deno.test("every slot is filled and holds an index into the caller's array", () => {
  const backends = equalBackends(7);
  const table = buildTable(backends, { size: 1009 });
  assert.equal(table.length, 1009);
  for (const index of table) assert.ok(index < backends.length, `entry ${index}`);
});

Deno.test("removing one of ten equal backends moves at most 1.5 times the slots it held", () => {
  const backends = equalBackends(10);
  const before = buildTable(backends);
  const held = slotCounts(before, 10);
  for (let removed = 0; removed < 10; removed++) {
    const remaining = backends.filter((_, i) => i !== removed);
    const after = buildTable(remaining);
    const moved = slotsMoved(before, ids(backends), after, ids(remaining));
    const minimal = held[removed]!;
    assert.ok(moved >= minimal, `removing ${removed} moved ${moved}, fewer than the ${minimal} it held`);
    assert.ok(moved <= 1.5 * minimal, `removing ${removed} moved ${moved} slots; it held ${minimal}`);
  }
});

Deno.test("changing one backend's weight moves at most twice the change in its slots", () => {
  const backends = equalBackends(10);
  const before = buildTable(backends);
  const heldBefore = slotCounts(before, 10)[0]!;
  for (const weight of [0, 0.5, 1.1, 2, 3]) {
    const changed = backends.map((backend, i) => (i === 0 ? { id: backend.id, weight } : backend));
    const after = buildTable(changed);
    const change = Math.abs(slotCounts(after, 10)[0]! - heldBefore);
    const moved = slotsMoved(before, ids(backends), after, ids(changed));
    assert.ok(change > 0, `weight ${weight} changed nothing`);
    assert.ok(moved <= 2 * change, `weight 1 → ${weight}: its slots changed by ${change}, ${moved} moved`);
  }
});

Deno.test("the table does not depend on the order the backends are listed in", () => {
  const backends = equalBackends(20).map((backend, i) => ({ id: backend.id, weight: 1 + (i % 4) }));
  const reversed = [...backends].reverse();
  const shuffled = [...backends];
  let state = 12345;
  for (let i = shuffled.length - 1; i > 0; i--) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    const j = state % (i + 1);
    [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
  }
  const reference = buildTable(backends);
  for (const other of [reversed, shuffled]) {
    const table = buildTable(other);
    assert.equal(slotsMoved(reference, ids(backends), table, ids(other)), 0);
    for (let slot = 0; slot < M; slot++) {
      if (backends[reference[slot]!]!.id !== other[table[slot]!]!.id) {
        assert.fail(`slot ${slot} maps to a different backend`);
      }
    }
  }
});

Deno.test("the same backends always give the same table", () => {
  const backends = equalBackends(5);
  assert.deepEqual(buildTable(backends), buildTable(backends.map((backend) => ({ ...backend }))));
});

Deno.test("the permutations are pinned: a small table keeps its exact layout", () => {
  // If this changes, every agent built from the new code maps flows differently from the old one.
  const table = buildTable([
    { id: "10.0.0.11:80", weight: 1 },
    { id: "10.0.0.12:80", weight: 2 },
    { id: "10.0.0.13:80", weight: 1 },
  ], { size: 13 });
  assert.deepEqual([...table], PINNED_SMALL_TABLE);
});
const PINNED_SMALL_TABLE = [1, 2, 1, 0, 1, 2, 0, 2, 1, 1, 1, 0, 1];

Deno.test("a backend of weight 0 gets no slots and the others share the table", () => {
  const backends = equalBackends(4).map((backend, i) => (i === 2 ? { id: backend.id, weight: 0 } : backend));
  const counts = slotCounts(buildTable(backends), 4);
  assert.equal(counts[2], 0);
  assert.equal(counts[0]! + counts[1]! + counts[3]!, M);
});

Deno.test("no backends, or none of weight > 0, give a table of NO_BACKEND", () => {
  for (const backends of [[], [{ id: "10.0.0.11:80", weight: 0 }]]) {
    const table = buildTable(backends, { size: 101 });
    assert.equal(table.length, 101);
    assert.ok(table.every((index) => index === NO_BACKEND));
  }
  assert.equal(buildTable([]).length, M);
});

Deno.test("a size that is not a prime from 2 to 2^24 is refused", () => {
  for (const size of [0, 1, 4, 65536, 65535, 1.5, -7, Number.NaN, 16777259]) {
    assert.throws(
      () => buildTable(equalBackends(2), { size }),
      (error: Error) =>
        error instanceof RangeError &&
        error.message.startsWith(`Cannot build a Maglev table of size ${size}:`),
      `size ${size}`,
    );
  }
  assert.equal(buildTable(equalBackends(2), { size: 2 }).length, 2);
});

Deno.test("bad weights, duplicate ids and too many backends are refused", () => {
  for (const weight of [-1, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 60]) {
    assert.throws(
      () => buildTable([{ id: "10.0.0.11:80", weight }]),
      (error: Error) => error instanceof RangeError && error.message.includes(`weight ${weight}`),
    );
  }
  assert.throws(
    () => buildTable([{ id: "10.0.0.11:80", weight: 1 }, { id: "10.0.0.11:80", weight: 2 }]),
    (error: Error) => error instanceof RangeError && error.message.includes(`"10.0.0.11:80" is listed twice`),
  );
  assert.throws(
    () => buildTable(equalBackends(65536)),
    (error: Error) => error instanceof RangeError && error.message.includes("65536 backends"),
  );
});

Deno.test("building a table of 100 weighted backends at the default size takes well under 100 ms", () => {
  const backends = equalBackends(100).map((backend, i) => ({ id: backend.id, weight: 1 + (i % 5) }));
  buildTable(backends); // warm up
  let fastest = Number.POSITIVE_INFINITY;
  for (let run = 0; run < 3; run++) {
    const start = performance.now();
    buildTable(backends);
    fastest = Math.min(fastest, performance.now() - start);
  }
  assert.ok(fastest < 50, `took ${fastest.toFixed(1)} ms`);
});

Deno.test("candidates walk forward from the slot and list distinct backends in order of appearance", () => {
  const table = Uint16Array.from([2, 2, NO_BACKEND, 0, 2, 1, 0]);
  assert.deepEqual(candidates(table, 0, 3), [2, 0, 1]);
  assert.deepEqual(candidates(table, 5, 3), [1, 0, 2]);
  assert.deepEqual(candidates(table, 2, 2), [0, 2]);
  assert.deepEqual(candidates(table, 6, 10), [0, 2, 1]);
  assert.deepEqual(candidates(table, 3, 0), []);
});

Deno.test("candidates with a large limit list every backend once, starting with the slot's own", () => {
  const table = buildTable(equalBackends(10));
  for (const slot of [0, 12345, M - 1]) {
    const found = candidates(table, slot, 100);
    assert.equal(found[0], table[slot]);
    assert.equal(new Set(found).size, found.length);
    assert.deepEqual([...found].sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  }
  const three = candidates(table, 777, 3);
  assert.equal(three.length, 3);
  assert.equal(new Set(three).size, 3);
});

Deno.test("candidates of an empty service are none, and bad slots or limits are refused", () => {
  assert.deepEqual(candidates(buildTable([], { size: 7 }), 3, 3), []);
  const table = buildTable(equalBackends(2), { size: 7 });
  for (const slot of [-1, 7, 1.5]) {
    assert.throws(
      () => candidates(table, slot, 2),
      (error: Error) => error instanceof RangeError && error.message.includes(`slot ${slot}`),
    );
  }
  assert.throws(() => candidates(table, 0, -1), RangeError);
});

Deno.test("slotsMoved compares backend ids, not indexes, and counts NO_BACKEND as an id", () => {
  const a = Uint16Array.from([0, 1, NO_BACKEND, 1]);
  const b = Uint16Array.from([1, 0, 0, NO_BACKEND]);
  // a: x y - y   b: x y y -
  assert.equal(slotsMoved(a, ["x", "y"], b, ["y", "x"]), 2);
  assert.equal(slotsMoved(a, ["x", "y"], a, ["x", "y"]), 0);
  assert.throws(() => slotsMoved(a, ["x", "y"], Uint16Array.from([0]), ["x"]), RangeError);
  assert.throws(
    () => slotsMoved(a, ["x"], a, ["x"]),
    (error: Error) => error instanceof RangeError && error.message.includes("index 1"),
  );
});

Deno.test("property: a table from any weights is sound, or a RangeError says which weight is wrong", () => {
  check(
    fc.property(
      fc.array(anyDouble(), { minLength: 0, maxLength: 8 }),
      fc.constantFrom(2, 3, 13, 251, 1021),
      (weights, size) => {
        const backends = weights.map((weight, i) => ({ id: `10.0.0.${i}:80`, weight }));
        const valid = weights.every((w) => w >= 0 && w <= Number.MAX_SAFE_INTEGER);
        let table: Uint16Array;
        try {
          table = buildTable(backends, { size });
        } catch (error) {
          assert.ok(error instanceof RangeError, `unexpected ${error}`);
          assert.ok(!valid, `refused valid weights: ${error.message}`);
          assert.match(error.message, /weight/);
          return;
        }
        assert.ok(valid, `built a table from weights ${weights}`);
        assert.equal(table.length, size);
        const anyWeight = weights.some((w) => w > 0);
        for (const entry of table) {
          if (entry === NO_BACKEND) assert.ok(!anyWeight, "a hole in a table with a backend of weight > 0");
          else assert.ok(weights[entry]! > 0, `slot of backend ${entry} of weight ${weights[entry]}`);
        }
        // The heaviest backend holds at least its share of the slots, rounded down.
        if (anyWeight) {
          // Its share, with every weight divided by the largest first, so that tiny weights do not underflow.
          const largest = Math.max(...weights);
          const heaviest = weights.indexOf(largest);
          const share = 1 / weights.reduce((sum, w) => sum + w / largest, 0);
          const held = table.filter((entry) => entry === heaviest).length;
          assert.ok(held >= Math.floor(size * share) - 1, `heaviest holds ${held} of ${size}`);
        }
      },
    ),
    3_000,
  );
});
