import assert from "node:assert/strict";
import { hash32, hashString } from "./hash.ts";

// Reference values from the MurmurHash3 x86_32 reference implementation (SMHasher), cross-checked
// against an independent implementation (murmurhash3js-revisited).
const VECTORS: Array<[string, number, number]> = [
  ["", 0, 0x00000000],
  ["", 1, 0x514e28b7],
  ["", 0xffffffff, 0x81f16f39],
  ["a", 0x9747b28c, 0x7fa09ea6],
  ["aa", 0x9747b28c, 0x5d211726],
  ["abc", 0x9747b28c, 0xc84a62dd],
  ["aaaa", 0x9747b28c, 0x5a97808a],
  ["abcd", 0x9747b28c, 0xf0478627],
  ["hello", 0, 0x248bfa47],
  ["Hello, world!", 1234, 0xfaf6cdb3],
  ["The quick brown fox jumps over the lazy dog", 0x9747b28c, 0x2fa826cd],
  ["\u00e9\u4e2d\u{1F600}", 42, 0x76e6e573],
];

Deno.test("hash32 matches the MurmurHash3 x86_32 reference vectors for every tail length", () => {
  const encoder = new TextEncoder();
  for (const [text, seed, expected] of VECTORS) {
    assert.equal(hash32(encoder.encode(text), seed), expected, `"${text}" seed ${seed}`);
  }
});

Deno.test("hashString hashes the UTF-8 bytes of the text", () => {
  for (const [text, seed, expected] of VECTORS) {
    assert.equal(hashString(text, seed), expected, `"${text}" seed ${seed}`);
  }
});

Deno.test("hash32 returns an unsigned 32-bit integer and defaults the seed to 0", () => {
  const bytes = new Uint8Array(64);
  for (let i = 0; i < 64; i++) {
    bytes[i] = (i * 37 + 11) & 0xff;
    const hash = hash32(bytes.subarray(0, i), 7);
    assert.ok(Number.isInteger(hash) && hash >= 0 && hash <= 0xffffffff, `length ${i}: ${hash}`);
  }
  assert.equal(hash32(bytes), hash32(bytes, 0));
  assert.equal(hashString("hello"), 0x248bfa47);
});

Deno.test("hash32 reads only the bytes of the view it is given", () => {
  const backing = new Uint8Array([0xff, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0xff]); // ÿhelloÿ
  assert.equal(hash32(backing.subarray(1, 6)), 0x248bfa47);
});
