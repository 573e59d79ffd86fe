/**
 * How the relay's worker places a flow of a service alone, with the agent's own pure functions: the
 * flow's hash (`cluster/flow_key.ts`), its claim bucket (`cluster/claims.ts`) and the Maglev candidates
 * (`cluster/maglev.ts`), from the state the agent posts. A flow whose bucket another agent claims is not
 * placed here: the relay asks the agent, which hands it off.
 */
import { claimBucket } from "../../cluster/claims.ts";
import { hashClientIpOfBytes, hashFlowKeyOfBytes } from "../../cluster/flow_key.ts";
import { candidates } from "../../cluster/maglev.ts";
import { ipOfAddress, portOfAddress, type SocketAddress } from "./relay.ts";

/** What the worker needs to place a service's flows, as the agent posts it with each state. */
export interface Placement {
  /** The service's backends, in the order its table indexes them. */
  readonly backends: readonly SocketAddress[];
  readonly table: Uint16Array;
  /** The cluster's hash seed. */
  readonly seed: number;
  /** `client_ip`: by the client's address alone (affinity), else by the 5-tuple. */
  readonly placeBy: "flow" | "client_ip";
  /** Per claim bucket, 1 where the flow must be asked of the agent (another agent claims it); or null. */
  readonly askBuckets: Uint8Array | null;
}

/**
 * The backends to try, in order (indexes into `backends`), or null when the agent must be asked; for a
 * flow between two socket addresses (`struct sockaddr`s, as the relay has them).
 */
export function placeFlow(
  placement: Placement,
  client: Uint8Array,
  destination: Uint8Array,
): readonly number[] | null {
  const place = placement.placeBy === "client_ip"
    ? hashClientIpOfBytes(ipOfAddress(client), placement.seed)
    : hashFlowKeyOfBytes(
      ipOfAddress(client),
      portOfAddress(client),
      ipOfAddress(destination),
      portOfAddress(destination),
      placement.seed,
    );
  if (placement.askBuckets !== null && placement.askBuckets[claimBucket(place)] === 1) return null;
  const { table } = placement;
  if (table.length === 0) return [];
  return candidates(table, place % table.length, placement.backends.length);
}
