import assert from "node:assert/strict";
import { AffinityCache } from "./affinity.ts";

Deno.test("affinity holds a client's backend for the ttl, per service", () => {
  const cache = new AffinityCache();
  cache.set("web", "1.2.3.4", "10.0.0.1:80", 1000, 0);
  assert.equal(cache.get("web", "1.2.3.4", 999), "10.0.0.1:80");
  assert.equal(cache.get("api", "1.2.3.4", 10), undefined);
  assert.equal(cache.get("web", "1.2.3.5", 10), undefined);
  assert.equal(cache.get("web", "1.2.3.4", 1000), undefined);
  assert.equal(cache.size, 0);
});

Deno.test("affinity forgets the oldest client when full, and sweeps expired ones", () => {
  const cache = new AffinityCache({ maxEntries: 2 });
  cache.set("web", "a", "x", 100, 0);
  cache.set("web", "b", "y", 500, 0);
  cache.set("web", "c", "z", 100, 0);
  assert.equal(cache.get("web", "a", 1), undefined);
  assert.equal(cache.size, 2);
  cache.sweep(200);
  assert.equal(cache.size, 1);
  assert.equal(cache.get("web", "b", 200), "y");
});
