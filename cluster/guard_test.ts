import assert from "node:assert/strict";
import { guard, guardAsync, internalErrors, reportInternalError } from "./guard.ts";

const count = (where: string) => internalErrors().get(where) ?? 0;

Deno.test("a guarded turn returns its value, and one that throws is counted and returns undefined", () => {
  assert.equal(guard("test_sync", () => 7), 7);
  assert.equal(count("test_sync"), 0);
  for (let i = 0; i < 3; i++) {
    assert.equal(
      guard("test_sync", () => {
        throw new Error("bad turn");
      }, { turn: i }),
      undefined,
    );
  }
  assert.equal(count("test_sync"), 3, "every failure is counted, logged or not");
});

Deno.test("a guarded async turn that rejects, or throws before its first await, is counted and resolves undefined", async () => {
  assert.equal(await guardAsync("test_async", () => Promise.resolve("ok")), "ok");
  assert.equal(await guardAsync("test_async", () => Promise.reject(new Error("rejected"))), undefined);
  assert.equal(
    await guardAsync("test_async", () => {
      throw new TypeError("thrown at once");
    }),
    undefined,
  );
  assert.equal(count("test_async"), 2);
});

Deno.test("errors are counted by where", () => {
  reportInternalError("test_a", new Error("a"));
  reportInternalError("test_b", new Error("b"));
  reportInternalError("test_b", "not even an Error");
  assert.equal(count("test_a"), 1);
  assert.equal(count("test_b"), 2);
});
