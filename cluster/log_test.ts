import assert from "node:assert/strict";
import { LogWindow } from "./log.ts";

Deno.test("a log window lets one line through per window and counts the rest for the next", () => {
  const window = new LogWindow(1_000);
  assert.equal(window.due(0), 0);
  assert.equal(window.due(500), null);
  assert.equal(window.due(1_000), null);
  assert.equal(window.due(1_001), 2);
  assert.equal(window.due(1_002), null);
  assert.equal(window.due(5_000), 1);
  assert.equal(window.due(9_000), 0);
});
