/**
 * The manager's config file, `switchyard.yaml`: read, checked and resolved into a `Config` with every
 * default filled in, every duration in milliseconds, every address parsed and every token and TLS file read.
 *
 * `parseConfig` is pure apart from the `env` and `readFile` it is given. It never stops at the first
 * problem: it reports every one, each with the line and column of the node that is wrong (for an unknown key
 * the key itself, for a missing key the map that lacks it).
 */

import {
  type Document,
  isAlias,
  isMap,
  isScalar,
  isSeq,
  LineCounter,
  parseDocument,
  type Range,
  type YAMLError,
} from "yaml";
import type { z } from "zod";
import process from "node:process";
import { formatHostPort, type HostPort } from "../cluster/address.ts";
import { formatDuration } from "../cluster/duration.ts";
import {
  affinityKey,
  backendAddress,
  bindAddress,
  type ConfigFile,
  configFile,
  duration,
  genericMessage,
  healthKind,
  MIN_TOKEN_LENGTH,
  type ServiceFile,
  serviceName,
  tokenSource,
} from "./_config_schema.ts";

/** One backend of a service. `id` is its address written as `host:port`. */
export interface BackendConfig {
  readonly address: HostPort;
  readonly id: string;
  readonly weight: number;
}

/** How the manager checks a service's backends. */
export interface HealthConfig {
  readonly kind: "tcp" | "http" | "agent-check";
  readonly intervalMs: number;
  readonly timeoutMs: number;
  readonly rise: number;
  readonly fall: number;
  /** The path an `http` check asks for; `/` unless set. */
  readonly path: string;
  /** The port an `agent-check` check connects to; `null` for other kinds. */
  readonly port: number | null;
}

/** One service: the address clients connect to, its backends and its policy. */
export interface ServiceConfig {
  readonly name: string;
  readonly listen: HostPort;
  readonly decide: "manager" | "agent";
  readonly decisionTimeoutMs: number;
  /** `decide: manager`: how much of a claimant's recent rate the manager decides ahead of it; 0: per connection. */
  readonly decideAheadMs: number;
  readonly handoff: "claimant" | "local";
  readonly affinity: { readonly key: "none" | "client_ip"; readonly ttlMs: number };
  readonly proxyProtocol: "none" | "v1" | "v2";
  readonly backends: readonly BackendConfig[];
  readonly health: HealthConfig;
  /** A backend that comes (back) up ramps from a trickle to its full weight over this long; 0: at once. */
  readonly slowStartMs: number;
  readonly feedback: { readonly ttlMs: number; readonly smoothing: number; readonly maxStep: number };
  readonly timeouts: { readonly connectMs: number; readonly idleMs: number; readonly drainMs: number };
  readonly limits: { readonly maxConnections: number };
}

/** A token that may report feedback for the services named, and no others. */
export interface FeedbackToken {
  readonly token: string;
  readonly services: readonly string[];
}

/** `manager.ha`: the etcd cluster several managers elect their leader and keep their state in. */
export interface HaConfig {
  /** Endpoints as `scheme://host:port`. */
  readonly etcd: readonly string[];
  /** The folder of this cluster's keys, such as `/switchyard/prod`. */
  readonly prefix: string;
  /** A leader that cannot renew its lease for this long has lost the lead (whole seconds). */
  readonly leaseMs: number;
}

/** The manager's own addresses, TLS material (PEM text) and tokens. */
export interface ManagerConfig {
  readonly admin: HostPort;
  readonly cluster: HostPort;
  readonly tls: { readonly cert: string; readonly key: string } | null;
  /** Several managers, one leading; null for one manager alone. */
  readonly ha: HaConfig | null;
  readonly tokens: {
    readonly admin: string | null;
    readonly cluster: string;
    readonly feedback: readonly FeedbackToken[];
  };
}

/** The whole resolved config. */
export interface Config {
  readonly manager: ManagerConfig;
  readonly agents: { readonly heartbeatMs: number };
  readonly services: readonly ServiceConfig[];
}

/** One thing wrong with a config file. `line` and `column` are 1-based (0 when there is no file to point at). */
export interface ConfigProblem {
  readonly line: number;
  readonly column: number;
  /** Where in the config, such as `services[0].backends[1].address`; empty for the file as a whole. */
  readonly path: string;
  readonly message: string;
}

