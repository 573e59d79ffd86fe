/**
 * A relay on a thread of its own: it blocks in `epoll_wait`, and turns to its event loop (messages from
 * the agent, `messages.ts`) between waits: `yieldMs` after the first event of a turn (about once a second
 * while nothing happens), and at once when a message is on its way. Asks, answers and flow events go
 * through shared memory (`shared_queues.ts`), between waits, with no turn.
 */
import { setImmediate } from "node:timers";
import type { HostPort } from "../../cluster/address.ts";
import {
  backendOrder,
  placeFlow,
  placeHashOfBytes,
  type Placement,
  preferFirst,
} from "../../cluster/placement.ts";
import { FlowEvent, type PlaneService } from "../data_plane.ts";
import type { FromWorker, ToWorker } from "./messages.ts";
import { QueuedDecisions } from "../queued_decisions.ts";
import { Relay, type RelaySettings } from "./relay.ts";
import { decodeAddress, ipOfAddress, portOfAddress } from "./sockaddr.ts";
import { AnswerQueue, AskQueue, counters, EventQueue, POSTED, SIGNAL } from "./shared_queues.ts";

interface WorkerScope {
  onmessage: ((event: MessageEvent<ToWorker>) => void) | null;
  postMessage(message: FromWorker): void;
  close(): void;
}
const scope = self as unknown as WorkerScope;

/** How long a turn lasts once something completed: flow events are posted once per turn. */
let yieldMs = 10;
/**
 * The longest the relay blocks while nothing completes. A wake (answers, a message) ends a wait at once, so
 * this only bounds how often an idle relay turns: about once a second, not every `yieldMs`.
 */
const IDLE_WAIT_MS = 1_000;
let stopping = false;
/**
 * Messages handled since `start`. While the agent's count of those it posted (`POSTED`) is ahead, a message
 * is on its way and the relay must not block: Deno can take many turns of the event loop to deliver it
 * (about 20, 200 ms, on a loaded machine).
 */
let handled = 0;
let relay: Relay | null = null;
/** Shared with the agent (`shared_queues.ts`): its counters, the asks, the answers, the flow events. */
let shared: { counters: Int32Array; asks: AskQueue; answers: AnswerQueue; events: EventQueue } | null = null;
/** Asks written to shared memory since the agent was last signalled. */
let askWritten = false;
/** Per service, how the worker places its flows alone, and the manager's decisions made ahead for it. */
const placements: Placement<HostPort>[] = [];
const decisions: QueuedDecisions[] = [];
/** Flows asked about in the current wait that found no room in shared memory, posted together once it ends. */
let asks: (number | string)[] = [];
/** Flow events not yet posted, six numbers each (see `FromWorker`), posted once per turn. */
let events: number[] = [];
const { CONNECTED, FAILED, FAILED_LOCALLY, NO_BACKEND, ENDED, IDLE, ACCEPT_FAILED, DECIDED, ASK_TIMED_OUT } =
  FlowEvent;

scope.onmessage = ({ data: message }) => {
  if (message.type === "start") {
    yieldMs = message.yieldMs;
    shared = {
      counters: counters(message.shared),
      asks: new AskQueue(message.shared),
      answers: new AnswerQueue(message.shared),
      events: new EventQueue(message.shared),
    };
    start();
    return;
  }
  if (relay === null) return;
  // The answers written before this message was posted go first, as they would have been posted first.
  takeAnswers(relay);
  handle(relay, message);
  handled++;
  takeAnswers(relay);
};

function handle(relay: Relay, message: ToWorker): void {
  switch (message.type) {
    case "listen":
      listen(relay, message.service);
      return;
    case "endFlows":
      relay.endFlows(message.service);
      return;
    case "unlisten":
      relay.unlisten(message.service);
      scope.postMessage({ type: "unlistened" });
      return;
    case "update":
      placements[message.index] = message.service.placement;
      relay.update(message.index, settingsOf(message.service));
      return;
    case "decisions": {
      const queue = decisions[message.service];
      if (queue === undefined) return;
      // What was taken of the queue replaced is told first: the manager counts those uses too.
      tellDecided(queue, message.service);
      queue.set(message.decisions, performance.now());
      return;
    }
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
}

/** The answers in shared memory the agent wrote after messages this worker has handled, in order. */
function takeAnswers(relay: Relay): void {
  const { answers } = shared!;
  for (let answer = answers.take(handled); answer !== null; answer = answers.take(handled)) {
    relay.placed(answer.slot, answer.generation, answer.targets, answer.header, answer.firstTimeoutMs);
  }
}

/** Whether a message from the agent is on its way. */
function messageDue(): boolean {
  return Atomics.load(shared!.counters, POSTED) > handled;
}

function start(): void {
  const askQueue = shared!.asks;
  try {
    relay = openRelay(askQueue);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    scope.postMessage({ type: "unavailable", reason });
    scope.close();
    return;
  }
  scope.postMessage({ type: "ready", wakeFd: relay.wakeFd });
  void run(relay);
}

function openRelay(askQueue: AskQueue): Relay {
  return new Relay({
    ask: (service, slot, generation, client, destination) => {
      if (askQueue.put(service, slot, generation, client, destination)) askWritten = true;
      else {
        const from = decodeAddress(client);
        const to = decodeAddress(destination);
        asks.push(service, slot, generation, from.ip, from.port, to.ip, to.port);
      }
    },
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
      askTimedOut: (service, slot, generation) =>
        events.push(ASK_TIMED_OUT, service, slot, generation, -1, 0),
    },
  });
}

