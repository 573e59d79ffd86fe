/**
 * Leader election against a real etcd: one leader among several managers, a standby that takes over when
 * the leader goes, and a leader cut off from etcd that steps down before its lease could end, so that the
 * two never lead at once. The cut is a TCP relay between one manager and etcd that stops passing bytes.
 */
import assert from "node:assert/strict";
import { etcdTest } from "../../tests/_etcd.ts";
import { eventually } from "../../tests/_helpers.ts";
import { Keys, type ManagerInfo } from "./codec.ts";
import { Election, ELECTION_DEFAULTS } from "./election.ts";
import { EtcdClient } from "./etcd.ts";

const LEASE_MS = 2_000;
const MARGIN_MS = Math.max(ELECTION_DEFAULTS.marginMinMs, LEASE_MS * ELECTION_DEFAULTS.marginShare);

interface Candidate {
  readonly id: string;
  readonly election: Election;
  readonly log: string[];
}

function candidate(id: string, endpoints: string[]): Candidate {
  const log: string[] = [];
  const info: ManagerInfo = {
    id,
    admin: `${id}:9090`,
    cluster: `${id}:9091`,
    configVersion: "v1",
    startedAt: Date.now(),
  };
  const election = new Election({
    client: new EtcdClient(endpoints, { timeoutMs: 500 }),
    keys: new Keys("/test"),
    leaseMs: LEASE_MS,
    self: () => info,
    onElected: () => {
      log.push("elected");
      return Promise.resolve();
    },
    onStepDown: (reason) => log.push(`stepped down: ${reason}`),
    onLeader: (leader) => log.push(`leader ${leader?.id ?? "none"}`),
  });
  election.start();
  return { id, election, log };
}

/** Fails the test if two candidates ever lead at the same moment (checked every few ms until stopped). */
function watchForTwoLeaders(candidates: readonly Candidate[]) {
  let both: string | null = null;
  const timer = setInterval(() => {
    const leading = candidates.filter((c) => c.election.leading()).map((c) => c.id);
    if (leading.length > 1) both ??= leading.join(" and ");
  }, 2);
  return {
    stop() {
      clearInterval(timer);
      assert.equal(both, null, `${both} led at once`);
    },
  };
}

etcdTest(
  "one of three managers leads, the others know it, and a standby leads when the leader stops",
  async (etcd) => {
    const candidates = ["a", "b", "c"].map((id) => candidate(id, etcd.endpoints));
    const guard = watchForTwoLeaders(candidates);
    try {
      await eventually(() => candidates.some((c) => c.election.leading()), 5_000, "a leader");
      const leader = candidates.find((c) => c.election.leading())!;
      await eventually(
        () => candidates.every((c) => c.election.leader()?.id === leader.id),
        5_000,
        "every manager to know the leader",
      );
      const stoppedAt = performance.now();
      await leader.election.close();
      const rest = candidates.filter((c) => c !== leader);
      await eventually(() => rest.some((c) => c.election.leading()), 5_000, "a standby to lead");
      const tookOver = performance.now() - stoppedAt;
      // The leader gave its lease back: a standby leads at its next renewal, not after the lease.
      assert.ok(tookOver < LEASE_MS, `a standby led ${tookOver.toFixed(0)} ms after the leader stopped`);
      assert.deepEqual(leader.log.filter((line) => !line.startsWith("leader ")), [
        "elected",
        "stepped down: this manager is stopping",
      ]);
    } finally {
      guard.stop();
      await Promise.all(candidates.map((c) => c.election.close()));
    }
  },
);

