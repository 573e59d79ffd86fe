/**
 * Helpers of the end-to-end tests: start switchyard's roles as real processes (`deno run main.ts …`), read
 * their JSON log lines, and talk TCP to them. Every process is killed and awaited by the test that made it.
 */
import { fileURLToPath } from "node:url";
import { writeAll } from "../cluster/write_all.ts";

export const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));
const decoder = new TextDecoder();

/** One JSON log line of a switchyard role. */
export interface LogLine {
  readonly message: string;
  readonly level: string;
  readonly properties: Record<string, unknown>;
}

export interface ProcOptions {
  /** The program to run with `args` as they are; by default a switchyard role (`deno run main.ts …`). */
  readonly command?: string;
  /** What errors call the process; by default the role (`args[0]`) or the command. */
  readonly name?: string;
  readonly env?: Record<string, string>;
  readonly cwd?: string;
  /** Run inside this network namespace (`ip netns exec`, which execs it). */
  readonly netns?: string;
  /** Run under this command (such as `strace … --`). */
  readonly prefix?: readonly string[];
  /**
   * Keep at most 10,000 log lines, 1,000 problems and 1 MB of each stream, for processes that run for
   * hours (the soak); by default everything is kept.
   */
  readonly bounded?: boolean;
  /** How long `waitForLog` and `waitForStdout` wait unless told; 15 s by default. */
  readonly waitMs?: number;
}

/** How many of a process's last output lines `tail` keeps. */
const TAIL_LINES = 200;

/**
 * A running process with its output collected as it comes: stdout and stderr as text, the last lines of
 * both (`tail`), and the JSON log lines a switchyard role writes on stderr (`logs`, and those at warning
 * level or worse in `problems`). Used by the end-to-end tests and the bench alike; `stop()` also stops the
 * processes it started.
 */
export class Proc {
  readonly name: string;
  readonly pid: number;
  readonly logs: LogLine[] = [];
  /** Log lines at warning level or worse. */
  readonly problems: LogLine[] = [];
  /** The last lines of stdout and stderr together. */
  readonly tail: string[] = [];
  stdout = "";
  stderr = "";
  /** How it exited; null while it runs. */
  exit: Deno.CommandStatus | null = null;
  readonly exited: Promise<Deno.CommandStatus>;
  readonly #child: Deno.ChildProcess;
  readonly #reading: Promise<void>;
  readonly #bounded: boolean;
  readonly #waitMs: number;
  #waiters: Array<() => void> = [];

  constructor(args: string[], options: ProcOptions = {}) {
    const program = options.command === undefined
      ? [Deno.execPath(), "run", "--allow-all", "--unstable-net", MAIN, ...args]
      : [options.command, ...args];
    const command = [
      ...(options.netns ? ["ip", "netns", "exec", options.netns] : []),
      ...(options.prefix ?? []),
      ...program,
    ];
    this.name = options.name ?? (options.command === undefined ? args[0] ?? "switchyard" : options.command);
    this.#bounded = options.bounded ?? false;
    this.#waitMs = options.waitMs ?? 15_000;
    this.#child = new Deno.Command(command[0] as string, {
      args: command.slice(1),
      env: { NO_COLOR: "1", ...options.env },
      ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.pid = this.#child.pid;
    this.#reading = Promise.all([
      this.#read(this.#child.stdout, "stdout"),
      this.#read(this.#child.stderr, "stderr"),
    ])
      .then(() => {});
    this.exited = this.#child.status.then((status) => {
      this.exit = status;
      this.#wake();
      return status;
    });
  }

  get running(): boolean {
    return this.exit === null;
  }

  async #read(stream: ReadableStream<Uint8Array>, which: "stdout" | "stderr"): Promise<void> {
    const decoder = new TextDecoder();
    let pending = "";
    for await (const chunk of stream) {
      const text = decoder.decode(chunk, { stream: true });
      if (!this.#bounded || this[which].length < 1_000_000) this[which] += text;
      pending += text;
      const lines = pending.split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) this.#line(line, which);
      this.#wake();
    }
    if (pending !== "") this.#line(pending, which);
  }

  #line(line: string, which: "stdout" | "stderr"): void {
    this.tail.push(line);
    if (this.tail.length > TAIL_LINES) this.tail.shift();
    if (which !== "stderr" || !line.startsWith("{")) return;
    try {
      const record = JSON.parse(line) as LogLine;
      if (typeof record.message !== "string") return;
      if (!this.#bounded || this.logs.length < 10_000) this.logs.push(record);
      if (
        /^(warn|warning|error|fatal)$/i.test(record.level) && (!this.#bounded || this.problems.length < 1_000)
      ) {
        this.problems.push(record);
      }
    } catch {
      // not a JSON log line
    }
  }

  #wake(): void {
    for (const wake of this.#waiters.splice(0)) wake();
  }

  /** Resolves at the next output or exit, or after 100 ms. */
  #nextOutput(): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 100);
      this.#waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Polls `found` at every output until it answers; fails once the process has exited or after `timeoutMs`. */
  async #waitFor<T>(found: () => T | null, what: string, timeoutMs: number): Promise<T> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const result = found();
      if (result !== null) return result;
      if (this.exit !== null) {
        // Its last output may still be on the way (unless a process it started holds the pipes open).
        let timer: ReturnType<typeof setTimeout> | undefined;
        const late = new Promise((resolve) =>
          timer = setTimeout(resolve, Math.max(0, deadline - performance.now()))
        );
        await Promise.race([this.#reading, late]);
        clearTimeout(timer);
        const last = found();
        if (last !== null) return last;
        throw new Error(`${this.name} exited with code ${this.exit.code} before ${what}:\n${this.#recent()}`);
      }
      if (performance.now() > deadline) {
        throw new Error(`${this.name} did not show ${what} within ${timeoutMs} ms:\n${this.#recent()}`);
      }
      await this.#nextOutput();
    }
  }

  #recent(): string {
    return this.tail.slice(-30).join("\n");
  }

  /** Waits until a log line passes `match`, and returns it. */
  waitForLog(match: (line: LogLine) => boolean, timeoutMs = this.#waitMs): Promise<LogLine> {
    return this.#waitFor(() => this.logs.find(match) ?? null, "the log line awaited", timeoutMs);
  }

  /** Waits until stdout contains `pattern` (text or a regular expression), and returns the match. */
  waitForStdout(pattern: string | RegExp, timeoutMs = this.#waitMs): Promise<RegExpMatchArray> {
    const regexp = typeof pattern === "string"
      ? new RegExp(pattern.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
      : pattern;
    return this.#waitFor(() => this.stdout.match(regexp), `${pattern} on stdout`, timeoutMs);
  }

  kill(signal: Deno.Signal = "SIGTERM"): void {
    signalQuietly(this.pid, signal);
  }

  /** Waits for exit and for both output streams to end. */
  async status(): Promise<Deno.CommandStatus> {
    const status = await this.exited;
    await this.#reading;
    return status;
  }

  /**
   * Stops the process and every process it started, and waits: SIGKILL at once, or with `graceMs`,
   * SIGTERM and SIGKILL after that long. The descendants are looked up first, since a killed parent's
   * children are re-parented and lost from view.
   */
  async stop(options: { graceMs?: number } = {}): Promise<Deno.CommandStatus> {
    const { graceMs = 0 } = options;
    if (this.exit === null) {
      const family = [this.pid, ...descendantsOf(this.pid)];
      const killAll = () => {
        for (const pid of family) signalQuietly(pid, "SIGKILL");
      };
      let timer: ReturnType<typeof setTimeout> | undefined;
      if (graceMs > 0) {
        this.kill("SIGTERM");
        timer = setTimeout(killAll, graceMs);
      } else {
        killAll();
      }
      await this.exited;
      clearTimeout(timer);
      for (const pid of family.slice(1)) {
        if (isAlive(pid)) signalQuietly(pid, "SIGKILL");
      }
    }
    return await this.status();
  }
}

