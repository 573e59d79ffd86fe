/**
 * A relay on a thread of its own: it blocks in `io_uring_enter`, and turns to its event loop (messages
 * from the agent) between waits: at least every `yieldMs`, and at once when woken.
 *
 * Messages in: `{ type: "start", services, yieldMs? }` (services without `candidates`: every backend in
 * order), `{ type: "counters" }`, `{ type: "stop" }`. Out: `{ type: "listening", ports, wakeFd }` (write to
 * `wakeFd` with `wake` after posting, and the message is taken at once), `{ type: "counters",
 * counters, open }`, `{ type: "stopped", counters }`, `{ type: "error", message }`.
 */
import { setImmediate } from "node:timers";
import { openRing, unavailableReason } from "./ring.ts";
import { Relay, type RelayService } from "./relay.ts";

/** The longest the relay blocks before it turns to its event loop anyway. */
let yieldMs = 10;

type ServiceMessage = Omit<RelayService, "candidates">;

interface WorkerScope {
  onmessage: ((event: MessageEvent) => void) | null;
  postMessage(message: unknown): void;
  close(): void;
}
const scope = self as unknown as WorkerScope;

let stopping = false;
let relay: Relay | null = null;

scope.onmessage = (event: MessageEvent) => {
  const message = event.data as { type: string; services?: ServiceMessage[]; yieldMs?: number };
  if (message.type === "start") {
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
  relay = new Relay(ring);
  const ports = services.map((service) => {
    const order = service.backends.map((_, i) => i);
    return relay!.listen({ ...service, candidates: () => order });
  });
  scope.postMessage({ type: "listening", ports, wakeFd: relay.wakeFd });
  void run(relay, ring);
}

async function run(relay: Relay, ring: { close(): void }): Promise<void> {
  while (!stopping) {
    // A wake (the agent posted a message and wrote the eventfd) ends the wait at once.
    const until = performance.now() + yieldMs;
    do relay.poll(Math.max(0, until - performance.now())); while (!relay.woken && performance.now() < until);
    // setImmediate, not setTimeout(…, 0): that one waits for the timer's next millisecond (2 ms measured
    // here), during which the relay would not run.
    await new Promise((resolve) => setImmediate(resolve));
  }
  relay.close();
  ring.close();
  scope.postMessage({ type: "stopped", counters: relay.counters, open: relay.open });
  scope.close();
}
