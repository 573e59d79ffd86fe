// Measurement only (branch uring-data-path): the relay in its worker, through RelayDataPlane, as a plain
// proxy from LISTEN to BACKEND on 127.0.0.1, its flows placed by a one-backend Maglev table.
// LISTEN=port BACKEND=port deno run -A agent/relay/relay_proxy.ts
import { buildTable } from "../../cluster/maglev.ts";
import { RelayDataPlane } from "./data_plane.ts";

const backends = [{ ip: "127.0.0.1", port: Number(Deno.env.get("BACKEND")) }];
const plane = await RelayDataPlane.open({ place: () => {}, flows: () => {} });
if (!(plane instanceof RelayDataPlane)) throw new Error(plane.unavailable);
const { port } = await plane.listen({
  name: "http",
  listen: { ip: "127.0.0.1", port: Number(Deno.env.get("LISTEN")) },
  backends,
  maxConnections: 20_000,
  connectTimeoutMs: 2_000,
  idleTimeoutMs: 300_000,
  placement: {
    backends,
    table: buildTable([{ id: "b0", weight: 100 }]),
    seed: 12345,
    placeBy: "flow",
    askBuckets: null,
  },
});
console.log(`relay listening on 127.0.0.1:${port}`);
