/**
 * Where a flow goes, as every part of the cluster works it out: its place hash (of the 5-tuple, or of the
 * client's address alone with client affinity), the claim bucket the hash falls in and the agent that owns
 * it, and the backends its service's Maglev table gives, in the order to try them. Pure, and the only
 * implementation: the agent, the relay's worker and the manager's `/v1/explain` all call it, so they
 * cannot disagree.
 */
import { claimBucket, NO_AGENT } from "./claims.ts";
import { hashClientIp, hashClientIpOfBytes, hashFlowKey, hashFlowKeyOfBytes } from "./flow_key.ts";
import { candidates } from "./maglev.ts";

/** What a flow's place hash is taken of: its 5-tuple, or its client's address alone (`client_ip` affinity). */
export type PlaceBy = "flow" | "client_ip";

/** An endpoint of a flow, its IP as text. */
export interface Endpoint {
  readonly ip: string;
  readonly port: number;
}

/** A flow's place hash, from its endpoints as text. */
export function placeHash(placeBy: PlaceBy, client: Endpoint, destination: Endpoint, seed: number): number {
  if (placeBy === "client_ip") return hashClientIp(client.ip, seed);
  return hashFlowKey({
    clientIp: client.ip,
    clientPort: client.port,
    serviceIp: destination.ip,
    servicePort: destination.port,
  }, seed);
}

/** `placeHash` of endpoints whose IPs are bytes already (4 or 16), as a socket address holds them. */
export function placeHashOfBytes(
  placeBy: PlaceBy,
  client: { readonly ip: Uint8Array; readonly port: number },
  destination: { readonly ip: Uint8Array; readonly port: number },
  seed: number,
): number {
  if (placeBy === "client_ip") return hashClientIpOfBytes(client.ip, seed);
  return hashFlowKeyOfBytes(client.ip, client.port, destination.ip, destination.port, seed);
}

/** The index (into the state's agents) of the agent that claims a place hash, or `NO_AGENT`. */
export function claimantOf(owners: Uint16Array | null, place: number): number {
  if (owners === null || owners.length === 0) return NO_AGENT;
  return owners[claimBucket(place, owners.length)] ?? NO_AGENT;
}

/** The table slot of a place hash (0 for an empty table). */
export function slotOf(table: Uint16Array, place: number): number {
  return table.length === 0 ? 0 : place % table.length;
}

/**
 * The backends to try for a place hash, in order (indexes of the table's backends, at most
 * `backendCount`): the slot's own, then those met walking the table on. None for an empty table.
 */
export function backendOrder(table: Uint16Array, place: number, backendCount: number): number[] {
  return table.length === 0 ? [] : candidates(table, slotOf(table, place), backendCount);
}

/**
 * `order` with `preferred` first (the manager's decision, the affinity cache's choice) and the rest in their
 * order; a backend `order` does not name is put first all the same. Changes `order` and returns it.
 */
export function preferFirst(order: number[], preferred: number): number[] {
  const at = order.indexOf(preferred);
  if (at > 0) order.splice(at, 1);
  if (at !== 0) order.unshift(preferred);
  return order;
}

/** What is needed to place a service's flows without asking: its table and how its flows hash. */
export interface Placement<Backend = unknown> {
  /** The service's backends, in the order its table indexes them. */
  readonly backends: readonly Backend[];
  readonly table: Uint16Array;
  /** The cluster's hash seed. */
  readonly seed: number;
  readonly placeBy: PlaceBy;
  /**
   * Per claim bucket, 1 where a flow cannot be placed from the table alone (another agent claims it, or
   * every flow must be decided: `decide: manager`, affinity with a ttl); or null when none must.
   */
  readonly askBuckets: Uint8Array | null;
  /**
   * The backend of each flow it does not ask about is the manager's, decided ahead (`decide_ahead`): the next
   * of the queue the agent passes on (`DataPlane.setDecisions`), first before the table's order; with none
   * left, the flow is asked about.
   */
  readonly decided?: boolean;
}

/**
 * The backends to try for a flow of `placement`'s service (indexes into `backends`, in order), or null
 * when its bucket says it must be asked about.
 */
export function placeFlow(placement: Placement, place: number): number[] | null {
  const { askBuckets } = placement;
  if (askBuckets !== null && askBuckets[claimBucket(place, askBuckets.length)] === 1) return null;
  return backendOrder(placement.table, place, placement.backends.length);
}
