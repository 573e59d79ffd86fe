import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { anyDouble, check, fc } from "../tests/_property.ts";
import {
  decodeTable,
  encodeFrame,
  encodeTable,
  FrameDecoder,
  type ManagerMessage,
  parseAgentMessage,
  parseManagerMessage,
  ProtocolError,
} from "./protocol.ts";

const decisions: ManagerMessage[] = [
  { type: "decisions", decisions: [{ id: 1, backend: "10.0.0.1:8080", ttlMs: 0 }] },
  {
    type: "decisions",
    decisions: [{ id: 2, backend: null, ttlMs: 30_000 }, { id: 3, backend: "b", ttlMs: 0 }],
  },
  // Multi-byte UTF-8: the frame's length is in bytes, not characters.
  { type: "error", error: "backend « café » is gone ✓" },
];

/** Feeds `chunks` to one decoder and parses each body as it comes, as `Channel` does. */
function decodeAll(chunks: Uint8Array[]): ManagerMessage[] {
  const decoder = new FrameDecoder();
  return chunks.flatMap((chunk) => Array.from(decoder.push(chunk), parseManagerMessage));
}

Deno.test("frames: several in one read come out whole and in order", () => {
  assert.deepEqual(decodeAll([Buffer.concat(decisions.map(encodeFrame))]), decisions);
});

Deno.test("frames: split anywhere, byte by byte, they come out whole", () => {
  const bytes = Buffer.concat(decisions.map(encodeFrame));
  const chunks = Array.from(bytes, (byte) => Uint8Array.of(byte));
  assert.deepEqual(decodeAll(chunks), decisions);
});

Deno.test("frames: each encoded frame is its own copy, not the encoder's scratch", () => {
  const first = encodeFrame(decisions[0]!);
  const copy = first.slice();
  encodeFrame(decisions[2]!);
  assert.deepEqual(first, copy);
  assert.equal(new DataView(first.buffer, first.byteOffset).getUint32(0), first.length - 4);
});

Deno.test("frames: a message larger than the encoder's scratch survives the round trip", () => {
  const challenge: ManagerMessage = {
    type: "challenge",
    version: 1,
    nonce: "QUJD".repeat(25_000),
    proof: "eA==",
  };
  const frame = encodeFrame(challenge);
  assert.equal(frame.length, 4 + JSON.stringify(challenge).length);
  assert.ok(frame.length > 64 * 1024);
  const small = encodeFrame(decisions[2]!);
  assert.deepEqual(decodeAll([Buffer.concat([small, frame, small])]), [
    decisions[2],
    challenge,
    decisions[2],
  ]);
});

Deno.test("frames: a frame announcing more than the limit is refused before it is buffered", () => {
  const decoder = new FrameDecoder(1_000);
  const header = new Uint8Array(4);
  new DataView(header.buffer).setUint32(0, 1_001);
  assert.throws(() => Array.from(decoder.push(header)), ProtocolError);
});

// ---------------------------------------------------------------------------------------------------------
// Properties over arbitrary bytes and messages

Deno.test("property: any bytes, in any chunks, give frame bodies within the limit or a ProtocolError", () => {
  check(
    fc.property(
      fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 8 }),
      fc.integer({ min: 0, max: 100 }),
      (chunks, maxBytes) => {
        const decoder = new FrameDecoder(maxBytes);
        try {
          for (const chunk of chunks) {
            for (const body of decoder.push(chunk)) assert.ok(body.length <= maxBytes);
          }
        } catch (error) {
          assert.ok(error instanceof ProtocolError, `unexpected ${error}`);
        }
      },
    ),
    3_000,
  );
});

Deno.test("property: any frame body is a valid message or a ProtocolError, on either side", () => {
  const bodies = fc.oneof(
    fc.uint8Array({ maxLength: 200 }),
    fc.jsonValue().map((value) => new TextEncoder().encode(JSON.stringify(value))),
    fc.string().map((text) => new TextEncoder().encode(text)),
  );
  check(
    fc.property(bodies, (body) => {
      for (const parse of [parseAgentMessage, parseManagerMessage]) {
        try {
          parse(body);
        } catch (error) {
          assert.ok(error instanceof ProtocolError, `unexpected ${error}`);
        }
      }
    }),
    3_000,
  );
});

