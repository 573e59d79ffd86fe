/**
 * The manager role: loads the config, keeps the cluster model, serves the admin API and the cluster
 * port, and re-reads the config on SIGHUP or `POST /v1/reload` (a bad config is rejected with its
 * reasons and the running one is kept). It is never in the byte path: agents keep serving without it.
 * With `manager.ha` it is one of several managers, leader or standby (`ha/replica.ts`).
 */
import { clusterSeed } from "../cluster/auth.ts";
import { formatHostPort, type HostPort } from "../cluster/address.ts";
import { guard, guardAsync } from "../cluster/guard.ts";
import { logger } from "../cluster/log.ts";
import { createAdminApp, type ReloadResult } from "./admin.ts";
import { ClusterServer, formatAddr } from "./cluster_server.ts";
import { type Config, ConfigError, formatProblem, loadConfig } from "./config.ts";
import { Replica } from "./ha/replica.ts";
import { HealthChecker } from "./health.ts";
import { History, HISTORY_DEFAULTS, sampleOf } from "./history.ts";
import { managerId, type ManagerRole, singleRole } from "./role.ts";
import { ClusterModel } from "./state.ts";

const log = logger("manager");

export interface ManagerOptions {
  /** The file `reload` re-reads; without one, reload is refused. */
  readonly configFile?: string;
  /** Serve the admin API here rather than at `manager.admin` (`--admin`: several managers, one config). */
  readonly admin?: HostPort | null;
  /** Take agents here rather than at `manager.cluster` (`--cluster`). */
  readonly cluster?: HostPort | null;
}

export interface Manager {
  readonly model: ClusterModel;
  readonly adminAddr: Deno.NetAddr;
  readonly clusterAddr: Deno.NetAddr;
  /** The admin token in force: the configured one, or one made at start when none is configured. */
  readonly adminToken: string;
  readonly adminTokenGenerated: boolean;
  readonly cluster: ClusterServer;
  /** Alone, leader or standby. */
  readonly role: ManagerRole;
  reload(): Promise<ReloadResult>;
  close(): Promise<void>;
}

