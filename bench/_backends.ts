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

export const HTTP_BODY = "switchyard bench\n";

async function serveEcho(conn: Deno.Conn): Promise<void> {
  const buffer = new Uint8Array(64 * 1024);
  try {
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      let written = 0;
      while (written < n) written += await conn.write(buffer.subarray(written, n));
    }
    await conn.closeWrite();
    // wait for the peer to close its side too
    while ((await conn.read(buffer)) !== null);
  } catch {
    // reset by the peer
  } finally {
    try {
      conn.close();
    } catch {
      // already closed
    }
  }
}

async function serveRude(conn: Deno.Conn): Promise<void> {
  try {
    await conn.read(new Uint8Array(1));
    // whatever else was sent stays unread, so close() sends a reset
    await new Promise((resolve) => setTimeout(resolve, 5));
  } catch {
    // reset already
  } finally {
    try {
      conn.close();
    } catch {
      // already closed
    }
  }
}

async function accept(listener: Deno.Listener, serve: (conn: Deno.Conn) => Promise<void>): Promise<void> {
  for (;;) {
    let conn: Deno.Conn;
    try {
      conn = await listener.accept();
    } catch (error) {
      // e.g. too many open files: say so, wait, and keep serving
      console.error(`Cannot accept on ${JSON.stringify(listener.addr)}: ${error}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
      continue;
    }
    try {
      (conn as Deno.TcpConn).setNoDelay(true);
    } catch {
      // reset before we got to it; serve() sees that too
    }
    serve(conn);
  }
}

if (import.meta.main) {
  const ports: Record<string, number> = {};
  const serving: Promise<unknown>[] = [];
  for (const kind of Deno.args) {
    if (kind === "http") {
      const server = Deno.serve(
        { hostname: "127.0.0.1", port: 0, onListen: () => {} },
        () => new Response(HTTP_BODY, { headers: { "content-type": "text/plain" } }),
      );
      ports.http = server.addr.port;
      serving.push(server.finished);
    } else if (kind === "echo" || kind === "rude") {
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      ports[kind] = (listener.addr as Deno.NetAddr).port;
      serving.push(accept(listener, kind === "echo" ? serveEcho : serveRude));
    } else {
      console.error(`Unknown backend kind "${kind}": expected echo, http or rude`);
      Deno.exit(2);
    }
  }
  console.log(JSON.stringify(ports));
  await Promise.all(serving);
}