/** What `parseConfig` may touch outside its text. */
export interface ParseOptions {
  /** Looks up `${VAR}` references; by default no variable is set. */
  env?: (name: string) => string | undefined;
  /** Reads token and TLS files; by default reading any file fails. */
  readFile?: (path: string) => string;
  /** The folder relative file paths are read from; by default they are passed to `readFile` as written. */
  baseDir?: string;
}

/** A config, or every problem that kept it from being one. */
export type ParseResult = { config: Config; problems: [] } | { config: null; problems: ConfigProblem[] };

/** Every default of the config file, in the units of `Config`. */
export const CONFIG_DEFAULTS = deepFreeze(
  {
    manager: {
      admin: { host: "127.0.0.1", port: 9090 } as HostPort,
      cluster: { host: "127.0.0.1", port: 9091 } as HostPort,
      tls: null,
      ha: { prefix: "/switchyard", leaseMs: 2_000 },
      tokens: { admin: null, feedback: [] as readonly FeedbackToken[] },
    },
    agents: { heartbeatMs: 1_000 },
    service: {
      decide: "manager",
      decisionTimeoutMs: 20,
      decideAheadMs: 50,
      handoff: "claimant",
      affinity: { key: "none", ttlMs: 0 },
      proxyProtocol: "none",
      backend: { weight: 100 },
      health: { kind: "tcp", intervalMs: 2_000, timeoutMs: 1_000, rise: 2, fall: 3, path: "/", port: null },
      slowStartMs: 0,
      feedback: { ttlMs: 30_000, smoothing: 0.5, maxStep: 0.25 },
      timeouts: { connectMs: 2_000, idleMs: 300_000, drainMs: 30_000 },
      limits: { maxConnections: 50_000 },
    },
  } as const,
);

/** A config file that could not be read or has problems; `problems` lists every one. */
export class ConfigError extends Error {
  readonly problems: readonly ConfigProblem[];
  readonly file: string;

  constructor(file: string, problems: readonly ConfigProblem[], options?: ErrorOptions) {
    super(
      problems.length === 0
        ? `Cannot use config file "${file}"`
        : problems.map((problem) => formatProblem(file, problem)).join("\n"),
      options,
    );
    this.name = "ConfigError";
    this.file = file;
    this.problems = problems;
  }
}

/** Formats a problem as `file:line:column: path: message`, leaving out what it does not have. */
export function formatProblem(file: string, problem: ConfigProblem): string {
  const where = problem.line > 0 ? `${file}:${problem.line}:${problem.column}` : file;
  const path = problem.path === "" ? "" : `${problem.path}: `;
  return `${where}: ${path}${problem.message}`;
}

/**
 * Reads and resolves a config file: `${VAR}` from the process environment, token and TLS files relative to
 * the config file's folder. Throws a `ConfigError` listing every problem.
 */
export async function loadConfig(file: string): Promise<Config> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (error) {
    const message = `Cannot read config file "${file}": ${reasonOf(error)}`;
    throw new ConfigError(file, [{ line: 0, column: 0, path: "", message }], { cause: error });
  }
  const result = parseConfig(text, {
    env: (name) => Deno.env.get(name),
    readFile: (path) => Deno.readTextFileSync(path),
    baseDir: dirname(file),
  });
  if (result.config === null) throw new ConfigError(file, result.problems);
  return result.config;
}

/** Parses, checks and resolves a config file's text. */
export function parseConfig(text: string, options: ParseOptions = {}): ParseResult {
  const source = new YamlSource(text, options.env ?? (() => undefined));
  if (source.hasSyntaxErrors) return { config: null, problems: source.problems() };

  const shaped = configFile.safeParse(source.value, { error: genericMessage, reportInput: true });
  if (!shaped.success) {
    for (const issue of flattenIssues(shaped.error.issues, [])) source.reportIssue(issue);
  }
  const resolved = new Resolver(source, options).resolve(source.value);
  const problems = source.problems();
  if (!shaped.success || problems.length > 0) return { config: null, problems };
  return { config: build(shaped.data, resolved), problems: [] };
}

// ---------------------------------------------------------------------------------------------------------
// Reading YAML with positions

type Path = readonly (string | number)[];

/** The most nodes a config may expand to, aliases included. */
const MAX_NODES = 100_000;

