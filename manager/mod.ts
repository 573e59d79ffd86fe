/** The manager role as the command line starts it, and `switchyard check`. */
import { formatHostPort, type HostPort } from "../cluster/address.ts";
import { installLastResort } from "../cluster/guard.ts";
import { logger } from "../cluster/log.ts";
import { ConfigError, formatProblem, loadConfig } from "./config.ts";
import { placed, startManager } from "./manager.ts";
import { ClusterModel } from "./state.ts";

export { startManager } from "./manager.ts";
export type { Manager } from "./manager.ts";
export { type Config, ConfigError, formatProblem, loadConfig, parseConfig } from "./config.ts";

const log = logger("manager");

/**
 * `switchyard manager`: serves until SIGTERM or SIGINT; SIGHUP reloads the config. `admin` and `cluster`
 * (`--admin`, `--cluster`) take the place of the config's `manager.admin` and `manager.cluster`.
 */
export async function runManager(
  options: { configFile: string; admin?: HostPort | null; cluster?: HostPort | null },
): Promise<number> {
  let config;
  try {
    config = await loadConfig(options.configFile);
  } catch (error) {
    if (error instanceof ConfigError) {
      for (const problem of error.problems) console.error(formatProblem(error.file, problem));
      console.error(
        `switchyard: ${error.problems.length} problem(s) in ${error.file}; the manager did not start`,
      );
      return 2;
    }
    throw error;
  }
  const { admin, cluster } = placed(config, options).manager;
  if (admin.port !== 0 && formatHostPort(admin) === formatHostPort(cluster)) {
    console.error(
      `switchyard: Cannot serve the admin API and the cluster port both on ${formatHostPort(admin)}`,
    );
    return 2;
  }
  let manager;
  try {
    manager = await startManager(config, {
      configFile: options.configFile,
      admin: options.admin ?? null,
      cluster: options.cluster ?? null,
    });
  } catch (error) {
    // The model refuses a config it cannot serve (tables that cannot be built, a state too large).
    if (!(error instanceof RangeError)) throw error;
    console.error(`switchyard: ${options.configFile}: ${error.message}; the manager did not start`);
    return 2;
  }
  const forget = installLastResort();
  if (manager.adminTokenGenerated) {
    console.log(`No manager.tokens.admin is configured; this run's admin token is: ${manager.adminToken}`);
  }
  const stopped = Promise.withResolvers<void>();
  const onHup = () => {
    log.info("SIGHUP: reloading {file}", { file: options.configFile });
    manager.reload().catch((error) => log.error("Reload failed: {error}", { error }));
  };
  const onStop = () => stopped.resolve();
  if (Deno.build.os !== "windows") Deno.addSignalListener("SIGHUP", onHup);
  Deno.addSignalListener("SIGINT", onStop);
  if (Deno.build.os !== "windows") Deno.addSignalListener("SIGTERM", onStop);
  await stopped.promise;
  log.info("Stopping the manager; agents keep serving from their last state");
  await manager.close();
  forget();
  return 0;
}

/** `switchyard check`: prints every problem with its line and column; 2 if there are any. */
export async function runCheck(file: string): Promise<number> {
  try {
    const config = await loadConfig(file);
    // What the manager would refuse at start: tables it cannot build, a state too large for a frame.
    try {
      new ClusterModel(config, { seed: 0 }).close();
    } catch (error) {
      if (!(error instanceof RangeError)) throw error;
      console.log(`${file}: ${error.message}`);
      console.error(`switchyard: 1 problem(s) in ${file}`);
      return 2;
    }
    const backends = config.services.reduce((sum, service) => sum + service.backends.length, 0);
    console.log(`${file}: ok (${config.services.length} services, ${backends} backends)`);
    return 0;
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    for (const problem of error.problems) console.log(formatProblem(error.file, problem));
    console.error(`switchyard: ${error.problems.length} problem(s) in ${error.file}`);
    return 2;
  }
}
