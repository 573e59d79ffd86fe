/**
 * The epoll relay over real loopback sockets, run in its worker as the agent runs it. Skipped off Linux.
 */
import assert from "node:assert/strict";
import { echo } from "../../tests/_backends.ts";
import { blackhole, eventually, randomBytes, readAll, writeAll } from "../../tests/_helpers.ts";
import { CLAIM_BUCKETS } from "../../cluster/claims.ts";
import { buildTable } from "../../cluster/maglev.ts";
import { decodeProxyHeader } from "../../cluster/proxy_protocol.ts";
import type { HostPort } from "../../cluster/address.ts";
import { placeFlow, placeHash, type Placement } from "../../cluster/placement.ts";
import { FlowEvent, type PlacementRequest, type PlaneCounters, type PlaneService } from "../data_plane.ts";
import { RelayDataPlane } from "./relay_plane.ts";

const { CONNECTED, FAILED, NO_BACKEND, ENDED, IDLE, ACCEPT_FAILED } = FlowEvent;
const ignore = Deno.build.os !== "linux";
if (ignore) console.error(`epoll relay tests skipped: epoll needs Linux, not ${Deno.build.os}`);

interface ServiceOptions {
  backends: HostPort[];
  maxConnections?: number;
  connectTimeoutMs?: number;
  idleTimeoutMs?: number;
  proxyProtocol?: "none" | "v1" | "v2";
  placement?: Placement<HostPort>;
  /** How long an asked flow waits for its answer before the relay places it by the table (default 60 s). */
  askTimeoutMs?: number;
  /** Makes every flow ask where to go (or those `placement` asks about), and answers with this. */
  place?: (
    request: PlacementRequest,
  ) => Promise<{
    targets: (HostPort | number)[];
    header: Uint8Array | null | (Uint8Array | null)[];
    firstTimeoutMs?: number;
  }>;
  /** How long the relay may block before it reads its messages, unless woken. */
  yieldMs?: number;
  /** The IP to listen on (default 127.0.0.1). */
  listenIp?: string;
  /** Bytes of shared memory each way for asks and answers (the data plane's default unless given). */
  ringBytes?: number;
}

/** The relay in its worker, serving one service on a free loopback port, as the agent drives it. */
async function startRelay(options: ServiceOptions) {
  /** Flow events as posted: kind, service, slot, generation, choice, errno. */
  const flowEvents: number[] = [];
  /** The counters as of each post of flow events, or of counters alone. */
  const posts: PlaneCounters[] = [];
  /** The counters and open flows the plane told last. */
  let last = { counters: null as PlaneCounters | null, open: -1 };
  let stopped = false;
  const opened = await RelayDataPlane.open({
    place: (request) => {
      const answer = options.place?.(request) ??
        Promise.resolve({ targets: options.backends.map((_, i) => i), header: null, firstTimeoutMs: 0 });
      void answer.then(({ targets, header, firstTimeoutMs }) => {
        if (!stopped) plane.placed(request, targets, header, firstTimeoutMs);
      });
    },
    flows: (events, counters, open) => {
      flowEvents.push(...events);
      posts.push({ ...counters });
      last = { counters: { ...counters }, open };
    },
  }, { yieldMs: options.yieldMs ?? 10, ...(options.ringBytes ? { ringBytes: options.ringBytes } : {}) });
  if (!(opened instanceof RelayDataPlane)) throw new Error(opened.unavailable);
  const plane = opened;
  const service: PlaneService = {
    name: "test",
    listen: { host: options.listenIp ?? "127.0.0.1", port: 0 },
    maxConnections: options.maxConnections ?? 1000,
    connectTimeoutMs: options.connectTimeoutMs ?? 2000,
    idleTimeoutMs: options.idleTimeoutMs ?? 0,
    proxyProtocol: options.proxyProtocol ?? "none",
    // Without a placement: every flow is asked about when the test answers, else every backend in order.
    placement: options.placement ?? fixedPlacement(options.backends, options.place !== undefined),
    askTimeoutMs: options.askTimeoutMs ?? 60_000,
  };
  const { index, port } = await plane.listen(service);
  return {
    port,
    /** The flow events so far, as posted: kind, service, slot, generation, choice, errno. */
    events: () => flowEvents,
    /** The counters of every post so far. */
    posts: () => posts,
    /** The flow events so far, per flow (slot and generation), as [kind, choice] each. */
    flowEvents(): Array<Array<[number, number]>> {
      const flows = new Map<string, Array<[number, number]>>();
      for (let i = 0; i < flowEvents.length; i += 6) {
        const key = `${flowEvents[i + 2]}:${flowEvents[i + 3]}`;
        if (!flows.has(key)) flows.set(key, []);
        flows.get(key)!.push([flowEvents[i]!, flowEvents[i + 4]!]);
      }
      return [...flows.values()];
    },
    unlisten: () => plane.unlisten(index),
    /** Serves the service with new settings or placement from now on. */
    update: (changes: Partial<PlaneService>) => plane.update(index, { ...service, ...changes }),
    counters: () => plane.counters(),
    /** Stops the plane: the counters and open flows it told last. */
    async stop(): Promise<{ counters: PlaneCounters; open: number }> {
      stopped = true;
      await plane.stop();
      return { counters: last.counters!, open: last.open };
    },
    async [Symbol.asyncDispose]() {
      await this.stop();
    },
  };
}

