/**
 * Real etcd for tests: one member or a cluster of three, as processes of Debian's `etcd` (3.4), each with a
 * data folder of its own in a temporary folder and ports picked free outside the ephemeral range (a member
 * killed and restarted comes back on the same ports, as a real one does). Tests that need etcd skip with
 * `etcdUnavailable()`'s reason when it is not installed (`apt-get install etcd-server`).
 */
import { freeFixedPort, needs } from "./_helpers.ts";

export const ETCD = "/usr/bin/etcd";

/** Why etcd cannot be run here, or null when it can. */
export function etcdUnavailable(): string | null {
  try {
    return Deno.statSync(ETCD).isFile ? null : `${ETCD} is not a file`;
  } catch {
    return `${ETCD} is not installed (apt-get install etcd-server)`;
  }
}

interface Member {
  readonly name: string;
  readonly client: string;
  readonly listen: string;
  readonly peer: string;
  readonly dataDir: string;
  process: Deno.ChildProcess | null;
  /** Reading its stderr, until it exits. */
  reading: Promise<void>;
  log: string;
}

export interface EtcdOptions {
  /** Members of the cluster: 1 (default) or more. */
  readonly members?: number;
  /** The address members listen on and are reached at (default 127.0.0.1). */
  readonly host?: string;
  /** Where members take clients, if not only at `host` (such as 0.0.0.0, for several networks). */
  readonly listen?: string;
  /** Run every member inside this network namespace (`ip netns exec`). */
  readonly netns?: string;
}

/** An etcd cluster of real processes; `close()` kills them and removes their data. */
export class EtcdCluster {
  readonly #dir: string;
  readonly #members: Member[];
  readonly #options: EtcdOptions;

  private constructor(dir: string, members: Member[], options: EtcdOptions) {
    this.#dir = dir;
    this.#members = members;
    this.#options = options;
  }

  /** Starts the members and waits until the cluster answers a write. */
  static async start(options: EtcdOptions = {}): Promise<EtcdCluster> {
    const count = options.members ?? 1;
    const host = options.host ?? "127.0.0.1";
    const dir = await Deno.makeTempDir({ prefix: "switchyard-etcd-" });
    const members: Member[] = [];
    for (let i = 1; i <= count; i++) {
      const clientPort = freeFixedPort();
      members.push({
        name: `m${i}`,
        client: `http://${host}:${clientPort}`,
        listen: `http://${options.listen ?? host}:${clientPort}`,
        peer: `http://${host}:${freeFixedPort()}`,
        dataDir: `${dir}/m${i}`,
        process: null,
        reading: Promise.resolve(),
        log: "",
      });
    }
    const cluster = new EtcdCluster(dir, members, options);
    try {
      for (let i = 0; i < count; i++) cluster.#spawn(i);
      await cluster.ready();
    } catch (error) {
      await cluster.close();
      throw error;
    }
    return cluster;
  }

  /** Every member's client URL. */
  get endpoints(): string[] {
    return this.#members.map((member) => member.client);
  }

  /** Every member's client port. */
  get ports(): number[] {
    return this.#members.map((member) => Number(new URL(member.client).port));
  }

  /** Member `index`'s process id, while it runs. */
  pid(index: number): number | null {
    return this.#members[index]?.process?.pid ?? null;
  }

  /** Sends `signal` to member `index` (SIGKILL: waits until it is gone). */
  async kill(index: number, signal: Deno.Signal = "SIGKILL"): Promise<void> {
    const member = this.#member(index);
    const process = member.process;
    if (process === null) return;
    try {
      process.kill(signal);
    } catch {
      // already gone
    }
    if (signal === "SIGKILL" || signal === "SIGTERM") {
      await process.status;
      await member.reading;
      member.process = null;
    }
  }

  /** Starts member `index` again on its ports and data; `ready()` waits for the cluster. */
  restart(index: number): void {
    if (this.#member(index).process !== null) throw new Error(`etcd member ${index} is running`);
    this.#spawn(index);
  }

  /** Waits until a write through each running member succeeds (15 s at most). */
  async ready(timeoutMs = 15_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    for (const member of this.#members) {
      if (member.process === null) continue;
      for (;;) {
        try {
          const response = await fetch(`${member.client}/v3/kv/put`, {
            method: "POST",
            body: JSON.stringify({ key: btoa("/ready"), value: btoa(member.name) }),
            signal: AbortSignal.timeout(1_000),
          });
          const body = await response.text();
          if (response.ok) break;
          if (performance.now() > deadline) throw new Error(`etcd ${member.name} answered: ${body}`);
        } catch (error) {
          if (performance.now() > deadline) {
            throw new Error(`etcd ${member.name} did not answer within ${timeoutMs} ms:\n${member.log}`, {
              cause: error,
            });
          }
        }
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  }

  async close(): Promise<void> {
    for (let i = 0; i < this.#members.length; i++) await this.kill(i);
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }

  #member(index: number): Member {
    const member = this.#members[index];
    if (!member) throw new RangeError(`No etcd member ${index} of ${this.#members.length}`);
    return member;
  }

  #spawn(index: number): void {
    const member = this.#member(index);
    const initial = this.#members.map((m) => `${m.name}=${m.peer}`).join(",");
    const args = [
      "--name",
      member.name,
      "--data-dir",
      member.dataDir,
      "--listen-client-urls",
      member.listen,
      "--advertise-client-urls",
      member.client,
      "--listen-peer-urls",
      member.peer,
      "--initial-advertise-peer-urls",
      member.peer,
      "--initial-cluster",
      initial,
      "--initial-cluster-state",
      "new",
      "--initial-cluster-token",
      `switchyard-test-${Deno.pid}`,
      "--heartbeat-interval",
      "100",
      "--election-timeout",
      "1000",
      "--logger",
      "zap",
      "--log-level",
      "warn",
    ];
    const netns = this.#options.netns;
    const process = new Deno.Command(netns ? "ip" : ETCD, {
      args: netns ? ["netns", "exec", netns, ETCD, ...args] : args,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    member.process = process;
    member.log = "";
    member.reading = (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of process.stderr) {
        member.log = (member.log + decoder.decode(chunk, { stream: true })).slice(-8_000);
      }
    })().catch(() => {});
  }
}

/**
 * A test with a one-member etcd of its own, started before `fn` and stopped after; ignored, saying why in
 * its name, where etcd is not installed. Run with the op and resource sanitizers.
 */
export function etcdTest(name: string, fn: (etcd: EtcdCluster) => Promise<void>): void {
  Deno.test({
    ...needs(name, etcdUnavailable()),
    sanitizeOps: true,
    sanitizeResources: true,
    fn: async () => {
      const etcd = await EtcdCluster.start();
      try {
        await fn(etcd);
      } finally {
        await etcd.close();
      }
    },
  });
}
