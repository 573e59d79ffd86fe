/**
 * The byte pump: copies one direction of a proxied connection with a `read`/`write` loop over a reused
 * buffer (no per-chunk allocation, no promise chains), and passes end-of-stream on as a TCP half-close.
 * `pipeTo` is not used: it breaks half-close in Deno (deno issues 27510, 22258).
 */

/** What the pump updates as bytes pass: the activity clock (for idle timeouts) and byte counts. */
export interface PumpStats {
  lastActive: number;
  bytes: number;
}

/** A coarse clock, advanced by the agent's sweep timer, so the pump does not call `performance.now()` per chunk. */
export const coarseClock = { now: performance.now() };

export const PUMP_DEFAULTS = {
  /** Every direction of a flow starts with a buffer this small: most idle connections never need more. */
  minBufferBytes: 512,
  /** A read that fills the buffer grows it fourfold, up to this (bulk transfers want large reads). */
  maxBufferBytes: 64 * 1024,
  /** A grown buffer goes back to the small size after this many reads in a row that the small one held. */
  smallReadsToShrink: 4,
} as const;

/** Told once when a pump ends: `error` is null when `from` ended and `to` was half-closed. */
export interface PumpEnd {
  pumpEnded(error: unknown): void;
}

/**
 * Copies `from` into `to` until `from` ends, then half-closes `to`, and tells `end` (with the error when
 * either side failed; the owner closes both connections then). The returned promise never rejects: the
 * flow is driven by `end`, so no promise chain is kept per flow. The buffer starts small and is reused;
 * it grows only while reads fill it, and shrinks back after a run of reads the small one would hold, so an
 * idle flow holds little.
 */
export async function pump(from: Deno.Conn, to: Deno.Conn, stats: PumpStats, end: PumpEnd): Promise<void> {
  let error: unknown = null;
  try {
    let buffer = new Uint8Array(PUMP_DEFAULTS.minBufferBytes);
    let smallReads = 0;
    for (;;) {
      const n = await from.read(buffer);
      if (n === null) break;
      stats.lastActive = coarseClock.now;
      stats.bytes += n;
      let written = await to.write(n === buffer.length ? buffer : buffer.subarray(0, n));
      while (written < n) written += await to.write(buffer.subarray(written, n));
      if (n === buffer.length) {
        smallReads = 0;
        if (buffer.length < PUMP_DEFAULTS.maxBufferBytes) {
          buffer = new Uint8Array(Math.min(PUMP_DEFAULTS.maxBufferBytes, buffer.length * 4));
        }
      } else if (buffer.length > PUMP_DEFAULTS.minBufferBytes && n <= PUMP_DEFAULTS.minBufferBytes) {
        // Only a run of small reads shrinks the buffer: answers a little larger than the small buffer
        // (one full read, then a short tail) would otherwise swap buffers at every answer.
        if (++smallReads >= PUMP_DEFAULTS.smallReadsToShrink) {
          smallReads = 0;
          buffer = new Uint8Array(PUMP_DEFAULTS.minBufferBytes);
        }
      } else {
        smallReads = 0;
      }
    }
    await to.closeWrite();
  } catch (caught) {
    error = caught ?? new Error("The pump failed without an error");
  }
  end.pumpEnded(error);
}