/**
 * A placement for a service without one: a single backend (or none) the relay places alone; several it
 * asks about (`startRelay` then answers with every backend in order, unless the test answers), as with
 * `ask`.
 */
function fixedPlacement(backends: HostPort[], ask: boolean): Placement<HostPort> {
  return {
    backends,
    table: backends.length === 0 ? new Uint16Array(0) : new Uint16Array([0]),
    seed: 0,
    placeBy: "flow",
    askBuckets: ask || backends.length > 1 ? new Uint8Array(CLAIM_BUCKETS).fill(1) : null,
  };
}

/** A backend that answers each connection with `reply(bytes received)` after the client's half-close. */
function backend(reply: (received: Uint8Array) => Uint8Array) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const served: Promise<void>[] = [];
  const accepting = (async () => {
    for await (const conn of listener) {
      served.push(
        (async () => {
          try {
            const received = await readAll(conn);
            await writeAll(conn, reply(received));
          } finally {
            conn.close();
          }
        })().catch(() => {}),
      );
    }
  })();
  return {
    address: { host: "127.0.0.1", port: (listener.addr as Deno.NetAddr).port },
    async [Symbol.asyncDispose]() {
      listener.close();
      await accepting;
      await Promise.all(served);
    },
  };
}

const refusedAddress = (): HostPort => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return { host: "127.0.0.1", port };
};

async function exchange(port: number, bytes: Uint8Array): Promise<Uint8Array> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await Promise.all([writeAll(conn, bytes).then(() => conn.closeWrite()), Promise.resolve()]);
    return await readAll(conn);
  } finally {
    conn.close();
  }
}

Deno.test({
  name: "epoll relay: bytes both ways in order, and a half-close reaches the other side",
  ignore,
  async fn() {
    await using echo = backend((received) => new Uint8Array([...received].reverse()));
    await using relay = await startRelay({ backends: [echo.address] });
    const sent = randomBytes(10_000);
    const answer = await exchange(relay.port, sent);
    assert.deepEqual(answer, new Uint8Array([...sent].reverse()));
    await eventually(async () => (await relay.counters()).open === 0, 10_000, "the flow to end");
    const counters = await relay.counters();
    assert.equal(counters.accepted, 1);
    assert.equal(counters.bytesUp, 10_000);
    assert.equal(counters.bytesDown, 10_000);
  },
});

/**
 * A backend that echoes each of `flows` connections as it reads, then half-closes and waits for the other
 * side's end; `done` once every one has.
 */
function streamingEcho(flows: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const done = (async () => {
    const echoes: Promise<void>[] = [];
    for (let i = 0; i < flows; i++) {
      const conn = await listener.accept();
      echoes.push((async () => {
        await echo(conn);
        await readAll(conn);
        conn.close();
      })());
    }
    await Promise.all(echoes);
    listener.close();
  })();
  return { address: { host: "127.0.0.1", port: (listener.addr as Deno.NetAddr).port }, done };
}

/** Sends `sent` through the relay while reading what comes back, until the echo's end. */
async function streamThrough(port: number, sent: Uint8Array): Promise<Uint8Array> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const [, received] = await Promise.all([writeAll(conn, sent).then(() => conn.closeWrite()), readAll(conn)]);
  conn.close();
  return received;
}

Deno.test({
  name: "epoll relay: 100 bulk flows at once, more than its large buffers, each arrives intact",
  ignore,
  async fn() {
    // Each direction of a bulk flow wants one of the 64 large buffers; those left over receive into small
    // ones, and every byte arrives in order all the same.
    const flows = 100;
    const size = 512 * 1024;
    const echo = streamingEcho(flows);
    await using relay = await startRelay({ backends: [echo.address] });
    const results = await Promise.all(Array.from({ length: flows }, async () => {
      const sent = randomBytes(size);
      const received = await streamThrough(relay.port, sent);
      return received.length === size && received.every((byte, i) => byte === sent[i]!);
    }));
    await echo.done;
    assert.equal(results.filter((intact) => intact).length, flows, "every flow's bytes came back unchanged");
    await eventually(async () => (await relay.counters()).open === 0, 10_000, "the flows to end");
  },
});

Deno.test({
  name: "epoll relay: 8 MiB each way, read while written, arrives intact",
  ignore,
  async fn() {
    const size = 8 * 1024 * 1024;
    const echo = streamingEcho(1);
    await using relay = await startRelay({ backends: [echo.address] });
    const sent = randomBytes(size);
    const received = await streamThrough(relay.port, sent);
    await echo.done;
    assert.equal(received.length, size);
    assert.ok(received.every((byte, i) => byte === sent[i]), "the bytes came back unchanged");
  },
});

Deno.test({
  name: "epoll relay: a message is taken at once when the relay is woken, however long it may block",
  ignore,
  async fn() {
    await using relay = await startRelay({ backends: [refusedAddress()], yieldMs: 30_000 });
    for (let i = 0; i < 20; i++) {
      const started = performance.now();
      await relay.counters();
      const took = performance.now() - started;
      assert.ok(took < 500, `a counters request took ${took.toFixed(0)} ms`);
    }
  },
});

