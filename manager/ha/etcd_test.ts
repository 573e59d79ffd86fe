/**
 * The etcd client against a real etcd (one member on loopback, its own data folder); skipped with the reason
 * when etcd is not installed.
 */
import assert from "node:assert/strict";
import { etcdTest } from "../../tests/_etcd.ts";
import { freeFixedPort } from "../../tests/_helpers.ts";
import { EtcdClient, EtcdError, prefixEnd } from "./etcd.ts";

Deno.test("prefixEnd is the first key after every key with the prefix", () => {
  assert.deepEqual(prefixEnd(new Uint8Array([0x2f, 0x61])), new Uint8Array([0x2f, 0x62]));
  assert.deepEqual(prefixEnd(new Uint8Array([0x61, 0xff])), new Uint8Array([0x62]));
  assert.deepEqual(prefixEnd(new Uint8Array([0xff, 0xff])), new Uint8Array([0]));
});

etcdTest(
  "EtcdClient: puts, prefix ranges and transactions on a real etcd, with text keys and values",
  async (etcd) => {
    const client = new EtcdClient(etcd.endpoints);
    await client.put("/t/a", "één");
    await client.put("/t/b", "2");
    await client.put("/tz", "outside the prefix");
    const range = await client.range("/t/", { prefix: true });
    assert.deepEqual(range.kvs.map((kv) => [kv.key, kv.value]), [["/t/a", "één"], ["/t/b", "2"]]);
    assert.equal((await client.range("/t/", { prefix: true, countOnly: true })).count, 2);
    const changed = await client.range("/t/", { prefix: true, minModRevision: range.kvs[1]!.modRevision });
    assert.deepEqual(changed.kvs.map((kv) => kv.key), ["/t/b"]);

    // Create-if-absent: the first wins, the second sees what is there.
    const first = await client.txn([{ key: "/t/leader", createRevision: 0 }], [{
      put: "/t/leader",
      value: "one",
    }], { failure: [{ range: "/t/leader" }] });
    assert.equal(first.succeeded, true);
    const second = await client.txn([{ key: "/t/leader", createRevision: 0 }], [{
      put: "/t/leader",
      value: "two",
    }], { failure: [{ range: "/t/leader" }] });
    assert.equal(second.succeeded, false);
    assert.equal(second.ranges[0]?.[0]?.value, "one");
    assert.equal(second.ranges[0]?.[0]?.createRevision, first.revision);
    const byValue = await client.txn([{ key: "/t/leader", value: "one" }], [{ delete: "/t/", prefix: true }]);
    assert.equal(byValue.succeeded, true);
    assert.equal((await client.range("/t/", { prefix: true })).kvs.length, 0);
  },
);

etcdTest(
  "EtcdClient: a lease renews, binds keys, and takes them with it when revoked; a lost lease renews to 0",
  async (etcd) => {
    const client = new EtcdClient(etcd.endpoints);
    const lease = await client.grant(5);
    assert.equal(lease.ttlS, 5);
    assert.equal(await client.keepAlive(lease.id), 5);
    await client.put("/l/key", "bound", { lease: lease.id });
    assert.equal((await client.range("/l/key")).kvs[0]?.lease, lease.id);
    await client.revoke(lease.id);
    assert.equal((await client.range("/l/key")).kvs.length, 0);
    assert.equal(await client.keepAlive(lease.id), 0);
    await client.revoke(lease.id);
    await assert.rejects(client.put("/l/key", "x", { lease: lease.id }), (error) => {
      assert.ok(error instanceof EtcdError);
      assert.match(error.message, /lease not found/);
      return true;
    });
  },
);

etcdTest(
  "EtcdClient: a watch yields every change under its prefix from its revision on, and returns when aborted",
  async (etcd) => {
    const client = new EtcdClient(etcd.endpoints);
    const start = await client.put("/w/a", "1");
    const abort = new AbortController();
    const seen: string[] = [];
    const watching = (async () => {
      for await (
        const batch of client.watch("/w/", { prefix: true, startRevision: start, signal: abort.signal })
      ) {
        for (const event of batch.events) seen.push(`${event.type} ${event.kv.key}=${event.kv.value}`);
        if (seen.length >= 3) abort.abort();
      }
    })();
    await client.put("/w/b", "2");
    await client.put("/other", "not watched");
    await client.txn([], [{ delete: "/w/a" }]);
    await watching;
    assert.deepEqual(seen, ["put /w/a=1", "put /w/b=2", "delete /w/a="]);
  },
);

etcdTest(
  "EtcdClient: a call goes on to the next endpoint when the first refuses, and fails in time when none answers",
  async (etcd) => {
    const dead = `http://127.0.0.1:${freeFixedPort()}`;
    const client = new EtcdClient([dead, ...etcd.endpoints]);
    await client.put("/e/k", "v");
    assert.equal((await client.range("/e/k")).kvs[0]?.value, "v");

    const nowhere = new EtcdClient([dead], { timeoutMs: 300 });
    const started = performance.now();
    await assert.rejects(nowhere.range("/e/k"), /No etcd endpoint answered/);
    assert.ok(performance.now() - started < 1_000, "the call outlived its deadline");
  },
);
