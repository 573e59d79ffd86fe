/**
 * A queue of records in shared memory, from one thread to one other: the flows the relay's worker asks
 * about, and the agent's answers (`data_plane.ts`). A record costs its two threads a copy in and a copy
 * out; a message between them costs each a structured clone and the receiver a turn of its event loop.
 *
 * The ring is a region of a `SharedArrayBuffer`: two 32-bit positions (where the writer writes next, where
 * the reader reads next), then the records. A record is its size (4 bytes, little-endian, the size counted
 * in), its body, and padding to 4 bytes. A record never wraps: one that does not fit before the end goes at
 * the start, with a size of 0 left where it would have begun. The writer moves only the write position and
 * the reader only the read one, each with `Atomics.store` after the bytes it wrote or read, so each sees
 * whole records. The ring is empty when both positions are equal, so it never fills up to that.
 */

const WRITE = 0;
const READ = 1;
/** The two positions. */
const HEADER_BYTES = 8;
/** A record's size field. */
const SIZE_BYTES = 4;

export class SharedRing {
  /** The record bytes, and a view of the same for numbers. */
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly #positions: Int32Array;
  readonly #capacity: number;
  /** The writer's position, and where its record under way begins (see `reserve`). */
  #write: number;
  #reserved = -1;
  #reservedSize = 0;
  /** The reader's position, and the size of the record it is reading (see `next`). */
  #read: number;
  #current = 0;

  /** The bytes to set aside in a `SharedArrayBuffer` for a ring of `capacity` bytes of records. */
  static bytesFor(capacity: number): number {
    return HEADER_BYTES + capacity;
  }

  /**
   * The ring at `offset` (a multiple of 4) in `buffer`, with `capacity` bytes (a multiple of 4) for records.
   * Each side makes its own over the same region; a new region is all zeros, which is an empty ring.
   */
  constructor(buffer: SharedArrayBuffer, offset: number, capacity: number) {
    if (offset % 4 !== 0 || capacity % 4 !== 0 || capacity < 16) {
      throw new RangeError(
        `Cannot make a ring of ${capacity} bytes at ${offset}: both must be multiples of 4`,
      );
    }
    if (offset + SharedRing.bytesFor(capacity) > buffer.byteLength) {
      throw new RangeError(
        `Cannot make a ring of ${capacity} bytes at ${offset}: the buffer has ${buffer.byteLength}`,
      );
    }
    this.#positions = new Int32Array(buffer, offset, 2);
    this.bytes = new Uint8Array(buffer, offset + HEADER_BYTES, capacity);
    this.view = new DataView(buffer, offset + HEADER_BYTES, capacity);
    this.#capacity = capacity;
    this.#write = Atomics.load(this.#positions, WRITE);
    this.#read = Atomics.load(this.#positions, READ);
  }

  /**
   * The writer's side: room for a record with a body of `bodyBytes`, and the offset in `bytes` where its
   * body goes; or -1 when the ring has no room for it now (the reader is behind) or ever. Write the body,
   * then `commit`: until then the reader does not see it. A record never wraps, so one of more than half the
   * ring may find no room even in an empty ring: keep records well under that.
   */
  reserve(bodyBytes: number): number {
    const size = SIZE_BYTES + ((bodyBytes + 3) & ~3);
    const write = this.#write;
    const read = Atomics.load(this.#positions, READ);
    let at: number;
    if (write >= read) {
      // Room is left at the end for the size of 0 that sends the reader back to the start.
      if (write + size <= this.#capacity - SIZE_BYTES) at = write;
      // Back at the start, the record must end before the reader, or the ring would look empty.
      else if (size < read) {
        this.view.setUint32(write, 0, true);
        at = 0;
      } else return -1;
    } else if (write + size < read) at = write;
    else return -1;
    this.#reserved = at;
    this.#reservedSize = size;
    return at + SIZE_BYTES;
  }

  /** Makes the record reserved last whole, for the reader to take. */
  commit(): void {
    const at = this.#reserved;
    if (at < 0) throw new Error("Cannot commit a record: none is reserved");
    this.view.setUint32(at, this.#reservedSize, true);
    this.#write = at + this.#reservedSize;
    this.#reserved = -1;
    Atomics.store(this.#positions, WRITE, this.#write);
  }

  /**
   * The reader's side: the offset in `bytes` of the next record's body, or -1 when there is none. It stays
   * the reader's until `done`; until then `next` gives the same one.
   */
  next(): number {
    const write = Atomics.load(this.#positions, WRITE);
    if (this.#read === write) return -1;
    let size = this.view.getUint32(this.#read, true);
    if (size === 0) {
      this.#read = 0;
      Atomics.store(this.#positions, READ, 0);
      if (write === 0) return -1;
      size = this.view.getUint32(0, true);
    }
    this.#current = size;
    return this.#read + SIZE_BYTES;
  }

  /** Hands the record `next` gave back to the writer. */
  done(): void {
    this.#read += this.#current;
    this.#current = 0;
    Atomics.store(this.#positions, READ, this.#read);
  }
}
