/**
 * The backends of the tests (and of the bench's backend process): TCP servers on loopback port 0 that
 * count what they accept and end every connection they hold on `close()`.
 *
 * - `startEcho`: sends back every byte it reads; ends its side when the client ends its own.
 * - `startGreeter`: sends its name and a newline, then ends its side; with `hold`, keeps the connection
 *   open and echoes what it reads until the client closes (a holder).
 * - `startBackend`: any other per-connection behaviour, on the same listener and bookkeeping.
 */
import { writeAll } from "../cluster/write_all.ts";
import { closeQuietly } from "../cluster/close_quietly.ts";

export interface BackendOptions {
  /** Where to listen; 127.0.0.1 by default. */
  readonly host?: string;
  /** 0 (a free port) by default. */
  readonly port?: number;
  /** Told of a failed accept (out of file descriptors): the backend waits 100 ms and accepts again. */
  readonly onAcceptError?: (error: unknown) => void;
}

export interface TestBackend {
  readonly port: number;
  /** `host:port`, as a service's `backends` lists it. */
  readonly address: string;
  /** Connections accepted so far. */
  accepted(): number;
  /** Connections open now. */
  open(): number;
  /** Refuses new connections from now on, as a killed process looks to new clients; open ones go on. */
  kill(): Promise<void>;
  /** Stops listening, closes every open connection and waits for their handlers. */
  close(): Promise<void>;
}

/**
 * A backend that runs `serve` for each connection it accepts and closes the connection when `serve`
 * settles; an error of `serve` (a client's reset) ends only that connection.
 */
export function startBackend(
  serve: (conn: Deno.TcpConn) => Promise<void>,
  options: BackendOptions = {},
): TestBackend {
  const host = options.host ?? "127.0.0.1";
  const listener = Deno.listen({ hostname: host, port: options.port ?? 0 });
  const open = new Set<Deno.TcpConn>();
  const handlers = new Set<Promise<void>>();
  let accepted = 0;
  let listening = true;
  const accepting = (async () => {
    while (listening) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch (error) {
        if (!listening) return;
        options.onAcceptError?.(error);
        await new Promise((resolve) => setTimeout(resolve, 100));
        continue;
      }
      accepted++;
      open.add(conn);
      try {
        conn.setNoDelay(true);
      } catch {
        // reset before we got to it; serve() sees that too
      }
      const handler: Promise<void> = serve(conn).catch(() => {}).finally(() => {
        open.delete(conn);
        handlers.delete(handler);
        closeQuietly(conn);
      });
      handlers.add(handler);
    }
  })();
  const kill = async () => {
    if (listening) {
      listening = false;
      listener.close();
    }
    await accepting;
  };
  return {
    port: listener.addr.port,
    address: `${host}:${listener.addr.port}`,
    accepted: () => accepted,
    open: () => open.size,
    kill,
    async close() {
      await kill();
      for (const conn of open) closeQuietly(conn);
      await Promise.allSettled([...handlers]);
    },
  };
}

/** Sends back what it reads until the client ends its side, then ends its own. */
export async function echo(conn: Deno.Conn): Promise<void> {
  const buffer = new Uint8Array(64 * 1024);
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) break;
    await writeAll(conn, buffer.subarray(0, n));
  }
  await conn.closeWrite();
}

/** An echo backend; with `flood`, it first sends that many bytes at once on every connection. */
export function startEcho(options: BackendOptions & { readonly flood?: number } = {}): TestBackend {
  const { flood = 0 } = options;
  return startBackend(async (conn) => {
    if (flood > 0) await writeAll(conn, new Uint8Array(flood));
    await echo(conn);
  }, options);
}

/**
 * A backend that greets each connection with `name` and a newline, then ends its side and reads until
 * the client closes; with `hold`, it keeps the connection open and echoes instead.
 */
export function startGreeter(
  name: string,
  options: BackendOptions & { readonly hold?: boolean } = {},
): TestBackend & { readonly name: string } {
  const greeting = new TextEncoder().encode(`${name}\n`);
  const backend = startBackend(async (conn) => {
    await writeAll(conn, greeting);
    if (options.hold) return await echo(conn);
    await conn.closeWrite();
    const buffer = new Uint8Array(1024);
    while ((await conn.read(buffer)) !== null) {
      // drained until the client closes
    }
  }, options);
  return { ...backend, name };
}
