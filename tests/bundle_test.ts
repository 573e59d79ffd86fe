/**
 * The program reads no file of its own source tree at run time, so the compiled binary needs nothing
 * beside it. `deno compile` cannot be run everywhere (it downloads the Deno runtime it embeds), so this
 * test does what it does with `deno bundle`: the same module graph, stamped the same way, in one file.
 * That file alone, in a fresh folder, runs with the binary's permissions, an empty Deno cache it may not
 * fill, no deno.json, reading and writing the checkout denied, and every permission it uses audited.
 */
import assert from "node:assert/strict";
import { basename, join } from "node:path";
import { fileURLToPath } from "node:url";
import { RUNTIME_FLAGS, V8_FLAGS, WORKERS } from "../scripts/compile.ts";
import { ROOT, writeStamp } from "../scripts/stamp.ts";
import { httpGet } from "./_helpers.ts";

const CHECKOUT = fileURLToPath(ROOT).replace(/\/$/, "");
/** Whether the agent serves through the epoll relay here (Linux; elsewhere it keeps to Deno's sockets). */
const relay = Deno.build.os === "linux";
// Fixed ports, as the demo's are (below the ephemeral range, not the demo_test's 18080/19090).
const LISTEN = "127.0.0.1:18081";
const ADMIN = "127.0.0.1:19091";
const decoder = new TextDecoder();

/**
 * Bundles main.ts, stamped with `commit`, into `switchyard.js` in `dir`, by way of a stamp folder removed
 * afterwards; and each worker (`WORKERS`, which `deno compile` embeds with `--include`) beside it, where the
 * bundle's `new Worker(new URL("./….ts", import.meta.url))` now points.
 */
async function bundle(dir: string, commit: string): Promise<void> {
  const stampDir = await Deno.makeTempDir({ prefix: "switchyard-stamp-" });
  try {
    const importMap = await writeStamp(stampDir, { commit });
    const entries = [
      { module: "main.ts", output: join(dir, "switchyard.js") },
      ...WORKERS.map((worker) => ({ module: worker, output: join(dir, basename(worker)) })),
    ];
    for (const { module, output: file } of entries) {
      const output = await new Deno.Command(Deno.execPath(), {
        args: ["bundle", "--platform", "deno", "--import-map", importMap, "--output", file, module],
        cwd: CHECKOUT,
        env: { NO_COLOR: "1" },
        stdin: "null",
      }).output();
      assert.ok(output.success, `deno bundle of ${module} failed:\n${decoder.decode(output.stderr)}`);
    }
  } finally {
    await Deno.remove(stampDir, { recursive: true });
  }
}

/** `deno run` of the bundle alone: cwd in its folder, an empty cache, the checkout denied, audited. */
function runBundle(bundleDir: string, options: { denoDir: string; audit: string }, args: string[]) {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-config",
      "--cached-only",
      ...RUNTIME_FLAGS,
      `--v8-flags=${V8_FLAGS.join(",")}`,
      `--deny-read=${CHECKOUT}`,
      `--deny-write=${CHECKOUT}`,
      "--no-prompt",
      join(bundleDir, "switchyard.js"),
      ...args,
    ],
    cwd: bundleDir,
    env: { NO_COLOR: "1", DENO_DIR: options.denoDir, DENO_AUDIT_PERMISSIONS: options.audit },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

Deno.test("the bundled program runs the demo from a folder outside the checkout and reads none of it", async () => {
  const bundleDir = await Deno.makeTempDir({ prefix: "switchyard-bundle-" });
  const scratch = await Deno.makeTempDir({ prefix: "switchyard-bundle-run-" });
  const denoDir = join(scratch, "deno");
  const audit = join(scratch, "audit.jsonl");
  try {
    const commit = `bundle-test-${crypto.randomUUID().slice(0, 8)}`;
    await bundle(bundleDir, commit);
    const copied = [];
    for await (const entry of Deno.readDir(bundleDir)) copied.push(entry.name);
    assert.deepEqual(
      copied.sort(),
      [...WORKERS.map((worker) => basename(worker)), "switchyard.js"].sort(),
      "the folder holds the bundle and its workers, nothing else",
    );

    const version = await runBundle(bundleDir, { denoDir, audit }, ["version"]).output();
    assert.equal(version.code, 0, decoder.decode(version.stderr));
    assert.match(decoder.decode(version.stdout), new RegExp(`^commit ${commit}$`, "m"));

    const demo = runBundle(bundleDir, { denoDir, audit }, [
      "demo",
      "--listen",
      LISTEN,
      "--admin",
      ADMIN,
      "--duration",
      "30",
    ]).spawn();
    let stdout = "";
    let stderr = "";
    const reading = Promise.all([
      demo.stdout.pipeThrough(new TextDecoderStream()).pipeTo(
        new WritableStream({ write: (text) => void (stdout += text) }),
      ),
      demo.stderr.pipeThrough(new TextDecoderStream()).pipeTo(
        new WritableStream({ write: (text) => void (stderr += text) }),
      ),
    ]);
    try {
      const deadline = performance.now() + 20_000;
      while (!stdout.includes("Press Ctrl-C")) {
        assert.ok(performance.now() < deadline, `the demo did not start:\n${stdout}\n${stderr}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const names = new Set<string>();
      for (let i = 0; i < 30; i++) names.add((await httpGet(Number(LISTEN.split(":")[1]))).trim());
      assert.deepEqual([...names].sort(), ["demo-a", "demo-b", "demo-c"]);
      const health = await fetch(`http://${ADMIN}/healthz`);
      assert.equal(health.status, 200);
      await health.body?.cancel();

      demo.kill("SIGINT");
      const status = await demo.status;
      assert.equal(status.code, 0, stderr);
      if (relay) {
        // The relay's worker loaded from beside the bundle, as the binary loads it from what it embeds.
        assert.doesNotMatch(stderr, /Cannot serve connections through the epoll relay/);
        assert.match(stderr, /Serving connections through the epoll relay/);
      }
    } finally {
      try {
        demo.kill("SIGKILL");
      } catch {
        // already exited
      }
      await demo.status;
      await reading;
    }

    const accesses = (await Deno.readTextFile(audit)).trim().split("\n").map((line) =>
      JSON.parse(line) as { permission: string; value: string | null }
    );
    assert.ok(accesses.some((access) => access.permission === "net"), "the audit saw the demo's sockets");
    const files = accesses.filter((access) => access.permission === "read" || access.permission === "write");
    const inCheckout = files.filter((access) => access.value?.startsWith(CHECKOUT));
    assert.deepEqual(inCheckout, [], "no file of the checkout is read or written");
    // The worker modules beside the bundle are read to start them (the binary reads them from what it
    // embeds); nothing else.
    const workers = new Set(WORKERS.map((worker) => join(bundleDir, basename(worker))));
    const others = files.filter((access) =>
      !(access.permission === "read" && workers.has(access.value ?? ""))
    );
    assert.deepEqual(others, [], "the demo reads and writes no other file");
  } finally {
    await Deno.remove(bundleDir, { recursive: true });
    await Deno.remove(scratch, { recursive: true });
  }
});
