/**
 * The `switchyard` command line: parses the sub-command and its flags (each also read from
 * `SWITCHYARD_<FLAG>`; flags win) and starts one role. Exit codes: 0 success, 1 runtime failure,
 * 2 bad usage or bad config, with a one-line reason on stderr.
 */
import { parseArgs } from "node:util";
import { formatHostPort, parseHostPort } from "./cluster/address.ts";
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel, setupLogging } from "./cluster/log.ts";
import { UsageError } from "./cluster/usage.ts";
import { DATA_PATHS, type DataPath } from "./agent/agent.ts";
import { runAgent } from "./agent/mod.ts";
import { runDemo } from "./demo/mod.ts";
import { runFeedback } from "./feedback/cli.ts";
import { runCheck, runManager } from "./manager/mod.ts";
import { VERSION, versionText } from "./version.ts";

type FlagSpec = {
  type: "string" | "boolean";
  help: string;
  value?: string;
  required?: boolean;
  multiple?: false;
};

interface Command {
  readonly usage: string;
  readonly summary: string;
  readonly flags: Readonly<Record<string, FlagSpec>>;
  readonly run: (flags: Flags) => Promise<number>;
}

/** Flag values after the environment and validation: strings by flag name (camel-cased). */
type Flags = Readonly<Record<string, string | boolean | undefined>>;

const COMMON_FLAGS: Record<string, FlagSpec> = {
  "log-level": {
    type: "string",
    value: "debug|info|warn|error",
    help: "least severe log level shown (default info)",
  },
  "log-format": { type: "string", value: "text|json", help: "log as human text (default) or JSON lines" },
  help: { type: "boolean", help: "show this help" },
};

const COMMANDS: Readonly<Record<string, Command>> = {
  manager: {
    usage: "switchyard manager --config switchyard.yaml [--admin HOST:PORT] [--cluster HOST:PORT]",
    summary: "Run the manager: admin and feedback API, dashboard, and the cluster port agents join",
    flags: {
      config: { type: "string", value: "FILE", help: "the YAML config to serve", required: true },
      admin: {
        type: "string",
        value: "HOST:PORT",
        help: "serve the admin API here, not at manager.admin (several managers from one config)",
      },
      cluster: {
        type: "string",
        value: "HOST:PORT",
        help: "take agents here, not at manager.cluster (several managers from one config)",
      },
    },
    run: (flags) => runManager(managerFlags(flags)),
  },
  agent: {
    usage:
      "switchyard agent --manager HOST:PORT[,HOST:PORT...] --token-file FILE [--id NAME] [--mesh HOST:PORT] [--admin HOST:PORT] [--state-dir DIR]",
    summary: "Run an agent: accept client connections for every service and forward them to backends",
    flags: {
      manager: {
        type: "string",
        value: "HOST:PORT[,...]",
        help: "the manager's cluster port; several managers' ports, comma-separated, to follow the leader",
        required: true,
      },
      "token-file": { type: "string", value: "FILE", help: "file holding the cluster token", required: true },
      id: {
        type: "string",
        value: "NAME",
        help: "this agent's name in the cluster (default: host name and pid)",
      },
      mesh: { type: "string", value: "HOST:PORT", help: "where flows handed off by other agents arrive" },
      admin: { type: "string", value: "HOST:PORT", help: "serve /metrics and /healthz here" },
      "state-dir": {
        type: "string",
        value: "DIR",
        help: "keep the last cluster state here, to serve without the manager",
      },
      "ca-file": { type: "string", value: "FILE", help: "trust this CA (PEM) for a manager that speaks TLS" },
      "data-path": {
        type: "string",
        value: "epoll|deno",
        help:
          "carry connections on nonblocking sockets driven by epoll (default; Linux) or through Deno's sockets",
      },
    },
    run: (flags) => runAgent(agentFlags(flags)),
  },
  demo: {
    usage: "switchyard demo [--duration SECONDS] [--listen HOST:PORT] [--admin HOST:PORT]",
    summary: "Run a manager, two agents and three demo backends on loopback, with nothing to set up",
    flags: {
      duration: {
        type: "string",
        value: "SECONDS",
        help: "stop after this many seconds (default: until Ctrl-C)",
      },
      listen: {
        type: "string",
        value: "HOST:PORT",
        help: "where service web listens (default 127.0.0.1:8080)",
      },
      admin: {
        type: "string",
        value: "HOST:PORT",
        help: "where the admin API and dashboard are (default 127.0.0.1:9090)",
      },
    },
    run: (flags) => {
      const duration = flags.duration === undefined ? null : Number(flags.duration);
      if (duration !== null && !(Number.isFinite(duration) && duration > 0)) {
        throw new UsageError(
          `Cannot use --duration "${flags.duration}": expected a positive number of seconds`,
        );
      }
      return runDemo({
        durationS: duration,
        listen: address("listen", (flags.listen as string | undefined) ?? "127.0.0.1:8080"),
        admin: address("admin", (flags.admin as string | undefined) ?? "127.0.0.1:9090"),
      });
    },
  },
  check: {
    usage: "switchyard check --config switchyard.yaml",
    summary: "Validate a config file and print every problem with its line and column",
    flags: { config: { type: "string", value: "FILE", help: "the YAML config to check", required: true } },
    run: (flags) => runCheck(flags.config as string),
  },
  feedback: {
    usage:
      "switchyard feedback --manager URL --token T --service NAME --backend HOST:PORT (--weight 0..100 | --utilization 0..1 [--qps N] [--eps N] | --state up|drain|down)",
    summary: "Post one feedback report to the manager, for scripts without an HTTP client",
    flags: {
      manager: {
        type: "string",
        value: "URL",
        help: "the manager's admin URL, e.g. http://127.0.0.1:9090",
        required: true,
      },
      token: { type: "string", value: "T", help: "a feedback or admin token", required: true },
      service: { type: "string", value: "NAME", help: "the service reported for", required: true },
      backend: { type: "string", value: "HOST:PORT", help: "the backend reported for", required: true },
      weight: { type: "string", value: "0..100", help: "share of the configured weight" },
      utilization: { type: "string", value: "0..1", help: "load, turned into a weight with qps and eps" },
      qps: { type: "string", value: "N", help: "queries per second served" },
      eps: { type: "string", value: "N", help: "errors per second" },
      state: {
        type: "string",
        value: "up|drain|down",
        help: "take the backend out of new decisions, or back in",
      },
      ttl: {
        type: "string",
        value: "DURATION",
        help: "how long the report holds (default: the service's feedback.ttl)",
      },
    },
    run: (flags) => runFeedback(flags),
  },
  version: {
    usage: "switchyard version",
    summary: "Print the version of switchyard, the commit it was built from, and the Deno it runs on",
    flags: {},
    run: () => {
      console.log(versionText());
      return Promise.resolve(0);
    },
  },
};

