import assert from "node:assert/strict";
import { preferFirst } from "./placement.ts";

Deno.test("a preferred backend goes first, then the order without it", () => {
  assert.deepEqual(preferFirst([0, 1, 2, 3], 2), [2, 0, 1, 3]);
  assert.deepEqual(preferFirst([0, 1], 0), [0, 1]);
  assert.deepEqual(
    preferFirst([0, 1], 5),
    [5, 0, 1],
    "a backend the order does not name is tried first all the same",
  );
  const order = [3, 1];
  assert.equal(preferFirst(order, 1), order, "in place: no array per flow");
});
