// Measurement only: the relay in its worker, through RelayDataPlane, as a plain
// proxy from LISTEN to BACKEND on 127.0.0.1, its flows placed by a one-backend Maglev table.
// LISTEN=port BACKEND=port deno run -A bench/relay_proxy.ts
import { buildTable } from "../cluster/maglev.ts";
import { RelayDataPlane } from "../agent/relay/relay_plane.ts";

const backends = [{ host: "127.0.0.1", port: Number(Deno.env.get("BACKEND")) }];
const plane = await RelayDataPlane.open({ place: () => {}, flows: () => {} });
if (!(plane instanceof RelayDataPlane)) throw new Error(plane.unavailable);
const { port } = await plane.listen({
  name: "http",
  listen: { host: "127.0.0.1", port: Number(Deno.env.get("LISTEN")) },
  maxConnections: 20_000,
  connectTimeoutMs: 2_000,
  idleTimeoutMs: 300_000,
  proxyProtocol: "none",
  placement: {
    backends,
    table: buildTable([{ id: "b0", weight: 100 }]),
    seed: 12345,
    placeBy: "flow",
    askBuckets: null,
  },
  askTimeoutMs: 1_000,
});
console.log(`relay listening on 127.0.0.1:${port}`);