Deno.test({
  name: "epoll relay: an answer is taken at once, however long the relay may block",
  ignore,
  async fn() {
    await using echo = backend((received) => received);
    await using relay = await startRelay({
      backends: [echo.address],
      yieldMs: 30_000,
      place: () => Promise.resolve({ targets: [0], header: null }),
    });
    // Unwoken, the relay would take each answer at its next sweep (every 250 ms): about 5 s for 40.
    const started = performance.now();
    for (let i = 0; i < 40; i++) {
      const answer = await exchange(relay.port, new TextEncoder().encode("hi"));
      assert.equal(new TextDecoder().decode(answer), "hi");
    }
    const took = performance.now() - started;
    assert.ok(took < 2_000, `40 asked flows one after another took ${took.toFixed(0)} ms`);
  },
});

for (const version of ["v1", "v2"] as const) {
  for (const listenIp of ["127.0.0.1", "0.0.0.0"]) {
    Deno.test({
      name: `epoll relay: proxy_protocol ${version} sends the client's address before its first byte, ` +
        `listening on ${listenIp}`,
      ignore,
      async fn() {
        const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
        const port = (listener.addr as Deno.NetAddr).port;
        await using proxied = await startRelay({
          backends: [{ host: "127.0.0.1", port }],
          proxyProtocol: version,
          listenIp,
        });
        const client = await Deno.connect({ hostname: "127.0.0.1", port: proxied.port });
        const [conn] = await Promise.all([
          listener.accept(),
          writeAll(client, new TextEncoder().encode("hello")),
        ]);
        await client.closeWrite();
        const received = await readAll(conn);
        const decoded = decodeProxyHeader(received);
        assert.ok(decoded, "a complete header arrived");
        assert.equal(decoded.header.version, version === "v1" ? 1 : 2);
        assert.deepEqual(decoded.header.source, {
          ip: "127.0.0.1",
          port: (client.localAddr as Deno.NetAddr).port,
        });
        // The address the client reached, not the wildcard the relay listens on.
        assert.deepEqual(decoded.header.destination, { ip: "127.0.0.1", port: proxied.port });
        assert.equal(new TextDecoder().decode(received.subarray(decoded.length)), "hello");
        conn.close();
        client.close();
        listener.close();
      },
    });
  }
}

/** Reads exactly `length` bytes. */
async function readExactly(conn: Deno.Conn, length: number): Promise<void> {
  const buffer = new Uint8Array(length);
  for (let got = 0; got < length;) {
    const n = await conn.read(buffer.subarray(got));
    if (n === null) throw new Error(`The connection ended after ${got} of ${length} bytes`);
    got += n;
  }
}

Deno.test({
  name: "epoll relay: small writes go on at once both ways (no Nagle delay on either of a flow's sockets)",
  ignore,
  async fn() {
    // Two small writes, then a wait for the answer, which comes once both arrived: with Nagle's algorithm
    // on a relay's socket, the second write waits for the first's ACK, which the peer delays (40 ms or
    // more) since it has nothing to send yet.
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    await using relay = await startRelay({
      backends: [{ host: "127.0.0.1", port: (listener.addr as Deno.NetAddr).port }],
    });
    const client = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
    const conn = await listener.accept();
    client.setNoDelay(true);
    conn.setNoDelay(true);
    // A round held back by a delayed ACK takes 40 ms or more; without one, well under 1 ms here.
    const slow: number[] = [];
    for (let round = 0; round < 100; round++) {
      const started = performance.now();
      await client.write(Uint8Array.of(1));
      await client.write(Uint8Array.of(2));
      await readExactly(conn, 2);
      await conn.write(Uint8Array.of(3));
      await conn.write(Uint8Array.of(4));
      await readExactly(client, 2);
      const ms = performance.now() - started;
      if (ms >= 35) slow.push(Math.round(ms));
    }
    conn.close();
    client.close();
    listener.close();
    assert.ok(slow.length <= 3, `rounds of 35 ms or more: ${slow.join(", ")} ms`);
  },
});

Deno.test({
  name:
    "epoll relay: a flow whose answer does not come within askTimeoutMs is placed by the table, with its " +
    "PROXY header, and the late answer is ignored",
  ignore,
  async fn() {
    await using echo = backend((received) => received);
    const answers: Array<() => void> = [];
    await using relay = await startRelay({
      backends: [echo.address],
      placement: fixedPlacement([echo.address], true),
      proxyProtocol: "v1",
      askTimeoutMs: 200,
      // The agent's thread stalls: each answer comes after the relay stopped waiting, and names a target
      // that refuses, which a flow placed by it would try first.
      place: () =>
        new Promise((resolve) => answers.push(() => resolve({ targets: [refusedAddress()], header: null }))),
    });
    for (let round = 0; round < 2; round++) {
      const client = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
      const started = performance.now();
      // Without a deadline of the relay's own, the flow would wait for ever.
      const stuck = setTimeout(() => client.close(), 5_000);
      await writeAll(client, new TextEncoder().encode("hi"));
      await client.closeWrite();
      const received = await readAll(client).finally(() => clearTimeout(stuck));
      const took = performance.now() - started;
      client.close();
      const decoded = decodeProxyHeader(received);
      assert.ok(decoded, "a complete header arrived");
      assert.deepEqual(decoded.header.source, {
        ip: "127.0.0.1",
        port: (client.localAddr as Deno.NetAddr).port,
      });
      assert.deepEqual(decoded.header.destination, { ip: "127.0.0.1", port: relay.port });
      assert.equal(new TextDecoder().decode(received.subarray(decoded.length)), "hi");
      assert.ok(took >= 180 && took < 3_000, `served ${took.toFixed(0)} ms after its first byte`);
      for (const answer of answers.splice(0)) answer();
    }
    await eventually(() =>
      relay.flowEvents().length === 2 && relay.flowEvents().every((flow) => flow.length === 3)
    );
    const { ASK_TIMED_OUT, CONNECTED, ENDED } = FlowEvent;
    // Placed by the table: the choice is a backend index.
    for (const flow of relay.flowEvents()) {
      assert.deepEqual(flow, [[ASK_TIMED_OUT, -1], [CONNECTED, 0], [ENDED, 0]]);
    }
    const counters = await relay.counters();
    assert.equal(counters.connectFailures, 0, "the late answers' target was never tried");
    assert.equal(counters.noBackend, 0);
  },
});

