/**
 * The leader's batched, fenced writes and the full load, against a real etcd.
 */
import assert from "node:assert/strict";
import { type EtcdCluster, etcdTest } from "../../tests/_etcd.ts";
import { type Clock, encodeFeedback, Keys } from "./codec.ts";
import { type Compare, EtcdClient } from "./etcd.ts";
import { loadState, NotLeaderError, StateWriter } from "./store.ts";

const keys = new Keys("/store");

/** A test with its own etcd and a client of it. */
function etcdStoreTest(name: string, fn: (etcd: EtcdCluster, client: EtcdClient) => Promise<void>) {
  etcdTest(name, (etcd) => fn(etcd, new EtcdClient(etcd.endpoints)));
}

etcdStoreTest(
  "StateWriter: a burst of changes is one transaction with each key's latest value",
  async (_etcd, client) => {
    const values = new Map<string, string>();
    let lost = 0;
    const writer = new StateWriter({
      client,
      fence: () => [],
      value: (key) => values.get(key) ?? null,
      onFenceLost: () => lost++,
    });
    try {
      const writes: Promise<void>[] = [];
      for (let i = 0; i < 100; i++) {
        values.set(keys.feedback("web", `10.0.0.${i % 3}:80`), `report ${i}`);
        writes.push(writer.write([keys.feedback("web", `10.0.0.${i % 3}:80`)]));
      }
      await Promise.all(writes);
      assert.equal(writer.transactions, 1);
      assert.equal(writer.keysWritten, 3);
      const { kvs } = await client.range(keys.all, { prefix: true });
      assert.deepEqual(kvs.map((kv) => kv.value), ["report 99", "report 97", "report 98"]);

      // A key whose value is now null is deleted; more keys than one transaction takes go in several.
      values.clear();
      for (let i = 0; i < 300; i++) values.set(keys.operator("web", `10.1.0.${i}:80`), "drain");
      await writer.write([...values.keys(), keys.feedback("web", "10.0.0.0:80")]);
      assert.equal(writer.transactions, 4);
      const after = await client.range(keys.all, { prefix: true, countOnly: true });
      assert.equal(after.count, 302);
      assert.equal(lost, 0);
    } finally {
      await writer.close();
    }
  },
);

etcdStoreTest(
  "StateWriter: once the leader key is another's, writes are refused and nothing is stored",
  async (_etcd, client) => {
    const created = await client.put(keys.leader, "me");
    let fence: Compare[] | null = [{ key: keys.leader, createRevision: created }];
    let lost = 0;
    const writer = new StateWriter({
      client,
      fence: () => fence,
      value: () => "drain",
      onFenceLost: () => lost++,
    });
    try {
      await writer.write([keys.operator("web", "a:1")]);
      await client.txn([], [{ delete: keys.leader }]);
      await client.put(keys.leader, "someone else");
      await assert.rejects(writer.write([keys.operator("web", "b:1")]), NotLeaderError);
      assert.equal(lost, 1);
      assert.equal((await client.range(keys.operator("web", "b:1"))).kvs.length, 0);
      fence = null;
      await assert.rejects(writer.write([keys.operator("web", "c:1")]), /does not lead/);
    } finally {
      await writer.close();
    }
  },
);

etcdStoreTest(
  "StateWriter: a write etcd cannot take now is stored once it can, its caller waiting",
  async (etcd, client) => {
    const writer = new StateWriter({ client, fence: () => [], value: () => "drain", onFenceLost: () => {} });
    try {
      await etcd.kill(0, "SIGSTOP");
      let stored = false;
      const writing = writer.write([keys.operator("web", "a:1")]).then(() => stored = true);
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      assert.equal(stored, false);
      await etcd.kill(0, "SIGCONT");
      await writing;
      assert.equal((await client.range(keys.operator("web", "a:1"))).kvs[0]?.value, "drain");
      assert.ok(writer.failures >= 1);

      // A manager that stops leading drops what it has not written, and tells its callers.
      await etcd.kill(0, "SIGSTOP");
      const dropped = writer.write([keys.operator("web", "b:1")]);
      writer.abandon("stepped down");
      await assert.rejects(dropped, /stepped down/);
    } finally {
      await etcd.kill(0, "SIGCONT");
      await writer.close();
    }
  },
);

etcdStoreTest(
  "loadState reads every piece of state, leaving out expired feedback as stale",
  async (_etcd, client) => {
    const clock: Clock = { model: 1_000, wall: Date.now() };
    const record = (expiresAt: number) =>
      encodeFeedback({
        source: "weight",
        reportedWeight: 40,
        load: null,
        raw: null,
        target: 40,
        weight: 40,
        state: "up",
        reportedAt: 0,
        expiresAt,
      }, clock);
    await client.put(keys.feedback("web", "a:1"), record(60_000));
    await client.put(keys.feedback("web", "b:1"), record(500));
    await client.put(keys.operator("web", "a:1"), "drain");
    await client.put(keys.agents, "[]");
    const { state, stale } = await loadState(client, {
      keys,
      clock: () => ({ model: 5_000, wall: clock.wall + 4_000 }),
    });
    assert.deepEqual([...state.feedback.get("web")!.keys()], ["a:1"]);
    assert.equal(state.feedback.get("web")!.get("a:1")!.expiresAt, 60_000);
    assert.deepEqual(stale, [keys.feedback("web", "b:1")]);
    assert.equal(state.operator.get("web")!.get("a:1"), "drain");
    assert.deepEqual(state.agents, []);
  },
);
