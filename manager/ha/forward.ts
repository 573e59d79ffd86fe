/**
 * A standby passes a write it was sent (feedback, an operator state, a reload) to the leader's admin API,
 * with the caller's own token, and answers what the leader answered.
 */
import type { ManagerRef } from "../role.ts";

/** Marks a request a standby passed on: a manager that does not lead answers it 503, never passes it again. */
export const PASSED_HEADER = "x-switchyard-passed-by";

export const FORWARD_DEFAULTS = {
  /** How long the leader has to answer. */
  timeoutMs: 5_000,
} as const;

export interface PassOptions {
  /** Where the leader's admin API is. */
  readonly leader: ManagerRef;
  /** This manager's id, sent in `PASSED_HEADER`. */
  readonly via: string;
  /** With `manager.tls`: the admin API speaks https, and this client trusts the managers' certificate. */
  readonly client: Deno.HttpClient | null;
  readonly timeoutMs?: number;
}

/** Sends `request` (its method, path, query, token, content type and body) to the leader; throws if it cannot. */
export async function passToLeader(request: Request, options: PassOptions): Promise<Response> {
  const { leader } = options;
  const url = new URL(request.url);
  const body = request.method === "GET" || request.method === "HEAD" ? null : await request.text();
  const scheme = options.client === null ? "http" : "https";
  const headers = new Headers({ [PASSED_HEADER]: options.via });
  for (const name of ["authorization", "content-type"]) {
    const value = request.headers.get(name);
    if (value !== null) headers.set(name, value);
  }
  let response: Response;
  let answer: ArrayBuffer;
  try {
    response = await fetch(`${scheme}://${leader.admin}${url.pathname}${url.search}`, {
      method: request.method,
      headers,
      body,
      signal: AbortSignal.timeout(options.timeoutMs ?? FORWARD_DEFAULTS.timeoutMs),
      ...(options.client === null ? {} : { client: options.client }),
    });
    answer = await response.arrayBuffer();
  } catch (error) {
    // fetch says only "fetch failed"; why is in its cause.
    const cause = error instanceof Error && error.cause instanceof Error ? error.cause.message : null;
    throw new Error(cause ?? (error instanceof Error ? error.message : String(error)), { cause: error });
  }
  const passed = new Headers();
  const type = response.headers.get("content-type");
  if (type !== null) passed.set("content-type", type);
  return new Response(answer, { status: response.status, headers: passed });
}