/**
 * `${NAME}` is not valid inside a YAML flow map (`{ token: ${APP_TOKEN} }`), so references are hidden as
 * `$\uE000NAME\uE001` (same length, so positions hold) before parsing and expanded afterwards.
 */
const REFERENCE = /\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g;
const HIDDEN_REFERENCE = /\$\uE000([A-Za-z_][A-Za-z0-9_]*)\uE001/g;

function restoreReferences(text: string): string {
  return text.replace(HIDDEN_REFERENCE, (_, name: string) => `\${${name}}`);
}

/** The parsed document, the plain value it holds with `${VAR}` expanded, and every problem found so far. */
class YamlSource {
  readonly value: unknown;
  readonly hasSyntaxErrors: boolean;
  readonly #doc: Document.Parsed;
  readonly #lines = new LineCounter();
  readonly #env: (name: string) => string | undefined;
  readonly #problems: ConfigProblem[] = [];
  /** Paths whose value is already known to be wrong; later problems at or under them would only repeat it. */
  readonly #spoiled: string[] = [];
  /** The problems that spoiled those paths, which are kept. */
  readonly #causes = new Set<ConfigProblem>();
  #nodes = 0;

  constructor(text: string, env: (name: string) => string | undefined) {
    this.#env = env;
    const hidden = /[\uE000\uE001]/.test(text)
      ? text
      : text.replace(REFERENCE, (_, name: string) => `$\uE000${name}\uE001`);
    this.#doc = withoutProcessEnv(() =>
      parseDocument(hidden, { lineCounter: this.#lines, prettyErrors: true, uniqueKeys: true })
    );
    for (const error of [...this.#doc.errors, ...this.#doc.warnings]) this.#reportYamlError(error);
    this.hasSyntaxErrors = this.#doc.errors.length > 0;
    this.value = this.hasSyntaxErrors ? null : this.#toValue(this.#doc.contents, []);
  }

  /** Every problem, in the order of the file, each once. */
  problems(): ConfigProblem[] {
    const seen = new Set<string>();
    return this.#problems
      .filter((problem) =>
        this.#causes.has(problem) || !this.#spoiled.some((path) => isUnder(problem.path, path))
      )
      .filter((problem) => {
        const key = `${problem.line}:${problem.column}:${problem.path}:${problem.message}`;
        return seen.has(key) ? false : (seen.add(key), true);
      })
      .sort((a, b) => a.line - b.line || a.column - b.column);
  }

  /** Reports a problem at the node at `path`, or at the nearest map or list that holds it. */
  report(path: Path, message: string): void {
    const { node, key } = this.#find(path);
    this.#add(this.#position(node, key), pathText(path), message);
  }

  /** Reports a problem at the key `key` of the map at `path` (at the map when it has no such key). */
  reportKey(path: Path, key: string, message: string): void {
    const keyNode = this.#keyNode(path, key);
    if (keyNode === null) return this.report([...path, key], message);
    this.#add(this.#position(keyNode, null), pathText([...path, key]), message);
  }

  /** The line of the node at `path`. */
  lineOf(path: Path): number {
    const { node, key } = this.#find(path);
    return this.#position(node, key).line;
  }

  /** Whether the map at `path` has the key `key`. */
  hasKey(path: Path, key: string): boolean {
    return this.#keyNode(path, key) !== null;
  }

  reportIssue(issue: FlatIssue): void {
    if (issue.code === "unrecognized_keys") {
      for (const key of issue.keys) this.reportKey(issue.path, key, `Unknown key "${key}"`);
    } else {
      this.report(issue.path, issue.message);
    }
  }

  #add(position: { line: number; column: number }, path: string, message: string): ConfigProblem {
    const problem = { ...position, path, message };
    this.#problems.push(problem);
    return problem;
  }

  /** Reports a problem that makes the value at `path` meaningless, and keeps quiet about it from then on. */
  #spoil(path: Path, message: string): void {
    const { node, key } = this.#find(path);
    this.#causes.add(this.#add(this.#position(node, key), pathText(path), message));
    this.#spoiled.push(pathText(path));
  }

  #reportYamlError(error: YAMLError): void {
    const first = error.message.split("\n")[0] ?? error.message;
    const text = restoreReferences(first.replace(/ at line \d+, column \d+:?$/, "").trim());
    const message = text.charAt(0).toUpperCase() + text.slice(1);
    const position = error.linePos?.[0] ?? { line: 1, col: 1 };
    this.#add({ line: position.line, column: position.col }, "", message);
  }

