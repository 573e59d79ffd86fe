/**
 * A framed message channel over one TCP (or TLS) connection: writes are queued so frames never
 * interleave, reads yield whole validated messages. Control path only; the data path never uses it.
 */
import { FrameDecoder, MAX_FRAME_BYTES } from "./protocol.ts";

export class Channel<In, Out> {
  readonly #conn: Deno.Conn;
  readonly #parse: (body: Uint8Array) => In;
  readonly #encode: (message: Out) => Uint8Array;
  readonly #decoder: FrameDecoder;
  #writing: Promise<void> = Promise.resolve();
  #closed = false;

  constructor(
    conn: Deno.Conn,
    codec: { parse: (body: Uint8Array) => In; encode: (message: Out) => Uint8Array },
    options: { maxFrameBytes?: number } = {},
  ) {
    this.#conn = conn;
    // Decisions are small frames that must not wait for Nagle's algorithm and delayed ACKs (~40 ms).
    if ("setNoDelay" in conn && typeof conn.setNoDelay === "function") {
      (conn as Deno.TcpConn).setNoDelay(true);
    }
    this.#parse = codec.parse;
    this.#encode = codec.encode;
    this.#decoder = new FrameDecoder(options.maxFrameBytes ?? MAX_FRAME_BYTES);
  }

  get closed(): boolean {
    return this.#closed;
  }

  get remoteAddr(): Deno.Addr {
    return this.#conn.remoteAddr;
  }

  /** Queues one message; resolves when it is written, rejects if the connection failed. */
  send(message: Out): Promise<void> {
    const frame = this.#encode(message);
    const write = this.#writing.then(async () => {
      let offset = 0;
      while (offset < frame.length) offset += await this.#conn.write(frame.subarray(offset));
    });
    this.#writing = write.catch(() => {});
    return write;
  }

  /** Yields each message until the peer closes; throws `ProtocolError` on a bad frame or message. */
  async *messages(): AsyncGenerator<In> {
    const buffer = new Uint8Array(64 * 1024);
    while (!this.#closed) {
      let n: number | null;
      try {
        n = await this.#conn.read(buffer);
      } catch (error) {
        if (this.#closed) return;
        throw error;
      }
      if (n === null) return;
      for (const body of this.#decoder.push(buffer.subarray(0, n))) {
        yield this.#parse(body);
      }
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch {
      // already closed by the peer
    }
  }
}
