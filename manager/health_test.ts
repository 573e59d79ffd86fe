import assert from "node:assert/strict";
import { internalErrors } from "../cluster/guard.ts";
import { startBackend } from "../tests/_backends.ts";
import { type Config, type HealthConfig, parseConfig } from "./config.ts";
import { checkBackend, HealthChecker } from "./health.ts";
import type { CheckResult } from "./health_rule.ts";
import { ClusterModel } from "./state.ts";

function health(fields: Partial<HealthConfig> = {}): HealthConfig {
  return {
    kind: "tcp",
    intervalMs: 1_000,
    timeoutMs: 300,
    rise: 2,
    fall: 3,
    path: "/",
    port: null,
    ...fields,
  };
}

/** Replies `text` after reading the request (or at once when `readFirst` is false). */
function replying(text: string, options: { readFirst?: boolean; seen?: string[] } = {}) {
  return async (conn: Deno.Conn) => {
    if (options.readFirst) {
      const buffer = new Uint8Array(4096);
      const n = await conn.read(buffer);
      options.seen?.push(new TextDecoder().decode(buffer.subarray(0, n ?? 0)));
    }
    await conn.write(new TextEncoder().encode(text));
  };
}

/** Says nothing and holds the connection until the client or the server closes it. */
async function holding(conn: Deno.Conn): Promise<void> {
  const buffer = new Uint8Array(4096);
  while ((await conn.read(buffer)) !== null) {
    // ignore what the client sends
  }
}

async function closedPort(): Promise<number> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  return await Promise.resolve(port);
}

const LOCAL = "127.0.0.1";

Deno.test("a tcp check passes when the backend accepts and fails when it refuses", async () => {
  const server = startBackend(() => Promise.resolve());
  try {
    assert.deepEqual(await checkBackend({ host: LOCAL, port: server.port }, health()), {
      ok: true,
      detail: "connected",
    });
  } finally {
    await server.close();
  }
  const refused = await checkBackend({ host: LOCAL, port: await closedPort() }, health());
  assert.deepEqual(refused, { ok: false, detail: "connection refused" });
});

Deno.test("an http check asks the backend for the path and passes on 2xx and 3xx only", async () => {
  for (
    const [reply, ok, detail] of [
      ["HTTP/1.1 200 OK\r\n\r\n", true, "HTTP 200"],
      ["HTTP/1.0 204 No Content\r\n\r\n", true, "HTTP 204"],
      ["HTTP/1.1 302 Found\r\nLocation: http://elsewhere.invalid/\r\n\r\n", true, "HTTP 302"],
      ["HTTP/1.1 404 Not Found\r\n\r\n", false, "HTTP 404"],
      ["HTTP/1.1 503 Service Unavailable\r\n\r\n", false, "HTTP 503"],
      ["SSH-2.0-OpenSSH\r\n", false, "not an HTTP reply"],
      ["", false, "no HTTP reply"],
    ] as const
  ) {
    const seen: string[] = [];
    const server = startBackend(replying(reply, { readFirst: true, seen }));
    try {
      const result = await checkBackend(
        { host: LOCAL, port: server.port },
        health({ kind: "http", path: "/healthz" }),
      );
      assert.deepEqual(result, { ok, detail }, reply);
      assert.match(seen[0] ?? "", new RegExp(`^GET /healthz HTTP/1.0\r\nHost: 127.0.0.1:${server.port}\r\n`));
    } finally {
      await server.close();
    }
  }
});

Deno.test("an agent-check reads one line from health.port on the backend's host", async () => {
  for (
    const [reply, ok, share, admin] of [
      ["up 50%\n", true, 50, "ready"],
      ["drain\r\n", true, 100, "drain"],
      ["75%", true, 75, "ready"],
      ["down#maintenance window\n", false, 100, "ready"],
      ["maint\nup 10%\n", true, 100, "maint"],
    ] as const
  ) {
    const agent = startBackend(replying(reply));
    try {
      // The backend's own port is closed: only health.port is asked.
      const backend = { host: LOCAL, port: await closedPort() };
      const result: CheckResult = await checkBackend(
        backend,
        health({ kind: "agent-check", port: agent.port }),
      );
      assert.equal(result.ok, ok, reply);
      assert.equal(result.agent?.share, share, reply);
      assert.equal(result.agent?.admin, admin, reply);
    } finally {
      await agent.close();
    }
  }
  const silent = startBackend(holding);
  const closing = startBackend(() => Promise.resolve());
  try {
    const started = performance.now();
    const timedOut = await checkBackend(
      { host: LOCAL, port: 1 },
      health({ kind: "agent-check", port: silent.port, timeoutMs: 150 }),
    );
    assert.deepEqual(timedOut, { ok: false, detail: "no answer within 150 ms" });
    assert.ok(performance.now() - started < 1_000);
    const empty = await checkBackend(
      { host: LOCAL, port: 1 },
      health({ kind: "agent-check", port: closing.port }),
    );
    assert.deepEqual(empty, { ok: false, detail: "agent-check closed without a reply" });
  } finally {
    await silent.close();
    await closing.close();
  }
});

