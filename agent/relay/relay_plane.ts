/**
 * The epoll relay as the agent's data plane (`../data_plane.ts`): the worker it runs in, the messages to it (`messages.ts`), the
 * asks, answers and flow events through shared memory (`shared_queues.ts`), and the eventfd that makes the
 * worker take each at once.
 */
import { setImmediate } from "node:timers";
import type {
  DataPlane,
  DataPlaneEvents,
  Headers,
  PlacementRequest,
  PlaneCounters,
  PlaneService,
  Target,
} from "../data_plane.ts";
import type { Decisions } from "../queued_decisions.ts";
import { type FromWorker, type Placed, REQUEST_FIELDS, type ToWorker } from "./messages.ts";
import { openWaker } from "./relay.ts";
import { encodeAddress } from "./sockaddr.ts";
import {
  AnswerQueue,
  AskQueue,
  counters,
  EventQueue,
  POSTED,
  sharedBuffer,
  SIGNAL,
} from "./shared_queues.ts";

export class RelayDataPlane implements DataPlane {
  readonly kind = "epoll";
  readonly #worker: Worker;
  readonly #waker: { wake(wakeFd: number): void; close(): void };
  readonly #wakeFd: number;
  readonly #handlers: DataPlaneEvents;
  /** Answers awaited, in the order the worker gives them. */
  readonly #waiting: Array<{ types: readonly string[]; resolve: (message: FromWorker) => void }> = [];
  #stopped: Promise<void> | null = null;
  /** The shared counters (`shared_queues.ts`), and the asks, answers and flow events through shared memory. */
  readonly #counters: Int32Array;
  readonly #asks: AskQueue;
  readonly #answerQueue: AnswerQueue;
  readonly #events: EventQueue;
  /** Messages posted to the worker, as `POSTED` has it. */
  #posted = 0;
  /** `flows` messages handled: flow events that found no room in shared memory. */
  #flowsHandled = 0;
  /** Answers that found no room in shared memory, not yet posted (`placed`). */
  readonly #answers: Placed[] = [];
  /** A wake of the worker is due at the end of this turn, for answers in shared memory. */
  #wakeDue = false;

  private constructor(
    worker: Worker,
    wakeFd: number,
    shared: SharedArrayBuffer,
    handlers: DataPlaneEvents,
  ) {
    this.#worker = worker;
    this.#wakeFd = wakeFd;
    this.#waker = openWaker();
    this.#handlers = handlers;
    this.#counters = counters(shared);
    this.#asks = new AskQueue(shared);
    this.#answerQueue = new AnswerQueue(shared);
    this.#events = new EventQueue(shared);
    worker.onmessage = ({ data }: MessageEvent<FromWorker>) => this.#received(data);
    void this.#waitShared();
  }

