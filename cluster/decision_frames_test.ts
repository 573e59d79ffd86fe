import assert from "node:assert/strict";
import { check, fc } from "../tests/_property.ts";
import {
  type DecideRequest,
  type DecisionAnswer,
  DecisionFrameError,
  decodeDecide,
  decodeDecisions,
  encodeDecide,
  encodeDecisions,
} from "./decision_frames.ts";
import { encodeFrame, parseAgentMessage, parseManagerMessage, ProtocolError } from "./protocol.ts";

/** Plain objects, as a decoder makes them (fast-check's records have no prototype). */
const plain = <T>(value: T): T => JSON.parse(JSON.stringify(value));

/** A frame's body, as `FrameDecoder` yields it: what follows its 4-byte length, which must be right. */
function bodyOf(frame: Uint8Array): Uint8Array {
  const length = new DataView(frame.buffer, frame.byteOffset).getUint32(0);
  assert.equal(length, frame.length - 4);
  return frame.subarray(4);
}

const request = fc.record({
  id: fc.nat({ max: 0xffff_ffff }),
  service: fc.string({ unit: "grapheme", minLength: 1, maxLength: 20 }),
  client: fc.record({
    ip: fc.string({ unit: "grapheme", minLength: 1, maxLength: 10 }),
    port: fc.nat({ max: 65535 }),
  }),
}).chain((base) =>
  fc.constantFrom<DecideRequest>(base, { ...base, lane: "mesh" }, { ...base, lane: "listen" })
);

const answer: fc.Arbitrary<DecisionAnswer> = fc.record({
  id: fc.nat({ max: 0xffff_ffff }),
  backend: fc.option(fc.string({ unit: "grapheme", maxLength: 40 }), { nil: null }),
  ttlMs: fc.nat({ max: 0xffff_ffff }),
});

Deno.test("property: decide requests come back from their compact frame as they went, through the protocol's parser", () => {
  check(
    fc.property(fc.array(request, { minLength: 1, maxLength: 50 }), (requests) => {
      const body = bodyOf(encodeDecide(requests));
      assert.deepEqual(decodeDecide(body), plain(requests));
      assert.deepEqual(parseAgentMessage(body), { type: "decide", requests: plain(requests) });
    }),
    300,
  );
});

Deno.test("property: decisions come back from their compact frame as they went, through the protocol's parser", () => {
  check(
    fc.property(fc.array(answer, { maxLength: 50 }), (decisions) => {
      const body = bodyOf(encodeDecisions(decisions));
      assert.deepEqual(decodeDecisions(body), plain(decisions));
      assert.deepEqual(parseManagerMessage(body), { type: "decisions", decisions: plain(decisions) });
    }),
    300,
  );
});

Deno.test("property: any bytes after a compact tag parse as a message or fail as a ProtocolError", () => {
  check(
    fc.property(fc.constantFrom(1, 2), fc.uint8Array({ maxLength: 64 }), (tag, rest) => {
      const body = new Uint8Array([tag, ...rest]);
      for (const parse of [parseAgentMessage, parseManagerMessage]) {
        try {
          parse(body);
        } catch (error) {
          assert.ok(error instanceof ProtocolError, String(error));
        }
      }
    }),
    2_000,
  );
});

Deno.test("a compact frame cut short, with bytes left over, or with unknown flags is refused, saying where", () => {
  const body = bodyOf(encodeDecide([{ id: 7, service: "web", client: { ip: "10.0.0.1", port: 80 } }]));
  assert.throws(() => decodeDecide(body.subarray(0, body.length - 1)), DecisionFrameError);
  assert.throws(() => decodeDecide(new Uint8Array([...body, 0])), /1 bytes after its last entry/);
  const flagged = body.slice();
  flagged[flagged.length - 1] = 9;
  assert.throws(() => decodeDecide(flagged), /Unknown flags 9 in request 7/);
  assert.throws(() => decodeDecide(new Uint8Array([1, 0, 0, 0, 0])), /holds 0 entries/);
});

Deno.test("what the schema refuses cannot be encoded compactly either", () => {
  assert.throws(
    () => encodeDecide([{ id: 2 ** 32, service: "web", client: { ip: "10.0.0.1", port: 80 } }]),
    RangeError,
  );
  assert.throws(
    () => encodeDecide([{ id: 1, service: "w".repeat(129), client: { ip: "10.0.0.1", port: 80 } }]),
    /at most 128/,
  );
  assert.throws(() => encodeDecisions([{ id: 1, backend: "b".repeat(301), ttlMs: 0 }]), /at most 300/);
});

Deno.test("a JSON frame is still parsed as JSON: bodies starting with { are never compact", () => {
  const frame = encodeFrame({ type: "used", queues: [{ service: "web", seq: 3, used: 2, lane: "mesh" }] });
  assert.deepEqual(parseAgentMessage(frame.subarray(4)), {
    type: "used",
    queues: [{ service: "web", seq: 3, used: 2, lane: "mesh" }],
  });
});