  #toValue(node: unknown, path: Path): unknown {
    if (++this.#nodes > MAX_NODES) {
      if (this.#nodes === MAX_NODES + 1) {
        this.#spoil(path, `The config expands to more than ${MAX_NODES} values; check its aliases`);
      }
      return null;
    }
    if (isAlias(node)) return this.#toValue(node.resolve(this.#doc), path);
    if (isScalar(node)) {
      return typeof node.value === "string" ? this.#expand(node.value, path) : node.value;
    }
    if (isSeq(node)) return node.items.map((item, index) => this.#toValue(item, [...path, index]));
    if (isMap(node)) {
      const map: Record<string, unknown> = Object.create(null);
      for (const pair of node.items) {
        const key = keyName(pair.key);
        if (key === null) {
          this.report(path, `Expected keys to be plain names, got ${describeKey(pair.key)}`);
          continue;
        }
        map[key] = this.#toValue(pair.value, [...path, key]);
      }
      return map;
    }
    return null;
  }

  /** Expands `${NAME}` references; a missing variable is a problem at this node. */
  #expand(text: string, path: Path): string {
    const malformed = /\$\{[^}]*\}?/.exec(text);
    if (malformed !== null) {
      this.#spoil(
        path,
        `Cannot expand "${
          malformed[0]
        }": write an environment variable as \${NAME}, with letters, digits and _`,
      );
    }
    return text.replace(HIDDEN_REFERENCE, (reference, name: string) => {
      const value = this.#env(name);
      if (value !== undefined) return value;
      this.#spoil(path, `Environment variable "${name}" is not set`);
      return restoreReferences(reference);
    });
  }

  /** The node at `path`, or the deepest one on the way to it; `key` is the key it sits under in its map. */
  #find(path: Path): { node: unknown; key: unknown } {
    let node: unknown = this.#doc.contents;
    let key: unknown = null;
    for (const segment of path) {
      if (isAlias(node)) node = node.resolve(this.#doc);
      if (isMap(node) && typeof segment === "string") {
        const pair = node.items.find((item) => keyName(item.key) === segment);
        if (pair === undefined) break;
        node = pair.value;
        key = pair.key;
      } else if (isSeq(node) && typeof segment === "number" && segment < node.items.length) {
        node = node.items[segment];
        key = null;
      } else {
        break;
      }
    }
    return { node, key };
  }

  /** The key node `key` of the map at `path`, if it is there. */
  #keyNode(path: Path, key: string): unknown {
    let { node } = this.#find(path);
    if (isAlias(node)) node = node.resolve(this.#doc);
    if (!isMap(node)) return null;
    return node.items.find((item) => keyName(item.key) === key)?.key ?? null;
  }

  #position(node: unknown, key: unknown): { line: number; column: number } {
    const range = rangeOf(node);
    // An empty value (`tls:` and nothing after it) has no text of its own: point at its key.
    const offset = range !== null && (range[0] < range[1] || rangeOf(key) === null)
      ? range[0]
      : rangeOf(key)?.[0];
    if (offset === undefined) return { line: 1, column: 1 };
    const { line, col } = this.#lines.linePos(offset);
    return { line, column: col };
  }
}

/**
 * The yaml package reads `process.env.LOG_TOKENS` and `LOG_STREAM` (its debug switches) as it parses, which
 * throws without env permission and would print to stdout when set. Parsing is synchronous, so it is shown an
 * empty environment for just that long.
 */
function withoutProcessEnv<T>(parse: () => T): T {
  const env = process.env;
  process.env = {};
  try {
    return parse();
  } finally {
    process.env = env;
  }
}

function rangeOf(node: unknown): Range | null {
  if (typeof node !== "object" || node === null || !("range" in node)) return null;
  const range = (node as { range?: Range | null }).range;
  return range ?? null;
}

function keyName(key: unknown): string | null {
  if (isScalar(key)) return restoreReferences(String(key.value));
  return typeof key === "string" ? key : null;
}

function describeKey(key: unknown): string {
  return isSeq(key) ? "a list" : isMap(key) ? "a map" : "an alias";
}

