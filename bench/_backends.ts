/**
 * Backends the bench and the soak start as a child process (so they never share a CPU-bound event loop,
 * or a file limit, with the process driving the load). Each listens on a loopback port of its own and the
 * ports are printed as one JSON line on stdout: `{"echo": 40001, "http": 40002, "rude": 40003}`.
 *
 * - `echo`: sends back every byte it gets and holds the connection open until the peer ends it, then
 *   ends its side (half-close passes through). The idle-connection measurement holds 10,000 of these.
 * - `http`: answers every HTTP/1.1 request with a 17-byte body, keep-alive unless asked to close (the
 *   stand-in for nginx when nginx is not installed).
 * - `rude`: reads one chunk, then closes with bytes still unread, so the kernel answers with a reset.
 *
 * Usage: deno run --allow-net bench/_backends.ts echo http rude
 */
import { startBackend, startEcho } from "../tests/_backends.ts";

export const HTTP_BODY = "switchyard bench\n";

/** Reads one chunk, then returns, so that closing with bytes still unread sends a reset. */
async function serveRude(conn: Deno.Conn): Promise<void> {
  await conn.read(new Uint8Array(1));
  // whatever else was sent stays unread, so close() sends a reset
  await new Promise((resolve) => setTimeout(resolve, 5));
}

if (import.meta.main) {
  const ports: Record<string, number> = {};
  const serving: Promise<unknown>[] = [];
  // e.g. too many open files: say so; the backend waits and keeps serving
  const onAcceptError = (error: unknown) => console.error(`Cannot accept a connection: ${error}`);
  for (const kind of Deno.args) {
    if (kind === "http") {
      const server = Deno.serve(
        { hostname: "127.0.0.1", port: 0, onListen: () => {} },
        () => new Response(HTTP_BODY, { headers: { "content-type": "text/plain" } }),
      );
      ports.http = server.addr.port;
      serving.push(server.finished);
    } else if (kind === "echo") {
      ports.echo = startEcho({ onAcceptError }).port;
    } else if (kind === "rude") {
      ports.rude = startBackend(serveRude, { onAcceptError }).port;
    } else {
      console.error(`Unknown backend kind "${kind}": expected echo, http or rude`);
      Deno.exit(2);
    }
  }
  console.log(JSON.stringify(ports));
  await Promise.all(serving);
}
