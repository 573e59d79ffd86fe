/**
 * Several managers for end-to-end tests: real etcd (`_etcd.ts`), managers as processes that share one config
 * with `manager.ha`, each on ports of its own (`--admin`, `--cluster`), and agents given every manager's
 * cluster port. Managers' ports are picked free outside the ephemeral range, so that a killed manager
 * restarts where the agents look for it.
 */
import { ADMIN_TOKEN, CLUSTER_TOKEN, testConfig, testService } from "./_config.ts";
import { type AgentProc } from "./_cluster.ts";
import { EtcdCluster } from "./_etcd.ts";
import { eventually, freeFixedPort, type Proc, startAgentProcess, startManagerProcess } from "./_helpers.ts";

export interface HaManager {
  readonly index: number;
  proc: Proc;
  readonly admin: string;
  readonly cluster: string;
  /** Its id among managers (host name and pid: a restart gives it a new one). */
  id: string;
  /** Set once the test killed it and it has not been started again. */
  dead: boolean;
}

export interface ClusterBody {
  role: "single" | "leader" | "standby";
  id: string;
  leader: { id: string; admin: string; cluster: string } | null;
  managers: Array<{ id: string; role: string }>;
  leader_changes: number;
  ha: { etcd_reachable: boolean } | null;
}

export interface HaOptions {
  readonly services: Record<string, unknown>[];
  readonly agents: number;
  readonly managers?: number;
  /** etcd members to start (default 1). */
  readonly etcdMembers?: number;
  readonly lease?: string;
  readonly heartbeat?: string;
  /** Flags for each agent besides `--mesh 127.0.0.1:0`. */
  readonly agentArgs?: (id: string) => string[];
}

/**
 * The service of the HA tests: `web` on one fixed port that every agent listens on (reusePort, as two
 * agents on one machine do), decided by the manager within 50 ms, with short drains.
 */
export function haService(
  port: number,
  backends: ReadonlyArray<{ address: string }>,
): Record<string, unknown> {
  return testService({
    listen: `127.0.0.1:${port}`,
    decide: "manager",
    decision_timeout: "50ms",
    timeouts: { connect: "1s", idle: "60s", drain: "2s" },
    backends: backends.map((backend) => backend.address),
  });
}

export class HaCluster {
  readonly dir: string;
  readonly etcd: EtcdCluster;
  readonly managers: HaManager[] = [];
  readonly agents: AgentProc[] = [];
  readonly #yaml: string;
  readonly #options: HaOptions;

  private constructor(dir: string, etcd: EtcdCluster, yaml: string, options: HaOptions) {
    this.dir = dir;
    this.etcd = etcd;
    this.#yaml = yaml;
    this.#options = options;
  }

  /** etcd, the managers (the first started first, so that it leads), and the agents. */
  static async start(options: HaOptions): Promise<HaCluster> {
    const dir = await Deno.makeTempDir({ prefix: "switchyard-ha-" });
    await Deno.writeTextFile(`${dir}/cluster.token`, CLUSTER_TOKEN);
    const etcd = await EtcdCluster.start({ members: options.etcdMembers ?? 1 });
    // The managers' admin and cluster addresses are given on their command lines.
    const yaml = testConfig({
      manager: {
        ha: { etcd: etcd.endpoints, prefix: `/switchyard-test-${Deno.pid}`, lease: options.lease ?? "2s" },
      },
      ...(options.heartbeat ? { heartbeat: options.heartbeat } : {}),
      services: options.services,
    });
    const cluster = new HaCluster(dir, etcd, yaml, options);
    try {
      for (let i = 0; i < (options.managers ?? 2); i++) {
        cluster.managers.push({
          index: i,
          proc: null as unknown as Proc,
          admin: `127.0.0.1:${freeFixedPort()}`,
          cluster: `127.0.0.1:${freeFixedPort()}`,
          id: "",
          dead: true,
        });
        await cluster.startManager(i);
        if (i === 0) await cluster.leader();
      }
      for (let i = 1; i <= options.agents; i++) await cluster.startAgent(`agent-${i}`);
    } catch (error) {
      await cluster.close();
      throw error;
    }
    return cluster;
  }

  /** Starts manager `index` (again) on its ports. */
  async startManager(index: number): Promise<HaManager> {
    const manager = this.managers[index]!;
    const started = await startManagerProcess(this.dir, this.#yaml, [
      "--admin",
      manager.admin,
      "--cluster",
      manager.cluster,
    ]);
    manager.proc = started.proc;
    manager.dead = false;
    const line = started.proc.logs.find((l) => l.message.startsWith("Manager serving"));
    manager.id = String(line?.properties.id ?? "");
    return manager;
  }

  /** SIGKILLs a manager and waits until it is gone. */
  async kill(manager: HaManager, signal: Deno.Signal = "SIGKILL"): Promise<void> {
    manager.proc.kill(signal);
    await manager.proc.status();
    manager.dead = true;
  }

  async startAgent(id: string, extra: string[] = []): Promise<AgentProc> {
    const args = ["--mesh", "127.0.0.1:0", ...(this.#options.agentArgs?.(id) ?? []), ...extra];
    const agent = await startAgentProcess({
      manager: this.managers.map((m) => m.cluster).join(","),
      tokenFile: `${this.dir}/cluster.token`,
      id,
      service: String(this.#options.services[0]?.name),
      extra: args,
    });
    const entry = { id, proc: agent.proc, port: agent.port, args };
    this.agents.push(entry);
    return entry;
  }

  /** A request to a manager's admin API with the admin token (unless `init` gives another). */
  request(manager: HaManager, path: string, init: RequestInit = {}): Promise<Response> {
    return fetch(`http://${manager.admin}${path}`, {
      ...init,
      headers: {
        authorization: `Bearer ${ADMIN_TOKEN}`,
        "content-type": "application/json",
        ...init.headers,
      },
      signal: AbortSignal.timeout(3_000),
    });
  }

  /** The JSON a manager answers; throws on an error status. */
  async api<T>(manager: HaManager, path: string, init: RequestInit = {}): Promise<T> {
    const response = await this.request(manager, path, init);
    const body = await response.json();
    if (!response.ok) {
      throw new Error(`${path} on ${manager.admin} answered ${response.status}: ${JSON.stringify(body)}`);
    }
    return body as T;
  }

  /** Each live manager's `GET /v1/cluster` (null for one that does not answer). */
  views(): Promise<Array<ClusterBody | null>> {
    return Promise.all(
      this.managers.map((m) =>
        m.dead ? Promise.resolve(null) : this.api<ClusterBody>(m, "/v1/cluster").catch(() => null)
      ),
    );
  }

  /** The manager that says it leads, once one does and the others agree. */
  async leader(timeoutMs = 10_000): Promise<HaManager> {
    let found: HaManager | null = null;
    await eventually(
      async () => {
        const views = await this.views();
        const index = views.findIndex((view) => view?.role === "leader");
        found = index >= 0 ? this.managers[index]! : null;
        return found !== null &&
          views.every((view, i) => this.managers[i]!.dead || view?.leader?.id === found!.id);
      },
      timeoutMs,
      "a manager to lead, and every live manager to know it",
    );
    return found!;
  }

  async close(): Promise<void> {
    await Promise.all(this.agents.map((agent) => agent.proc.stop()));
    await Promise.all(this.managers.filter((m) => m.proc).map((m) => m.proc.stop()));
    await this.etcd.close();
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}
