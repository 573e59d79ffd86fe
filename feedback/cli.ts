/** `switchyard feedback`: posts one feedback report to the manager's `POST /v1/feedback`. */
import { UsageError } from "../cluster/usage.ts";

type Flags = Readonly<Record<string, string | boolean | undefined>>;

/** Builds the report from the flags; throws `UsageError` for a flag that cannot be used. */
export function reportFromFlags(flags: Flags): Record<string, unknown> {
  const report: Record<string, unknown> = { service: flags.service, backend: flags.backend };
  const number = (flag: string, min: number, max: number) => {
    const text = flags[flag];
    if (typeof text !== "string") return;
    const value = Number(text);
    if (text.trim() === "" || !Number.isFinite(value) || value < min || value > max) {
      throw new UsageError(`Cannot use --${flag} "${text}": expected a number from ${min} to ${max}`);
    }
    report[flag] = value;
  };
  number("weight", 0, 100);
  number("utilization", 0, 1);
  number("qps", 0, Number.MAX_SAFE_INTEGER);
  number("eps", 0, Number.MAX_SAFE_INTEGER);
  if (flags.state !== undefined) {
    if (flags.state !== "up" && flags.state !== "drain" && flags.state !== "down") {
      throw new UsageError(`Cannot use --state "${flags.state}": expected up, drain or down`);
    }
    report.state = flags.state;
  }
  if (typeof flags.ttl === "string") report.ttl = flags.ttl;
  if (report.weight === undefined && report.utilization === undefined && report.state === undefined) {
    throw new UsageError("Give at least one of --weight, --utilization or --state");
  }
  if (report.weight !== undefined && report.utilization !== undefined) {
    throw new UsageError("Give --weight or --utilization, not both");
  }
  if ((report.qps !== undefined || report.eps !== undefined) && report.utilization === undefined) {
    throw new UsageError("--qps and --eps go with --utilization");
  }
  return report;
}

export async function runFeedback(flags: Flags): Promise<number> {
  const report = reportFromFlags(flags);
  let url: URL;
  try {
    url = new URL("/v1/feedback", String(flags.manager));
  } catch {
    throw new UsageError(
      `Cannot use --manager "${flags.manager}": expected a URL such as http://127.0.0.1:9090`,
    );
  }
  let response: Response;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${flags.token}` },
      body: JSON.stringify(report),
    });
  } catch (error) {
    console.error(`switchyard: Cannot reach the manager at ${url.origin}: ${(error as Error).message}`);
    return 1;
  }
  const text = await response.text();
  if (response.status === 202) {
    console.log(text);
    return 0;
  }
  let reason = text;
  try {
    const body = JSON.parse(text) as { error?: string; path?: string };
    reason = body.path ? `${body.error} (${body.path})` : String(body.error);
  } catch {
    // not JSON: show the text
  }
  console.error(`switchyard: The manager refused the report (${response.status}): ${reason}`);
  return response.status === 400 || response.status === 404 ? 2 : 1;
}
