/**
 * Helpers of the end-to-end tests: start switchyard's roles as real processes (`deno run main.ts …`), read
 * their JSON log lines, and talk TCP to them. Every process is killed and awaited by the test that made it.
 */
import { fileURLToPath } from "node:url";
import { writeAll } from "../cluster/write_all.ts";

export const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));
const decoder = new TextDecoder();

export interface LogLine {
  readonly message: string;
  readonly level: string;
  readonly properties: Record<string, unknown>;
}

/** A running `switchyard` sub-command with its stdout and its JSON log lines collected as they come. */
export class Proc {
  readonly child: Deno.ChildProcess;
  readonly logs: LogLine[] = [];
  stdout = "";
  stderr = "";
  readonly #reading: Promise<void>;
  #waiters: Array<() => void> = [];

  /**
   * With `netns`, the process runs inside that network namespace (`ip netns exec`, which execs it); with
   * `prefix`, under that command (such as `strace … --`).
   */
  constructor(
    args: string[],
    options: { env?: Record<string, string>; cwd?: string; netns?: string; prefix?: string[] } = {},
  ) {
    const wrapper = [
      ...(options.netns ? ["ip", "netns", "exec", options.netns] : []),
      ...(options.prefix ?? []),
    ];
    this.child = new Deno.Command(wrapper[0] ?? Deno.execPath(), {
      args: [
        ...wrapper.slice(1),
        ...(wrapper.length > 0 ? [Deno.execPath()] : []),
        "run",
        "--allow-all",
        "--unstable-net",
        MAIN,
        ...args,
      ],
      env: { NO_COLOR: "1", ...options.env },
      ...(options.cwd ? { cwd: options.cwd } : {}),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#reading = Promise.all([
      this.#read(this.child.stdout, "stdout"),
      this.#read(this.child.stderr, "stderr"),
    ])
      .then(() => {});
  }

  async #read(stream: ReadableStream<Uint8Array>, which: "stdout" | "stderr"): Promise<void> {
    let pending = "";
    for await (const chunk of stream) {
      const text = decoder.decode(chunk, { stream: true });
      if (which === "stdout") {
        this.stdout += text;
      } else {
        this.stderr += text;
        pending += text;
        const lines = pending.split("\n");
        pending = lines.pop() ?? "";
        for (const line of lines) {
          try {
            const record = JSON.parse(line) as LogLine;
            if (typeof record.message === "string") this.logs.push(record);
          } catch {
            // not a JSON log line
          }
        }
      }
      for (const wake of this.#waiters.splice(0)) wake();
    }
  }

  /** Waits until a log line passes `match`, and returns it. */
  async waitForLog(match: (line: LogLine) => boolean, timeoutMs = 15_000): Promise<LogLine> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const found = this.logs.find(match);
      if (found) return found;
      if (performance.now() > deadline) {
        throw new Error(
          `No matching log line within ${timeoutMs} ms; stderr so far:\n${this.stderr.slice(-4000)}`,
        );
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Waits until stdout contains `text`. */
  async waitForStdout(text: string, timeoutMs = 15_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (!this.stdout.includes(text)) {
      if (performance.now() > deadline) {
        throw new Error(
          `"${text}" not printed within ${timeoutMs} ms; stdout:\n${this.stdout}\nstderr:\n${
            this.stderr.slice(-4000)
          }`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  kill(signal: Deno.Signal = "SIGTERM"): void {
    try {
      this.child.kill(signal);
    } catch {
      // already exited
    }
  }

  /** Waits for exit and for both output streams to end. */
  async status(): Promise<Deno.CommandStatus> {
    const status = await this.child.status;
    await this.#reading;
    return status;
  }

  /** Kills (SIGKILL unless it already exited) and waits. */
  async stop(): Promise<Deno.CommandStatus> {
    this.kill("SIGKILL");
    return await this.status();
  }
}

/** Runs a sub-command to its end and returns its exit code and output. */
export async function run(args: string[], env: Record<string, string> = {}) {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--unstable-net", MAIN, ...args],
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
  }).output();
  return { code: output.code, stdout: decoder.decode(output.stdout), stderr: decoder.decode(output.stderr) };
}

/**
 * Starts a manager with `yaml` (on port 0, unless `extra` flags say otherwise) and returns it with its admin
 * and cluster addresses.
 */
export async function startManagerProcess(dir: string, yaml: string, extra: string[] = []) {
  const config = `${dir}/switchyard.yaml`;
  await Deno.writeTextFile(config, yaml);
  const proc = new Proc([
    "manager",
    "--config",
    config,
    "--log-format",
    "json",
    "--log-level",
    "debug",
    ...extra,
  ]);
  const ready = await proc.waitForLog((line) => line.message.startsWith("Manager serving"));
  const admin = String(ready.properties.admin);
  const cluster = String(ready.properties.cluster);
  return { proc, admin, cluster, config };
}

/** Starts an agent process and waits until it listens for `service`; returns the service's bound port. */
export async function startAgentProcess(
  options: {
    manager: string;
    tokenFile: string;
    id: string;
    service: string;
    extra?: string[];
    /** A command the agent runs under (`Proc`'s `prefix`). */
    prefix?: string[];
  },
) {
  const proc = new Proc([
    "agent",
    "--manager",
    options.manager,
    "--token-file",
    options.tokenFile,
    "--id",
    options.id,
    "--log-format",
    "json",
    "--log-level",
    "debug",
    ...(options.extra ?? []),
  ], options.prefix ? { prefix: options.prefix } : {});
  const line = await proc.waitForLog((l) =>
    l.message.startsWith("Service") && l.properties.service === options.service
  );
  const port = Number(String(line.properties.bound).split(":").pop());
  return { proc, port };
}

/** Reads from `conn` until end of stream. */
export async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(64 * 1024);
  let total = 0;
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) break;
    chunks.push(buffer.slice(0, n));
    total += n;
  }
  const all = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    all.set(chunk, offset);
    offset += chunk.length;
  }
  return all;
}

