/**
 * A relay on a thread of its own: it blocks in `io_uring_enter`, and turns to its event loop (messages
 * from the agent) between waits, at least every `YIELD_MS`.
 *
 * Messages in: `{ type: "start", services }` (services without `candidates`: every backend in order),
 * `{ type: "counters" }`, `{ type: "stop" }`. Out: `{ type: "listening", ports }`, `{ type: "counters",
 * counters, open }`, `{ type: "stopped", counters }`, `{ type: "error", message }`.
 */
import { openRing, unavailableReason } from "./ring.ts";
import { Relay, type RelayService } from "./relay.ts";

const YIELD_MS = 10;

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
  const message = event.data as { type: string; services?: ServiceMessage[] };
  if (message.type === "start") start(message.services ?? []);
  else if (message.type === "counters" && relay) {
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
  scope.postMessage({ type: "listening", ports });
  void run(relay, ring);
}

async function run(relay: Relay, ring: { close(): void }): Promise<void> {
  while (!stopping) {
    const until = performance.now() + YIELD_MS;
    while (!stopping && performance.now() < until) relay.poll(until - performance.now());
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  relay.close();
  ring.close();
  scope.postMessage({ type: "stopped", counters: relay.counters, open: relay.open });
  scope.close();
}