function address(flag: string, text: string, options: { anyPort?: boolean } = {}) {
  try {
    return parseHostPort(text, options);
  } catch (error) {
    throw new UsageError(`Cannot use --${flag}: ${(error as Error).message}`);
  }
}

function managerFlags(flags: Flags) {
  const admin = flags.admin === undefined ? null : address("admin", flags.admin as string, { anyPort: true });
  const cluster = flags.cluster === undefined
    ? null
    : address("cluster", flags.cluster as string, { anyPort: true });
  if (
    admin !== null && cluster !== null && admin.port !== 0 &&
    formatHostPort(admin) === formatHostPort(cluster)
  ) {
    throw new UsageError(`Cannot use --cluster ${flags.cluster}: it is the same address as --admin`);
  }
  return { configFile: flags.config as string, admin, cluster };
}

function agentFlags(flags: Flags) {
  const text = flags.manager as string;
  const managers = text.split(",").map((part) => part.trim()).filter((part) => part !== "").map((part) =>
    address("manager", part)
  );
  if (managers.length === 0) {
    throw new UsageError(`Cannot use --manager "${text}": expected HOST:PORT[,HOST:PORT...]`);
  }
  return {
    managers,
    tokenFile: flags["token-file"] as string,
    id: (flags.id as string | undefined) ?? `${Deno.hostname()}-${Deno.pid}`,
    mesh: flags.mesh === undefined ? null : address("mesh", flags.mesh as string, { anyPort: true }),
    admin: flags.admin === undefined ? null : address("admin", flags.admin as string, { anyPort: true }),
    stateDir: (flags["state-dir"] as string | undefined) ?? null,
    caFile: (flags["ca-file"] as string | undefined) ?? null,
    dataPath: dataPath(flags["data-path"] as string | undefined),
  };
}

function dataPath(text: string | undefined): DataPath {
  if (text === undefined) return "epoll";
  if (!(DATA_PATHS as readonly string[]).includes(text)) {
    throw new UsageError(`Cannot use --data-path "${text}": expected ${DATA_PATHS.join(" or ")}`);
  }
  return text as DataPath;
}

function envName(flag: string): string {
  return `SWITCHYARD_${flag.toUpperCase().replaceAll("-", "_")}`;
}

