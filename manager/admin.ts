/**
 * The manager's admin API (Hono): feedback, services, backends, agents, events, history, reload, metrics,
 * health and the dashboard. Every route but `/healthz` and `/` (the dashboard's page, which holds no data and asks
 * for the token) needs `Authorization: Bearer <token>`: the admin token for every route, a feedback token
 * for `POST /v1/feedback` and only for its services. Errors are `{"error", "path"}` JSON with the status
 * the spec gives, and a rejected request changes nothing.
 *
 * With several managers (`manager.ha`) every manager serves the whole API: a standby answers reads from the
 * state it follows and passes writes (feedback, operator states, reload) to the leader, answering what the
 * leader answered, or 503 when no manager leads; the leader answers a write once it is stored in etcd.
 */
import { setImmediate } from "node:timers";
import { Hono } from "hono";
import type { Context, MiddlewareHandler } from "hono";
import { constantTimeEqual } from "../cluster/auth.ts";
import { formatHostPort } from "../cluster/address.ts";
import { internalErrors } from "../cluster/guard.ts";
import { logger } from "../cluster/log.ts";
import { METRICS_CONTENT_TYPE } from "../cluster/prometheus.ts";
import { parseReports, ReportError } from "../feedback/mod.ts";
import type { AgentSession } from "./agent_session.ts";
import {
  type BackendRuntime,
  backendState,
  type ClusterModel,
  effectiveWeight,
  openConnections,
  RejectedReportError,
  type ServiceRuntime,
  UnknownError,
} from "./state.ts";

import { AuthThrottle } from "./auth_throttle.ts";
import type { Decider } from "./decide.ts";
import { dashboardPage } from "./dashboard.ts";
import { EVENTS_DEFAULTS } from "./events.ts";
import type { History } from "./history.ts";
import { agentClaims, ExplainError, explainFlow } from "./explain.ts";
import { PASSED_HEADER } from "./ha/forward.ts";
import { managerMetrics } from "./metrics.ts";
import { type ManagerRole, singleRole } from "./role.ts";
import { type RampView, rampView } from "./slow_start.ts";

const log = logger("manager", "admin");

/** Request bodies larger than this are refused with 413, but for `POST /v1/feedback`'s. */
export const MAX_BODY_BYTES = 64 * 1024;
/** `POST /v1/feedback` bodies larger than this are refused with 413: a batch of 1,000 reports fits. */
export const MAX_FEEDBACK_BODY_BYTES = 256 * 1024;

export const ADMIN_DEFAULTS = {
  /**
   * A batch of more reports than this gives the event loop a turn after parsing its JSON and after
   * checking its reports, before applying them (which is one turn, all or nothing): a batch of 1,000 is
   * then three turns of under a millisecond each, not one of two or three.
   */
  sliceReports: 100,
} as const;

