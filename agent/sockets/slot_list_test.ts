import assert from "node:assert/strict";
import { SlotList, type Slotted } from "./slot_list.ts";

interface Item extends Slotted {
  readonly id: number;
}

const item = (id: number): Item => ({ id, slot: -1 });
const ids = (list: SlotList<Item>) => list.snapshot().map((i) => i.id).sort((a, b) => a - b);

Deno.test("SlotList adds, removes from any place, and keeps every slot right", () => {
  const list = new SlotList<Item>();
  const items = Array.from({ length: 8 }, (_, i) => item(i));
  for (const i of items) list.add(i);
  assert.equal(list.size, 8);
  for (const id of [0, 7, 3, 3, 5]) list.delete(items[id] as Item);
  assert.deepEqual(ids(list), [1, 2, 4, 6]);
  list.forEach((i) => assert.equal(list.snapshot()[i.slot], i, `item ${i.id} knows its slot`));
  for (const id of [0, 3, 5, 7]) assert.equal((items[id] as Item).slot, -1);
});

Deno.test("SlotList ignores adding an item twice and deleting one it does not hold", () => {
  const list = new SlotList<Item>();
  const a = item(1);
  const b = item(2);
  list.add(a);
  list.add(a);
  assert.equal(list.size, 1);
  assert.equal(list.delete(b), false);
  // An item of another list whose slot happens to be valid here is not this list's.
  const other = new SlotList<Item>();
  const c = item(3);
  other.add(c);
  assert.equal(list.delete(c), false);
  assert.equal(list.size, 1);
  assert.equal(list.delete(a), true);
  assert.equal(list.delete(a), false);
  assert.equal(list.size, 0);
});

Deno.test("SlotList against a Set over 10,000 random adds and deletes", () => {
  const list = new SlotList<Item>();
  const reference = new Set<Item>();
  const pool = Array.from({ length: 64 }, (_, i) => item(i));
  let seed = 12345;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let step = 0; step < 10_000; step++) {
    const i = pool[Math.floor(random() * pool.length)] as Item;
    if (random() < 0.5) {
      list.add(i);
      reference.add(i);
    } else {
      assert.equal(list.delete(i), reference.delete(i), `step ${step}`);
    }
    assert.equal(list.size, reference.size);
  }
  assert.deepEqual(ids(list), [...reference].map((i) => i.id).sort((a, b) => a - b));
});

Deno.test("SlotList.snapshot may be walked while items are removed", () => {
  const list = new SlotList<Item>();
  for (let i = 0; i < 5; i++) list.add(item(i));
  for (const i of list.snapshot()) list.delete(i);
  assert.equal(list.size, 0);
});
