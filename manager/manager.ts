/**
 * The manager role: loads the config, keeps the cluster model, serves the admin API and the cluster
 * port, and re-reads the config on SIGHUP or `POST /v1/reload` (a bad config is rejected with its
 * reasons and the running one is kept). It is never in the byte path: agents keep serving without it.
 */
import { clusterSeed } from "../cluster/auth.ts";
import { formatHostPort } from "../cluster/address.ts";
import { guardAsync } from "../cluster/guard.ts";
import { logger } from "../cluster/log.ts";
import { createAdminApp, type ReloadResult } from "./admin.ts";
import { ClusterServer } from "./cluster_server.ts";
import { type Config, ConfigError, formatProblem, loadConfig } from "./config.ts";
import { HealthChecker } from "./health.ts";
import { ClusterModel } from "./state.ts";

const log = logger("manager");

export interface ManagerOptions {
  /** The file `reload` re-reads; without one, reload is refused. */
  readonly configFile?: string;
}

export interface Manager {
  readonly model: ClusterModel;
  readonly adminAddr: Deno.NetAddr;
  readonly clusterAddr: Deno.NetAddr;
  /** The admin token in force: the configured one, or one made at start when none is configured. */
  readonly adminToken: string;
  readonly adminTokenGenerated: boolean;
  readonly cluster: ClusterServer;
  reload(): Promise<ReloadResult>;
  close(): Promise<void>;
}

export async function startManager(config: Config, options: ManagerOptions = {}): Promise<Manager> {
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
  const cluster = new ClusterServer(model, clusterListener, { token: () => current.manager.tokens.cluster });
  const health = new HealthChecker(model);

  /** One reload: a config that cannot be read or taken is rejected with its reasons; the running one stays. */
  const reloadOnce = async (): Promise<ReloadResult> => {
    if (!options.configFile) {
      return { ok: false, problems: ["This manager was started without a config file"] };
    }
    let next: Config;
    try {
      next = await loadConfig(options.configFile);
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
    current = next;
    log.info("Reloaded the config: {services} services, state version {version}", {
      services: next.services.length,
      version: model.version,
    });
    return { ok: true, version: model.version };
  };
  const reload = async (): Promise<ReloadResult> =>
    await guardAsync("reload", reloadOnce, { file: options.configFile }) ??
      { ok: false, problems: ["Internal error while reloading; the running config is kept"] };

  const app = createAdminApp({
    model,
    agents: () => cluster.agents(),
    decider: cluster.decider,
    seed,
    reload,
    adminToken: () => current.manager.tokens.admin ?? fallbackAdminToken,
  });
  let adminAddr: Deno.NetAddr | undefined;
  const server = Deno.serve({
    hostname: config.manager.admin.host,
    port: config.manager.admin.port,
    ...(tls ? { cert: tls.cert, key: tls.key } : {}),
    onListen: (addr) => {
      adminAddr = addr as Deno.NetAddr;
    },
  }, app.fetch);
  adminAddr ??= server.addr as Deno.NetAddr;

  log.info("Manager serving admin on {admin} and cluster on {cluster}", {
    admin: `${adminAddr.hostname}:${adminAddr.port}`,
    cluster: `${cluster.addr.hostname}:${cluster.addr.port}`,
    services: config.services.length,
  });

  return {
    model,
    adminAddr,
    clusterAddr: cluster.addr,
    adminToken: current.manager.tokens.admin ?? fallbackAdminToken,
    adminTokenGenerated: generated,
    cluster,
    reload,
    async close() {
      await health.close();
      await cluster.close();
      await server.shutdown();
      model.close();
    },
  };
}

/** A new random token, 32 bytes as hex. */
export function randomToken(): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(32)), (byte) => byte.toString(16).padStart(2, "0"))
    .join("");
}
