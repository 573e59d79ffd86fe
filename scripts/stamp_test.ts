import assert from "node:assert/strict";
import { buildInfoSource, stampedImportMap } from "./stamp.ts";

Deno.test("the generated build_info.ts holds the commit as a string literal", () => {
  const source = buildInfoSource({ commit: "0123abc-dirty" });
  assert.match(source, /^export const COMMIT: string = "0123abc-dirty";$/m);
});

Deno.test("a commit that is not a plain name is refused, so nothing is injected into the source", () => {
  for (const commit of ["", 'abc"; Deno.exit(1); "', "a b", "x".repeat(81)]) {
    assert.throws(() => buildInfoSource({ commit }), RangeError, commit);
  }
});

Deno.test("the stamped import map keeps deno.json's imports and sends build_info.ts to the copy", () => {
  const map = stampedImportMap(
    { imports: { hono: "npm:hono@^4", "hono/": "npm:/hono@^4/" } },
    { original: new URL("file:///src/build_info.ts"), stamped: new URL("file:///tmp/stamp/build_info.ts") },
  );
  assert.deepEqual(map, {
    imports: {
      hono: "npm:hono@^4",
      "hono/": "npm:/hono@^4/",
      "file:///src/build_info.ts": "file:///tmp/stamp/build_info.ts",
    },
  });
});