Deno.test("every check ends within health.timeout, and at once when stopped", async () => {
  const silent = startBackend(holding);
  try {
    const started = performance.now();
    const result = await checkBackend(
      { host: LOCAL, port: silent.port },
      health({ kind: "http", timeoutMs: 120 }),
    );
    const elapsed = performance.now() - started;
    assert.deepEqual(result, { ok: false, detail: "no answer within 120 ms" });
    assert.ok(elapsed >= 110 && elapsed < 1_000, `took ${elapsed} ms`);
    const abort = new AbortController();
    const stopping = checkBackend(
      { host: LOCAL, port: silent.port },
      health({ kind: "http", timeoutMs: 5_000 }),
      {
        signal: abort.signal,
      },
    );
    setTimeout(() => abort.abort(), 30);
    const stoppedAt = performance.now();
    assert.deepEqual(await stopping, { ok: false, detail: "stopped" });
    assert.ok(performance.now() - stoppedAt < 1_000);
  } finally {
    await silent.close();
  }
});

function configOf(backends: string[], healthFields: Record<string, unknown>): Config {
  const result = parseConfig(JSON.stringify({
    manager: { tokens: { cluster: "cluster-secret" } },
    services: [{ name: "web", listen: "0.0.0.0:8080", backends, health: healthFields }],
  }));
  assert.deepEqual(result.problems, []);
  return result.config as Config;
}

Deno.test("the checker checks every backend each interval, follows reloads, and stops on close", async () => {
  const model = new ClusterModel(configOf(["10.0.0.1:80"], { interval: "20ms", timeout: "10ms", fall: 2 }), {
    seed: 1,
  });
  const calls: string[] = [];
  const checker = new HealthChecker(model, {
    check: (address) => {
      calls.push(`${address.host}:${address.port}`);
      return Promise.resolve({ ok: address.port !== 81, detail: "fake" });
    },
  });
  try {
    const deadline = performance.now() + 5_000;
    const wait = async (done: () => boolean) => {
      while (!done()) {
        assert.ok(performance.now() < deadline, `calls so far: ${calls.join(", ")}`);
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    };
    await wait(() => calls.filter((c) => c === "10.0.0.1:80").length >= 3);
    assert.equal(model.service("web")!.backends[0]!.health, "up");
    model.reload(configOf(["10.0.0.1:80", "10.0.0.1:81"], { interval: "20ms", timeout: "10ms", fall: 2 }));
    await wait(() => model.service("web")!.backends[1]!.health === "down");
    model.reload(configOf(["10.0.0.1:81"], { interval: "20ms", timeout: "10ms", fall: 2 }));
    const count = calls.length;
    await new Promise((resolve) => setTimeout(resolve, 80));
    assert.ok(
      calls.slice(count + 1).every((c) => c === "10.0.0.1:81"),
      "the removed backend is no longer checked",
    );
  } finally {
    await checker.close();
    model.close();
  }
  const after = calls.length;
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(calls.length, after, "no check after close");
});

Deno.test("a check the model fails to take is counted and skipped, and the loop goes on checking", async () => {
  const model = new ClusterModel(configOf(["10.0.0.1:80"], { interval: "20ms", timeout: "10ms" }), {
    seed: 1,
  });
  // What issue 20 did: the model throws from recordCheck (then, a table that could not be built).
  const record = model.recordCheck.bind(model);
  let failing = 3;
  model.recordCheck = (service, backend, result) => {
    if (failing-- > 0) throw new RangeError("Cannot build a Maglev table with weight NaN");
    record(service, backend, result);
  };
  const before = internalErrors().get("health_check") ?? 0;
  const checker = new HealthChecker(model, {
    check: () => Promise.resolve({ ok: true, detail: "fake" }),
  });
  try {
    const deadline = performance.now() + 5_000;
    while (model.service("web")!.backends[0]!.lastCheck === null) {
      assert.ok(performance.now() < deadline, "no check was recorded after the failed ones");
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assert.equal((internalErrors().get("health_check") ?? 0) - before, 3);
  } finally {
    await checker.close();
    model.close();
  }
});

Deno.test("checks started together share one deadline, which ends those that hang at the timeout", async () => {
  const backends = Array.from({ length: 50 }, (_, i) => `10.0.1.${i + 1}:80`);
  const model = new ClusterModel(configOf(backends, { interval: "200ms", timeout: "100ms", fall: 1 }), {
    seed: 1,
  });
  const deadlines = new Set<AbortSignal>();
  let checks = 0;
  const checker = new HealthChecker(model, {
    // Every check hangs until its deadline ends it, as a backend that never answers.
    check: (_address, health, options = {}) => {
      checks++;
      const deadline = options.deadline;
      assert.ok(deadline !== undefined, "the checker passes a deadline and sets no timer per check");
      deadlines.add(deadline);
      const started = performance.now();
      return new Promise((resolve) => {
        deadline.addEventListener("abort", () => {
          const waited = performance.now() - started;
          resolve({ ok: false, detail: `ended after ${Math.round(waited)} ms of ${health.timeoutMs}` });
        }, { once: true });
      });
    },
  });
  try {
    const deadline = performance.now() + 5_000;
    while (!model.service("web")!.backends.every((backend) => backend.health === "down")) {
      assert.ok(performance.now() < deadline, `${checks} checks so far`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assert.ok(deadlines.size < checks / 3, `${deadlines.size} deadlines for ${checks} checks`);
    for (const backend of model.service("web")!.backends) {
      const waited = Number(/ended after (\d+) ms/.exec(backend.lastCheck!.detail)?.[1]);
      assert.ok(waited >= 95 && waited < 1_000, backend.lastCheck!.detail);
    }
  } finally {
    await checker.close();
    model.close();
  }
});
