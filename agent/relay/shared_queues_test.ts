import assert from "node:assert/strict";
import { noCounters } from "../data_plane.ts";
import { encodeAddress } from "./sockaddr.ts";
import { type Answer, AnswerQueue, AskQueue, EventQueue, sharedBuffer } from "./shared_queues.ts";

Deno.test("AskQueue carries each flow's service, slot, generation and both addresses, IPv4 and IPv6", () => {
  const buffer = sharedBuffer(1024);
  const worker = new AskQueue(buffer);
  const agent = new AskQueue(buffer);
  const flows = [
    { service: 0, slot: 0, generation: 1, client: "127.0.0.1:40000", destination: "127.0.0.2:8080" },
    {
      service: 3,
      slot: 65_535,
      generation: 4_000_000_000,
      client: "[::1]:1",
      destination: "[fe80::1]:65535",
    },
    { service: 1, slot: 7, generation: 2, client: "10.0.0.9:5", destination: "[2001:db8::8]:443" },
  ].map((flow) => ({
    ...flow,
    client: addressOf(flow.client),
    destination: addressOf(flow.destination),
  }));
  for (const { service, slot, generation, client, destination } of flows) {
    assert.ok(
      worker.put(
        service,
        slot,
        generation,
        encodeAddress({ host: client.ip, port: client.port }),
        encodeAddress({ host: destination.ip, port: destination.port }),
      ),
    );
  }
  for (const flow of flows) assert.deepEqual(agent.take(), flow);
  assert.equal(agent.take(), null);
});

Deno.test("AskQueue refuses an ask when the agent is behind, and takes it again once it reads", () => {
  const buffer = sharedBuffer(128);
  const worker = new AskQueue(buffer);
  const agent = new AskQueue(buffer);
  const v4 = encodeAddress({ host: "127.0.0.1", port: 1 });
  // An IPv4 ask is 4 + 16 + 16 + 16 = 52 bytes: two fit, with room kept for the wrap mark.
  assert.ok(worker.put(0, 1, 1, v4, v4));
  assert.ok(worker.put(0, 2, 1, v4, v4));
  assert.equal(worker.put(0, 3, 1, v4, v4), false);
  assert.equal(agent.take()?.slot, 1);
  assert.equal(agent.take()?.slot, 2);
  assert.ok(worker.put(0, 3, 1, v4, v4));
  assert.equal(agent.take()?.slot, 3);
});

Deno.test("AnswerQueue carries indexes, addresses and every shape of header, with the messages posted before", () => {
  const buffer = sharedBuffer(4096);
  const agent = new AnswerQueue(buffer);
  const worker = new AnswerQueue(buffer);
  const mesh = encodeAddress({ host: "::1", port: 7946 });
  const backend = encodeAddress({ host: "192.0.2.1", port: 80 });
  const answers: Array<[number, Answer]> = [
    [0, { slot: 1, generation: 1, targets: [0], header: null, firstTimeoutMs: 0 }],
    [0, { slot: 2, generation: 9, targets: [], header: null, firstTimeoutMs: 0 }],
    [3, { slot: 3, generation: 2, targets: [2, 0, 1], header: bytes("PROXY TCP4 …\r\n"), firstTimeoutMs: 0 }],
    [3, {
      slot: 4,
      generation: 3,
      targets: [mesh, 1, backend],
      header: [bytes("mesh header of 21 b"), null, new Uint8Array(0)],
      firstTimeoutMs: 250,
    }],
    [7, {
      slot: 65_535,
      generation: 4_000_000_000,
      targets: [backend],
      header: bytes("odd"),
      firstTimeoutMs: 1,
    }],
  ];
  for (const [posted, answer] of answers) assert.ok(agent.put(posted, answer));
  for (const [posted, answer] of answers) {
    if (posted > 0) assert.equal(worker.take(posted - 1), null, "not before the messages posted before it");
    assert.deepEqual(worker.take(posted), answer);
  }
  assert.equal(worker.take(Infinity), null);
});

