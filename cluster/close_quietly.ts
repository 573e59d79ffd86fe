/**
 * Closes a connection, listener or file that may be closed already (by its peer, a timeout or another
 * path of the same code): the one such helper for both roles and the tests.
 */
export function closeQuietly(resource: { close(): void }): void {
  try {
    resource.close();
  } catch {
    // closed already
  }
}