/** An agent message with any number where the protocol has a count. */
const anyCount = fc.oneof(anyDouble(), fc.nat(), fc.maxSafeNat());
const countedMessage = fc.oneof(
  fc.record({ type: fc.constant("ack"), version: anyCount }),
  fc.record({
    type: fc.constant("heartbeat"),
    connections: fc.record({ served: anyCount, handed_off: anyCount, open: anyCount, decided: anyCount }, {
      requiredKeys: ["served", "handed_off", "open"],
    }),
    backends: fc.array(
      fc.record({ service: fc.constant("web"), backend: fc.constant("10.0.0.1:80"), open: anyCount }),
      {
        maxLength: 3,
      },
    ),
    started: fc.array(
      fc.record({ service: fc.constant("web"), backend: fc.constant("10.0.0.1:80"), count: anyCount }),
      { maxLength: 3 },
    ),
  }, { requiredKeys: ["type", "connections", "backends"] }),
  fc.record({
    type: fc.constant("connect_failures"),
    failures: fc.array(
      fc.record({ service: fc.constant("web"), backend: fc.constant("10.0.0.1:80"), count: anyCount }),
      {
        maxLength: 3,
      },
    ),
  }),
  fc.record({
    type: fc.constant("decide"),
    requests: fc.array(
      fc.record({
        id: anyCount,
        service: fc.constant("web"),
        client: fc.record({ ip: fc.constant("10.1.1.1"), port: anyCount }),
      }),
      { minLength: 1, maxLength: 3 },
    ),
  }),
);

Deno.test("property: every count an accepted agent message carries is a safe integer ≥ 0", () => {
  check(
    fc.property(countedMessage, (message) => {
      // JSON has no NaN or Infinity: they arrive as null, as from a real peer.
      const body = new TextEncoder().encode(JSON.stringify(message));
      let parsed;
      try {
        parsed = parseAgentMessage(body);
      } catch (error) {
        assert.ok(error instanceof ProtocolError, `unexpected ${error}`);
        return;
      }
      const counts: number[] = [];
      JSON.stringify(parsed, (key, value) => {
        if (["version", "served", "handed_off", "open", "count", "id", "port"].includes(key)) {
          counts.push(value);
        }
        return value;
      });
      for (const count of counts) assert.ok(Number.isSafeInteger(count) && count >= 0, `count ${count}`);
    }),
    3_000,
  );
});

Deno.test("property: any table text decodes to entries of known backends, or a ProtocolError", () => {
  const texts = fc.oneof(
    fc.string(),
    fc.base64String(),
    fc.uint8Array({ maxLength: 64 }).map((bytes) => btoa(String.fromCharCode(...bytes))),
  );
  check(
    fc.property(texts, fc.integer({ min: 0, max: 70_000 }), (text, backends) => {
      let table: Uint16Array;
      try {
        table = decodeTable(text, backends);
      } catch (error) {
        assert.ok(error instanceof ProtocolError, `unexpected ${error}`);
        return;
      }
      for (const entry of table) assert.ok(entry === 0xffff || entry < backends);
    }),
    3_000,
  );
});

Deno.test("redirect names the leader's cluster address or none, and nothing else", () => {
  const parse = (message: unknown) => parseManagerMessage(new TextEncoder().encode(JSON.stringify(message)));
  assert.deepEqual(parse({ type: "redirect", leader: "10.0.0.10:9091" }), {
    type: "redirect",
    leader: "10.0.0.10:9091",
  });
  assert.deepEqual(parse({ type: "redirect", leader: null }), { type: "redirect", leader: null });
  for (
    const bad of [{ type: "redirect" }, { type: "redirect", leader: "" }, {
      type: "redirect",
      leader: null,
      x: 1,
    }]
  ) {
    assert.throws(() => parse(bad), ProtocolError, JSON.stringify(bad));
  }
});

Deno.test("a delta carries slots or a table, never both or neither, and leads to a later version", () => {
  const service = { name: "web", backends: [], slots: "AAAAAAAA", table: null, hash: 1 };
  const delta = { base: 4, version: 5, epoch: "e1", services: [service] };
  const frame = (message: unknown) => new TextEncoder().encode(JSON.stringify(message));
  assert.deepEqual(parseManagerMessage(frame({ type: "delta", delta })), { type: "delta", delta });
  for (
    const bad of [
      { ...delta, services: [{ ...service, table: "AAAA" }] },
      { ...delta, services: [{ ...service, slots: null }] },
      { ...delta, version: 4 },
      { ...delta, services: [{ ...service, hash: 2 ** 32 }] },
      { ...delta, services: [{ ...service, backends: [{ index: 65535, weight: 1, state: "up" }] }] },
    ]
  ) {
    assert.throws(() => parseManagerMessage(frame({ type: "delta", delta: bad })), ProtocolError);
  }
  assert.deepEqual(parseAgentMessage(frame({ type: "resync" })), { type: "resync" });
  assert.throws(() => parseAgentMessage(frame({ type: "resync", version: 1 })), ProtocolError);
});

Deno.test("a table's text is its little-endian entries in base64, and decodes back", () => {
  for (const length of [1, 2, 3, 4, 5, 65_537]) {
    const table = Uint16Array.from({ length }, (_, i) => (i * 7919) % 0xffff);
    const text = encodeTable(table);
    assert.equal(text, Buffer.from(table.buffer).toString("base64"));
    assert.deepEqual(decodeTable(text, 0xffff), table);
  }
});
