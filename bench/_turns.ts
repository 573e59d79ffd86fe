/**
 * Preloaded (`deno run --preload bench/_turns.ts …`) into a process the feedback bench measures: how long
 * the turns of its event loop run, seen as how late a 1 ms interval fires. Of each delay only the part the
 * process spent on a CPU counts (a thread the machine's other work kept waiting is not a long turn; two
 * shared cores do that often). Every 500 ms it writes one JSON line on stderr, as a log line:
 * `{"message": "turns", "properties": {"p99": …, "max": …, "count": …}}`, in ms. The interval wakes the
 * process about 500 times a second, so CPU is measured without it.
 */
import process from "node:process";

const REPORT_MS = 500;
let last = performance.now();
let lastCpu = cpuMs();
let lateness: number[] = [];

// Timers that hold no one back: a timer pending in a preloaded module would keep the main one from running.
Deno.unrefTimer(setInterval(tick, 1));
Deno.unrefTimer(setInterval(report, REPORT_MS));

function cpuMs(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1_000;
}

function tick(): void {
  const now = performance.now();
  const cpu = cpuMs();
  lateness.push(Math.max(0, Math.min(now - last - 1, cpu - lastCpu)));
  last = now;
  lastCpu = cpu;
}

function report(): void {
  const sorted = lateness.sort((a, b) => a - b);
  lateness = [];
  const round = (ms: number) => Math.round(ms * 100) / 100;
  const properties = {
    p99: round(sorted[Math.floor(sorted.length * 0.99)] ?? 0),
    max: round(sorted.at(-1) ?? 0),
    count: sorted.length,
  };
  console.error(JSON.stringify({ level: "INFO", message: "turns", properties }));
}
