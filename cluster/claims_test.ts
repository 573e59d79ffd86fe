import assert from "node:assert/strict";
import { CLAIM_BUCKETS, claimBucket, claimOwners, claimShares, NO_AGENT } from "./claims.ts";

Deno.test("claims cover every bucket exactly once and split it evenly", () => {
  for (const count of [1, 2, 3, 5, 10]) {
    const ids = Array.from({ length: count }, (_, i) => `agent-${i}`);
    const owners = claimOwners(ids);
    assert.ok(owners.every((owner) => owner < count));
    const shares = claimShares(owners, count);
    assert.ok(Math.abs(shares.reduce((a, b) => a + b, 0) - 1) < 1e-9);
    for (const share of shares) {
      assert.ok(Math.abs(share - 1 / count) < 0.02, `${count} agents: share ${share.toFixed(4)}`);
    }
  }
});

Deno.test("claim ring moves only the leaving agent's share", () => {
  const ids = ["edge-1", "edge-2", "edge-3", "edge-4"];
  const before = claimOwners(ids);
  const remaining = ["edge-1", "edge-2", "edge-4"];
  const after = claimOwners(remaining);
  let moved = 0;
  for (let bucket = 0; bucket < CLAIM_BUCKETS; bucket++) {
    const was = ids[before[bucket] as number];
    const is = remaining[after[bucket] as number];
    if (was !== "edge-3") assert.equal(is, was, `bucket ${bucket} moved from ${was} to ${is}`);
    else moved++;
  }
  assert.equal(moved, before.filter((owner) => owner === 2).length);
});

Deno.test("claim ring moves only the joining agent's new share", () => {
  const ids = ["a", "b", "c"];
  const before = claimOwners(ids);
  const after = claimOwners([...ids, "d"]);
  for (let bucket = 0; bucket < CLAIM_BUCKETS; bucket++) {
    if (after[bucket] !== 3) assert.equal(after[bucket], before[bucket]);
  }
  const share = claimShares(after, 4)[3] as number;
  assert.ok(Math.abs(share - 0.25) < 0.02);
});

Deno.test("claims depend on the set of agents, not their order", () => {
  const a = claimOwners(["x", "y", "z"]);
  const b = claimOwners(["z", "x", "y"]);
  const order = ["z", "x", "y"];
  for (let bucket = 0; bucket < CLAIM_BUCKETS; bucket++) {
    assert.equal(["x", "y", "z"][a[bucket] as number], order[b[bucket] as number]);
  }
});

Deno.test("no agents own nothing, and duplicate ids are refused", () => {
  assert.ok(claimOwners([]).every((owner) => owner === NO_AGENT));
  assert.throws(() => claimOwners(["a", "a"]), /not unique/);
});

Deno.test("claim buckets of random hashes spread evenly", () => {
  const counts = new Array<number>(16).fill(0);
  for (let i = 0; i < 160_000; i++) {
    const bucket = claimBucket((Math.random() * 2 ** 32) >>> 0);
    assert.ok(bucket >= 0 && bucket < CLAIM_BUCKETS);
    counts[bucket % 16]!++;
  }
  for (const count of counts) assert.ok(Math.abs(count - 10_000) < 600, `bucket group got ${count}`);
});
