/**
 * The agent's side of the io_uring relay: the worker it runs in, the messages to it (`messages.ts`), and
 * the eventfd that makes the worker take each message at once.
 */
import { setImmediate } from "node:timers";
import {
  type FromWorker,
  type Placed,
  REQUEST_FIELDS,
  type ServiceMessage,
  type ToWorker,
} from "./messages.ts";
import type { Placement } from "./placement.ts";
import { openWaker, type PlacementRequest, type RelayCounters, type SocketAddress } from "./relay.ts";

export interface DataPlaneHandlers {
  /** A flow the worker cannot place alone; answer with `placed`. */
  place(request: PlacementRequest): void;
  /**
   * Flow events, six numbers each: kind (`FlowEvent`), service, slot, generation, choice, errno; and the
   * relay's counters and open flows as of then.
   */
  flows(events: number[], counters: RelayCounters, open: number): void;
}

export class RelayDataPlane {
  readonly #worker: Worker;
  readonly #waker: { wake(wakeFd: number): void; close(): void };
  readonly #wakeFd: number;
  readonly #handlers: DataPlaneHandlers;
  /** Answers awaited, in the order the worker gives them. */
  readonly #waiting: Array<{ types: readonly string[]; resolve: (message: FromWorker) => void }> = [];
  #stopped: Promise<{ counters: RelayCounters; open: number }> | null = null;
  /** Answers not yet posted (`placed`). */
  readonly #answers: Placed[] = [];

  private constructor(worker: Worker, wakeFd: number, handlers: DataPlaneHandlers) {
    this.#worker = worker;
    this.#wakeFd = wakeFd;
    this.#waker = openWaker();
    this.#handlers = handlers;
    worker.onmessage = ({ data }: MessageEvent<FromWorker>) => this.#received(data);
  }

  /**
   * Starts the relay's worker; null (with the reason) where io_uring cannot be had, and the agent keeps
   * to Deno's sockets.
   */
  static async open(
    handlers: DataPlaneHandlers,
    options: { yieldMs?: number } = {},
  ): Promise<RelayDataPlane | { unavailable: string }> {
    // Checked here too, so that no worker module is even loaded where it could not work.
    if (Deno.build.os !== "linux") return { unavailable: `io_uring needs Linux, not ${Deno.build.os}` };
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
      return { unavailable: "FFI is not permitted" };
    }
    const worker = new Worker(new URL("./relay_worker.ts", import.meta.url), { type: "module" });
    const first = await new Promise<FromWorker>((resolve, reject) => {
      worker.onmessage = ({ data }: MessageEvent<FromWorker>) => resolve(data);
      worker.onerror = (event) => {
        event.preventDefault();
        reject(new Error(`The relay's worker failed: ${event.message}`));
      };
      worker.postMessage({ type: "start", yieldMs: options.yieldMs ?? 10 } satisfies ToWorker);
    }).catch((error) => {
      worker.terminate();
      throw error;
    });
    if (first.type !== "ready") {
      worker.terminate();
      return { unavailable: first.type === "unavailable" ? first.reason : `unexpected ${first.type}` };
    }
    return new RelayDataPlane(worker, first.wakeFd, handlers);
  }

  /** Accepts for a service; its index (for the other calls) and the port bound. */
  async listen(service: ServiceMessage): Promise<{ index: number; port: number }> {
    const answer = await this.#ask({ type: "listen", service }, ["listened", "listenFailed"]);
    if (answer.type === "listenFailed") throw new Error(answer.message);
    if (answer.type !== "listened") throw new Error(`Unexpected answer ${answer.type}`);
    return { index: answer.index, port: answer.port };
  }

  /** Stops accepting for a service; its open flows go on. */
  async unlisten(index: number): Promise<void> {
    await this.#ask({ type: "unlisten", service: index }, ["unlistened"]);
  }

  setPlacement(index: number, placement: Placement): void {
    this.#post({ type: "placement", service: index, placement });
  }

  /**
   * The answer to a `place` request: targets in order, an index naming one of the service's backends as
   * last posted with `setPlacement`. The answers given in one turn of the event loop go to the worker in
   * one message, with one wake.
   */
  placed(
    request: PlacementRequest,
    targets: (SocketAddress | number)[],
    header: Uint8Array | null | (Uint8Array | null)[],
    firstTimeoutMs = 0,
  ): void {
    if (this.#answers.length === 0) setImmediate(this.#postAnswers);
    this.#answers.push([request.slot, request.generation, targets, header, firstTimeoutMs]);
  }

  readonly #postAnswers = () => {
    const answers = this.#answers.splice(0);
    if (answers.length > 0 && this.#stopped === null) this.#post({ type: "placed", answers });
  };

  async counters(): Promise<RelayCounters & { open: number }> {
    const answer = await this.#ask({ type: "counters" }, ["counters"]);
    if (answer.type !== "counters") throw new Error(`Unexpected answer ${answer.type}`);
    return { ...answer.counters, open: answer.open };
  }

  /** Ends every flow and the worker; what it counted, and the flows left open (0). */
  stop(): Promise<{ counters: RelayCounters; open: number }> {
    this.#stopped ??= this.#ask({ type: "stop" }, ["stopped"]).then((answer) => {
      this.#worker.terminate();
      this.#waker.close();
      if (answer.type !== "stopped") throw new Error(`Unexpected answer ${answer.type}`);
      return { counters: answer.counters, open: answer.open };
    });
    return this.#stopped;
  }

  #post(message: ToWorker): void {
    // Answers go first: they may name backends by index, as of the placements posted before them.
    if (message.type !== "placed") this.#postAnswers();
    this.#worker.postMessage(message);
    this.#waker.wake(this.#wakeFd);
  }

  #ask(message: ToWorker, types: readonly string[]): Promise<FromWorker> {
    return new Promise((resolve) => {
      this.#waiting.push({ types, resolve });
      this.#post(message);
    });
  }

  #received(message: FromWorker): void {
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
    } else if (message.type === "flows") this.#handlers.flows(message.events, message.counters, message.open);
    else {
      const at = this.#waiting.findIndex((waiter) => waiter.types.includes(message.type));
      if (at >= 0) this.#waiting.splice(at, 1)[0]!.resolve(message);
    }
  }
}