/** `["services", 0, "listen"]` → `services[0].listen`. */
function pathText(path: Path): string {
  return path.reduce<string>(
    (text, segment) =>
      typeof segment === "number" ? `${text}[${segment}]` : text === "" ? segment : `${text}.${segment}`,
    "",
  );
}

function isUnder(path: string, parent: string): boolean {
  return path === parent || path.startsWith(`${parent}.`) || path.startsWith(`${parent}[`);
}

// ---------------------------------------------------------------------------------------------------------
// Zod issues → problems

type FlatIssue =
  | { code: "unrecognized_keys"; path: Path; keys: readonly string[] }
  | { code: "other"; path: Path; message: string };

/**
 * Flattens zod's issues. A union that failed is reported through the one branch that matched the value's
 * type (a map given for `string | { file }` is checked as the map); when none did, through its own message.
 */
function flattenIssues(issues: readonly z.core.$ZodIssue[], prefix: Path): FlatIssue[] {
  return issues.flatMap((issue): FlatIssue[] => {
    const path = [
      ...prefix,
      ...issue.path.map((segment) => typeof segment === "number" ? segment : String(segment)),
    ];
    if (issue.code === "unrecognized_keys") return [{ code: "unrecognized_keys", path, keys: issue.keys }];
    if (issue.code === "invalid_union" && issue.errors.length > 0) {
      const matching = issue.errors.filter((branch) =>
        !branch.some((inner) => inner.code === "invalid_type" && inner.path.length === 0)
      );
      if (matching.length === 1 && matching[0] !== undefined) return flattenIssues(matching[0], path);
    }
    return [{ code: "other", path, message: issue.message }];
  });
}

// ---------------------------------------------------------------------------------------------------------
// Checks across values, tokens and files

interface Resolved {
  tokens: { admin: string | null; cluster: string | null; feedback: (string | null)[] };
  tls: { cert: string | null; key: string | null } | null;
}

/** The value of `schema` for `value`, or `undefined` when it does not fit (zod has reported why). */
function valid<T>(schema: z.ZodType<T>, value: unknown): T | undefined {
  const result = schema.safeParse(value);
  return result.success ? result.data : undefined;
}

function child(value: unknown, key: string | number): unknown {
  if (typeof key === "number") return Array.isArray(value) ? value[key] : undefined;
  if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
  return Object.hasOwn(value, key) ? (value as Record<string, unknown>)[key] : undefined;
}

