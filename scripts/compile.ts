/**
 * `deno task compile` and `deno task compile:all`: one self-contained `switchyard` binary per target, with
 * the commit stamped in (see `stamp.ts`). Everything the program runs is embedded; it reads no file of
 * this tree at run time.
 *
 *   deno task compile                        dist/switchyard, for this machine
 *   deno task compile:all                    dist/<target>/switchyard[.exe], for every target below
 *   deno task compile --target T [--target U]   dist/<target>/switchyard[.exe]
 *   … --commit SHA                           stamp SHA instead of asking git (a build without .git)
 *
 * `deno compile` fetches the Deno runtime (denort) of each target the first time, then keeps it in the
 * Deno cache; a machine without that download fails at that step.
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { gitCommit, ROOT, writeStamp } from "./stamp.ts";

/** Every target `deno compile` builds for: Linux x64 and arm64, macOS x64 and arm64, Windows x64. */
export const TARGETS = [
  "x86_64-unknown-linux-gnu",
  "aarch64-unknown-linux-gnu",
  "x86_64-apple-darwin",
  "aarch64-apple-darwin",
  "x86_64-pc-windows-msvc",
] as const;

/**
 * What the binary may do, and nothing more: network (every role), environment (`SWITCHYARD_*` flags and
 * `${VAR}` in the config), host name (the agent's default id), reading config, token, TLS and state files,
 * writing the agent's state, and FFI: the agent's epoll relay calls libc (`agent/relay/libc.ts`). No
 * subprocesses. `--unstable-net` is for `reusePort`, which lets several agents on one machine share a
 * service's port. tests/bundle_test.ts runs the demo with these.
 */
export const RUNTIME_FLAGS = [
  "--unstable-net",
  "--allow-net",
  "--allow-env",
  "--allow-sys",
  "--allow-read",
  "--allow-write",
  "--allow-ffi",
] as const;

/**
 * Worker modules, which `deno compile` does not find by itself in `new Worker(new URL(…))`: embedded with
 * `--include`, at the same place relative to the module that starts them.
 */
export const WORKERS = ["agent/relay/relay_worker.ts"] as const;

/**
 * V8 flags the binary embeds (the bench passes them to `deno run` too, so it measures what ships).
 * `--max-semi-space-size=4` caps each half of V8's young generation at 4 MiB instead of letting it grow
 * to 16: an agent holding 9,000 idle connections then needs 10.0 KiB per connection instead of 13.8
 * (the young generation no longer swells while connections open), for about 1% more CPU in scavenges
 * under 5,000 new connections/s (120 scavenges, 124 ms in 6 s, against 23 and 56 ms). Measured with
 * `--trace-gc`.
 */
export const V8_FLAGS = ["--max-semi-space-size=4"] as const;

export interface CompileOptions {
  /** Targets to build; empty for this machine's, into `dist/switchyard`. */
  readonly targets?: readonly string[];
  /** The commit to stamp; by default asked of git. */
  readonly commit?: string;
  /** Where binaries go (default `dist/` in the checkout). */
  readonly outDir?: string;
}

/** Compiles every target in turn; returns the binaries' paths, or throws at the first that fails. */
export async function compile(options: CompileOptions = {}): Promise<string[]> {
  const { targets = [], outDir = fileURLToPath(new URL("dist/", ROOT)) } = options;
  for (const target of targets) {
    if (!(TARGETS as readonly string[]).includes(target)) {
      throw new RangeError(`Cannot compile for target "${target}": expected one of ${TARGETS.join(", ")}`);
    }
  }
  const commit = options.commit ?? await gitCommit();
  const stampDir = await Deno.makeTempDir({ prefix: "switchyard-stamp-" });
  try {
    const importMap = await writeStamp(stampDir, { commit });
    const builds = targets.length === 0
      ? [{ target: null, output: join(outDir, "switchyard") }]
      : targets.map((target) => ({ target, output: join(outDir, target, "switchyard") }));
    const outputs: string[] = [];
    for (const { target, output } of builds) {
      console.error(`compile: ${target ?? "this machine"} → ${output} (commit ${commit})`);
      const status = await new Deno.Command(Deno.execPath(), {
        args: [
          "compile",
          "--import-map",
          importMap,
          ...RUNTIME_FLAGS,
          `--v8-flags=${V8_FLAGS.join(",")}`,
          ...WORKERS.flatMap((worker) => ["--include", worker]),
          ...(target ? ["--target", target] : []),
          "--output",
          output,
          fileURLToPath(new URL("main.ts", ROOT)),
        ],
        cwd: ROOT,
        stdin: "null",
      }).spawn().status;
      if (!status.success) {
        throw new Error(`Cannot compile for ${target ?? "this machine"}: deno compile exited ${status.code}`);
      }
      const windows = target === null ? Deno.build.os === "windows" : target.includes("windows");
      outputs.push(windows ? `${output}.exe` : output);
    }
    return outputs;
  } finally {
    await Deno.remove(stampDir, { recursive: true });
  }
}

if (import.meta.main) {
  let values;
  try {
    ({ values } = parseArgs({
      args: Deno.args,
      options: {
        all: { type: "boolean" },
        target: { type: "string", multiple: true },
        commit: { type: "string" },
        "out-dir": { type: "string" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    console.error(`compile: ${(error as Error).message}`);
    Deno.exit(2);
  }
  try {
    const outputs = await compile({
      targets: values.all ? TARGETS : values.target ?? [],
      ...(values.commit === undefined ? {} : { commit: values.commit }),
      ...(values["out-dir"] === undefined ? {} : { outDir: values["out-dir"] }),
    });
    for (const output of outputs) console.log(output);
  } catch (error) {
    console.error(`compile: ${(error as Error).message}`);
    Deno.exit(1);
  }
}