  /**
   * Starts the relay's worker; `unavailable` with the reason where it cannot be had (not Linux, FFI not
   * permitted, no epoll), and the agent keeps to Deno's sockets.
   */
  static async open(
    handlers: DataPlaneEvents,
    options: { yieldMs?: number; ringBytes?: number } = {},
  ): Promise<RelayDataPlane | { unavailable: string }> {
    // Checked here too, so that no worker module is even loaded where it could not work.
    if (Deno.build.os !== "linux") return { unavailable: `epoll needs Linux, not ${Deno.build.os}` };
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
      return { unavailable: "FFI is not permitted" };
    }
    const worker = new Worker(new URL("./relay_worker.ts", import.meta.url), { type: "module" });
    const shared = sharedBuffer(options.ringBytes);
    const first = await new Promise<FromWorker>((resolve, reject) => {
      worker.onmessage = ({ data }: MessageEvent<FromWorker>) => resolve(data);
      worker.onerror = (event) => {
        event.preventDefault();
        reject(new Error(`The relay's worker failed: ${event.message}`));
      };
      worker.postMessage({ type: "start", yieldMs: options.yieldMs ?? 10, shared } satisfies ToWorker);
    }).catch((error) => {
      worker.terminate();
      throw error;
    });
    if (first.type !== "ready") {
      worker.terminate();
      return { unavailable: first.type === "unavailable" ? first.reason : `unexpected ${first.type}` };
    }
    return new RelayDataPlane(worker, first.wakeFd, shared, handlers);
  }

  /** Accepts for a service; its index (for the other calls) and the port bound. */
  async listen(service: PlaneService): Promise<{ index: number; port: number }> {
    const answer = await this.#ask({ type: "listen", service }, ["listened", "listenFailed"]);
    if (answer.type === "listenFailed") throw new Error(answer.message);
    if (answer.type !== "listened") throw new Error(`Unexpected answer ${answer.type}`);
    return { index: answer.index, port: answer.port };
  }

  /** Stops accepting for a service; its open flows go on. */
  async unlisten(index: number): Promise<void> {
    await this.#ask({ type: "unlisten", service: index }, ["unlistened"]);
  }

  endFlows(index: number): void {
    this.#post({ type: "endFlows", service: index });
  }

  setDecisions(index: number, decisions: Decisions): void {
    this.#post({ type: "decisions", service: index, decisions });
  }

  update(index: number, service: PlaneService): void {
    this.#post({ type: "update", index, service });
  }

  /**
   * The answer to a `place` request: targets in order, an index naming one of the service's backends as
   * last posted with `update`. It goes to the worker through shared memory at once; the answers of
   * one turn of the event loop share one wake. Should shared memory have no room, they go in one message.
   */
  placed(request: PlacementRequest, targets: readonly Target[], headers: Headers, firstTimeoutMs = 0): void {
    const { slot, generation } = request;
    const header = headers as Uint8Array | null | (Uint8Array | null)[];
    const written = this.#answerQueue.put(this.#posted, {
      slot,
      generation,
      // Indexes as they are (every answer of decide: manager); addresses (a handoff's) as `struct sockaddr`s.
      targets: targets.every((target) => typeof target === "number")
        ? targets as number[]
        : targets.map((target) => typeof target === "number" ? target : encodeAddress(target)),
      header,
      firstTimeoutMs,
    });
    if (!this.#wakeDue && this.#answers.length === 0) setImmediate(this.#postAnswers);
    if (written) this.#wakeDue = true;
    else {
      const plain = targets.map((target) =>
        typeof target === "number" ? target : { host: target.host, port: target.port }
      );
      this.#answers.push([slot, generation, plain, header, firstTimeoutMs]);
    }
  }

  readonly #postAnswers = () => {
    const answers = this.#answers.splice(0);
    if (this.#stopped !== null) return;
    if (answers.length > 0) this.#post({ type: "placed", answers });
    else if (this.#wakeDue) {
      this.#wakeDue = false;
      this.#waker.wake(this.#wakeFd);
    }
  };

  async counters(): Promise<PlaneCounters & { open: number }> {
    const answer = await this.#ask({ type: "counters" }, ["counters"]);
    if (answer.type !== "counters") throw new Error(`Unexpected answer ${answer.type}`);
    return { ...answer.counters, open: answer.open };
  }

  /** Ends every flow and the worker; their events and the final counters are told before it resolves. */
  stop(): Promise<void> {
    this.#stopped ??= this.#ask({ type: "stop" }, ["stopped"]).then((answer) => {
      this.#worker.terminate();
      this.#waker.close();
      // Ends the wait in #waitShared.
      Atomics.notify(this.#counters, SIGNAL);
      if (answer.type !== "stopped") throw new Error(`Unexpected answer ${answer.type}`);
      this.#handlers.flows([], answer.counters, answer.open);
    });
    return this.#stopped;
  }

  #post(message: ToWorker): void {
    // Answers go first: they may name backends by index, as of the placements posted before them.
    if (message.type !== "placed") this.#postAnswers();
    // Counted before it is posted: the worker must not block while it is on its way.
    Atomics.store(this.#counters, POSTED, ++this.#posted);
    this.#worker.postMessage(message);
    this.#wakeDue = false;
    this.#waker.wake(this.#wakeFd);
  }

  /** Takes what the worker writes to shared memory, as it signals it, until `stop`. */
  async #waitShared(): Promise<void> {
    while (this.#stopped === null) {
      const signalled = Atomics.load(this.#counters, SIGNAL);
      this.#takeShared();
      const wait = Atomics.waitAsync(this.#counters, SIGNAL, signalled);
      if (wait.async) await wait.value;
    }
  }

  /**
   * The asks and flow events in shared memory, in the order written: the asks written before a turn's
   * events are placed before those events are handled, and the events after the `flows` messages posted
   * before them.
   */
  #takeShared(): void {
    this.#placeAsks();
    for (let record = this.#events.take(this.#flowsHandled); record !== null;) {
      // Taken once the record is seen: the asks written before it are there to take too.
      this.#placeAsks();
      this.#handlers.flows(record.events, record.counters, record.open);
      record = this.#events.take(this.#flowsHandled);
    }
  }

  #placeAsks(): void {
    for (let request = this.#asks.take(); request !== null; request = this.#asks.take()) {
      this.#handlers.place(request);
    }
  }

  #ask(message: ToWorker, types: readonly string[]): Promise<FromWorker> {
    return new Promise((resolve) => {
      this.#waiting.push({ types, resolve });
      this.#post(message);
    });
  }

  #received(message: FromWorker): void {
    // What the worker wrote to shared memory before it posted this goes first.
    this.#takeShared();
    if (message.type === "place") {
      const fields = message.requests;
      for (let i = 0; i < fields.length; i += REQUEST_FIELDS) {
        this.#handlers.place({
          service: fields[i] as number,
          slot: fields[i + 1] as number,
          generation: fields[i + 2] as number,
          client: { ip: fields[i + 3] as string, port: fields[i + 4] as number },
          destination: { ip: fields[i + 5] as string, port: fields[i + 6] as number },
        });
      }
    } else if (message.type === "flows") {
      this.#handlers.flows(message.events, message.counters, message.open);
      this.#flowsHandled++;
      this.#takeShared();
    } else {
      const at = this.#waiting.findIndex((waiter) => waiter.types.includes(message.type));
      if (at >= 0) this.#waiting.splice(at, 1)[0]!.resolve(message);
    }
  }
}
