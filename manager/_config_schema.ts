/**
 * The shape of `switchyard.yaml` as zod schemas: keys as they are written (snake_case), every optional key
 * left optional (defaults are applied in `config.ts`), durations turned into milliseconds and addresses into
 * `HostPort`. Every message a user can see from these schemas is written here.
 */

import { z } from "zod";
import { type HostPort, parseHostPort } from "../cluster/address.ts";
import { formatDuration, parseDuration } from "../cluster/duration.ts";

/** A service name: a letter or digit, then up to 62 letters, digits, `_` or `-`. */
export const SERVICE_NAME = /^[a-z0-9][a-z0-9_-]{0,62}$/i;
/** The shortest token accepted, for every token in the config. */
export const MIN_TOKEN_LENGTH = 8;
/** The largest backend weight. */
export const MAX_WEIGHT = 10_000;
/** The most backends of one service: what a Maglev table can index. */
export const MAX_BACKENDS = 65_535;
/** The values a health check kind, a decision mode, … may take. */
export const HEALTH_KINDS = ["tcp", "http", "agent-check"] as const;
export const DECIDE_MODES = ["manager", "agent"] as const;
export const HANDOFF_MODES = ["claimant", "local"] as const;
export const AFFINITY_KEYS = ["none", "client_ip"] as const;
export const PROXY_PROTOCOLS = ["none", "v1", "v2"] as const;

type Issue = z.core.$ZodRawIssue;

/** Describes a value read from YAML for a message: `string "x"`, `number 5`, `a list`, `null`. */
export function describeValue(value: unknown): string {
  if (value === null) return "null";
  if (value === undefined) return "nothing";
  if (typeof value === "string") {
    const shown = value.length > 60 ? `${value.slice(0, 57)}...` : value;
    return `string ${JSON.stringify(shown)}`;
  }
  if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint") {
    return `${typeof value} ${String(value)}`;
  }
  if (Array.isArray(value)) return "a list";
  if (value instanceof Uint8Array) return "binary data";
  return "a map";
}

const EXPECTED: Readonly<Record<string, string>> = {
  string: "a string",
  number: "a number",
  int: "an integer",
  boolean: "a boolean",
  object: "a map",
  array: "a list",
};

/**
 * The messages of issues whose schema says nothing of its own: a missing key, a value of the wrong type.
 * Passed to `safeParse` as its error map.
 */
export function genericMessage(issue: Issue): string | undefined {
  // No value at all, whatever the schema (a union of forms too): the key is missing.
  if ((issue.code === "invalid_type" || issue.code === "invalid_union") && issue.input === undefined) {
    const key = issue.path?.at(-1);
    return key === undefined ? "Missing a value" : `Missing required key "${String(key)}"`;
  }
  if (issue.code === "invalid_type") {
    return `Expected ${EXPECTED[issue.expected] ?? issue.expected}, got ${describeValue(issue.input)}`;
  }
  if (issue.code === "unrecognized_keys") {
    return issue.keys.map((key) => `Unknown key "${key}"`).join("; ");
  }
  return undefined;
}

/** A schema-level error map for wrong types that says what was expected; a missing key falls through. */
function expected(what: string): (issue: Issue) => string | undefined {
  return (issue) =>
    issue.code === "invalid_type" && issue.input !== undefined
      ? `Expected ${what}, got ${describeValue(issue.input)}`
      : undefined;
}

/** A union's error map: what was expected when the value fits none of its branches. */
function expectedOneOf(what: string): (issue: Issue) => string | undefined {
  return (issue) =>
    issue.input === undefined ? undefined : `Expected ${what}, got ${describeValue(issue.input)}`;
}

function parsed<T>(parse: (text: string) => T): (text: string, ctx: z.core.$RefinementCtx<string>) => T {
  return (text, ctx) => {
    try {
      return parse(text);
    } catch (error) {
      ctx.issues.push({ code: "custom", message: (error as Error).message, input: text });
      return z.NEVER;
    }
  };
}

/** A duration such as `250ms` or `2s`, as milliseconds. */
export const duration = z.string({ error: expected("a duration written like 2s or 250ms") })
  .transform(parsed(parseDuration));

