/**
 * The messages between the agent's thread (`relay_plane.ts`) and the relay's worker (`relay_worker.ts`).
 * The worker handles them in order, and answers those that are answered in the same order. Asks, answers
 * and flow events go through shared memory (`shared_queues.ts`); `place`, `placed` and `flows` carry those
 * that found no room there.
 */
import type { HostPort } from "../../cluster/address.ts";
import type { PlaneCounters, PlaneService } from "../data_plane.ts";
import type { Decisions } from "../queued_decisions.ts";

/**
 * The agent's answer to one `place` request: slot, generation; targets in order (a number is an index into
 * the service's backends as last posted with `placement`); one header for every target, or one per target;
 * the first target's connect timeout when not the service's (a claimant's mesh port), or 0. A tuple, not
 * an object: messages are cloned, and an object's property names with them.
 */
export type Placed = [
  slot: number,
  generation: number,
  targets: (HostPort | number)[],
  header: Uint8Array | null | (Uint8Array | null)[],
  firstTimeoutMs: number,
];

/** Numbers and strings per `place` request, in this order (see `PlacementRequest`). */
export const REQUEST_FIELDS = 7;

export type ToWorker =
  /** `shared`: the buffer from `sharedBuffer`. */
  | { type: "start"; yieldMs: number; shared: SharedArrayBuffer }
  | { type: "listen"; service: PlaneService }
  | { type: "unlisten"; service: number }
  | { type: "endFlows"; service: number }
  | { type: "update"; index: number; service: PlaneService }
  | { type: "decisions"; service: number; decisions: Decisions }
  /** Answers to `place` requests, as many as the agent had ready in one turn of its event loop. */
  | { type: "placed"; answers: Placed[] }
  | { type: "counters" }
  | { type: "stop" };

export type FromWorker =
  | { type: "ready"; wakeFd: number }
  | { type: "unavailable"; reason: string }
  | { type: "listened"; index: number; port: number }
  | { type: "listenFailed"; message: string }
  | { type: "unlistened" }
  /**
   * The flows the relay asked about in one wait, in the order accepted, `REQUEST_FIELDS` entries each:
   * service, slot, generation, client IP, client port, destination IP, destination port.
   */
  | { type: "place"; requests: (number | string)[] }
  /**
   * Six numbers per event: kind (`FlowEvent`), service, slot, generation, choice, errno (an accept failure
   * has no flow: slot and choice -1); with the counters as of then. Posted at most once per turn, when there
   * are events or the counters moved.
   */
  | { type: "flows"; events: number[]; counters: PlaneCounters; open: number }
  | { type: "counters"; counters: PlaneCounters; open: number }
  | { type: "stopped"; counters: PlaneCounters; open: number };