etcdTest(
  "a leader cut off from etcd steps down before its lease could end, and only then does a standby lead",
  async (etcd) => {
    const relay = startRelay(new URL(etcd.endpoints[0]!).port);
    const cutOff = candidate("cut", [`http://127.0.0.1:${relay.port}`]);
    await eventually(() => cutOff.election.leading(), 5_000, "the first manager to lead");
    const standby = candidate("standby", etcd.endpoints);
    const guard = watchForTwoLeaders([cutOff, standby]);
    try {
      await eventually(
        () => standby.election.leader()?.id === "cut",
        5_000,
        "the standby to know the leader",
      );
      relay.freeze();
      const frozenAt = performance.now();
      await eventually(() => !cutOff.election.leading(), LEASE_MS + 1_000, "the cut-off leader to step down");
      const steppedDownAfter = performance.now() - frozenAt;
      await eventually(() => standby.election.leading(), LEASE_MS + 2_000, "the standby to lead");
      const standbyAfter = performance.now() - frozenAt;
      console.log(
        `stepped down ${steppedDownAfter.toFixed(0)} ms after the cut; the standby led ${
          standbyAfter.toFixed(0)
        } ms after it`,
      );
      // Its last renewal went out before the cut, so it stepped down within lease − margin of the cut…
      assert.ok(
        steppedDownAfter <= LEASE_MS - MARGIN_MS + 50,
        `stepped down ${steppedDownAfter.toFixed(0)} ms after`,
      );
      // …and not at once: renewals that fail within its lease do not end the lead.
      assert.ok(
        steppedDownAfter >= LEASE_MS - MARGIN_MS - LEASE_MS / ELECTION_DEFAULTS.renewalsPerLease - 50,
      );
      assert.ok(standbyAfter > steppedDownAfter);
      assert.ok(cutOff.log.some((line) => line === "stepped down: its lease could not be renewed in time"));
      assert.equal(cutOff.election.leader(), null, "a manager cut off from etcd still names a leader");

      // Back in touch, it follows the new leader.
      relay.thaw();
      await eventually(() => cutOff.election.leader()?.id === "standby", 5_000, "the old leader to follow");
      assert.equal(cutOff.election.leading(), false);
    } finally {
      guard.stop();
      relay.thaw();
      await Promise.all([cutOff.election.close(), standby.election.close()]);
      await relay.close();
    }
  },
);

etcdTest(
  "a leader whose key is deleted steps down at its next renewal, and someone leads again",
  async (etcd) => {
    const only = candidate("only", etcd.endpoints);
    try {
      await eventually(() => only.election.leading(), 5_000, "the manager to lead");
      const client = new EtcdClient(etcd.endpoints);
      await client.txn([], [{ delete: "/test/leader" }]);
      await eventually(
        () => only.log.includes("stepped down: the leader key was deleted"),
        LEASE_MS,
        "the leader to notice",
      );
      await eventually(() => only.election.leading(), 5_000, "the manager to lead again");
      assert.equal(only.log.filter((line) => line === "elected").length, 2);
    } finally {
      await only.election.close();
    }
  },
);

/** A TCP relay to 127.0.0.1:`port` that can stop passing bytes (and taking connections) and start again. */
function startRelay(port: string) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const gate: { frozen: PromiseWithResolvers<void> | null } = { frozen: null };
  const conns = new Set<Deno.Conn>();
  const tasks = new Set<Promise<void>>();
  const track = (task: Promise<void>) => {
    tasks.add(task);
    task.finally(() => tasks.delete(task));
  };
  const pump = async (from: Deno.Conn, to: Deno.Conn) => {
    const buffer = new Uint8Array(16 * 1024);
    try {
      for (;;) {
        const n = await from.read(buffer);
        if (n === null) break;
        if (gate.frozen) await gate.frozen.promise;
        let offset = 0;
        while (offset < n) offset += await to.write(buffer.subarray(offset, n));
      }
    } catch {
      // either side closed
    }
    for (const conn of [from, to]) {
      try {
        conn.close();
      } catch { /* closed */ }
      conns.delete(conn);
    }
  };
  const accepting = (async () => {
    try {
      for await (const client of listener) {
        conns.add(client);
        track((async () => {
          if (gate.frozen) await gate.frozen.promise;
          const upstream = await Deno.connect({ hostname: "127.0.0.1", port: Number(port) }).catch(() =>
            null
          );
          if (upstream === null) return client.close();
          conns.add(upstream);
          await Promise.all([pump(client, upstream), pump(upstream, client)]);
        })());
      }
    } catch {
      // closed
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    freeze() {
      gate.frozen ??= Promise.withResolvers<void>();
    },
    thaw() {
      gate.frozen?.resolve();
      gate.frozen = null;
    },
    async close() {
      this.thaw();
      listener.close();
      for (const conn of conns) {
        try {
          conn.close();
        } catch { /* closed */ }
      }
      await accepting;
      await Promise.all(tasks);
    },
  };
}