/** The one `writeAll` (`cluster/write_all.ts`), for the tests that write to sockets. */
export { writeAll };

export function randomBytes(length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let offset = 0; offset < length; offset += 65536) {
    crypto.getRandomValues(bytes.subarray(offset, Math.min(length, offset + 65536)));
  }
  return bytes;
}

/** One HTTP/1.0 request over a fresh TCP connection; returns the body. */
export async function httpGet(port: number, host = "127.0.0.1"): Promise<string> {
  const conn = await Deno.connect({ hostname: host, port });
  try {
    await writeAll(
      conn,
      new TextEncoder().encode(`GET / HTTP/1.0\r\nHost: ${host}\r\nConnection: close\r\n\r\n`),
    );
    const text = decoder.decode(await readAll(conn));
    return text.slice(text.indexOf("\r\n\r\n") + 4);
  } finally {
    conn.close();
  }
}

/** Polls `check` until it returns true, or fails after `timeoutMs`. */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
  what = "condition",
) {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * A loopback port that takes no connection: a listener that never accepts, its accept queue filled, so
 * the kernel drops further SYNs and a connect to it hangs until the client gives up. `close` (or `using`)
 * ends it.
 */
export async function blackhole(): Promise<{ port: number; close(): void; [Symbol.dispose](): void }> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const queued: Deno.Conn[] = [];
  for (;;) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 200);
    const conn = await Deno.connect({ hostname: "127.0.0.1", port, signal: abort.signal }).catch((error) => {
      if (abort.signal.aborted) return null;
      throw error;
    }).finally(() => clearTimeout(timer));
    if (conn === null) {
      const close = () => {
        for (const c of queued) c.close();
        listener.close();
      };
      return { port, close, [Symbol.dispose]: close };
    }
    queued.push(conn);
    if (queued.length > 10_000) throw new Error("the accept queue never filled");
  }
}

/**
 * A port outside the ephemeral range that nothing listens on now, for a process that cannot bind port 0
 * and report it (HAProxy) or must restart on the same port (the manager).
 */
export function freeFixedPort(): number {
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 10_000);
    try {
      const probe = Deno.listen({ hostname: "127.0.0.1", port });
      probe.close();
      return port;
    } catch {
      // taken; try another
    }
  }
  throw new Error("No free port found between 20000 and 30000");
}

/** Waits until something accepts TCP connections on `port` (10 s at most); `exited` ends the wait early. */
export async function waitForPort(
  port: number,
  options: { what: string; exited?: () => boolean },
): Promise<void> {
  const deadline = performance.now() + 10_000;
  for (;;) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch (error) {
      if (options.exited?.()) throw new Error(`${options.what} exited before listening on port ${port}`);
      if (performance.now() > deadline) {
        throw new Error(`${options.what} did not listen on port ${port} within 10 s`, { cause: error });
      }
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }
}