function items(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

/**
 * Everything that zod's shapes cannot say: values that must agree with each other, names that must be
 * unique, tokens and files that must be read. Works on the raw value, so it runs even where other parts of
 * the file are wrong, and checks only what is well-formed.
 */
class Resolver {
  readonly #source: YamlSource;
  readonly #readFile: (path: string) => string;
  readonly #baseDir: string | undefined;

  constructor(source: YamlSource, options: ParseOptions) {
    this.#source = source;
    this.#readFile = options.readFile ?? (() => {
      throw new Error("reading files is not enabled");
    });
    this.#baseDir = options.baseDir;
  }

  resolve(root: unknown): Resolved {
    const manager = child(root, "manager");
    this.#checkManagerAddresses(manager);
    const serviceNames = this.#checkServices(child(root, "services"));
    const tokens = child(manager, "tokens");
    const resolved: Resolved = {
      tokens: {
        admin: this.#token(child(tokens, "admin"), ["manager", "tokens", "admin"]),
        cluster: this.#token(child(tokens, "cluster"), ["manager", "tokens", "cluster"]),
        feedback: items(child(tokens, "feedback")).map((entry, index) =>
          this.#feedbackToken(entry, ["manager", "tokens", "feedback", index], serviceNames)
        ),
      },
      tls: this.#tls(child(manager, "tls")),
    };
    this.#checkDistinctTokens(resolved.tokens);
    return resolved;
  }

  #checkManagerAddresses(manager: unknown): void {
    const admin = valid(bindAddress, child(manager, "admin")) ?? CONFIG_DEFAULTS.manager.admin;
    const cluster = valid(bindAddress, child(manager, "cluster")) ?? CONFIG_DEFAULTS.manager.cluster;
    if (admin.port === 0 || !sameAddress(admin, cluster)) return;
    const clusterWritten = this.#source.hasKey(["manager"], "cluster");
    this.#source.report(
      ["manager", clusterWritten ? "cluster" : "admin"],
      clusterWritten
        ? `Cluster address ${formatHostPort(cluster)} is the same as manager.admin`
        : `Admin address ${formatHostPort(admin)} is the same as manager.cluster (default ${
          formatHostPort(cluster)
        })`,
    );
  }

  /** Checks each service and the services against each other; returns the names that are well-formed. */
  #checkServices(services: unknown): Set<string> {
    const names = new Map<string, number>();
    const listens = new Map<string, { index: number; name: string | null }>();
    items(services).forEach((service, index) => {
      const path = ["services", index];
      const name = valid(serviceName, child(service, "name")) ?? null;
      if (name !== null) {
        const first = names.get(name);
        if (first === undefined) {
          names.set(name, index);
        } else {
          this.#source.report(
            [...path, "name"],
            `Service name "${name}" is already used at line ${
              this.#source.lineOf(["services", first, "name"])
            }`,
          );
        }
      }
      const listen = valid(bindAddress, child(service, "listen"));
      if (listen !== undefined && listen.port !== 0) {
        const key = addressKey(listen);
        const first = listens.get(key);
        if (first === undefined) {
          listens.set(key, { index, name });
        } else {
          const owner = first.name === null ? `services[${first.index}]` : `service "${first.name}"`;
          this.#source.report(
            [...path, "listen"],
            `Listen address ${formatHostPort(listen)} is already used by ${owner} at line ${
              this.#source.lineOf(["services", first.index, "listen"])
            }`,
          );
        }
      }
      this.#checkBackends(child(service, "backends"), [...path, "backends"]);
      this.#checkHealth(child(service, "health"), [...path, "health"]);
      this.#checkAffinity(child(service, "affinity"), [...path, "affinity"]);
    });
    return new Set(names.keys());
  }

  #checkBackends(backends: unknown, path: Path): void {
    const seen = new Map<string, number>();
    items(backends).forEach((backend, index) => {
      const written = typeof backend === "string";
      const parsed = valid(backendAddress, written ? backend : child(backend, "address"));
      if (parsed === undefined) return;
      const key = addressKey(parsed);
      const first = seen.get(key);
      if (first === undefined) {
        seen.set(key, index);
        return;
      }
      const firstPath = typeof items(backends)[first] === "string"
        ? [...path, first]
        : [...path, first, "address"];
      this.#source.report(
        written ? [...path, index] : [...path, index, "address"],
        `Backend ${formatHostPort(parsed)} is listed twice, first at line ${this.#source.lineOf(firstPath)}`,
      );
    });
  }

  #checkHealth(health: unknown, path: Path): void {
    if (health === undefined) return;
    const kind = child(health, "kind") === undefined
      ? CONFIG_DEFAULTS.service.health.kind
      : valid(healthKind, child(health, "kind"));
    if (kind !== undefined) {
      if (kind !== "http" && child(health, "path") !== undefined) {
        this.#source.reportKey(path, "path", `Key "path" is only for health kind http, not ${kind}`);
      }
      if (kind !== "agent-check" && child(health, "port") !== undefined) {
        this.#source.reportKey(path, "port", `Key "port" is only for health kind agent-check, not ${kind}`);
      }
      if (kind === "agent-check" && child(health, "port") === undefined) {
        this.#source.report(path, `Missing required key "port" for health kind agent-check`);
      }
    }
    const interval = this.#durationOr(child(health, "interval"), CONFIG_DEFAULTS.service.health.intervalMs);
    const timeout = this.#durationOr(child(health, "timeout"), CONFIG_DEFAULTS.service.health.timeoutMs);
    if (interval === undefined || timeout === undefined || timeout <= interval) return;
    if (child(health, "timeout") !== undefined) {
      this.#source.report(
        [...path, "timeout"],
        `Health timeout ${formatDuration(timeout)} is longer than its interval ${formatDuration(interval)}`,
      );
    } else {
      this.#source.report(
        [...path, "interval"],
        `Health interval ${formatDuration(interval)} is shorter than its timeout ${formatDuration(timeout)}`,
      );
    }
  }

  #checkAffinity(affinity: unknown, path: Path): void {
    if (valid(affinityKey, child(affinity, "key")) !== "client_ip") return;
    const ttl = this.#durationOr(child(affinity, "ttl"), CONFIG_DEFAULTS.service.affinity.ttlMs);
    if (ttl !== 0) return;
    this.#source.report(
      child(affinity, "ttl") === undefined ? path : [...path, "ttl"],
      `Affinity ttl must be more than 0s when key is client_ip`,
    );
  }

  #durationOr(value: unknown, fallback: number): number | undefined {
    return value === undefined ? fallback : valid(duration, value);
  }

  #feedbackToken(entry: unknown, path: Path, serviceNames: ReadonlySet<string>): string | null {
    items(child(entry, "services")).forEach((name, index) => {
      if (typeof name === "string" && !serviceNames.has(name)) {
        this.#source.report([...path, "services", index], `Service "${name}" is not configured`);
      }
    });
    return this.#token(child(entry, "token"), [...path, "token"]);
  }

  /** Resolves a token written in place or as `{ file: path }`; `null` when absent or wrong. */
  #token(value: unknown, path: Path): string | null {
    const source = valid(tokenSource, value);
    if (source === undefined) return null;
    if (typeof source === "string") return this.#checkToken(source, path, "Token");
    const filePath = [...path, "file"];
    const file = this.#resolvePath(source.file);
    const text = this.#read(file, filePath, "token file");
    if (text === null) return null;
    const token = text.replace(/\s+$/, "");
    if (token === "") {
      this.#source.report(filePath, `Token file "${file}" is empty`);
      return null;
    }
    return this.#checkToken(token, filePath, `Token in "${file}"`);
  }

  #checkToken(token: string, path: Path, what: string): string | null {
    if (token.length < MIN_TOKEN_LENGTH) {
      this.#source.report(
        path,
        `${what} must be at least ${MIN_TOKEN_LENGTH} characters, got ${token.length}`,
      );
      return null;
    }
    if (/\s/.test(token)) {
      this.#source.report(path, `${what} must not contain spaces or line breaks`);
      return null;
    }
    return token;
  }

  /** Each feedback token must differ from the admin token and from the other feedback tokens. */
  #checkDistinctTokens(tokens: Resolved["tokens"]): void {
    const owners = new Map<string, string>();
    if (tokens.admin !== null) owners.set(tokens.admin, "manager.tokens.admin");
    tokens.feedback.forEach((token, index) => {
      if (token === null) return;
      const path = ["manager", "tokens", "feedback", index, "token"];
      const owner = owners.get(token);
      if (owner === undefined) {
        owners.set(token, pathText(path));
      } else {
        const where = this.#source.hasKey(path.slice(0, -1), "token") ? path : path.slice(0, -1);
        this.#source.report(where, `Token is the same as ${owner}; give each token its own value`);
      }
    });
  }

  #tls(tls: unknown): Resolved["tls"] {
    if (tls === undefined) return null;
    const read = (key: "cert" | "key", what: string, pem: RegExp): string | null => {
      const value = child(tls, key);
      if (typeof value !== "string") return null;
      const path = ["manager", "tls", key];
      const file = this.#resolvePath(value);
      const text = this.#read(file, path, what);
      if (text === null) return null;
      if (!pem.test(text)) {
        this.#source.report(path, `File "${file}" does not hold a PEM ${what.replace(/ file$/, "")}`);
        return null;
      }
      return text;
    };
    return {
      cert: read("cert", "certificate file", /-----BEGIN CERTIFICATE-----/),
      key: read("key", "private key file", /-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----/),
    };
  }

  #read(file: string, path: Path, what: string): string | null {
    try {
      return this.#readFile(file);
    } catch (error) {
      this.#source.report(path, `Cannot read ${what} "${file}": ${reasonOf(error)}`);
      return null;
    }
  }

  #resolvePath(file: string): string {
    if (this.#baseDir === undefined || isAbsolute(file)) return file;
    return this.#baseDir.endsWith("/") ? `${this.#baseDir}${file}` : `${this.#baseDir}/${file}`;
  }
}

