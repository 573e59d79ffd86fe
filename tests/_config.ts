/**
 * Configs of the tests, built rather than written out: `testService` is one service the way most tests
 * want it, `testConfig` a whole config file around services (JSON, which the manager reads as YAML). Both
 * take any other key as the config file spells it (`decision_timeout`, `timeouts`, `limits`, `ha`, …).
 * `resolvedConfig` is a config parsed as the manager parses its file, for unit tests of the model, and
 * `testServiceSpec` a service as the manager sends it to agents, for tests that play the manager.
 */
import assert from "node:assert/strict";
import type { ServiceSpec } from "../cluster/protocol.ts";
import { type Config, parseConfig } from "../manager/config.ts";

export const CLUSTER_TOKEN = "test-cluster-token-0123456789";
export const ADMIN_TOKEN = "test-admin-token-0123456789";

/** `health` with no active check within a test's time: the test backends count every connection they get. */
export const NO_HEALTH_CHECKS = { interval: "1h", timeout: "1s" } as const;

export interface TestServiceOptions {
  /** `web` by default. */
  readonly name?: string;
  /** `127.0.0.1:0` by default. */
  readonly listen?: string;
  readonly decide?: "manager" | "agent";
  readonly backends: ReadonlyArray<string | { readonly address: string; readonly weight?: number }>;
  /** `NO_HEALTH_CHECKS` by default; null for the config's default checks. */
  readonly health?: Readonly<Record<string, unknown>> | null;
  readonly [key: string]: unknown;
}

/** One service: `web` on a free loopback port, without active health checks unless given. */
export function testService(options: TestServiceOptions): Record<string, unknown> {
  const { name = "web", listen = "127.0.0.1:0", health = NO_HEALTH_CHECKS, ...rest } = options;
  return { name, listen, ...(health === null ? {} : { health }), ...rest };
}

export interface TestConfigOptions {
  readonly services: readonly Record<string, unknown>[];
  /**
   * Keys of `manager` over the defaults: admin and cluster ports on 127.0.0.1 port 0, the admin token
   * `ADMIN_TOKEN` and the cluster token read from `cluster.token` beside the config. `tokens` is merged
   * key by key; a key given as undefined is left out.
   */
  readonly manager?: Readonly<Record<string, unknown>> & {
    readonly tokens?: Readonly<Record<string, unknown>>;
  };
  /** `agents.heartbeat`: 200ms by default, so that agents see changes soon. */
  readonly heartbeat?: string;
}

/** A whole config file's text, indented so that a problem's line and column point somewhere. */
export function testConfig(options: TestConfigOptions): string {
  const { tokens = {}, ...manager } = options.manager ?? {};
  return JSON.stringify(
    {
      manager: {
        admin: "127.0.0.1:0",
        cluster: "127.0.0.1:0",
        ...manager,
        tokens: { admin: ADMIN_TOKEN, cluster: { file: "cluster.token" }, ...tokens },
      },
      agents: { heartbeat: options.heartbeat ?? "200ms" },
      services: options.services,
    },
    null,
    2,
  );
}

/**
 * A config document (`manager`, `agents`, `services` as the file spells them) parsed as the manager parses
 * its file, with the cluster token written in so that nothing is read from disk; any problem fails the test.
 */
export function resolvedConfig(document: {
  readonly manager?: Readonly<Record<string, unknown>> & {
    readonly tokens?: Readonly<Record<string, unknown>>;
  };
  readonly agents?: Readonly<Record<string, unknown>>;
  readonly services: readonly Record<string, unknown>[];
}): Config {
  const manager = { ...document.manager, tokens: { cluster: CLUSTER_TOKEN, ...document.manager?.tokens } };
  const result = parseConfig(JSON.stringify({ ...document, manager }));
  assert.deepEqual(result.problems, []);
  return result.config as Config;
}

/**
 * A service as the cluster state carries it to agents: `web` on a free loopback port, placed by the agent
 * alone (`decide: agent`, `handoff: local`), with the config's defaults; `fields` name its backends and
 * table and anything else that differs.
 */
export function testServiceSpec(
  fields: Pick<ServiceSpec, "backends" | "table"> & Partial<ServiceSpec>,
): ServiceSpec {
  return {
    name: "web",
    listen: { host: "127.0.0.1", port: 0 },
    decide: "agent",
    decisionTimeoutMs: 20,
    decideAheadMs: 0,
    handoff: "local",
    affinity: { key: "none", ttlMs: 0 },
    proxyProtocol: "none",
    timeouts: { connectMs: 2_000, idleMs: 300_000, drainMs: 30_000 },
    maxConnections: 50_000,
    ...fields,
  };
}