function help(name: string, command: Command): string {
  const flags = { ...command.flags, ...COMMON_FLAGS };
  const width = Math.max(
    ...Object.entries(flags).map(([flag, spec]) => flag.length + (spec.value?.length ?? 0) + 1),
  );
  const lines = Object.entries(flags).map(([flag, spec]) => {
    const left = `--${flag}${spec.value ? ` ${spec.value}` : ""}`;
    const env = flag === "help" ? "" : ` [${envName(flag)}]`;
    return `  ${left.padEnd(width + 3)} ${spec.help}${spec.required ? " (required)" : ""}${env}`;
  });
  return `${command.summary}\n\nUsage: ${command.usage}\n\nFlags (each also read from the environment variable shown):\n${
    lines.join("\n")
  }\n\nRun 'switchyard ${name === "" ? "" : ""}--help' for every sub-command.\n`;
}

function topHelp(): string {
  const rows = Object.entries(COMMANDS).map(([name, command]) => `  ${name.padEnd(9)} ${command.summary}`);
  return `switchyard ${VERSION}: a TCP load-balancing proxy cluster (one manager or several, any number of agents)

Usage: switchyard <command> [flags]

Commands:
${rows.join("\n")}

Run 'switchyard <command> --help' for a command's flags.
`;
}

/**
 * `--flag -1` as `--flag=-1` for string flags: `parseArgs` takes a value that starts with a dash for an
 * option of its own, and would call the flag ambiguous; the value's own check then says what is wrong.
 */
function joinNegativeValues(args: readonly string[], specs: Readonly<Record<string, FlagSpec>>): string[] {
  const joined: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const next = args[i + 1];
    if (
      arg.startsWith("--") && specs[arg.slice(2)]?.type === "string" && next !== undefined &&
      /^-[\d.]/.test(next)
    ) {
      joined.push(`${arg}=${next}`);
      i++;
    } else joined.push(arg);
  }
  return joined;
}

/** Parses `args` into the command and its flags; throws `UsageError`. */
export function parseCommandLine(
  args: string[],
  env: (name: string) => string | undefined = (name) => Deno.env.get(name),
): { name: string; command: Command; flags: Flags; help: boolean } {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    return { name: "", command: COMMANDS.version as Command, flags: {}, help: true };
  }
  const command = COMMANDS[name];
  if (!command) {
    throw new UsageError(`Unknown command "${name}": expected one of ${Object.keys(COMMANDS).join(", ")}`);
  }
  const specs = { ...command.flags, ...COMMON_FLAGS };
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: joinNegativeValues(rest, specs),
      options: Object.fromEntries(Object.entries(specs).map(([flag, spec]) => [flag, { type: spec.type }])),
      strict: true,
      allowPositionals: false,
    }) as { values: Record<string, string | boolean | undefined> });
  } catch (error) {
    throw new UsageError((error as Error).message.split("\n")[0] ?? String(error));
  }
  if (values.help === true) return { name, command, flags: values, help: true };
  for (const [flag, spec] of Object.entries(specs)) {
    if (values[flag] === undefined && spec.type === "string") {
      const fromEnv = env(envName(flag));
      if (fromEnv !== undefined && fromEnv !== "") values[flag] = fromEnv;
    }
    if (spec.required && values[flag] === undefined) {
      throw new UsageError(`Missing --${flag} (or ${envName(flag)}): see 'switchyard ${name} --help'`);
    }
  }
  const level = values["log-level"] ?? "info";
  if (!LOG_LEVELS.includes(level as LogLevel)) {
    throw new UsageError(`Cannot use --log-level "${level}": expected one of ${LOG_LEVELS.join(", ")}`);
  }
  const format = values["log-format"] ?? "text";
  if (!LOG_FORMATS.includes(format as LogFormat)) {
    throw new UsageError(`Cannot use --log-format "${format}": expected one of ${LOG_FORMATS.join(", ")}`);
  }
  return { name, command, flags: values, help: false };
}

export async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseCommandLine(args);
  } catch (error) {
    console.error(`switchyard: ${(error as Error).message}`);
    return 2;
  }
  if (parsed.help) {
    console.log(parsed.name === "" ? topHelp() : help(parsed.name, parsed.command));
    return 0;
  }
  setupLogging({
    level: (parsed.flags["log-level"] ?? "info") as LogLevel,
    format: (parsed.flags["log-format"] ?? "text") as LogFormat,
  });
  try {
    return await parsed.command.run(parsed.flags);
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`switchyard: ${error.message}`);
      return 2;
    }
    console.error(`switchyard: ${error instanceof Error ? error.message : String(error)}`);
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
