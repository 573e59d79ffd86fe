import assert from "node:assert/strict";
import { UsageError } from "../cluster/usage.ts";
import { reportFromFlags } from "./cli.ts";
import { parseReport } from "./report.ts";

const BASE = { manager: "http://127.0.0.1:9090", token: "t", service: "web", backend: "10.0.0.11:80" };

Deno.test("switchyard feedback flags become a report the manager accepts", () => {
  const cases: Array<[Record<string, string>, Record<string, unknown>]> = [
    [{ weight: "40" }, { weight: 40 }],
    [{ utilization: "0.72", qps: "950", eps: "3", ttl: "30s" }, {
      utilization: 0.72,
      qps: 950,
      eps: 3,
      ttl: "30s",
    }],
    [{ state: "drain" }, { state: "drain" }],
    [{ weight: "0", state: "up" }, { weight: 0, state: "up" }],
  ];
  for (const [flags, fields] of cases) {
    const report = reportFromFlags({ ...BASE, ...flags });
    assert.deepEqual(report, { service: "web", backend: "10.0.0.11:80", ...fields });
    parseReport(report); // the route's own check accepts it
  }
});

Deno.test("switchyard feedback refuses flags that cannot make a report", () => {
  for (
    const [flags, message] of [
      [{}, /at least one of --weight, --utilization or --state/],
      [{ weight: "101" }, /--weight "101": expected a number from 0 to 100/],
      [{ weight: "" }, /--weight ""/],
      [{ utilization: "1.2" }, /--utilization "1.2"/],
      [{ weight: "5", utilization: "0.5" }, /--weight or --utilization, not both/],
      [{ qps: "5", state: "up" }, /--qps and --eps go with --utilization/],
      [{ state: "maint" }, /--state "maint": expected up, drain or down/],
    ] as Array<[Record<string, string>, RegExp]>
  ) {
    assert.throws(() => reportFromFlags({ ...BASE, ...flags }), (error: unknown) => {
      assert.ok(error instanceof UsageError);
      assert.match(error.message, message);
      return true;
    });
  }
});
