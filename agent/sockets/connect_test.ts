import assert from "node:assert/strict";
import { blackhole } from "../../tests/_helpers.ts";
import { CONNECT_DEFAULTS, Connector } from "./connect.ts";

const SANITIZE = { sanitizeOps: true, sanitizeResources: true } as const;

Deno.test({
  name: "Connector connects, and close() leaves no timer behind",
  ...SANITIZE,
  fn: async () => {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const connector = new Connector();
    try {
      const port = (listener.addr as Deno.NetAddr).port;
      const conns = await Promise.all(
        Array.from({ length: 20 }, () => connector.connect({ host: "127.0.0.1", port }, 2_000)),
      );
      for (const conn of conns) conn.close();
      for (let i = 0; i < 20; i++) (await listener.accept()).close();
    } finally {
      connector.close();
      listener.close();
    }
  },
});

Deno.test({
  name: "Connector passes a refused connect on as it is, not as a timeout",
  ...SANITIZE,
  fn: async () => {
    const connector = new Connector();
    try {
      await assert.rejects(
        connector.connect({ host: "127.0.0.1", port: 1 }, 2_000),
        (error) => error instanceof Deno.errors.ConnectionRefused,
      );
    } finally {
      connector.close();
    }
  },
});

Deno.test({
  name: "Connector gives up a hanging connect after its timeout, never before, and at most a slot later",
  ...SANITIZE,
  fn: async () => {
    const hole = await blackhole();
    const connector = new Connector();
    try {
      const timeoutMs = 300;
      const slotMs = Math.min(CONNECT_DEFAULTS.maxSlotMs, timeoutMs * CONNECT_DEFAULTS.slotFraction);
      // Connects started at different moments, some in one slot and some in the next ones.
      const attempts = [];
      for (let i = 0; i < 12; i++) {
        const started = performance.now();
        attempts.push(
          connector.connect({ host: "127.0.0.1", port: hole.port }, timeoutMs).then(
            () => assert.fail("a connect to the blackhole succeeded"),
            (error) => ({ error, elapsed: performance.now() - started }),
          ),
        );
        await new Promise((resolve) => setTimeout(resolve, 7));
      }
      for (const { error, elapsed } of await Promise.all(attempts)) {
        assert.ok(error instanceof Deno.errors.TimedOut, `expected TimedOut, got ${error}`);
        assert.match(error.message, /within 300 ms/);
        assert.ok(elapsed >= timeoutMs - 1, `given up after ${elapsed} ms, before the timeout`);
        // A timer may fire late on a busy machine; the slot is the designed lateness.
        assert.ok(elapsed < timeoutMs + slotMs + 150, `given up only after ${elapsed} ms`);
      }
    } finally {
      connector.close();
      hole.close();
    }
  },
});

Deno.test({
  name: "Connector.close() interrupts connects under way and refuses new ones",
  ...SANITIZE,
  fn: async () => {
    const hole = await blackhole();
    const connector = new Connector();
    try {
      const pending = connector.connect({ host: "127.0.0.1", port: hole.port }, 10_000);
      await new Promise((resolve) => setTimeout(resolve, 50));
      connector.close();
      await assert.rejects(pending, (error) => error instanceof Deno.errors.Interrupted);
      await assert.rejects(
        connector.connect({ host: "127.0.0.1", port: hole.port }, 10_000),
        (error) => error instanceof Deno.errors.Interrupted,
      );
    } finally {
      connector.close();
      hole.close();
    }
  },
});
