/** A demo backend: an HTTP server on loopback that answers every request with its own name. */

export interface DemoBackend {
  readonly name: string;
  readonly addr: Deno.NetAddr;
  readonly requests: () => number;
  close(): Promise<void>;
}

export function startDemoBackend(
  name: string,
  options: { hostname?: string; port?: number } = {},
): DemoBackend {
  let requests = 0;
  const server = Deno.serve(
    { hostname: options.hostname ?? "127.0.0.1", port: options.port ?? 0, onListen: () => {} },
    () => {
      requests++;
      return new Response(`${name}\n`, { headers: { "content-type": "text/plain", "x-backend": name } });
    },
  );
  return {
    name,
    addr: server.addr,
    requests: () => requests,
    close: () => server.shutdown(),
  };
}
