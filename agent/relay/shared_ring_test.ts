import assert from "node:assert/strict";
import { SharedRing } from "./shared_ring.ts";

const SANITIZE = { sanitizeOps: true, sanitizeResources: true } as const;

function rings(capacity: number, offset = 0) {
  const buffer = new SharedArrayBuffer(offset + SharedRing.bytesFor(capacity));
  return {
    writer: new SharedRing(buffer, offset, capacity),
    reader: new SharedRing(buffer, offset, capacity),
  };
}

/** Writes a record whose body is `length` bytes of `fill`, and its length first; false when it did not fit. */
function put(ring: SharedRing, length: number, fill: number): boolean {
  const at = ring.reserve(4 + length);
  if (at < 0) return false;
  ring.view.setUint32(at, length, true);
  ring.bytes.fill(fill, at + 4, at + 4 + length);
  ring.commit();
  return true;
}

/** Reads the next record as [length, fill], or null. */
function take(ring: SharedRing): [number, number] | null {
  const at = ring.next();
  if (at < 0) return null;
  const length = ring.view.getUint32(at, true);
  const body = ring.bytes.subarray(at + 4, at + 4 + length);
  const fill = length === 0 ? -1 : body[0]!;
  assert.ok(body.every((byte) => byte === fill), "a record's body reads as written");
  ring.done();
  return [length, fill];
}

Deno.test("SharedRing gives records back in order, whole, and reports an empty ring", () => {
  const { writer, reader } = rings(64);
  assert.equal(take(reader), null);
  assert.ok(put(writer, 3, 7));
  assert.ok(put(writer, 0, 0));
  assert.ok(put(writer, 9, 8));
  assert.deepEqual(take(reader), [3, 7]);
  assert.deepEqual(take(reader), [0, -1]);
  assert.deepEqual(take(reader), [9, 8]);
  assert.equal(take(reader), null);
});

Deno.test("SharedRing refuses a record when the reader is behind, and takes it once the reader moves on", () => {
  const { writer, reader } = rings(56);
  // Records of 4 + 4 + 12 = 20 bytes: two fit before the end (room is kept for the wrap mark).
  assert.ok(put(writer, 12, 1));
  assert.ok(put(writer, 12, 2));
  assert.equal(put(writer, 12, 3), false, "no room at the end, and the reader is still at the start");
  assert.deepEqual(take(reader), [12, 1]);
  assert.equal(put(writer, 12, 3), false, "back at the start it would reach the reader");
  assert.deepEqual(take(reader), [12, 2]);
  assert.ok(put(writer, 12, 3), "at the start, now free");
  assert.equal(put(writer, 12, 4), false, "it would reach the reader, still at the wrap mark");
  assert.deepEqual(take(reader), [12, 3]);
  assert.ok(put(writer, 12, 4));
  assert.deepEqual(take(reader), [12, 4]);
  assert.equal(take(reader), null);
  assert.equal(writer.reserve(64), -1, "a record larger than the ring never fits");
});

Deno.test("SharedRing over 100,000 records of random sizes, written and read in random turns", () => {
  const { writer, reader } = rings(1024, 16);
  let seed = 11;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const expected: Array<[number, number]> = [];
  let written = 0;
  let read = 0;
  let refused = 0;
  while (read < 100_000) {
    if (written < 100_000 && random() < 0.55) {
      const length = Math.floor(random() * random() * 300);
      const fill = written % 251;
      if (put(writer, length, fill)) {
        expected.push([length, fill]);
        written++;
      } else {
        refused++;
        assert.ok(
          expected.length > 0,
          "a record under the ring's size is refused only when the reader is behind",
        );
      }
    } else {
      const record = take(reader);
      if (record === null) assert.equal(expected.length, 0, "records written are there to read");
      else {
        assert.deepEqual(record, [expected[0]![0], expected[0]![0] === 0 ? -1 : expected[0]![1]]);
        expected.shift();
        read++;
      }
    }
  }
  assert.ok(refused > 100, `the ring was full ${refused} times`);
});

Deno.test("SharedRing refuses a region that is not aligned or does not fit", () => {
  const buffer = new SharedArrayBuffer(64);
  assert.throws(() => new SharedRing(buffer, 2, 32), RangeError);
  assert.throws(() => new SharedRing(buffer, 0, 30), RangeError);
  assert.throws(() => new SharedRing(buffer, 0, 64), RangeError);
  const ring = new SharedRing(buffer, 0, 56);
  assert.throws(() => ring.commit(), /none is reserved/);
});

Deno.test({
  name: "SharedRing carries 200,000 records from a worker to this thread, each whole and in order",
  ...SANITIZE,
  fn: async () => {
    const capacity = 4096;
    const buffer = new SharedArrayBuffer(SharedRing.bytesFor(capacity));
    const source = `
      import { SharedRing } from ${JSON.stringify(new URL("./shared_ring.ts", import.meta.url).href)};
      self.onmessage = ({ data: { buffer, capacity, count } }) => {
        const ring = new SharedRing(buffer, 0, capacity);
        for (let i = 0; i < count;) {
          const length = (i * 7) % 97;
          const at = ring.reserve(8 + length);
          if (at < 0) continue;
          ring.view.setUint32(at, i, true);
          ring.view.setUint32(at + 4, length, true);
          ring.bytes.fill(i % 256, at + 8, at + 8 + length);
          ring.commit();
          i++;
        }
        self.postMessage("done");
      };`;
    const worker = new Worker(`data:application/typescript,${encodeURIComponent(source)}`, {
      type: "module",
    });
    const finished = new Promise((resolve) => worker.onmessage = resolve);
    const count = 200_000;
    worker.postMessage({ buffer, capacity, count });
    const ring = new SharedRing(buffer, 0, capacity);
    let next = 0;
    const deadline = performance.now() + 30_000;
    while (next < count) {
      const at = ring.next();
      if (at < 0) {
        assert.ok(performance.now() < deadline, `only ${next} of ${count} records came`);
        await new Promise((resolve) => setTimeout(resolve, 0));
        continue;
      }
      assert.equal(ring.view.getUint32(at, true), next);
      const length = ring.view.getUint32(at + 4, true);
      assert.equal(length, (next * 7) % 97);
      const body = ring.bytes.subarray(at + 8, at + 8 + length);
      assert.ok(body.every((byte) => byte === next % 256), `record ${next} reads as written`);
      ring.done();
      next++;
    }
    await finished;
    worker.terminate();
  },
});