/** What the relay serves a service with, besides its placement: its backends and settings. */
function settingsOf(service: PlaneService): RelaySettings {
  return {
    backends: service.placement.backends,
    maxConnections: service.maxConnections,
    connectTimeoutMs: service.connectTimeoutMs,
    idleTimeoutMs: service.idleTimeoutMs,
    proxyProtocol: service.proxyProtocol,
    askTimeoutMs: service.askTimeoutMs,
  };
}

/** Where a flow falls in `placement`'s hash space, from its addresses as `struct sockaddr`s. */
function placeOfBytes(placement: Placement<HostPort>, client: Uint8Array, destination: Uint8Array): number {
  return placeHashOfBytes(
    placement.placeBy,
    { ip: ipOfAddress(client), port: portOfAddress(client) },
    { ip: ipOfAddress(destination), port: portOfAddress(destination) },
    placement.seed,
  );
}

function listen(relay: Relay, service: PlaneService): void {
  const index = placements.length;
  placements.push(service.placement);
  decisions.push(new QueuedDecisions());
  let port: number;
  try {
    port = relay.listen({
      name: service.name,
      listen: service.listen,
      ...settingsOf(service),
      // Placed from the addresses' bytes, as the relay has them: nothing is formatted to text.
      candidates: (client, destination) => {
        const placement = placements[index]!;
        const order = placeFlow(placement, placeOfBytes(placement, client, destination));
        if (order === null || !placement.decided) return order;
        const decided = decisions[index]!.take(performance.now());
        return decided < 0 ? null : preferFirst(order, decided);
      },
      fallback: (client, destination) => {
        const placement = placements[index]!;
        return backendOrder(
          placement.table,
          placeOfBytes(placement, client, destination),
          placement.backends.length,
        );
      },
    });
  } catch (error) {
    placements.pop();
    decisions.pop();
    scope.postMessage({
      type: "listenFailed",
      message: error instanceof Error ? error.message : String(error),
    });
    return;
  }
  scope.postMessage({ type: "listened", index, port });
}

/**
 * Tells the agent of the flows asked about in the last wait: those in shared memory with one signal, the
 * others in one message.
 */
function postAsks(): void {
  if (askWritten) {
    askWritten = false;
    signal();
  }
  if (asks.length === 0) return;
  scope.postMessage({ type: "place", requests: asks });
  asks = [];
}

/** Tells the agent that asks or flow events wait in shared memory. */
function signal(): void {
  Atomics.add(shared!.counters, SIGNAL, 1);
  Atomics.notify(shared!.counters, SIGNAL);
}

/** The sums of the connection counters and of the byte counters when last posted, and when. */
let postedConnections = 0;
let postedBytes = 0;
let postedAt = 0;
/**
 * How often byte counts alone are posted, when bytes moved but nothing else happened (keep-alive traffic):
 * they feed heartbeats and `/metrics`, and each post wakes the agent's thread (100 times a second at every
 * turn). A flow event, or a connection counted (accepted, rejected, failed to accept), goes at the end of
 * its turn, with every counter as of then.
 */
const BYTES_EVERY_MS = 100;
/** `flows` messages posted: the events that found no room in shared memory. */
let flowsPosted = 0;

/** A `DECIDED` event for service `service`'s queue, when decisions were taken of it since the last. */
function tellDecided(queue: QueuedDecisions, service: number): void {
  if (queue.reported()) events.push(DECIDED, service, -1, queue.seq, queue.taken, 0);
}

/**
 * The flow events since the last call, with the counters: in shared memory, or in a message without room.
 * Byte counts alone wait up to `BYTES_EVERY_MS`, unless `final`.
 */
function postEvents(final = false): void {
  if (relay === null) return;
  // What was taken of each queue of decisions made ahead, as of this turn.
  decisions.forEach(tellDecided);
  const { counters } = relay;
  const connections = counters.accepted + counters.rejected + counters.acceptErrors;
  const bytes = counters.bytesUp + counters.bytesDown;
  const now = performance.now();
  if (
    events.length === 0 && connections === postedConnections &&
    (bytes === postedBytes || (!final && now - postedAt < BYTES_EVERY_MS))
  ) return;
  postedConnections = connections;
  postedBytes = bytes;
  postedAt = now;
  if (shared!.events.put(flowsPosted, events, counters, relay.open)) {
    events.length = 0;
    signal();
    return;
  }
  scope.postMessage({ type: "flows", events, counters: { ...counters }, open: relay.open });
  flowsPosted++;
  events = [];
}

async function run(relay: Relay): Promise<void> {
  while (!stopping) {
    // A wake (the agent wrote answers or posted a message, then wrote the eventfd) ends a wait at once.
    // Answers are taken here; a message needs a turn of the event loop.
    let until = performance.now() + Math.max(yieldMs, IDLE_WAIT_MS);
    do {
      const completed = relay.poll(messageDue() ? 0 : Math.max(0, until - performance.now()));
      if (completed > 0 || events.length > 0) until = Math.min(until, performance.now() + yieldMs);
      takeAnswers(relay);
      postAsks();
    } while (!messageDue() && performance.now() < until);
    // The flow events once per turn to the event loop (at most every `yieldMs`), however many waits it took.
    postEvents();
    // setImmediate, not setTimeout(…, 0): that one waits for the timer's next millisecond (2 ms measured
    // here), during which the relay would not run.
    await new Promise((resolve) => setImmediate(resolve));
  }
  relay.close();
  postEvents(true);
  scope.postMessage({ type: "stopped", counters: { ...relay.counters }, open: relay.open });
  scope.close();
}