function signalQuietly(pid: number, signal: Deno.Signal): void {
  try {
    Deno.kill(pid, signal);
  } catch {
    // already gone
  }
}

function isAlive(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/** The pids of the processes `pid` started, and theirs, at this moment (from /proc). */
export function descendantsOf(pid: number): number[] {
  const parents = new Map<number, number>();
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
      // The command name (field 2) may hold spaces; the fields after it are counted from its closing ")".
      parents.set(Number(entry.name), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch {
      // exited meanwhile
    }
  }
  const found: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const parent = queue.shift() as number;
    for (const [child, ppid] of parents) {
      if (ppid === parent) {
        found.push(child);
        queue.push(child);
      }
    }
  }
  return found;
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
  return { proc, port: await servicePort(proc, options.service) };
}

/** The port an agent listens on for `service`, from its log line saying so. */
export async function servicePort(agent: Proc, service: string): Promise<number> {
  const line = await agent.waitForLog((l) =>
    l.message.startsWith("Service") && l.properties.service === service
  );
  return Number(String(line.properties.bound).split(":").pop());
}

/** Waits until every one of `agents` has logged that the claims are split among `count` agents. */
export async function claimsSplit(
  agents: readonly Proc[],
  count: number,
  options: { timeoutMs?: number; what?: string } = {},
): Promise<void> {
  const { timeoutMs = 10_000, what = `every agent to know the claims of ${count}` } = options;
  await eventually(
    () =>
      agents.every((agent) => agent.logs.some((l) => l.message.startsWith(`Claims split among ${count}`))),
    timeoutMs,
    what,
  );
}

/** The address of an agent's `--admin` port (`/healthz`, `/metrics`), from its log line saying so. */
export async function agentAdmin(agent: Proc): Promise<string> {
  const line = await agent.waitForLog((l) => l.message.includes("serves /metrics"));
  return String(line.properties.admin);
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

/**
 * The name and `ignore` of a test that needs what this machine may lack (etcd, root for network
 * namespaces): with `unavailable` saying what is missing, the test is ignored and its name says why.
 */
export function needs(name: string, unavailable: string | null): { name: string; ignore: boolean } {
  return {
    name: unavailable === null ? name : `${name} (ignored: ${unavailable})`,
    ignore: unavailable !== null,
  };
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

/**
 * Waits until something accepts TCP connections on 127.0.0.1 `port` (10 s at most unless told); `exited`
 * ends the wait early.
 */
export async function waitForPort(
  port: number,
  options: { what: string; exited?: () => boolean; timeoutMs?: number },
): Promise<void> {
  const { timeoutMs = 10_000 } = options;
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch (error) {
      if (options.exited?.()) throw new Error(`${options.what} exited before listening on port ${port}`);
      if (performance.now() > deadline) {
        throw new Error(`${options.what} did not listen on port ${port} within ${timeoutMs} ms`, {
          cause: error,
        });
      }
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }
}