/** A duration more than zero, as milliseconds. */
export const positiveDuration = duration.refine((ms) => ms > 0, {
  error: (issue) => `Expected a duration more than 0s, got ${formatDuration(Number(issue.input))}`,
});

/** A `host:port` address. */
export const address = z.string({ error: expected("an address written like 10.0.0.1:80") })
  .transform(parsed<HostPort>(parseHostPort));

/**
 * An address switchyard binds (the manager's ports, a service's listen): like `address`, but port 0 is
 * allowed too and means "any free port" (the demo and tests bind that way).
 */
export const bindAddress = z.string({ error: expected("an address written like 127.0.0.1:9090") })
  .transform(parsed<HostPort>((text) => parseHostPort(text, { anyPort: true })));

/** An integer from `min` to `max` (at most the largest integer a cluster frame carries exactly). */
function integer(min: number, max: number = Number.MAX_SAFE_INTEGER) {
  return z.number({ error: expected("a number") }).refine(
    (n) => Number.isInteger(n) && n >= min && n <= max,
    {
      error: (issue) => {
        const n = Number(issue.input);
        const range = max === Number.MAX_SAFE_INTEGER && !(n > max)
          ? `${min} or more`
          : `from ${min} to ${max}`;
        return `Expected an integer ${range}, got ${String(issue.input)}`;
      },
    },
  );
}

function oneOf<const T extends readonly [string, ...string[]]>(values: T) {
  return z.enum(values, {
    error: (issue) =>
      issue.input === undefined
        ? undefined
        : `Expected one of ${values.join(", ")}, got ${describeValue(issue.input)}`,
  });
}

/** A token written in place or read from a file; `config.ts` resolves it and checks its length. */
export const tokenSource = z.union([
  z.string(),
  z.strictObject({ file: z.string({ error: expected("a file path") }) }),
], { error: expectedOneOf("a token string or { file: path }") });

/** A service's name. */
export const serviceName = z.string({ error: expected("a service name") }).regex(SERVICE_NAME, {
  error: (issue) =>
    `Service name ${
      JSON.stringify(issue.input)
    } must be 1-63 letters, digits, _ or -, starting with a letter or digit`,
});

/** One backend: `10.0.0.11:80` or `{ address: 10.0.0.11:80, weight: 100 }`. */
export const backendAddress = address;
const backend = z.union([
  backendAddress,
  z.strictObject({ address: backendAddress, weight: integer(0, MAX_WEIGHT).optional() }),
], { error: expectedOneOf("a backend address like 10.0.0.11:80 or { address, weight }") });

export const healthKind = oneOf(HEALTH_KINDS);
export const affinityKey = oneOf(AFFINITY_KEYS);

const health = z.strictObject({
  kind: healthKind.optional(),
  interval: positiveDuration.optional(),
  timeout: positiveDuration.optional(),
  rise: integer(1).optional(),
  fall: integer(1).optional(),
  path: z.string({ error: expected("an HTTP path such as /healthz") }).startsWith("/", {
    error: (issue) => `Expected an HTTP path starting with /, got ${describeValue(issue.input)}`,
  }).optional(),
  port: integer(1, 65_535).optional(),
});

/** One entry of `services`. */
export const service = z.strictObject({
  name: serviceName,
  listen: bindAddress,
  decide: oneOf(DECIDE_MODES).optional(),
  decision_timeout: positiveDuration.optional(),
  // A queue holds for 20 times this: longer would keep decisions an operator's drain must wait out.
  decide_ahead: duration.refine((ms) => ms <= 10_000, {
    error: (issue) => `Expected a duration of at most 10s, got ${formatDuration(Number(issue.input))}`,
  }).optional(),
  handoff: oneOf(HANDOFF_MODES).optional(),
  affinity: z.strictObject({ key: affinityKey.optional(), ttl: duration.optional() }).optional(),
  proxy_protocol: oneOf(PROXY_PROTOCOLS).optional(),
  backends: z.array(backend).min(1, { error: "List at least one backend" }).max(MAX_BACKENDS, {
    error: (issue) =>
      `List at most ${MAX_BACKENDS} backends: a Maglev table indexes no more, got ${
        (issue.input as unknown[]).length
      }`,
  }),
  health: health.optional(),
  slow_start: duration.optional(),
  feedback: z.strictObject({
    ttl: positiveDuration.optional(),
    smoothing: z.number({ error: expected("a number") }).refine((n) => n >= 0 && n <= 1, {
      error: (issue) => `Expected a number from 0 to 1, got ${String(issue.input)}`,
    }).optional(),
    max_step: z.number({ error: expected("a number") }).refine((n) => n > 0 && n <= 1, {
      error: (issue) => `Expected a number more than 0 and at most 1, got ${String(issue.input)}`,
    }).optional(),
  }).optional(),
  timeouts: z.strictObject({
    connect: positiveDuration.optional(),
    idle: positiveDuration.optional(),
    drain: duration.optional(),
  }).optional(),
  limits: z.strictObject({ max_connections: integer(1).optional() }).optional(),
});

