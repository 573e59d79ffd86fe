/**
 * MurmurHash3 (x86, 32-bit), the hash behind flow keys and Maglev permutations. Every agent and the
 * manager must compute the same value for the same bytes, so this is the reference algorithm unchanged.
 */

const C1 = 0xcc9e2d51;
const C2 = 0x1b873593;
const ENCODER = new TextEncoder();

/** MurmurHash3 x86 32-bit of `bytes`; `seed` is taken as an unsigned 32-bit integer. Returns 0 to 2^32-1. */
export function hash32(bytes: Uint8Array, seed = 0): number {
  const length = bytes.length;
  const blocksEnd = length - (length & 3);
  let h = seed | 0;
  let i = 0;
  for (; i < blocksEnd; i += 4) {
    let k = bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24);
    k = Math.imul(k, C1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, C2);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  let k = 0;
  switch (length & 3) {
    case 3:
      k ^= bytes[i + 2]! << 16;
    // falls through
    case 2:
      k ^= bytes[i + 1]! << 8;
    // falls through
    case 1:
      k ^= bytes[i]!;
      k = Math.imul(k, C1);
      k = (k << 15) | (k >>> 17);
      k = Math.imul(k, C2);
      h ^= k;
  }
  return fmix32(h ^ length);
}

/** MurmurHash3's finalizer: mixes the 32 bits of `h` so that every input bit affects every output bit. */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** `hash32` of the UTF-8 encoding of `text`. */
export function hashString(text: string, seed = 0): number {
  return hash32(ENCODER.encode(text), seed);
}