Deno.test({
  name: "epoll relay: flows it cannot place alone wait for the agent's answer, its targets and header",
  ignore,
  async fn() {
    await using echo = backend((received) => received);
    const requests: PlacementRequest[] = [];
    await using relay = await startRelay({
      backends: [],
      place: async (request) => {
        requests.push(request);
        await new Promise((resolve) => setTimeout(resolve, 20));
        // The first flow has nowhere to go; the next ones go to a refused address, then to the echo.
        if (requests.length === 1) return { targets: [], header: null };
        return {
          targets: [refusedAddress(), echo.address],
          header: new TextEncoder().encode(`flow ${requests.length}:`),
        };
      },
    });
    assert.equal((await exchange(relay.port, new TextEncoder().encode("lost"))).length, 0);
    for (const n of [2, 3]) {
      const answer = new TextDecoder().decode(await exchange(relay.port, new TextEncoder().encode("hi")));
      assert.equal(answer, `flow ${n}:hi`);
    }
    assert.equal(requests.length, 3);
    assert.deepEqual(requests[1]!.destination, { ip: "127.0.0.1", port: relay.port });
    assert.equal(requests[1]!.client.ip, "127.0.0.1");
    const counters = await relay.counters();
    assert.equal(counters.noBackend, 1);
    assert.equal(counters.connectFailures, 2);
  },
});

Deno.test({
  name: "epoll relay: an answer may name the service's backends by index; an index it lacks ends the list",
  ignore,
  async fn() {
    await using echo = backend((received) => received);
    const answers: (HostPort | number)[][] = [[1], [0, 1], [{
      host: "127.0.0.1",
      port: echo.address.port,
    }], [
      7,
      1,
    ]];
    let asked = 0;
    await using relay = await startRelay({
      backends: [refusedAddress(), echo.address],
      place: () => Promise.resolve({ targets: answers[asked++]!, header: null }),
    });
    for (let flow = 0; flow < 3; flow++) {
      const answer = new TextDecoder().decode(await exchange(relay.port, new TextEncoder().encode("hi")));
      assert.equal(answer, "hi", `flow ${flow}`);
    }
    assert.equal((await exchange(relay.port, new TextEncoder().encode("lost"))).length, 0);
    const counters = await relay.counters();
    assert.equal(counters.connectFailures, 1, "only the refused backend of the second answer failed");
    assert.equal(counters.noBackend, 1, "the index 7 ended the last answer's list before the echo");
  },
});

Deno.test({
  name: "epoll relay: an answer given right after a new placement names that placement's backends",
  ignore,
  async fn() {
    await using echo = backend((received) => received);
    const refused = refusedAddress();
    const placement = (backends: HostPort[]): Placement<HostPort> => ({
      backends,
      table: new Uint16Array(0),
      seed: 1,
      placeBy: "flow",
      askBuckets: new Uint8Array(CLAIM_BUCKETS).fill(1),
    });
    // Each answer names the echo by the index it has in the placement set just before, in the same turn:
    // it is taken only after that placement, though the answer can reach the worker first.
    let asked = 0;
    await using relay = await startRelay({
      backends: [refused],
      place: () => {
        const echoFirst = asked++ % 2 === 0;
        relay.update({ placement: placement(echoFirst ? [echo.address, refused] : [refused, echo.address]) });
        return Promise.resolve({ targets: [echoFirst ? 0 : 1], header: null });
      },
    });
    for (let flow = 0; flow < 40; flow++) {
      const answer = new TextDecoder().decode(
        await exchange(relay.port, new TextEncoder().encode(`${flow}`)),
      );
      assert.equal(answer, `${flow}`, `flow ${flow}`);
    }
    const counters = await relay.counters();
    assert.equal(counters.connectFailures, 0, "no answer was read with the placement before its own");
    assert.equal(counters.noBackend, 0);
  },
});

