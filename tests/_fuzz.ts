/**
 * Input generators for the fuzz tests: a seeded random source (the seed is printed, and
 * `SWITCHYARD_FUZZ_SEED` replays a run), random JSON values, and byte-level mutations.
 */

/** A small seeded PRNG (mulberry32): the same seed gives the same cases. */
export class Rng {
  #state: number;

  constructor(readonly seed: number) {
    this.#state = seed >>> 0;
  }

  /** A float in [0, 1). */
  next(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)] as T;
  }

  bytes(length: number): Uint8Array {
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i++) out[i] = this.int(0, 255);
    return out;
  }
}

/** The run's seed: `SWITCHYARD_FUZZ_SEED` when set, else random; printed so a failure can be replayed. */
export function fuzzSeed(what: string): number {
  const given = Deno.env.get("SWITCHYARD_FUZZ_SEED");
  const seed = given ? Number(given) : crypto.getRandomValues(new Uint32Array(1))[0]!;
  console.log(`${what}: seed ${seed} (replay with SWITCHYARD_FUZZ_SEED=${seed})`);
  return seed;
}

const STRINGS = [
  "",
  "web",
  "api",
  "WEB",
  " web",
  "web\u0000",
  "\ud800",
  "🦕",
  "a".repeat(300),
  "10.0.0.11:80",
  "10.0.0.11",
  "[::1]:80",
  "::1:80",
  "10.0.0.11:0",
  "10.0.0.11:65536",
  "up",
  "drain",
  "down",
  "30s",
  "-1s",
  "0s",
  "25h",
  "1e3",
  "null",
  "true",
  "<script>",
  "' OR 1=1 --",
  "../../etc/passwd",
  "${SWITCHYARD_ADMIN_TOKEN}",
];
const KEYS = [
  "service",
  "backend",
  "weight",
  "utilization",
  "qps",
  "eps",
  "state",
  "ttl",
  "__proto__",
  "constructor",
  "toString",
  "hasOwnProperty",
  "Service",
  "",
  "weight ",
  "x",
];
const NUMBERS = [0, -0, 1, -1, 0.5, 100, 101, 1e308, -1e308, 5e-324, 2 ** 53, 0.1 + 0.2, 42, 1000];

/** A random JSON value (as a value to stringify), with report-like keys and awkward strings and numbers. */
export function randomJson(rng: Rng, depth = 0): unknown {
  const kind = rng.int(0, depth > 3 ? 4 : 7);
  switch (kind) {
    case 0:
      return null;
    case 1:
      return rng.next() < 0.5;
    case 2:
      return rng.next() < 0.5 ? rng.pick(NUMBERS) : (rng.next() - 0.5) * 10 ** rng.int(0, 12);
    case 3:
    case 4:
      return rng.next() < 0.7 ? rng.pick(STRINGS) : String.fromCharCode(...rng.bytes(rng.int(0, 20)));
    case 5:
      return Array.from({ length: rng.int(0, 4) }, () => randomJson(rng, depth + 1));
    default: {
      const object: Record<string, unknown> = {};
      for (let i = rng.int(0, 6); i > 0; i--) {
        Object.defineProperty(object, rng.pick(KEYS), {
          value: randomJson(rng, depth + 1),
          enumerable: true,
          configurable: true,
          writable: true,
        });
      }
      return object;
    }
  }
}

/** Changes `bytes` in one of a few ways: flip a bit, set a byte, cut, insert or duplicate a range. */
export function mutateBytes(rng: Rng, bytes: Uint8Array): Uint8Array {
  const out = Array.from(bytes);
  const at = rng.int(0, Math.max(0, out.length - 1));
  switch (rng.int(0, 5)) {
    case 0:
      out[at] = (out[at] ?? 0) ^ (1 << rng.int(0, 7));
      break;
    case 1:
      out[at] = rng.int(0, 255);
      break;
    case 2:
      out.splice(at, rng.int(1, 8));
      break;
    case 3:
      out.splice(at, 0, ...rng.bytes(rng.int(1, 8)));
      break;
    case 4:
      out.splice(at, 0, ...out.slice(at, at + rng.int(1, 16)));
      break;
    default:
      out.length = rng.int(0, out.length);
  }
  return new Uint8Array(out);
}