/** The shortest lease etcd grants with its default timing (1.5 × its 1 s election timeout, rounded up). */
export const MIN_LEASE_MS = 2_000;

/** An etcd v3 endpoint: `http://host:port` (or https), nothing after the port. */
export const etcdEndpoint = z.string({ error: expected("an etcd URL like http://10.0.0.1:2379") }).transform(
  parsed((text) => {
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw new Error(
        `Cannot parse etcd URL ${JSON.stringify(text)}: expected one like http://10.0.0.1:2379`,
      );
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new Error(`Cannot use etcd URL ${JSON.stringify(text)}: expected http:// or https://`);
    }
    if (url.pathname !== "/" || url.search !== "" || url.hash !== "" || url.username !== "") {
      throw new Error(`Cannot use etcd URL ${JSON.stringify(text)}: expected only a scheme, host and port`);
    }
    return `${url.protocol}//${url.host}`;
  }),
);

/** The folder of one cluster's keys in etcd: `/` then names, not ending in `/`. */
export const etcdPrefix = z.string({ error: expected("a key prefix like /switchyard/prod") }).regex(
  /^(\/[A-Za-z0-9._-]+)+$/,
  {
    error: (issue) =>
      `Prefix ${
        JSON.stringify(issue.input)
      } must be / then names of letters, digits, ., _ or -, like /switchyard/prod`,
  },
);

/** A lease: whole seconds, at least `MIN_LEASE_MS`. */
export const leaseDuration = duration.refine((ms) => ms % 1_000 === 0, {
  error: (issue) =>
    `Lease ${
      formatDuration(Number(issue.input))
    } must be a whole number of seconds: etcd grants leases in seconds`,
  abort: true,
}).refine((ms) => ms >= MIN_LEASE_MS, {
  error: (issue) =>
    `Lease ${formatDuration(Number(issue.input))} is shorter than ${
      formatDuration(MIN_LEASE_MS)
    }, the shortest lease etcd grants`,
});

/** `manager.ha`: several managers, one leading, elected through etcd. */
export const highAvailability = z.strictObject({
  etcd: z.array(etcdEndpoint, { error: expected("a list of etcd URLs") }).min(1, {
    error: "List at least one etcd endpoint",
  }),
  prefix: etcdPrefix.optional(),
  lease: leaseDuration.optional(),
});

/** The whole file. */
export const configFile = z.strictObject({
  manager: z.strictObject({
    admin: bindAddress.optional(),
    cluster: bindAddress.optional(),
    tls: z.strictObject({
      cert: z.string({ error: expected("a file path") }),
      key: z.string({ error: expected("a file path") }),
    }).optional(),
    ha: highAvailability.optional(),
    tokens: z.strictObject({
      admin: tokenSource.optional(),
      cluster: tokenSource,
      feedback: z.array(z.strictObject({
        token: tokenSource,
        services: z.array(z.string({ error: expected("a service name") })).min(1, {
          error: "List at least one service this token may report for",
        }),
      })).optional(),
    }),
  }),
  agents: z.strictObject({ heartbeat: positiveDuration.optional() }).optional(),
  services: z.array(service, { error: expected("a list of services") }).min(1, {
    error: "List at least one service",
  }),
}, { error: expected("a map with manager, agents and services") });

export type ConfigFile = z.output<typeof configFile>;
export type ServiceFile = z.output<typeof service>;
export type TokenSource = z.output<typeof tokenSource>;
