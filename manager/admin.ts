/**
 * The manager's admin API (Hono): services, backends, agents, reload, metrics and health. Every route but
 * `/healthz` needs `Authorization: Bearer <token>`; errors are `{"error", "path"}` JSON with the status
 * the spec gives, and a rejected request changes nothing.
 */
import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import type { Context, MiddlewareHandler } from "hono";
import { constantTimeEqual } from "../cluster/auth.ts";
import { formatHostPort } from "../cluster/address.ts";
import { logger } from "../cluster/log.ts";
import type { AgentSession } from "./cluster_server.ts";
import {
  type BackendRuntime,
  backendState,
  type ClusterModel,
  effectiveWeight,
  openConnections,
  type ServiceRuntime,
  UnknownError,
} from "./state.ts";

const log = logger("manager", "admin");

/** Request bodies larger than this are refused with 413. */
export const MAX_BODY_BYTES = 64 * 1024;

/** The one error of the HTTP layer: a status, a message and the field it is about. */
export class ApiError extends Error {
  constructor(
    readonly status: 400 | 401 | 403 | 404 | 405 | 413 | 429 | 500,
    message: string,
    readonly path = "",
  ) {
    super(message);
    this.name = "ApiError";
  }
}

export type ReloadResult = { ok: true; version: number } | { ok: false; problems: string[] };

export interface AdminDeps {
  readonly model: ClusterModel;
  readonly agents: () => AgentSession[];
  readonly reload: () => Promise<ReloadResult>;
  readonly adminToken: () => string;
}

type Env = { Variables: { token: string } };

export function createAdminApp(deps: AdminDeps): Hono<Env> {
  const app = new Hono<Env>();

  app.onError((error, c) => {
    if (error instanceof ApiError) {
      return c.json({ error: error.message, path: error.path }, error.status);
    }
    if (error instanceof UnknownError) return c.json({ error: error.message, path: "" }, 404);
    log.error("Admin request {method} {path} failed: {error}", {
      method: c.req.method,
      path: c.req.path,
      error,
    });
    return c.json({ error: "Internal error", path: "" }, 500);
  });
  app.notFound((c) => c.json({ error: `No route ${c.req.method} ${c.req.path}`, path: "" }, 404));

  app.get("/healthz", (c) => c.json({ status: "ok" }));

  app.use("*", bearer(deps));
  app.use(
    "*",
    bodyLimit({
      maxSize: MAX_BODY_BYTES,
      onError: () => {
        throw new ApiError(413, `Request body is larger than ${MAX_BODY_BYTES} bytes`);
      },
    }),
  );

  app.get("/v1/services", (c) => c.json({ services: deps.model.services().map(serviceView) }));

  app.get("/v1/services/:name", (c) => {
    const service = deps.model.service(c.req.param("name"));
    if (!service) throw new ApiError(404, `Unknown service "${c.req.param("name")}"`, "name");
    return c.json(serviceView(service));
  });

  app.post("/v1/services/:name/backends/:address/state", async (c) => {
    const name = c.req.param("name");
    const address = decodeURIComponent(c.req.param("address"));
    const service = deps.model.service(name);
    if (!service) throw new ApiError(404, `Unknown service "${name}"`, "name");
    const backend = service.backends.find((b) => b.config.id === address);
    if (!backend) throw new ApiError(404, `Unknown backend "${address}" in service "${name}"`, "address");
    const body = await jsonBody(c);
    const state = isRecord(body) ? body.state : undefined;
    if (state !== "up" && state !== "drain") {
      throw new ApiError(400, `Expected state "up" or "drain", got ${JSON.stringify(state)}`, "state");
    }
    deps.model.setOperatorState(name, address, state);
    log.info("Operator set backend {backend} of {service} to {state}", {
      backend: address,
      service: name,
      state,
    });
    return c.json(backendView(backend));
  });

  app.get("/v1/agents", (c) => {
    const now = performance.now();
    return c.json({
      agents: deps.agents().map((agent) => ({
        id: agent.id,
        claim: round(1 / Math.max(1, deps.agents().length), 4),
        last_heartbeat_s: round((now - agent.lastHeartbeat) / 1000, 3),
        connections: agent.connections,
        mesh: agent.mesh,
        address: agent.remote,
        state_version: agent.ackedVersion,
      })),
    });
  });

  app.post("/v1/reload", async (c) => {
    const result = await deps.reload();
    if (!result.ok) {
      return c.json({
        error: "Config rejected; the running config is kept",
        path: "",
        problems: result.problems,
      }, 400);
    }
    return c.json({ reloaded: true, version: result.version });
  });

  return app;
}

function bearer(deps: AdminDeps): MiddlewareHandler<Env> {
  return async (c, next) => {
    const header = c.req.header("authorization") ?? "";
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!match) throw new ApiError(401, "Missing bearer token", "authorization");
    const token = match[1] as string;
    if (!constantTimeEqual(token, deps.adminToken())) {
      log.warn("Refused admin request {method} {path}: bad token", {
        method: c.req.method,
        path: c.req.path,
      });
      throw new ApiError(401, "Bad token", "authorization");
    }
    c.set("token", token);
    await next();
  };
}

async function jsonBody(c: Context<Env>): Promise<unknown> {
  const text = await c.req.text();
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new ApiError(400, `Cannot parse JSON body: ${(error as Error).message}`, "");
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function serviceView(service: ServiceRuntime) {
  const { config } = service;
  return {
    name: config.name,
    listen: formatHostPort(config.listen),
    decide: config.decide,
    handoff: config.handoff,
    table: {
      size: service.table.length,
      last_slots_moved: service.lastSlotsMoved,
      slots_moved_total: service.totalSlotsMoved,
    },
    backends: service.backends.map(backendView),
  };
}

function backendView(backend: BackendRuntime) {
  const state = backendState(backend);
  return {
    address: backend.config.id,
    weight: backend.config.weight,
    effective_weight: effectiveWeight(backend),
    state: state === "draining" ? "drain" : state,
    health: backend.health,
    open_connections: openConnections(backend),
    feedback: null,
  };
}

function round(value: number, digits: number): number {
  const factor = 10 ** digits;
  return Math.round(value * factor) / factor;
}