function addressKey(address: HostPort): string {
  return formatHostPort({ host: address.host.toLowerCase(), port: address.port });
}

function sameAddress(a: HostPort, b: HostPort): boolean {
  return addressKey(a) === addressKey(b);
}

// ---------------------------------------------------------------------------------------------------------
// Building the config

function build(file: ConfigFile, resolved: Resolved): Config {
  const tokens = file.manager.tokens;
  const tls = resolved.tls;
  return deepFreeze({
    manager: {
      admin: file.manager.admin ?? CONFIG_DEFAULTS.manager.admin,
      cluster: file.manager.cluster ?? CONFIG_DEFAULTS.manager.cluster,
      tls: tls === null ? null : { cert: tls.cert ?? "", key: tls.key ?? "" },
      ha: file.manager.ha === undefined ? null : {
        etcd: file.manager.ha.etcd,
        prefix: file.manager.ha.prefix ?? CONFIG_DEFAULTS.manager.ha.prefix,
        leaseMs: file.manager.ha.lease ?? CONFIG_DEFAULTS.manager.ha.leaseMs,
      },
      tokens: {
        admin: resolved.tokens.admin,
        cluster: resolved.tokens.cluster ?? "",
        feedback: (tokens.feedback ?? []).map((entry, index) => ({
          token: resolved.tokens.feedback[index] ?? "",
          services: entry.services,
        })),
      },
    },
    agents: { heartbeatMs: file.agents?.heartbeat ?? CONFIG_DEFAULTS.agents.heartbeatMs },
    services: file.services.map(buildService),
  });
}

