/**
 * A relay on a thread of its own: it blocks in `io_uring_enter`, and turns to its event loop (messages
 * from the agent, `messages.ts`) between waits: at least every `yieldMs`, and at once when woken.
 */
import { setImmediate } from "node:timers";
import type { FromWorker, ServiceMessage, ToWorker } from "./messages.ts";
import { placeFlow, type Placement } from "./placement.ts";
import { FlowEvent, Relay } from "./relay.ts";
import { openRing, type Ring, unavailableReason } from "./ring.ts";

interface WorkerScope {
  onmessage: ((event: MessageEvent<ToWorker>) => void) | null;
  postMessage(message: FromWorker): void;
  close(): void;
}
const scope = self as unknown as WorkerScope;

/** The longest the relay blocks before it turns to its event loop anyway. */
let yieldMs = 10;
let stopping = false;
/**
 * Messages taken since `start`. Each message the agent posts also writes the relay's eventfd once, so while
 * `relay.wakes` is ahead of this, a message is on its way and the relay must not block: Deno can take many
 * turns of the event loop to deliver it (about 20, 200 ms, on a loaded machine).
 */
let received = 0;
let relay: Relay | null = null;
/** Per service, how the worker places its flows alone (null: every backend in order). */
const placements: (Placement | null)[] = [];
/** Flows asked about in the current wait, posted together once it ends. */
let asks: (number | string)[] = [];
/** Flow events not yet posted, six numbers each (see `FromWorker`), posted once per turn. */
let events: number[] = [];
const { CONNECTED, FAILED, FAILED_LOCALLY, NO_BACKEND, ENDED, IDLE, ACCEPT_FAILED } = FlowEvent;

scope.onmessage = ({ data: message }) => {
  if (message.type === "start") {
    yieldMs = message.yieldMs;
    start();
    return;
  }
  if (relay === null) return;
  received++;
  switch (message.type) {
    case "listen":
      listen(relay, message.service);
      return;
    case "unlisten":
      relay.unlisten(message.service);
      scope.postMessage({ type: "unlistened" });
      return;
    case "placement":
      placements[message.service] = message.placement;
      relay.update(message.service, message.placement.backends);
      return;
    case "placed":
      for (const [slot, generation, targets, header, firstTimeoutMs] of message.answers) {
        relay.placed(slot, generation, targets, header, firstTimeoutMs);
      }
      return;
    case "counters":
      scope.postMessage({ type: "counters", counters: { ...relay.counters }, open: relay.open });
      return;
    case "stop":
      stopping = true;
      return;
  }
};

function start(): void {
  const ring = openRing();
  if (ring === null) {
    scope.postMessage({ type: "unavailable", reason: unavailableReason });
    scope.close();
    return;
  }
  relay = new Relay(ring, {
    ask: ({ service, slot, generation, client, destination }) =>
      asks.push(service, slot, generation, client.ip, client.port, destination.ip, destination.port),
    events: {
      connected: (service, slot, generation, choice) =>
        events.push(CONNECTED, service, slot, generation, choice, 0),
      // Failures go out at once (with what is pending before them): they are rare, and the agent logs them
      // before the client could see the flow served by the next backend.
      connectFailed: (service, slot, generation, choice, errno, local) => {
        events.push(local ? FAILED_LOCALLY : FAILED, service, slot, generation, choice, errno);
        postEvents();
      },
      noBackend: (service, slot, generation) => {
        events.push(NO_BACKEND, service, slot, generation, -1, 0);
        postEvents();
      },
      ended: (service, slot, generation, choice) => events.push(ENDED, service, slot, generation, choice, 0),
      idle: (service, slot, generation, choice) => events.push(IDLE, service, slot, generation, choice, 0),
      acceptFailed: (service, errno) => events.push(ACCEPT_FAILED, service, -1, 0, -1, errno),
    },
  });
  scope.postMessage({ type: "ready", wakeFd: relay.wakeFd });
  void run(relay, ring);
}

function listen(relay: Relay, service: ServiceMessage): void {
  const index = placements.length;
  const order = service.backends.map((_, i) => i);
  placements.push(service.placement ?? null);
  let port: number;
  try {
    port = relay.listen({
      ...service,
      ...(service.placement ? { backends: service.placement.backends } : {}),
      candidates: (client, destination) => {
        if (service.ask) return null;
        const placement = placements[index];
        return placement ? placeFlow(placement, client, destination) : order;
      },
    });
  } catch (error) {
    placements.pop();
    scope.postMessage({
      type: "listenFailed",
      message: error instanceof Error ? error.message : String(error),
    });
    return;
  }
  scope.postMessage({ type: "listened", index, port });
}

/** The flows asked about in the last wait, in one message: the agent answers them in one too. */
function postAsks(): void {
  if (asks.length === 0) return;
  scope.postMessage({ type: "place", requests: asks });
  asks = [];
}

/** What the counters summed to when last posted. */
let postedSum = 0;

function postEvents(): void {
  if (relay === null) return;
  const { counters } = relay;
  const sum = counters.accepted + counters.rejected + counters.bytesUp + counters.bytesDown +
    counters.acceptErrors;
  if (events.length === 0 && sum === postedSum) return;
  postedSum = sum;
  scope.postMessage({ type: "flows", events, counters: { ...counters }, open: relay.open });
  events = [];
}

async function run(relay: Relay, ring: Ring): Promise<void> {
  while (!stopping) {
    // A wake (the agent posted a message and wrote the eventfd) ends the wait at once.
    const until = performance.now() + yieldMs;
    do {
      relay.poll(relay.wakes > received ? 0 : Math.max(0, until - performance.now()));
      postAsks();
    } while (!relay.woken && relay.wakes <= received && performance.now() < until);
    // One message per turn to the event loop (at most every `yieldMs`), however many waits it took.
    postEvents();
    // setImmediate, not setTimeout(…, 0): that one waits for the timer's next millisecond (2 ms measured
    // here), during which the relay would not run.
    await new Promise((resolve) => setImmediate(resolve));
  }
  relay.close();
  postEvents();
  ring.close();
  scope.postMessage({ type: "stopped", counters: { ...relay.counters }, open: relay.open });
  scope.close();
}
