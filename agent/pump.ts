/**
 * The byte pump: copies one direction of a proxied connection with a `read`/`write` loop over one reused
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

/**
 * Copies `from` into `to` until `from` ends, then half-closes `to`. Rejects when either side fails;
 * the caller closes both connections then.
 */
export async function pump(
  from: Deno.Conn,
  to: Deno.Conn,
  buffer: Uint8Array,
  stats: PumpStats,
): Promise<void> {
  for (;;) {
    const n = await from.read(buffer);
    if (n === null) break;
    stats.lastActive = coarseClock.now;
    stats.bytes += n;
    let written = await to.write(n === buffer.length ? buffer : buffer.subarray(0, n));
    while (written < n) written += await to.write(buffer.subarray(written, n));
  }
  await to.closeWrite();
}