function buildService(service: ServiceFile): ServiceConfig {
  const defaults = CONFIG_DEFAULTS.service;
  const health = service.health;
  return {
    name: service.name,
    listen: service.listen,
    decide: service.decide ?? defaults.decide,
    decisionTimeoutMs: service.decision_timeout ?? defaults.decisionTimeoutMs,
    decideAheadMs: service.decide_ahead ?? defaults.decideAheadMs,
    handoff: service.handoff ?? defaults.handoff,
    affinity: {
      key: service.affinity?.key ?? defaults.affinity.key,
      ttlMs: service.affinity?.ttl ?? defaults.affinity.ttlMs,
    },
    proxyProtocol: service.proxy_protocol ?? defaults.proxyProtocol,
    backends: service.backends.map((backend) => {
      const written = "address" in backend ? backend : { address: backend, weight: undefined };
      return {
        address: written.address,
        id: formatHostPort(written.address),
        weight: written.weight ?? defaults.backend.weight,
      };
    }),
    health: {
      kind: health?.kind ?? defaults.health.kind,
      intervalMs: health?.interval ?? defaults.health.intervalMs,
      timeoutMs: health?.timeout ?? defaults.health.timeoutMs,
      rise: health?.rise ?? defaults.health.rise,
      fall: health?.fall ?? defaults.health.fall,
      path: health?.path ?? defaults.health.path,
      port: health?.port ?? defaults.health.port,
    },
    slowStartMs: service.slow_start ?? defaults.slowStartMs,
    feedback: {
      ttlMs: service.feedback?.ttl ?? defaults.feedback.ttlMs,
      smoothing: service.feedback?.smoothing ?? defaults.feedback.smoothing,
      maxStep: service.feedback?.max_step ?? defaults.feedback.maxStep,
    },
    timeouts: {
      connectMs: service.timeouts?.connect ?? defaults.timeouts.connectMs,
      idleMs: service.timeouts?.idle ?? defaults.timeouts.idleMs,
      drainMs: service.timeouts?.drain ?? defaults.timeouts.drainMs,
    },
    limits: { maxConnections: service.limits?.max_connections ?? defaults.limits.maxConnections },
  };
}

// ---------------------------------------------------------------------------------------------------------
// Small helpers

function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const inner of Object.values(value)) deepFreeze(inner);
  }
  return value;
}

function reasonOf(error: unknown): string {
  if (error instanceof Deno.errors.NotFound) return "no such file";
  if (error instanceof Deno.errors.PermissionDenied || error instanceof Deno.errors.NotCapable) {
    return "permission denied";
  }
  if (error instanceof Deno.errors.IsADirectory) return "it is a directory";
  return error instanceof Error ? error.message : String(error);
}

function dirname(file: string): string {
  const slash = Math.max(file.lastIndexOf("/"), file.lastIndexOf("\\"));
  if (slash < 0) return ".";
  return slash === 0 ? file.slice(0, 1) : file.slice(0, slash);
}

function isAbsolute(file: string): boolean {
  return file.startsWith("/") || file.startsWith("\\") || /^[A-Za-z]:[\\/]/.test(file);
}
