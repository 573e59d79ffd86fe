/** Connecting to a backend, bounded by the service's connect timeout. */

export async function connectBackend(
  backend: { readonly host: string; readonly port: number },
  options: { timeoutMs: number },
): Promise<Deno.TcpConn> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), options.timeoutMs);
  try {
    return await Deno.connect({ hostname: backend.host, port: backend.port, signal: abort.signal });
  } catch (error) {
    if (abort.signal.aborted) {
      throw new Deno.errors.TimedOut(
        `Cannot connect to ${backend.host}:${backend.port} within ${options.timeoutMs} ms`,
      );
    }
    throw error;
  } finally {
    clearTimeout(timer);
  }
}