export async function startManager(loaded: Config, options: ManagerOptions = {}): Promise<Manager> {
  const config = placed(loaded, options);
  const generated = config.manager.tokens.admin === null;
  const fallbackAdminToken = generated ? randomToken() : "";
  let current = config;
  const seed = await clusterSeed(config.manager.tokens.cluster);
  const model = new ClusterModel(config, { seed });
  const tls = config.manager.tls;

  const clusterListener = tls
    ? Deno.listenTls({
      hostname: config.manager.cluster.host,
      port: config.manager.cluster.port,
      cert: tls.cert,
      key: tls.key,
    })
    : Deno.listen({ hostname: config.manager.cluster.host, port: config.manager.cluster.port });
  // Assigned before anything calls them: the cluster server and the role refer to each other.
  let cluster: ClusterServer | null = null;
  let replica: Replica | null = null;
  let app: ReturnType<typeof createAdminApp> | null = null;
  const connected = () => cluster?.agents() ?? [];

  /** One reload: a config that cannot be read or taken is rejected with its reasons; the running one stays. */
  const reloadOnce = async (): Promise<ReloadResult> => {
    if (!options.configFile) {
      return { ok: false, problems: ["This manager was started without a config file"] };
    }
    let next: Config;
    try {
      next = placed(await loadConfig(options.configFile), options);
    } catch (error) {
      const problems = error instanceof ConfigError
        ? error.problems.map((problem) => formatProblem(error.file, problem))
        : [String(error)];
      log.error("Rejected the new config; keeping the running one: {problems}", { problems });
      return { ok: false, problems };
    }
    try {
      model.reload(next);
    } catch (error) {
      if (!(error instanceof RangeError)) throw error;
      const problems = [`${options.configFile}: ${error.message}`];
      log.error("Rejected the new config; keeping the running one: {problems}", { problems });
      return { ok: false, problems };
    }
    for (const key of ["admin", "cluster"] as const) {
      if (formatHostPort(next.manager[key]) !== formatHostPort(current.manager[key])) {
        log.warn("manager.{key} changed to {address}; it takes effect at the next restart", {
          key,
          address: formatHostPort(next.manager[key]),
        });
      }
    }
    if (JSON.stringify(next.manager.ha) !== JSON.stringify(current.manager.ha)) {
      log.warn("manager.ha changed; it takes effect at the next restart");
    }
    current = next;
    await replica?.reloaded(next);
    log.info("Reloaded the config: {services} services, state version {version}", {
      services: next.services.length,
      version: model.version,
    });
    return { ok: true, version: model.version };
  };
  const reload = async (): Promise<ReloadResult> =>
    await guardAsync("reload", reloadOnce, { file: options.configFile }) ??
      { ok: false, problems: ["Internal error while reloading; the running config is kept"] };

  let adminAddr: Deno.NetAddr | undefined;
  const server = Deno.serve(
    {
      hostname: config.manager.admin.host,
      port: config.manager.admin.port,
      ...(tls ? { cert: tls.cert, key: tls.key } : {}),
      onListen: (addr) => {
        adminAddr = addr as Deno.NetAddr;
      },
    },
    (request, info) =>
      app === null
        ? Response.json({ error: "The manager is starting", path: "" }, { status: 503 })
        : app.fetch(request, info),
  );
  adminAddr ??= server.addr as Deno.NetAddr;

  // Where the other managers and the agents reach this one: its addresses as bound.
  const self = {
    id: managerId(),
    admin: formatAddr(adminAddr),
    cluster: formatAddr(clusterListener.addr),
  };
  // With manager.tls the admin API speaks https, with the managers' certificate: a standby trusts it.
  const httpClient = config.manager.ha && tls ? Deno.createHttpClient({ caCerts: [tls.cert] }) : null;
  let role: ManagerRole;
  if (config.manager.ha) {
    for (const [key, address] of [["admin", self.admin], ["cluster", self.cluster]] as const) {
      if (/^(0\.0\.0\.0|\[::\]):/.test(address)) {
        log.warn(
          "manager.{key} is {address}: other managers and agents are sent there, so give each manager an address they can reach (--{key})",
          { key, address },
        );
      }
    }
    replica = await Replica.create({
      config,
      model,
      self,
      agentsHere: connected,
      lead: (previous, graceMs) => cluster?.lead(previous, graceMs),
      follow: () => cluster?.follow(),
      httpClient,
    });
    role = replica;
  } else {
    role = singleRole(self, connected);
  }
  cluster = new ClusterServer(model, clusterListener, {
    token: () => current.manager.tokens.cluster,
    leadership: role,
    onAgentsChanged: () => replica?.agentsChanged(),
  });
  const health = new HealthChecker(model);
  const history = new History();
  const sample = () =>
    guard("history", () => history.record(Date.now(), sampleOf(model.services(), role.agents())));
  sample();
  const sampler = setInterval(sample, HISTORY_DEFAULTS.intervalMs);
  app = createAdminApp({
    model,
    agents: () => role.agents(),
    decider: cluster.decider,
    history,
    seed,
    reload,
    adminToken: () => current.manager.tokens.admin ?? fallbackAdminToken,
    role,
  });

  log.info("Manager serving admin on {admin} and cluster on {cluster}", {
    admin: `${adminAddr.hostname}:${adminAddr.port}`,
    cluster: `${cluster.addr.hostname}:${cluster.addr.port}`,
    services: config.services.length,
    id: self.id,
  });
  replica?.start();

  const clusterServer = cluster;
  return {
    model,
    adminAddr,
    clusterAddr: clusterServer.addr,
    adminToken: current.manager.tokens.admin ?? fallbackAdminToken,
    adminTokenGenerated: generated,
    cluster: clusterServer,
    role,
    reload,
    async close() {
      // A leader gives the lead up first, so that a standby takes over at once.
      await replica?.close();
      clearInterval(sampler);
      await health.close();
      await clusterServer.close();
      await server.shutdown();
      model.close();
      httpClient?.close();
    },
  };
}

/** The config with `--admin` and `--cluster` in place of `manager.admin` and `manager.cluster`. */
export function placed(config: Config, options: Pick<ManagerOptions, "admin" | "cluster">): Config {
  if (!options.admin && !options.cluster) return config;
  return {
    ...config,
    manager: {
      ...config.manager,
      admin: options.admin ?? config.manager.admin,
      cluster: options.cluster ?? config.manager.cluster,
    },
  };
}

/** A new random token, 32 bytes as hex. */
export function randomToken(): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(32)), (byte) => byte.toString(16).padStart(2, "0"))
    .join("");
}
