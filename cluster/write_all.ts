/**
 * Writing a whole buffer to a socket: `write` may take only part of it, so the rest is written until every
 * byte is taken. The one such loop for both roles, the tests and the bench.
 */

/** Writes every byte of `bytes` to `conn` (a `Deno.Conn`, or anything with its `write`). */
export async function writeAll(
  conn: { write(bytes: Uint8Array): Promise<number> },
  bytes: Uint8Array,
): Promise<void> {
  let offset = 0;
  while (offset < bytes.length) offset += await conn.write(bytes.subarray(offset));
}