Deno.test("AnswerQueue refuses an answer it has no room for, and headers that do not match the targets", () => {
  const buffer = sharedBuffer(64);
  const agent = new AnswerQueue(buffer);
  const worker = new AnswerQueue(buffer);
  const answer: Answer = { slot: 1, generation: 1, targets: [0], header: null, firstTimeoutMs: 0 };
  assert.ok(agent.put(0, answer));
  assert.equal(agent.put(0, { ...answer, header: new Uint8Array(200) }), false, "larger than the ring");
  assert.ok(agent.put(0, { ...answer, slot: 2 }));
  assert.equal(agent.put(0, { ...answer, slot: 3 }), false, "the worker has not read yet");
  assert.equal(worker.take(0)?.slot, 1);
  assert.equal(worker.take(0)?.slot, 2);
  assert.ok(agent.put(0, { ...answer, slot: 3 }));
  assert.equal(worker.take(0)?.slot, 3);
  assert.throws(() => agent.put(0, { ...answer, header: [null, null] }), RangeError);
  assert.equal(worker.take(Infinity), null, "a refused answer writes nothing");
});

Deno.test("EventQueue carries each turn's flow events with the relay's counters and open flows", () => {
  const buffer = sharedBuffer(1024);
  const worker = new EventQueue(buffer);
  const agent = new EventQueue(buffer);
  const counters = {
    accepted: 123_456,
    rejected: 7,
    noBackend: 3,
    connectFailures: 2,
    bytesUp: 2 ** 40 + 5,
    bytesDown: 9_007_199_254_740_991,
    acceptErrors: 1,
  };
  // kind, service, slot, generation, choice, errno: an accept failure has slot and choice -1.
  const events = [1, 0, 65_535, 4_000_000_000, 2, 0, 7, 3, -1, 0, -1, 24, 3, 1, 5, 9, 0, 111];
  assert.equal(agent.take(Infinity), null);
  assert.ok(worker.put(0, events, counters, 4_000));
  assert.ok(worker.put(2, [], { ...counters, accepted: 123_457 }, 3_999));
  assert.deepEqual(agent.take(0), { events, counters, open: 4_000 });
  assert.equal(agent.take(1), null, "not before the flows messages posted before it");
  assert.deepEqual(agent.take(2), { events: [], counters: { ...counters, accepted: 123_457 }, open: 3_999 });
  assert.equal(agent.take(Infinity), null);
  assert.equal(worker.put(0, new Array(6 * 100).fill(1), counters, 0), false, "more than the ring holds");
});

Deno.test("the asks, the answers and the events of one buffer do not touch each other", () => {
  const buffer = sharedBuffer(256);
  const asks = new AskQueue(buffer);
  const answers = new AnswerQueue(buffer);
  const v6 = encodeAddress({ host: "2001:db8::1", port: 9 });
  let asked = 0;
  while (asks.put(0, asked, 1, v6, v6)) asked++;
  let answered = 0;
  while (
    answers.put(5, { slot: answered, generation: 1, targets: [1, 2], header: null, firstTimeoutMs: 0 })
  ) {
    answered++;
  }
  const events = new EventQueue(buffer);
  let turns = 0;
  while (events.put(0, [1, 0, turns, 1, 0, 0], { ...noCounters(), accepted: turns }, turns)) turns++;
  assert.ok(asked > 0 && answered > 0 && turns > 0);
  const askReader = new AskQueue(buffer);
  for (let i = 0; i < asked; i++) assert.equal(askReader.take()?.slot, i);
  assert.equal(askReader.take(), null);
  const answerReader = new AnswerQueue(buffer);
  for (let i = 0; i < answered; i++) assert.equal(answerReader.take(5)?.slot, i);
  assert.equal(answerReader.take(5), null);
  const eventReader = new EventQueue(buffer);
  for (let i = 0; i < turns; i++) assert.equal(eventReader.take(0)?.counters.accepted, i);
  assert.equal(eventReader.take(0), null);
});

function bytes(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

function addressOf(hostPort: string): { ip: string; port: number } {
  const at = hostPort.lastIndexOf(":");
  return { ip: hostPort.slice(0, at).replace(/^\[|\]$/g, ""), port: Number(hostPort.slice(at + 1)) };
}
