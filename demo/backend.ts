/**
 * A demo backend: an HTTP server on loopback that answers every request with its own name, and, once told
 * where the manager is, reports its load as feedback every second, so the dashboard's weights move.
 *
 * The load it reports is made up but honest about its shape: a slow sine (each backend at its own phase)
 * plus a share for the requests it served in the last second, so a busier backend reports more load and
 * gets a smaller weight.
 */
import { logger } from "../cluster/log.ts";

const log = logger("demo", "backend");

export const DEMO_FEEDBACK_DEFAULTS = {
  /** How often each backend reports. */
  intervalMs: 1_000,
  /** The sine's period, in seconds, and its middle and swing (utilization 0..1). */
  periodS: 40,
  base: 0.4,
  swing: 0.12,
  /** Utilization added per request per second, up to `maxRequestLoad`. */
  perRequest: 0.0005,
  maxRequestLoad: 0.3,
  /** How long a report holds: a backend that stops reporting is soon back at its configured weight. */
  ttl: "5s",
} as const;

/** Where and as what a demo backend reports its feedback. */
export interface FeedbackTarget {
  /** The manager's admin URL, e.g. `http://127.0.0.1:9090`. */
  readonly url: string;
  /** A feedback token allowed to report for `service`. */
  readonly token: string;
  readonly service: string;
  /** The backend's address as the config writes it. */
  readonly backend: string;
  /** Where on the sine this backend starts, in radians. */
  readonly phase?: number;
}

export interface DemoBackend {
  readonly name: string;
  readonly addr: Deno.NetAddr;
  readonly requests: () => number;
  /** Starts reporting load to the manager every second, until `close()`. */
  startFeedback(target: FeedbackTarget): void;
  /** Feedback reports the manager accepted. */
  readonly reports: () => number;
  close(): Promise<void>;
}

/** The utilization a demo backend reports `elapsedS` into its run, having served `rate` requests/s. */
export function demoUtilization(elapsedS: number, rate: number, phase = 0): number {
  const { periodS, base, swing, perRequest, maxRequestLoad } = DEMO_FEEDBACK_DEFAULTS;
  const wave = base + swing * Math.sin((2 * Math.PI * elapsedS) / periodS + phase);
  const load = Math.min(maxRequestLoad, rate * perRequest);
  return Math.round(Math.min(1, Math.max(0.01, wave + load)) * 1000) / 1000;
}

export function startDemoBackend(
  name: string,
  options: { hostname?: string; port?: number } = {},
): DemoBackend {
  let requests = 0;
  let reports = 0;
  let timer: ReturnType<typeof setInterval> | undefined;
  let inFlight: Promise<void> | null = null;
  const abort = new AbortController();
  const server = Deno.serve(
    { hostname: options.hostname ?? "127.0.0.1", port: options.port ?? 0, onListen: () => {} },
    () => {
      requests++;
      return new Response(`${name}\n`, { headers: { "content-type": "text/plain", "x-backend": name } });
    },
  );

  const report = async (target: FeedbackTarget, utilization: number): Promise<void> => {
    try {
      const response = await fetch(`${target.url}/v1/feedback`, {
        method: "POST",
        headers: { authorization: `Bearer ${target.token}`, "content-type": "application/json" },
        body: JSON.stringify({
          service: target.service,
          backend: target.backend,
          utilization,
          ttl: DEMO_FEEDBACK_DEFAULTS.ttl,
        }),
        signal: abort.signal,
      });
      await response.body?.cancel();
      if (response.ok) reports++;
      else {
        log.warn("Demo backend {backend} ({name}): the manager refused its feedback with {status}", {
          backend: target.backend,
          name,
          status: response.status,
        });
      }
    } catch (error) {
      if (abort.signal.aborted) return;
      log.debug("Demo backend {backend} ({name}) cannot report feedback: {error}", {
        backend: target.backend,
        name,
        error: error instanceof Error ? error.message : String(error),
      });
    }
  };

  return {
    name,
    addr: server.addr,
    requests: () => requests,
    reports: () => reports,
    startFeedback(target: FeedbackTarget) {
      if (timer !== undefined) throw new Error(`Demo backend ${name} already reports feedback`);
      const started = performance.now();
      let last = { at: started, requests };
      timer = setInterval(() => {
        if (inFlight !== null) return;
        const now = performance.now();
        const rate = ((requests - last.requests) * 1000) / Math.max(1, now - last.at);
        last = { at: now, requests };
        const utilization = demoUtilization((now - started) / 1000, rate, target.phase ?? 0);
        inFlight = report(target, utilization).finally(() => inFlight = null);
      }, DEMO_FEEDBACK_DEFAULTS.intervalMs);
    },
    async close() {
      clearInterval(timer);
      abort.abort();
      await inFlight;
      await server.shutdown();
    },
  };
}
