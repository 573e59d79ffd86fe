/**
 * The processes of the bench and the soak: every child is spawned through a `Processes` registry that
 * keeps its output (the tests' `Proc`), and is stopped, with the processes it started in turn, on every way out (normal end,
 * error, Ctrl-C). Also the small facts about this machine the bench needs: where a tool is, the open-file
 * limit, a process's resident memory, a free loopback port.
 */
import { Proc } from "../tests/_helpers.ts";

const decoder = new TextDecoder();

/** How long a stopped child gets between SIGTERM and SIGKILL. */
const STOP_GRACE_MS = 3_000;
/** How long a child is waited for to log or print what is expected (starting many agents takes a while). */
const WAIT_MS = 20_000;

export interface SpawnOptions {
  readonly env?: Record<string, string>;
  readonly cwd?: string;
}

/** Every child of one run, so all of them are stopped however the run ends. */
export class Processes {
  readonly #procs = new Set<Proc>();
  #closed = false;

  /** Whether `stopAll` was called: nothing may be started any more. */
  get closed(): boolean {
    return this.#closed;
  }

  spawn(name: string, command: string, args: string[], options: SpawnOptions = {}): Proc {
    if (this.#closed) throw new Error(`Cannot start ${name}: the run is stopping`);
    const proc = new Proc(args, { ...options, name, command, bounded: true, waitMs: WAIT_MS });
    this.#procs.add(proc);
    return proc;
  }

  async stop(proc: Proc): Promise<void> {
    await proc.stop({ graceMs: STOP_GRACE_MS });
    this.#procs.delete(proc);
  }

  async stopAll(): Promise<void> {
    this.#closed = true;
    await Promise.all([...this.#procs].map((proc) => this.stop(proc)));
  }
}

/**
 * Runs a command to its end, killed after `timeoutMs`; returns its exit code and output. For the load
 * tools, whose every run must be bounded in time.
 */
export async function runBounded(
  command: string,
  args: string[],
  options: { timeoutMs: number },
): Promise<{ code: number; stdout: string; stderr: string; timedOut: boolean }> {
  if (stoppingBoundedRuns) throw new Error(`Cannot run ${command}: the run is stopping`);
  const child = new Deno.Command(command, { args, stdin: "null", stdout: "piped", stderr: "piped" }).spawn();
  boundedRuns.add(child);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    killQuietly(child);
  }, options.timeoutMs);
  try {
    const output = await child.output();
    return {
      code: output.code,
      stdout: decoder.decode(output.stdout),
      stderr: decoder.decode(output.stderr),
      timedOut,
    };
  } finally {
    clearTimeout(timer);
    boundedRuns.delete(child);
  }
}

/** The `runBounded` commands running now. */
const boundedRuns = new Set<Deno.ChildProcess>();

let stoppingBoundedRuns = false;

/** Kills every `runBounded` command still running, and refuses new ones (on Ctrl-C or an error). */
export function killBoundedRuns(): void {
  stoppingBoundedRuns = true;
  for (const child of boundedRuns) killQuietly(child);
}

function killQuietly(child: Deno.ChildProcess): void {
  try {
    child.kill("SIGKILL");
  } catch {
    // already exited
  }
}

/** Where an executable is, searching `PATH` and the sbin folders (haproxy and nginx live there). */
export function findExecutable(name: string): string | null {
  const dirs = [...(Deno.env.get("PATH") ?? "").split(":"), "/usr/local/sbin", "/usr/sbin", "/sbin"];
  for (const dir of dirs) {
    if (dir === "") continue;
    try {
      const info = Deno.statSync(`${dir}/${name}`);
      if (info.isFile && ((info.mode ?? 0o111) & 0o111) !== 0) return `${dir}/${name}`;
    } catch {
      // not here
    }
  }
  return null;
}

/** The soft and hard open-file limits of this process. */
export function openFileLimit(): { soft: number; hard: number } {
  const limits = Deno.readTextFileSync("/proc/self/limits");
  const match = limits.match(/^Max open files\s+(\S+)\s+(\S+)/m);
  const parse = (text: string | undefined) => text === "unlimited" ? Infinity : Number(text);
  return { soft: parse(match?.[1]), hard: parse(match?.[2]) };
}

/**
 * Makes sure this process may open `wanted` files: when the soft limit is lower, runs this same script
 * again under `bash` with the limit raised (to 65536, or else to the hard limit) and exits with its code.
 * Children inherit the raised limit.
 */
export async function ensureOpenFileLimit(wanted: number): Promise<void> {
  const { soft, hard } = openFileLimit();
  if (soft >= wanted || Deno.env.get("SWITCHYARD_BENCH_RAISED_LIMIT") === "1") return;
  // root may raise the hard limit too; anyone else only up to it
  if (soft >= hard && Deno.uid() !== 0) return;
  const script = new URL(Deno.mainModule).pathname;
  const child = new Deno.Command("bash", {
    args: [
      "-c",
      'ulimit -n 65536 2>/dev/null || ulimit -Sn "$(ulimit -Hn)"; exec "$@"',
      "bash",
      Deno.execPath(),
      "run",
      "--allow-all",
      script,
      ...Deno.args,
    ],
    env: { SWITCHYARD_BENCH_RAISED_LIMIT: "1" },
    stdin: "inherit",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  // Ctrl-C reaches the child too (same process group); this process only waits for it.
  const ignore = () => {};
  Deno.addSignalListener("SIGINT", ignore);
  const status = await child.status;
  Deno.exit(status.code);
}

/** The resident memory of a process in KiB (`VmRSS`), or null when it is gone. */
export function rssKiB(pid: number): number | null {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const match = status.match(/^VmRSS:\s+(\d+)\s+kB/m);
    return match ? Number(match[1]) : null;
  } catch {
    return null;
  }
}

/**
 * CPU time a process has used so far, user and system, all its threads, in milliseconds; null when it is
 * gone. From /proc/<pid>/stat, whose times are in clock ticks of 1/100 s (USER_HZ on Linux).
 */
export function cpuMs(pid: number): number | null {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // The command name (field 2) may hold spaces; the fields after it are counted from its closing ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    return Number.isFinite(utime) && Number.isFinite(stime) ? (utime + stime) * 10 : null;
  } catch {
    return null;
  }
}

const taken = new Set<number>();

/**
 * A loopback port that was free a moment ago, for the peers (haproxy, nginx) whose config files need a
 * fixed port: bind port 0, read it, close. Racy, so acceptable in a benchmark, never in a test.
 */
export function freePort(): number {
  for (;;) {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (listener.addr as Deno.NetAddr).port;
    listener.close();
    if (!taken.has(port)) {
      taken.add(port);
      return port;
    }
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A random token of `bytes` bytes, in hex. */
export function randomHex(bytes = 16): string {
  return [...crypto.getRandomValues(new Uint8Array(bytes))].map((b) => b.toString(16).padStart(2, "0")).join(
    "",
  );
}

/**
 * A run's cleanup (stop its processes, remove its folder), done once: at the first SIGINT or SIGTERM,
 * which then exits with 130, or when the returned function is called, which also stops listening.
 */
export function cleanupOnInterrupt(what: string, cleanup: () => Promise<void>): () => Promise<void> {
  let cleaned: Promise<void> | null = null;
  const once = () => cleaned ??= cleanup();
  const interrupted = (signal: Deno.Signal) => async () => {
    console.error(`\n${signal}: stopping every process of the ${what}`);
    await once();
    Deno.exit(130);
  };
  const onInt = interrupted("SIGINT");
  const onTerm = interrupted("SIGTERM");
  Deno.addSignalListener("SIGINT", onInt);
  Deno.addSignalListener("SIGTERM", onTerm);
  return async () => {
    await once();
    Deno.removeSignalListener("SIGINT", onInt);
    Deno.removeSignalListener("SIGTERM", onTerm);
  };
}