Deno.test({
  name: "epoll relay: asks and answers that find no room in shared memory go as messages, none lost",
  ignore,
  async fn() {
    await using echo = backend((received) => received);
    // 64 bytes hold one ask (52) or two short answers (28 each) at a time: most go as messages.
    await using relay = await startRelay({
      backends: [],
      ringBytes: 64,
      place: (request) =>
        Promise.resolve({
          // A header per target, an address each: the largest answers there are.
          targets: [refusedAddress(), { host: "127.0.0.1", port: echo.address.port }],
          header: [new TextEncoder().encode(`to ${request.slot}:`), null],
        }),
    });
    const flows = await Promise.all(
      Array.from({ length: 60 }, (_, flow) => exchange(relay.port, new TextEncoder().encode(`flow ${flow}`))),
    );
    flows.forEach((bytes, flow) => {
      assert.equal(new TextDecoder().decode(bytes), `flow ${flow}`, "the second target, with no header");
    });
    const counters = await relay.counters();
    assert.equal(counters.connectFailures, 60, "each flow tried its first target");
  },
});

Deno.test({
  name:
    "epoll relay: flow events keep their order when some turns' go as messages, others through shared memory",
  ignore,
  async fn() {
    await using echo = backend((received) => received);
    // 1 KiB holds a turn of up to 39 flow events (72 bytes and 24 each): busier turns post theirs, and the
    // next turns may write theirs to shared memory before the agent has taken those messages.
    await using relay = await startRelay({
      backends: [echo.address],
      ringBytes: 1024,
      yieldMs: 1,
      place: () => Promise.resolve({ targets: [0], header: null }),
    });
    // Bursts of 80 flows at once, with 1 ms turns: turns of many events and of few.
    for (let round = 0; round < 5; round++) {
      await Promise.all(
        Array.from(
          { length: 80 },
          (_, flow) => exchange(relay.port, new TextEncoder().encode(`${round} ${flow}`)),
        ),
      );
    }
    const ended = () => relay.flowEvents().filter((flow) => flow.some(([kind]) => kind === ENDED)).length;
    await eventually(() => ended() === 400, 10_000, "every flow's end");
    for (const flow of relay.flowEvents()) {
      assert.deepEqual(
        flow.map(([kind]) => kind),
        [CONNECTED, ENDED],
        "a flow's events in the order they came",
      );
    }
  },
});

Deno.test({
  name: "epoll relay: a flow still waiting to be placed when the relay stops is closed, not leaked",
  ignore,
  async fn() {
    await using relay = await startRelay({
      backends: [],
      // No answer ever comes.
      place: () => new Promise(() => {}),
    });
    const client = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
    await eventually(async () => (await relay.counters()).open === 1, 10_000, "the flow to wait");
    assert.equal((await relay.stop()).open, 0);
    assert.equal(await client.read(new Uint8Array(1)).catch(() => null), null);
    client.close();
  },
});

Deno.test({
  name:
    "epoll relay: its worker places flows by the agent's hash, claims and Maglev table, and follows updates",
  ignore,
  async fn() {
    await using b0 = backend(() => new TextEncoder().encode("b0"));
    await using b1 = backend(() => new TextEncoder().encode("b1"));
    await using b2 = backend(() => new TextEncoder().encode("b2"));
    const backends = [b0.address, b1.address, b2.address];
    const table = (weights: number[]) =>
      buildTable(weights.map((weight, i) => ({ id: `b${i}`, weight })), { size: 251 });
    const placement: Placement<HostPort> = {
      backends,
      table: table([1, 1, 1]),
      seed: 7,
      placeBy: "flow",
      askBuckets: null,
    };
    await using relay = await startRelay({ backends, placement });
    const seen = new Set<string>();
    for (let i = 0; i < 30; i++) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
      const client = { ip: "127.0.0.1", port: (conn.localAddr as Deno.NetAddr).port };
      await conn.closeWrite();
      const answer = new TextDecoder().decode(await readAll(conn));
      conn.close();
      const destination = { ip: "127.0.0.1", port: relay.port };
      const expected = placeFlow(placement, placeHash("flow", client, destination, placement.seed))![0];
      assert.equal(answer, `b${expected}`, `client port ${client.port}`);
      seen.add(answer);
    }
    assert.ok(seen.size >= 2, `30 flows went to ${[...seen].join(", ")} only`);

    relay.update({ placement: { ...placement, table: table([0, 0, 1]) } });
    await relay.counters(); // the update is taken before this answer
    for (let i = 0; i < 5; i++) {
      assert.equal(new TextDecoder().decode(await exchange(relay.port, new Uint8Array(0))), "b2");
    }
  },
});

Deno.test({
  name: "epoll relay: flows of buckets another agent claims are asked of the agent, the others placed",
  ignore,
  async fn() {
    await using b0 = backend(() => new TextEncoder().encode("here"));
    await using mesh = backend(() => new TextEncoder().encode("handed off"));
    // Odd buckets belong to another agent.
    const askBuckets = new Uint8Array(CLAIM_BUCKETS).map((_, bucket) => bucket % 2);
    const placement: Placement<HostPort> = {
      backends: [b0.address],
      table: buildTable([{ id: "b0", weight: 1 }], { size: 13 }),
      seed: 1,
      placeBy: "flow",
      askBuckets,
    };
    let asked = 0;
    await using relay = await startRelay({
      backends: [b0.address],
      placement,
      place: () => {
        asked++;
        return Promise.resolve({ targets: [mesh.address], header: null });
      },
    });
    let handedOff = 0;
    for (let i = 0; i < 40; i++) {
      const answer = new TextDecoder().decode(await exchange(relay.port, new Uint8Array(0)));
      if (answer === "handed off") handedOff++;
      else assert.equal(answer, "here");
    }
    assert.equal(handedOff, asked);
    assert.ok(asked > 5 && asked < 35, `${asked} of 40 flows were asked`);
  },
});

