/**
 * A relay on a thread of its own: it blocks in `io_uring_enter`, and turns to its event loop (messages
 * from the agent) between waits: at least every `yieldMs`, and at once when woken.
 *
 * Messages in:
 * - `{ type: "start", services, yieldMs? }`: each service's flows are placed by its `placement` (see
 *   `placement.ts`), or with `ask` where the agent says, or else go to every backend in order;
 * - `{ type: "placement", service, placement }`: a service's placement from now on;
 * - `{ type: "unlisten", service }`: stop accepting for it (answered `{ type: "unlistened" }`);
 * - `{ type: "placed", slot, generation, targets, header }`: the agent's answer to a `place`;
 * - `{ type: "counters" }`, `{ type: "stop" }`.
 *
 * Messages out:
 * - `{ type: "listening", ports, wakeFd }`: write to `wakeFd` (`openWaker`) after posting, and the message
 *   is taken at once;
 * - `{ type: "place", service, slot, generation, client, destination }`;
 * - `{ type: "flows", events }`: what happened to flows since the last (see `events` below);
 * - `{ type: "counters", counters, open }`, `{ type: "stopped", counters, open }`, `{ type: "error", message }`.
 */
import { setImmediate } from "node:timers";
import { openRing, unavailableReason } from "./ring.ts";
import { placeFlow, type Placement } from "./placement.ts";
import { FlowEvent, type PlacementRequest, Relay, type RelayService, type SocketAddress } from "./relay.ts";

/** The longest the relay blocks before it turns to its event loop anyway. */
let yieldMs = 10;

/** A service as posted: `ask` has every flow placed by the agent (`place` out, `placed` in). */
type ServiceMessage = Omit<RelayService, "candidates"> & { ask?: boolean; placement?: Placement };

interface PlacedMessage {
  type: "placed";
  slot: number;
  generation: number;
  targets: SocketAddress[];
  header: Uint8Array | null;
}

interface WorkerScope {
  onmessage: ((event: MessageEvent) => void) | null;
  postMessage(message: unknown): void;
  close(): void;
}
const scope = self as unknown as WorkerScope;

let stopping = false;
let relay: Relay | null = null;
/**
 * Flow events not yet posted, five numbers each: kind, service, slot, generation, choice (see
 * `FlowEvents`); posted together at each turn to the event loop, as `{ type: "flows", events }`.
 */
let events: number[] = [];
const { CONNECTED, FAILED, FAILED_LOCALLY, NO_BACKEND, ENDED } = FlowEvent;

function postEvents(): void {
  if (events.length === 0) return;
  scope.postMessage({ type: "flows", events });
  events = [];
}
/** Per service, how the worker places its flows alone (null: every backend in order). */
const placements: (Placement | null)[] = [];

scope.onmessage = (event: MessageEvent) => {
  const message = event.data as { type: string; services?: ServiceMessage[]; yieldMs?: number };
  if (message.type === "unlisten" && relay) {
    relay.unlisten((message as unknown as { service: number }).service);
    scope.postMessage({ type: "unlistened" });
  } else if (message.type === "placement" && relay) {
    const { service, placement } = message as unknown as { service: number; placement: Placement };
    placements[service] = placement;
    relay.update(service, placement.backends);
  } else if (message.type === "placed" && relay) {
    const placed = message as unknown as PlacedMessage;
    relay.placed(placed.slot, placed.generation, placed.targets, placed.header);
  } else if (message.type === "start") {
    yieldMs = message.yieldMs ?? yieldMs;
    start(message.services ?? []);
  } else if (message.type === "counters" && relay) {
    scope.postMessage({ type: "counters", counters: relay.counters, open: relay.open });
  } else if (message.type === "stop") stopping = true;
};

function start(services: ServiceMessage[]): void {
  const ring = openRing();
  if (ring === null) {
    scope.postMessage({ type: "error", message: `io_uring is not available: ${unavailableReason}` });
    return;
  }
  relay = new Relay(ring, {
    ask: (request: PlacementRequest) => scope.postMessage({ type: "place", ...request }),
    events: {
      connected: (service, slot, generation, choice) =>
        events.push(CONNECTED, service, slot, generation, choice),
      connectFailed: (service, slot, generation, choice, local) =>
        events.push(local ? FAILED_LOCALLY : FAILED, service, slot, generation, choice),
      noBackend: (service, slot, generation) => events.push(NO_BACKEND, service, slot, generation, -1),
      ended: (service, slot, generation, choice) => events.push(ENDED, service, slot, generation, choice),
    },
  });
  const ports = services.map((service, index) => {
    const order = service.backends.map((_, i) => i);
    placements[index] = service.placement ?? null;
    return relay!.listen({
      ...service,
      ...(service.placement ? { backends: service.placement.backends } : {}),
      candidates: (client, destination) => {
        if (service.ask) return null;
        const placement = placements[index];
        return placement ? placeFlow(placement, client, destination) : order;
      },
    });
  });
  scope.postMessage({ type: "listening", ports, wakeFd: relay.wakeFd });
  void run(relay, ring);
}

async function run(relay: Relay, ring: { close(): void }): Promise<void> {
  while (!stopping) {
    // A wake (the agent posted a message and wrote the eventfd) ends the wait at once.
    const until = performance.now() + yieldMs;
    do relay.poll(Math.max(0, until - performance.now())); while (!relay.woken && performance.now() < until);
    // One message per turn to the event loop (at most every `yieldMs`), however many waits it took.
    postEvents();
    // setImmediate, not setTimeout(…, 0): that one waits for the timer's next millisecond (2 ms measured
    // here), during which the relay would not run.
    await new Promise((resolve) => setImmediate(resolve));
  }
  relay.close();
  postEvents();
  ring.close();
  scope.postMessage({ type: "stopped", counters: relay.counters, open: relay.open });
  scope.close();
}