/** The one error of the HTTP layer: a status, a message and the field it is about. */
export class ApiError extends Error {
  constructor(
    readonly status: 400 | 401 | 403 | 404 | 405 | 413 | 429 | 500 | 503,
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
  /** The manager's decisions, for `/v1/explain`. */
  readonly decider: Decider;
  /** The last 15 minutes, sampled by the manager, for `/v1/history`. */
  readonly history: History;
  /** The cluster's flow-hash seed, for `/v1/explain`. */
  readonly seed: number;
  readonly reload: () => Promise<ReloadResult>;
  readonly adminToken: () => string;
  /** Leader, standby or alone (the default: this manager decides and takes every write). */
  readonly role?: ManagerRole;
}

/** Who a request's token says it is: the admin, or a feedback reporter for some services. */
export type Caller = { readonly role: "admin" } | {
  readonly role: "feedback";
  readonly services: ReadonlySet<string>;
};

type Env = { Variables: { caller: Caller } };

export function createAdminApp(deps: AdminDeps): Hono<Env> {
  const app = new Hono<Env>();
  const authenticate = authenticator(deps);
  const role = deps.role ?? singleRole({ id: "", admin: "", cluster: "" }, deps.agents);
  const passWrites = leaderTakesWrites(role);

  app.onError((error, c) => errorResponse(error, { method: c.req.method, path: c.req.path }));
  app.notFound((c) => c.json({ error: `No route ${c.req.method} ${c.req.path}`, path: "" }, 404));

  app.get("/healthz", (c) => c.json({ status: "ok" }));

  // The dashboard's page needs no token: it holds no data, and asks for the token to fetch the data.
  app.get("/", () => dashboardPage());

  app.use("*", async (c, next) => {
    c.set("caller", await authenticate(c.req.raw, { env: c.env, path: c.req.path }));
    await next();
  });

  // POST /v1/feedback, the route applications call most (as often as every second per backend), is served
  // before Hono's routing and middleware, by the same functions; `app.request` goes this way too. Through
  // Hono's middleware a single report cost the manager's thread about twice as much.
  const take = feedbackTaker(deps, role);
  const dispatch = app.fetch;
  app.fetch = (request, env, executionCtx) => {
    if (request.method !== "POST" || pathOf(request.url) !== FEEDBACK_PATH) {
      return dispatch(request, env, executionCtx);
    }
    return (async () => {
      try {
        const caller = await authenticate(request, { env, path: FEEDBACK_PATH });
        const text = await readBody(request, MAX_FEEDBACK_BODY_BYTES);
        return await passWrite(role, request, text) ?? await take(caller, text);
      } catch (error) {
        return errorResponse(error, { method: "POST", path: FEEDBACK_PATH });
      }
    })();
  };

  app.use("/v1/*", adminOnly());

  app.get("/v1/cluster", (c) => c.json(role.view()));

  app.get("/metrics", adminOnly(), (c) => {
    const agents = deps.agents();
    const body = managerMetrics({
      services: deps.model.services(),
      agents,
      claims: agentClaims(agents.map((agent) => agent.id)),
      decisionSeconds: deps.decider.seconds,
      decisionsAhead: deps.decider.ahead.counts(),
      decisions: deps.decider.counts,
      feedbackReports: deps.model.feedbackReports,
      connectFailures: deps.model.connectFailures,
      version: deps.model.version,
      internalErrors: internalErrors(),
      modelNow: deps.model.now(),
      now: performance.now(),
      role: { name: role.role(), leaderChanges: role.leaderChanges(), stateWrites: role.stateWrites() },
    });
    return c.body(body, 200, { "content-type": METRICS_CONTENT_TYPE });
  });

  app.get("/v1/events", (c) => {
    const text = c.req.query("after") ?? "0";
    const after = Number(text);
    if (!/^\d+$/.test(text) || !Number.isSafeInteger(after)) {
      throw new ApiError(400, `Expected after to be an event number, got ${JSON.stringify(text)}`, "after");
    }
    const events = deps.model.events.after(after, EVENTS_DEFAULTS.pageSize);
    return c.json({ last: deps.model.events.last, events });
  });

  app.get("/v1/history", (c) => c.json(deps.history.view()));

  app.get("/v1/services", (c) => {
    const now = deps.model.now();
    const view: ServicesView = {
      // The state version agents acknowledge (GET /v1/agents `state_version`): equal means they serve this.
      version: deps.model.version,
      services: deps.model.services().map((service) => serviceView(service, now)),
    };
    return c.json(view);
  });

  app.get("/v1/services/:name", (c) => {
    const service = deps.model.service(c.req.param("name"));
    if (!service) throw new ApiError(404, `Unknown service "${c.req.param("name")}"`, "name");
    return c.json(serviceView(service, deps.model.now()));
  });

  app.post("/v1/services/:name/backends/:address/state", passWrites, async (c) => {
    const name = c.req.param("name");
    const address = decodedParam(c.req.param("address"));
    const service = deps.model.service(name);
    if (!service) throw new ApiError(404, `Unknown service "${name}"`, "name");
    const backend = service.byId.get(address);
    if (!backend) throw new ApiError(404, `Unknown backend "${address}" in service "${name}"`, "address");
    const body = await jsonBody(c);
    if (!isRecord(body)) throw new ApiError(400, `Expected an object like {"state": "drain"}`, "");
    const unknown = Object.keys(body).find((key) => key !== "state");
    if (unknown !== undefined) throw new ApiError(400, `Unknown field "${unknown}"`, unknown);
    const state = body.state;
    if (state !== "up" && state !== "drain") {
      throw new ApiError(400, `Expected state "up" or "drain", got ${JSON.stringify(state)}`, "state");
    }
    const before = backend.operatorState;
    deps.model.setOperatorState(name, address, state);
    await stored(role.storeOperatorState(name, address), "the backend's state");
    if (before !== state) {
      deps.model.events.add({
        kind: "operator",
        service: name,
        backend: address,
        message: `Operator set ${address} of ${name} to ${state}`,
      });
    }
    log.info("Operator set backend {backend} of {service} to {state}", {
      backend: address,
      service: name,
      state,
    });
    return c.json(backendView(service, backend, deps.model.now()));
  });

  app.get("/v1/agents", (c) => {
    const now = performance.now();
    const agents = deps.agents();
    const claims = agentClaims(agents.map((agent) => agent.id));
    return c.json({ agents: agents.map((agent) => agentView(agent, claims.get(agent.id) ?? 0, now)) });
  });

  app.get("/v1/explain", (c) => {
    const service = c.req.query("service");
    const client = c.req.query("client");
    if (!service) throw new ApiError(400, "Missing query parameter service", "service");
    if (!client) throw new ApiError(400, "Missing query parameter client, like 1.2.3.4:5555", "client");
    try {
      return c.json(
        explainFlow({ model: deps.model, decider: deps.decider, agents: deps.agents(), seed: deps.seed }, {
          service,
          client,
          serviceAddress: c.req.query("service_address"),
        }),
      );
    } catch (error) {
      if (error instanceof ExplainError) throw new ApiError(error.status, error.message, error.path);
      throw error;
    }
  });

  app.post("/v1/reload", passWrites, async (c) => {
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

/**
 * A write on a manager that does not lead goes to the leader, which answers it; with no leader known, or one
 * that cannot be reached, the answer is 503. A write another manager passed here is never passed on again.
 */
function leaderTakesWrites(role: ManagerRole): MiddlewareHandler<Env> {
  return async (c, next) => {
    // Read here, under this manager's body limit, only when it goes on.
    const response = role.writeTarget().kind === "self"
      ? null
      : await passWrite(role, c.req.raw, await readBody(c.req.raw, MAX_BODY_BYTES));
    return response ?? await next();
  };
}

/**
 * The leader's answer to a write this manager does not take (its body `text`), or null when it leads (or
 * is alone) and takes it.
 */
async function passWrite(role: ManagerRole, request: Request, text: string): Promise<Response | null> {
  const target = role.writeTarget();
  if (target.kind === "self") return null;
  const path = pathOf(request.url);
  if (request.headers.get(PASSED_HEADER) !== null || target.kind === "none") {
    throw new ApiError(503, "No manager leads now; try again shortly");
  }
  try {
    return await role.pass(
      new Request(request.url, { method: request.method, headers: request.headers, body: text }),
      target.leader,
    );
  } catch (error) {
    throw new ApiError(
      503,
      `Cannot pass ${request.method} ${path} to the leading manager at ${target.leader.admin}: ${
        reasonOf(error)
      }`,
    );
  }
}

/** Why `error` happened, as the end of a sentence. */
function reasonOf(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.charAt(0).toLowerCase() + message.slice(1);
}

/** Waits until a change is stored where a next leader finds it; 503 when it cannot be. */
async function stored(storing: Promise<void>, what: string): Promise<void> {
  try {
    await storing;
  } catch (error) {
    throw new ApiError(503, `Cannot store ${what}: ${reasonOf(error)}; try again shortly`);
  }
}

/** The client's address, as Deno.serve gives it (`unknown` in tests without a socket). */
function sourceOf(env: unknown): string {
  const info = env as { remoteAddr?: { hostname?: string } } | undefined;
  return info?.remoteAddr?.hostname ?? "unknown";
}

/**
 * Tells who a request's bearer token belongs to: the admin, a feedback token (from the config in force), or
 * a 401 (bad tokens from one source are logged and slowed down, `AuthThrottle`).
 */
function authenticator(deps: AdminDeps) {
  const throttle = new AuthThrottle();
  return async (request: Request, where: { env: unknown; path: string }): Promise<Caller> => {
    const header = request.headers.get("authorization") ?? "";
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!match) throw new ApiError(401, "Missing bearer token", "authorization");
    const token = match[1] as string;
    let caller: Caller | null = constantTimeEqual(token, deps.adminToken()) ? { role: "admin" } : null;
    for (const entry of deps.model.config.manager.tokens.feedback) {
      if (constantTimeEqual(token, entry.token) && caller === null) {
        caller = { role: "feedback", services: new Set(entry.services) };
      }
    }
    if (caller !== null) return caller;
    // Asked of Deno.serve only here: its remote address is worth knowing for a refusal alone.
    const source = sourceOf(where.env);
    const verdict = throttle.fail(source);
    if (verdict.log) {
      log.warn("Refused admin request {method} {path} from {source}: bad token ({count} this minute)", {
        method: request.method,
        path: where.path,
        source,
        count: verdict.count,
      });
    }
    if (verdict.delayMs > 0) await new Promise((resolve) => setTimeout(resolve, verdict.delayMs));
    throw new ApiError(401, "Bad token", "authorization");
  };
}

/**
 * What `POST /v1/feedback` does with a body from `caller`: checks it, applies it whole or not at all, and
 * answers 202 with the effective weight of each backend reported, in force at once.
 */
function feedbackTaker(
  deps: AdminDeps,
  role: ManagerRole,
): (caller: Caller, text: string) => Promise<Response> {
  return async (caller, text) => {
    const body = parseJson(text);
    const large = Array.isArray(body) && body.length > ADMIN_DEFAULTS.sliceReports;
    if (large) await nextTurn();
    let reports;
    try {
      reports = parseReports(body);
    } catch (error) {
      if (error instanceof ReportError) throw new ApiError(400, error.message, error.path);
      throw error;
    }
    if (large) await nextTurn();
    const batch = Array.isArray(body);
    const at = (index: number, field: string) => batch ? `[${index}].${field}` : field;
    if (caller.role === "feedback") {
      reports.forEach((report, index) => {
        if (!caller.services.has(report.service)) {
          throw new ApiError(
            403,
            `This token may not report for service "${report.service}"`,
            at(index, "service"),
          );
        }
      });
    }
    reports.forEach((report, index) => {
      const service = deps.model.service(report.service);
      if (!service) throw new ApiError(404, `Unknown service "${report.service}"`, at(index, "service"));
      if (!service.byId.has(report.backend)) {
        throw new ApiError(
          404,
          `Unknown backend "${report.backend}" in service "${report.service}"`,
          at(index, "backend"),
        );
      }
    });
    let outcomes;
    try {
      outcomes = deps.model.applyFeedback(reports);
    } catch (error) {
      if (error instanceof RejectedReportError) {
        throw new ApiError(400, error.message, at(error.index, error.field));
      }
      throw error;
    }
    await stored(role.storeFeedback(outcomes), "the feedback");
    if (log.isEnabledFor("debug")) {
      log.debug("Took {count} feedback reports", { count: reports.length, role: caller.role });
    }
    return jsonResponse({
      accepted: reports.length,
      backends: outcomes.map((outcome) => ({
        service: outcome.service,
        backend: outcome.backend,
        effective_weight: outcome.effectiveWeight,
        state: viewState(outcome.state),
      })),
      // The state version that carries these weights to the agents' tables (GET /v1/agents state_version).
      version: deps.model.version,
    }, 202);
  };
}

/** The JSON answer of an error: its own status for an `ApiError`, 404 for an unknown name, else 500 (logged). */
function errorResponse(error: unknown, where: { method: string; path: string }): Response {
  if (error instanceof ApiError) {
    return jsonResponse({ error: error.message, path: error.path }, error.status);
  }
  if (error instanceof UnknownError) return jsonResponse({ error: error.message, path: "" }, 404);
  log.error("Admin request {method} {path} failed: {error}", { ...where, error });
  return jsonResponse({ error: "Internal error", path: "" }, 500);
}

function jsonResponse(body: unknown, status: number): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

const FEEDBACK_PATH = "/v1/feedback";

/** Resolves in a later turn of the event loop, after the I/O and timers that are due. */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** The path of a request's URL (`http://host/v1/feedback?x` → `/v1/feedback`), without parsing all of it. */
function pathOf(url: string): string {
  const start = url.indexOf("/", url.indexOf("://") + 3);
  if (start < 0) return "/";
  const query = url.indexOf("?", start);
  const hash = url.indexOf("#", start);
  const end = Math.min(query < 0 ? url.length : query, hash < 0 ? url.length : hash);
  return url.slice(start, end);
}

/** Refuses feedback tokens: every route after it is the admin's. */
function adminOnly(): MiddlewareHandler<Env> {
  return async (c, next) => {
    if (c.get("caller").role !== "admin") {
      throw new ApiError(403, "A feedback token may only post feedback to /v1/feedback", "authorization");
    }
    await next();
  };
}

async function jsonBody(c: Context<Env>): Promise<unknown> {
  return parseJson(await readBody(c.req.raw, MAX_BODY_BYTES));
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new ApiError(400, `Cannot parse JSON body: ${(error as Error).message}`, "");
  }
}

/**
 * A request's body as text, refused with 413 once it is larger than `maxBytes`: at once when its
 * `content-length` says so, else (chunked) as soon as that many bytes have arrived.
 */
async function readBody(request: Request, maxBytes: number): Promise<string> {
  const tooLarge = () => new ApiError(413, `Request body is larger than ${maxBytes} bytes`);
  const length = request.headers.get("content-length");
  if (length !== null && !request.headers.has("transfer-encoding")) {
    if (Number(length) > maxBytes) throw tooLarge();
    return await request.text();
  }
  if (request.body === null) return "";
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > maxBytes) {
      await reader.cancel().catch(() => {});
      throw tooLarge();
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return new TextDecoder().decode(bytes);
}

/**
 * A path parameter with any percent-encoding left in it decoded (an address sent encoded twice); one that is
 * not valid percent-encoding (`%E0%A4%A`) is taken as written, and names no backend.
 */
function decodedParam(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** What `GET /v1/services` answers; the dashboard's script is checked against these types. */
export interface ServicesView {
  readonly version: number;
  readonly services: ServiceView[];
}
export type ServiceView = ReturnType<typeof serviceView>;
export type BackendView = ReturnType<typeof backendView>;
/** One agent in `GET /v1/agents`. */
export type AgentView = ReturnType<typeof agentView>;

function agentView(agent: AgentSession, claim: number, now: number) {
  return {
    id: agent.id,
    claim: round(claim, 4),
    last_heartbeat_s: round((now - agent.lastHeartbeat) / 1000, 3),
    connections: agent.connections,
    mesh: agent.mesh,
    address: agent.remote,
    state_version: agent.ackedVersion,
  };
}

function serviceView(service: ServiceRuntime, now: number) {
  const { config } = service;
  return {
    name: config.name,
    listen: formatHostPort(config.listen),
    decide: config.decide,
    handoff: config.handoff,
    health_check: {
      kind: config.health.kind,
      interval_s: config.health.intervalMs / 1000,
      timeout_s: config.health.timeoutMs / 1000,
      rise: config.health.rise,
      fall: config.health.fall,
      ...(config.health.kind === "http" ? { path: config.health.path } : {}),
      ...(config.health.kind === "agent-check" ? { port: config.health.port } : {}),
    },
    feedback_settings: {
      ttl_s: config.feedback.ttlMs / 1000,
      smoothing: config.feedback.smoothing,
      max_step: config.feedback.maxStep,
    },
    table: {
      size: service.table.length,
      last_slots_moved: service.lastSlotsMoved,
      slots_moved_total: service.totalSlotsMoved,
    },
    slow_start_s: config.slowStartMs / 1000,
    backends: service.backends.map((backend) => backendView(service, backend, now)),
  };
}

function viewState(state: ReturnType<typeof backendState>): "up" | "drain" | "down" {
  return state === "draining" ? "drain" : state;
}

function backendView(service: ServiceRuntime, backend: BackendRuntime, now: number) {
  const { feedback, agentCheck, lastCheck } = backend;
  const ramp = rampView(backend.slowStart, service.config.slowStartMs, now);
  return {
    address: backend.config.id,
    weight: backend.config.weight,
    effective_weight: effectiveWeight(backend),
    state: viewState(backendState(backend)),
    health: backend.health,
    open_connections: openConnections(backend),
    connections_total: backend.started,
    feedback: feedback === null ? null : {
      source: feedback.source,
      weight: feedback.weight === null ? null : round(feedback.weight, 2),
      ...(feedback.reportedWeight !== null ? { reported_weight: feedback.reportedWeight } : {}),
      ...(feedback.load ?? {}),
      ...(feedback.source === "load"
        ? {
          load_weight: feedback.raw === null ? null : round(feedback.raw, 4),
          target_weight: feedback.target === null ? null : round(feedback.target, 2),
        }
        : {}),
      state: feedback.state,
      age_s: round((now - feedback.reportedAt) / 1000, 3),
      expires_in_s: round(Math.max(0, feedback.expiresAt - now) / 1000, 3),
    },
    operator_state: backend.operatorState,
    checks: {
      passed_in_a_row: backend.checks.successes,
      failed_in_a_row: backend.checks.failures,
      last: lastCheck === null
        ? null
        : { ok: lastCheck.ok, detail: lastCheck.detail, age_s: round((now - lastCheck.at) / 1000, 3) },
    },
    agent_check: agentCheck === null ? null : {
      state: agentCheck.admin,
      share: agentCheck.share,
      ...(agentCheck.description !== "" ? { description: agentCheck.description } : {}),
    },
    slow_start: ramp === null ? null : {
      progress: round(ramp.progress, 3),
      share: round(ramp.share, 3),
      ends_in_s: round(ramp.endsInMs / 1000, 3),
    },
    why: why(backend, ramp),
  };
}

/** One line on why the effective weight is what it is, for an operator. */
function why(backend: BackendRuntime, ramp: RampView | null): string {
  const configured = backend.config.weight;
  const { feedback, agentCheck } = backend;
  const reasons: string[] = [];
  if (backend.health === "down") {
    reasons.push(`health down: ${backend.checks.failures} failed checks in a row`);
  }
  if (feedback?.state === "down") reasons.push("feedback says down");
  if (agentCheck?.admin === "maint") reasons.push("agent-check says maint");
  if (backend.operatorState === "drain") reasons.push("drained by an operator");
  if (feedback?.state === "drain") reasons.push("feedback says drain");
  if (agentCheck?.admin === "drain") reasons.push("agent-check says drain");
  if (reasons.length > 0) return `0: ${reasons.join("; ")}`;
  let text = `configured ${configured}`;
  if (feedback?.source === "weight") {
    text = `feedback weight ${feedback.reportedWeight}% of configured ${configured}`;
  } else if (feedback?.source === "load" && feedback.weight !== null && feedback.target !== null) {
    text = `load feedback: target ${round(feedback.target, 2)}, smoothed to ${round(feedback.weight, 2)}`;
  }
  if (agentCheck !== null && agentCheck.share !== 100) text += `, × agent-check ${agentCheck.share}%`;
  if (ramp !== null) {
    text += `, × slow start ${round(100 * ramp.share, 1)}% (full in ${round(ramp.endsInMs / 1000, 1)} s)`;
  }
  return `${effectiveWeight(backend)}: ${text}`;
}

function round(value: number, digits: number): number {
  const factor = 10 ** digits;
  return Math.round(value * factor) / factor;
}
