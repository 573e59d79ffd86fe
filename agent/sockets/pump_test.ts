import assert from "node:assert/strict";
import { pump, PUMP_DEFAULTS, type PumpStats } from "./pump.ts";

/**
 * A scripted connection: each read delivers the next chunk length (or throws), and every buffer size the
 * pump reads into is recorded; writes take at most `writeLimit` bytes at a time.
 */
class FakeConn {
  readonly readSizes: number[] = [];
  readonly written: number[] = [];
  closedWrite = false;
  #next = 0;
  #byte = 0;

  constructor(readonly script: Array<number | Error>, readonly writeLimit = Infinity) {}

  read(buffer: Uint8Array): Promise<number | null> {
    this.readSizes.push(buffer.length);
    const step = this.script[this.#next++];
    if (step === undefined) return Promise.resolve(null);
    if (step instanceof Error) return Promise.reject(step);
    const n = Math.min(step, buffer.length);
    for (let i = 0; i < n; i++) buffer[i] = this.#byte++ & 0xff;
    return Promise.resolve(n);
  }

  write(bytes: Uint8Array): Promise<number> {
    const n = Math.min(bytes.length, this.writeLimit);
    for (let i = 0; i < n; i++) this.written.push(bytes[i] as number);
    return Promise.resolve(n);
  }

  closeWrite(): Promise<void> {
    if (this.script.includes(-1)) return Promise.reject(new Error("closeWrite failed"));
    this.closedWrite = true;
    return Promise.resolve();
  }
}

async function run(from: FakeConn, to: FakeConn) {
  const stats: PumpStats = { lastActive: 0, bytes: 0 };
  const ends: unknown[] = [];
  await pump(from as unknown as Deno.Conn, to as unknown as Deno.Conn, stats, {
    pumpEnded: (error) => ends.push(error),
  });
  return { stats, ends };
}

const MIN = PUMP_DEFAULTS.minBufferBytes;

Deno.test("pump copies every byte in order, through short writes, and half-closes at the end", async () => {
  const from = new FakeConn([100, 5000, 1, 70_000, 3]);
  const to = new FakeConn([], 7);
  const { stats, ends } = await run(from, to);
  assert.deepEqual(ends, [null]);
  assert.equal(to.closedWrite, true);
  assert.equal(stats.bytes, to.written.length);
  assert.deepEqual(to.written, Array.from({ length: to.written.length }, (_, i) => i & 0xff));
});

Deno.test("pump grows its buffer fourfold on full reads, up to the maximum", async () => {
  const from = new FakeConn(Array.from({ length: 8 }, () => 1_000_000));
  await run(from, new FakeConn([]));
  assert.deepEqual(from.readSizes, [
    MIN,
    MIN * 4,
    MIN * 16,
    MIN * 64,
    PUMP_DEFAULTS.maxBufferBytes,
    PUMP_DEFAULTS.maxBufferBytes,
    PUMP_DEFAULTS.maxBufferBytes,
    PUMP_DEFAULTS.maxBufferBytes,
    PUMP_DEFAULTS.maxBufferBytes,
  ]);
});

Deno.test("answers a little larger than the small buffer keep a grown buffer instead of swapping", async () => {
  // 600-byte answers arriving in one piece once the buffer has grown: the first fills the small buffer
  // and leaves a short tail; from then on every answer fits.
  const from = new FakeConn([600, 600, 600, 600, 600, 600]);
  await run(from, new FakeConn([]));
  assert.deepEqual(from.readSizes, [MIN, MIN * 4, MIN * 4, MIN * 4, MIN * 4, MIN * 4, MIN * 4]);
});

Deno.test("a run of small reads shrinks a grown buffer back, so an idle flow holds little", async () => {
  const small = PUMP_DEFAULTS.smallReadsToShrink;
  const from = new FakeConn([1_000_000, ...Array.from({ length: small + 1 }, () => 10)]);
  await run(from, new FakeConn([]));
  const expected = [MIN, ...Array.from({ length: small }, () => MIN * 4), MIN, MIN];
  assert.deepEqual(from.readSizes, expected);
});

Deno.test("pump reports a failed read, and a failed half-close, as its end; it never rejects", async () => {
  const broken = new Error("connection reset");
  const reading = await run(new FakeConn([10, broken]), new FakeConn([]));
  assert.deepEqual(reading.ends, [broken]);
  const closing = await run(new FakeConn([10]), new FakeConn([-1]));
  assert.equal(closing.ends.length, 1);
  assert.match(String(closing.ends[0]), /closeWrite failed/);
});
