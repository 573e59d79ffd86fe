import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  encodeFrame,
  FrameDecoder,
  type ManagerMessage,
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