Deno.test({
  name: "epoll relay: out of descriptors, accepting pauses instead of spinning, and resumes after",
  ignore,
  async fn() {
    // A backend that speaks first, so a shell client can read its answer.
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const answering = (async () => {
      for await (const conn of listener) {
        await writeAll(conn, new TextEncoder().encode("served\n")).catch(() => {});
        conn.close();
      }
    })();
    await using relay = await startRelay({
      backends: [{ host: "127.0.0.1", port: (listener.addr as Deno.NetAddr).port }],
    });
    // The client is another process, started now: once this one is out of descriptors it cannot spawn.
    const shell = new Deno.Command("bash", {
      args: ["-c", `read go; exec 3<>/dev/tcp/127.0.0.1/${relay.port}; cat <&3`],
      stdin: "piped",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const go = shell.stdin.getWriter();
    // Every descriptor this process may have taken (the relay's accept then fails with EMFILE).
    const fillers: Deno.FsFile[] = [];
    let errors = -1;
    try {
      for (;;) {
        try {
          fillers.push(Deno.openSync("/dev/null"));
        } catch {
          break;
        }
      }
      await go.write(new TextEncoder().encode("go\n"));
      await new Promise((resolve) => setTimeout(resolve, 600));
      errors = (await relay.counters()).acceptErrors;
    } finally {
      for (const file of fillers) file.close();
    }
    // Pauses of 10, 20, 40, 80, 160 and 320 ms fit in 600 ms: a few errors, not thousands.
    assert.ok(errors >= 1 && errors <= 10, `${errors} accept errors in 600 ms`);
    // Each reported, with its errno (EMFILE), for the agent's log line.
    const failures = () => {
      const found: number[] = [];
      const events = relay.events();
      for (let i = 0; i < events.length; i += 6) if (events[i] === ACCEPT_FAILED) found.push(events[i + 5]!);
      return found;
    };
    await eventually(() => failures().length >= errors, 5_000, "the accept failures reported");
    assert.ok(failures().every((errno) => errno === 24), `errnos ${failures()}`);
    await go.close();
    const { stdout } = await shell.output();
    assert.equal(new TextDecoder().decode(stdout), "served\n", "the waiting client is served after");
    listener.close();
    await answering;
  },
});

Deno.test({
  name: "epoll relay: a service no longer listened to refuses new connections, and its open flows go on",
  ignore,
  async fn() {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const accepting = listener.accept();
    await using relay = await startRelay({
      backends: [{ host: "127.0.0.1", port: (listener.addr as Deno.NetAddr).port }],
    });
    const client = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
    const upstream = await accepting;
    await relay.unlisten();
    await assert.rejects(
      Deno.connect({ hostname: "127.0.0.1", port: relay.port }),
      Deno.errors.ConnectionRefused,
    );
    await writeAll(client, new TextEncoder().encode("still here"));
    await client.closeWrite();
    assert.equal(new TextDecoder().decode(await readAll(upstream)), "still here");
    upstream.close();
    assert.equal(await client.read(new Uint8Array(1)), null);
    client.close();
    listener.close();
    await eventually(async () => (await relay.counters()).open === 0, 10_000, "the flow to end");
    assert.equal((await relay.counters()).acceptErrors, 0);
  },
});

Deno.test({
  name: "epoll relay: the agent is told each flow's connect failures, backend reached and end, or no backend",
  ignore,
  async fn() {
    await using echo = backend(() => new TextEncoder().encode("ok"));
    await using relay = await startRelay({ backends: [refusedAddress(), echo.address] });
    for (let i = 0; i < 3; i++) await exchange(relay.port, new Uint8Array(1));
    const flow = [[FAILED, 0], [CONNECTED, 1], [ENDED, 1]];
    const events = () => relay.flowEvents().flat().length;
    await eventually(() => events() === 9, 10_000, "nine flow events");
    assert.deepEqual(relay.flowEvents(), [flow, flow, flow]);

    await using nowhere = await startRelay({ backends: [refusedAddress()] });
    await exchange(nowhere.port, new Uint8Array(1));
    await eventually(() => nowhere.flowEvents().flat().length === 2, 10_000, "two flow events");
    assert.deepEqual(nowhere.flowEvents(), [[[FAILED, 0], [NO_BACKEND, -1]]]);
  },
});

Deno.test({
  name: "epoll relay: a listen address taken is refused with the reason, and uses no service index",
  ignore,
  async fn() {
    const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const opened = await RelayDataPlane.open({ place: () => {}, flows: () => {} });
    if (!(opened instanceof RelayDataPlane)) throw new Error(opened.unavailable);
    try {
      const service = {
        name: "web",
        listen: { host: "127.0.0.1", port: (taken.addr as Deno.NetAddr).port },
        maxConnections: 10,
        connectTimeoutMs: 1000,
        idleTimeoutMs: 0,
        proxyProtocol: "none" as const,
        placement: fixedPlacement([], false),
        askTimeoutMs: 60_000,
      };
      await assert.rejects(opened.listen(service), /^Error: Address already in use \(os error 98\)$/);
      assert.equal((await opened.listen({ ...service, listen: { host: "127.0.0.1", port: 0 } })).index, 0);
    } finally {
      await opened.stop();
      taken.close();
    }
  },
});

Deno.test({
  name: "epoll relay: a refused backend is skipped for the next candidate, and counted",
  ignore,
  async fn() {
    await using echo = backend(() => new TextEncoder().encode("second"));
    await using relay = await startRelay({ backends: [refusedAddress(), echo.address] });
    assert.equal(new TextDecoder().decode(await exchange(relay.port, new Uint8Array(1))), "second");
    const counters = await relay.counters();
    assert.equal(counters.connectFailures, 1);
    assert.equal(counters.noBackend, 0);
  },
});

Deno.test({
  name: "epoll relay: a black-holed backend is given up after connect timeout, for the next",
  ignore,
  async fn() {
    using hole = await blackhole();
    await using echo = backend(() => new TextEncoder().encode("after the timeout"));
    await using relay = await startRelay({
      backends: [{ host: "127.0.0.1", port: hole.port }, echo.address],
      connectTimeoutMs: 300,
    });
    const started = performance.now();
    const answer = new TextDecoder().decode(await exchange(relay.port, new Uint8Array(1)));
    const took = performance.now() - started;
    assert.equal(answer, "after the timeout");
    assert.ok(took >= 250 && took < 2_000, `took ${took.toFixed(0)} ms`);
    assert.equal((await relay.counters()).connectFailures, 1);
  },
});

Deno.test({
  name: "epoll relay: an answer's first target may have a shorter connect timeout than the service's",
  ignore,
  async fn() {
    using hole = await blackhole();
    await using echo = backend(() => new TextEncoder().encode("after the claimant"));
    await using relay = await startRelay({
      backends: [echo.address],
      connectTimeoutMs: 5_000,
      place: () =>
        Promise.resolve({
          targets: [{ host: "127.0.0.1", port: hole.port }, 0],
          header: null,
          firstTimeoutMs: 300,
        }),
    });
    const started = performance.now();
    const answer = new TextDecoder().decode(await exchange(relay.port, new Uint8Array(1)));
    const took = performance.now() - started;
    assert.equal(answer, "after the claimant");
    assert.ok(took >= 250 && took < 2_000, `took ${took.toFixed(0)} ms, not the service's 5 s`);
  },
});

Deno.test({
  name: "epoll relay: no backend reachable closes the client and counts it",
  ignore,
  async fn() {
    await using relay = await startRelay({ backends: [refusedAddress(), refusedAddress()] });
    assert.equal((await exchange(relay.port, new Uint8Array(1))).length, 0);
    const counters = await relay.counters();
    assert.equal(counters.noBackend, 1);
    assert.equal(counters.connectFailures, 2);
    assert.equal(counters.open, 0);
  },
});

Deno.test({
  name: "epoll relay: connections beyond max_connections are closed at once and counted",
  ignore,
  async fn() {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const held: Deno.Conn[] = [];
    const accepting = (async () => {
      for await (const conn of listener) held.push(conn);
    })();
    await using relay = await startRelay({
      backends: [{ host: "127.0.0.1", port: (listener.addr as Deno.NetAddr).port }],
      maxConnections: 2,
    });
    const clients = await Promise.all(
      [1, 2].map(() => Deno.connect({ hostname: "127.0.0.1", port: relay.port })),
    );
    await eventually(() => held.length === 2, 10_000, "two flows to reach the backend");
    const third = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
    assert.equal(await third.read(new Uint8Array(1)), null, "the third connection is closed");
    third.close();
    assert.equal((await relay.counters()).rejected, 1);
    // A client's close is a half-close for the flow: it ends when the backend closes too.
    for (const conn of clients) conn.close();
    for (const conn of held) conn.close();
    await eventually(async () => (await relay.counters()).open === 0, 10_000, "the flows to end");
    listener.close();
    await accepting;
  },
});

Deno.test({
  name: "epoll relay: an idle flow is closed after idle timeout; a busy one is not",
  ignore,
  async fn() {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const held: Deno.Conn[] = [];
    const accepting = (async () => {
      for await (const conn of listener) {
        held.push(conn);
        // echo, so the busy client sees its bytes back
        (async () => {
          const buffer = new Uint8Array(1024);
          for (;;) {
            const n = await conn.read(buffer).catch(() => null);
            if (n === null) break;
            await writeAll(conn, buffer.subarray(0, n)).catch(() => {});
          }
        })();
      }
    })();
    await using relay = await startRelay({
      backends: [{ host: "127.0.0.1", port: (listener.addr as Deno.NetAddr).port }],
      idleTimeoutMs: 400,
    });
    const idle = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
    const busy = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
    const started = performance.now();
    for (let i = 0; i < 8; i++) {
      await writeAll(busy, new Uint8Array([i]));
      const got = new Uint8Array(1);
      assert.equal(await busy.read(got), 1);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.equal(await idle.read(new Uint8Array(1)).catch(() => null), null, "the idle flow was closed");
    assert.ok(performance.now() - started >= 400);
    await eventually(
      () => relay.flowEvents().some((flow) => flow.some(([kind]) => kind === IDLE)),
      5_000,
      "the idle close reported",
    );
    assert.deepEqual(
      relay.flowEvents().filter((flow) => flow.some(([kind]) => kind === IDLE)),
      [[[CONNECTED, 0], [IDLE, 0], [ENDED, 0]]],
      "only the idle flow, closed as idle and then ended",
    );
    await writeAll(busy, new Uint8Array([9]));
    assert.equal(await busy.read(new Uint8Array(1)), 1, "the busy flow still works");
    idle.close();
    busy.close();
    await eventually(async () => (await relay.counters()).open === 0, 10_000, "the flows to end");
    for (const conn of held) conn.close();
    listener.close();
    await accepting;
  },
});

Deno.test({
  name: "epoll relay: 200 clients reset mid-stream leave no flow and no socket behind",
  ignore,
  async fn() {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const served: Promise<void>[] = [];
    const accepting = (async () => {
      for await (const conn of listener) {
        served.push((async () => {
          const buffer = new Uint8Array(64 * 1024);
          // a backend that keeps sending until its peer goes away
          while (await conn.write(buffer).catch(() => 0) > 0) { /* sending */ }
          conn.close();
        })());
      }
    })();
    await using relay = await startRelay({
      backends: [{ host: "127.0.0.1", port: (listener.addr as Deno.NetAddr).port }],
    });
    const fdsBefore = [...Deno.readDirSync("/proc/self/fd")].length;
    for (let i = 0; i < 200; i++) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
      await conn.read(new Uint8Array(1000));
      // SO_LINGER 0 is not reachable from Deno; closing with unread bytes makes the kernel send a reset.
      conn.close();
    }
    await eventually(async () => (await relay.counters()).open === 0, 10_000, "every flow to end");
    const { open } = await relay.stop();
    assert.equal(open, 0);
    // The backend's own sockets (in this process too) close once each write fails: only then are the
    // descriptors the relay's alone.
    await Promise.all(served);
    const fdsAfter = [...Deno.readDirSync("/proc/self/fd")].length;
    assert.ok(
      fdsAfter <= fdsBefore + 2,
      `no socket left open: ${fdsBefore} descriptors before, ${fdsAfter} after`,
    );
    listener.close();
    await accepting;
  },
});

/** This process's threads by id, with how often each has been scheduled to run (`/proc` schedstat). */
function threadRuns(): Map<number, { name: string; runs: number }> {
  const threads = new Map<number, { name: string; runs: number }>();
  for (const entry of Deno.readDirSync("/proc/self/task")) {
    try {
      const name = Deno.readTextFileSync(`/proc/self/task/${entry.name}/comm`).trim();
      const runs = Number(Deno.readTextFileSync(`/proc/self/task/${entry.name}/schedstat`).split(" ")[2]);
      threads.set(Number(entry.name), { name, runs });
    } catch {
      // The thread ended while being listed.
    }
  }
  return threads;
}

Deno.test({
  name: "epoll relay: an idle relay's thread wakes about once a second, not every yield",
  ignore,
  async fn() {
    const before = threadRuns();
    await using echo = backend((received) => received);
    await using relay = await startRelay({ backends: [echo.address], yieldMs: 5 });
    // One flow first, so the wait that follows comes after completions, as on a live agent.
    assert.equal(new TextDecoder().decode(await exchange(relay.port, new TextEncoder().encode("x"))), "x");
    const workers = [...threadRuns()].filter(([id, { name }]) =>
      !before.has(id) && name.startsWith("worker")
    );
    assert.equal(workers.length, 1, `new worker threads: ${JSON.stringify(workers)}`);
    const [id, { runs: start }] = workers[0]!;
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    const runs = threadRuns().get(id)!.runs - start;
    // Turning every 5 ms would be 500 runs; a flow's end and the turns after it take a few.
    assert.ok(runs <= 20, `the relay's thread ran ${runs} times in 2.5 s of idleness`);
  },
});

Deno.test({
  name: "epoll relay: bytes alone are posted at most every 100 ms, and in full at the end",
  ignore,
  async fn() {
    // An echo backend that keeps the connection open, as keep-alive traffic does.
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const served = (async () => {
      const conn = await listener.accept();
      const buffer = new Uint8Array(64);
      for (let n; (n = await conn.read(buffer)) !== null;) await writeAll(conn, buffer.subarray(0, n));
      conn.close();
    })();
    const relay = await startRelay({
      backends: [{ host: "127.0.0.1", port: (listener.addr as Deno.NetAddr).port }],
      yieldMs: 5,
    });
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
      const byte = new Uint8Array(1);
      let exchanges = 1;
      await writeAll(conn, byte);
      assert.equal(await conn.read(byte), 1);
      await eventually(() => relay.posts().length > 0, 2_000, "the connect's post");
      const before = relay.posts().length;
      const started = performance.now();
      while (performance.now() - started < 1_000) {
        await writeAll(conn, byte);
        assert.equal(await conn.read(byte), 1);
        exchanges++;
      }
      const posts = relay.posts().length - before;
      // Posting at every turn (every 5 ms while bytes move) would be about 200.
      assert.ok(posts >= 5 && posts <= 15, `${posts} posts in 1 s of ${exchanges} exchanges`);
      conn.close();
      await served;
      const { counters } = await relay.stop();
      const last = relay.posts().at(-1)!;
      assert.equal(last.bytesUp, exchanges);
      assert.equal(last.bytesDown, exchanges);
      assert.deepEqual(last, counters);
    } finally {
      listener.close();
      await relay.stop();
    }
  },
});
