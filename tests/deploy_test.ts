/**
 * The files of deploy/ as an operator uses them: every example config passes `switchyard check` once the
 * files that docs/operations.md has the operator make exist, and the systemd units and the compose file
 * start the roles with flags and variables that the command line takes.
 */
import assert from "node:assert/strict";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";
import { parseCommandLine } from "../main.ts";
import { run } from "./_helpers.ts";

const DEPLOY = fileURLToPath(new URL("../deploy/", import.meta.url));
/** The names docs/operations.md gives the secrets it has the operator make, beside the config. */
const TOKEN_FILES = ["admin.token", "cluster.token", "web-feedback.token"];
/** What deploy/compose.yaml hands the manager in its environment. */
const COMPOSE_ENV = { SWITCHYARD_ADMIN_TOKEN: randomHex(), SWITCHYARD_CLUSTER_TOKEN: randomHex() };

function randomHex(): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(32)), (b) => b.toString(16).padStart(2, "0")).join(
    "",
  );
}

async function files(dir: string, suffix: string): Promise<string[]> {
  const found: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    const path = join(dir, entry.name);
    if (entry.isDirectory) found.push(...await files(path, suffix));
    else if (entry.name.endsWith(suffix)) found.push(path);
  }
  return found.sort();
}

/** Every switchyard config in deploy/: each YAML file but the compose file. */
async function exampleConfigs(): Promise<string[]> {
  return (await files(DEPLOY, ".yaml")).filter((file) => !file.endsWith("compose.yaml"));
}

async function hasOpenssl(): Promise<boolean> {
  try {
    return (await new Deno.Command("openssl", { args: ["version"], stdout: "null", stderr: "null" }).output())
      .success;
  } catch {
    return false;
  }
}

/** Makes the token files, and with openssl the CA and the manager's certificate, as the docs do. */
async function makeSecrets(dir: string, options: { tls: boolean }): Promise<void> {
  for (const name of TOKEN_FILES) await Deno.writeTextFile(join(dir, name), `${randomHex()}\n`);
  if (!options.tls) return;
  await Deno.mkdir(join(dir, "tls"));
  const openssl = async (...args: string[]) => {
    const output = await new Deno.Command("openssl", { args, cwd: join(dir, "tls"), stdin: "null" }).output();
    assert.ok(output.success, `openssl ${args.join(" ")}: ${new TextDecoder().decode(output.stderr)}`);
  };
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  await openssl(
    "req",
    "-x509",
    ...ec,
    "-days",
    "1",
    "-subj",
    "/CN=switchyard CA",
    "-keyout",
    "ca.key",
    "-out",
    "ca.crt",
  );
  await openssl("req", ...ec, "-subj", "/CN=10.0.0.10", "-keyout", "manager.key", "-out", "manager.csr");
  await Deno.writeTextFile(
    join(dir, "tls", "ext"),
    "subjectAltName=IP:10.0.0.10\nextendedKeyUsage=serverAuth\n",
  );
  await openssl(
    "x509",
    "-req",
    "-in",
    "manager.csr",
    "-CA",
    "ca.crt",
    "-CAkey",
    "ca.key",
    "-days",
    "1",
    "-extfile",
    "ext",
    "-out",
    "manager.crt",
  );
}

Deno.test("every example config in deploy/ passes switchyard check", async (t) => {
  const configs = await exampleConfigs();
  assert.ok(configs.length >= 3, `expected the example configs in deploy/, found ${configs.join(", ")}`);
  const openssl = await hasOpenssl();
  for (const config of configs) {
    const text = await Deno.readTextFile(config);
    const tls = /^\s+tls:/m.test(text);
    await t.step({
      name: relative(DEPLOY, config),
      ignore: tls && !openssl,
      fn: async () => {
        const dir = await Deno.makeTempDir({ prefix: "switchyard-deploy-" });
        try {
          const copy = join(dir, "switchyard.yaml");
          await Deno.writeTextFile(copy, text);
          await makeSecrets(dir, { tls });
          const result = await run(["check", "--config", copy], COMPOSE_ENV);
          assert.equal(result.code, 0, `${result.stdout}${result.stderr}`);
          assert.match(result.stdout, /: ok \(\d+ services?, \d+ backends?\)/);
        } finally {
          await Deno.remove(dir, { recursive: true });
        }
      },
    });
  }
  if (!openssl) console.log("openssl is not installed: the TLS example config was not checked");
});

Deno.test("switchyard check refuses the example config while its token files are missing", async () => {
  const dir = await Deno.makeTempDir({ prefix: "switchyard-deploy-" });
  try {
    const copy = join(dir, "switchyard.yaml");
    await Deno.copyFile(join(DEPLOY, "switchyard.yaml"), copy);
    const result = await run(["check", "--config", copy]);
    assert.equal(result.code, 2);
    for (const name of TOKEN_FILES) {
      assert.match(result.stdout, new RegExp(`Cannot read token file "[^"]*${name.replace(".", "\\.")}"`));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** `KEY=value` lines of an environment file, comments and blank lines left out. */
function envFile(text: string): Map<string, string> {
  const entries = text.split("\n").map((line) => line.trim()).filter((line) =>
    line !== "" && !line.startsWith("#")
  )
    .map((line) => {
      const equals = line.indexOf("=");
      assert.ok(equals > 0, `not KEY=value: ${line}`);
      return [line.slice(0, equals), line.slice(equals + 1)] as const;
    });
  return new Map(entries);
}

/** Asserts that `args` parse as a switchyard command line and that `env` sets only flags it has. */
function assertCommandLine(args: string[], env: ReadonlyMap<string, string>, where: string) {
  const parsed = parseCommandLine(args, (name) => env.get(name));
  assert.equal(parsed.help, false, where);
  const flags = new Set(
    [...Object.keys(parsed.command.flags), "log-level", "log-format"].map((flag) =>
      `SWITCHYARD_${flag.toUpperCase().replaceAll("-", "_")}`
    ),
  );
  for (const name of env.keys()) {
    if (name.startsWith("SWITCHYARD_")) {
      assert.ok(flags.has(name), `${where}: ${name} is no flag of switchyard ${args[0]}`);
    }
  }
}

Deno.test("the systemd units start the binary with flags and variables the command line takes", async () => {
  const units = (await files(DEPLOY, ".service")).filter((unit) => !unit.endsWith("switchyard-etcd.service"));
  assert.deepEqual(units.map((unit) => relative(DEPLOY, unit)), [
    "switchyard-agent@.service",
    "switchyard-manager.service",
  ]);
  const agentEnv = envFile(await Deno.readTextFile(join(DEPLOY, "agent.env.example")));
  // A manager of several reads its own addresses from /etc/switchyard/manager.env.
  const managerEnvs = [
    new Map<string, string>(),
    envFile(await Deno.readTextFile(join(DEPLOY, "ha/manager.env.example"))),
  ];
  for (const unit of units) {
    const text = await Deno.readTextFile(unit);
    const commands = [...text.matchAll(/^ExecStart(?:Pre)?=(.+)$/gm)].map((match) => match[1] as string);
    assert.ok(commands.length > 0, `${unit} has no ExecStart`);
    for (const command of commands) {
      const [binary, ...args] = command.replaceAll("%i", "edge-1").replaceAll("%S", "/var/lib").split(/\s+/);
      assert.equal(binary, "/usr/local/bin/switchyard");
      const envs = text.includes("EnvironmentFile=/etc/switchyard/agent-%i.env")
        ? [agentEnv]
        : text.includes("EnvironmentFile=-/etc/switchyard/manager.env") && args[0] === "manager"
        ? managerEnvs
        : [new Map<string, string>()];
      for (const env of envs) assertCommandLine(args, env, `${relative(DEPLOY, unit)}: ${command}`);
    }
  }
});

Deno.test("the etcd unit runs Debian's etcd with the members of the managers' config, every setting an etcd flag", async () => {
  const unit = await Deno.readTextFile(join(DEPLOY, "ha/switchyard-etcd.service"));
  assert.match(unit, /^ExecStart=\/usr\/bin\/etcd$/m);
  assert.match(unit, /^EnvironmentFile=\/etc\/switchyard\/etcd\.env$/m);
  assert.match(unit, /^Conflicts=etcd\.service$/m);
  const env = envFile(await Deno.readTextFile(join(DEPLOY, "ha/etcd.env.example")));
  // The three members the managers are given are the three the cluster is made of, on their client port.
  const members = (env.get("ETCD_INITIAL_CLUSTER") ?? "").split(",").map((member) =>
    new URL(member.split("=")[1]!)
  );
  assert.equal(members.length, 3);
  const config = parse(await Deno.readTextFile(join(DEPLOY, "ha/switchyard.yaml"))) as {
    manager: { ha: { etcd: string[] } };
  };
  assert.deepEqual(
    config.manager.ha.etcd,
    members.map((peer) => `http://${peer.hostname}:2379`),
  );
  assert.ok(config.manager.ha.etcd.includes(env.get("ETCD_ADVERTISE_CLIENT_URLS")!));
  let help: string;
  try {
    const output = await new Deno.Command("/usr/bin/etcd", {
      args: ["--help"],
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    help = new TextDecoder().decode(output.stdout) + new TextDecoder().decode(output.stderr);
  } catch {
    console.log("etcd is not installed: its flags were not checked");
    return;
  }
  for (const name of env.keys()) {
    assert.ok(name.startsWith("ETCD_"), name);
    const flag = `--${name.slice(5).toLowerCase().replaceAll("_", "-")}`;
    assert.ok(help.includes(`${flag} `), `${name}: etcd has no flag ${flag}`);
  }
});

Deno.test("the compose file runs the manager on an example config and agents with flags they take", async () => {
  const compose = parse(await Deno.readTextFile(join(DEPLOY, "compose.yaml")), { merge: true }) as {
    services: Record<string, { image?: string; command?: string[]; volumes?: string[] }>;
  };
  const switchyard = Object.entries(compose.services).filter(([, service]) =>
    service.image === "switchyard:local"
  );
  assert.deepEqual(switchyard.map(([name]) => name), ["manager", "agent-1", "agent-2"]);
  for (const [name, service] of switchyard) {
    assert.ok(service.command, `${name} has a command`);
    assertCommandLine(service.command, new Map(), `compose service ${name}`);
  }
  const mounted = compose.services.manager?.volumes?.map((volume) => volume.split(":")[0] as string) ?? [];
  const configs = await exampleConfigs();
  assert.ok(
    mounted.some((source) => configs.includes(join(DEPLOY, source))),
    `the manager mounts one of the example configs: ${mounted.join(", ")}`,
  );
});

Deno.test("the compose file of several managers runs three etcd members, two managers on one config, and agents given both", async () => {
  const compose = parse(await Deno.readTextFile(join(DEPLOY, "ha/compose.yaml")), { merge: true }) as {
    services: Record<
      string,
      { image?: string; command?: string[]; volumes?: string[]; environment?: Record<string, string> }
    >;
  };
  const services = Object.entries(compose.services);
  const switchyard = services.filter(([, service]) => service.image === "switchyard:local");
  assert.deepEqual(switchyard.map(([name]) => name), ["manager-1", "manager-2", "agent-1", "agent-2"]);
  const flags = new Map<string, ReturnType<typeof parseCommandLine>["flags"]>();
  for (const [name, service] of switchyard) {
    assert.ok(service.command, `${name} has a command`);
    assertCommandLine(service.command, new Map(), `compose service ${name}`);
    flags.set(name, parseCommandLine(service.command, () => undefined).flags);
  }
  const clusters = ["manager-1", "manager-2"].map((name) => flags.get(name)?.cluster);
  assert.deepEqual(clusters, ["manager-1:9091", "manager-2:9091"]);
  for (const agent of ["agent-1", "agent-2"]) assert.equal(flags.get(agent)?.manager, clusters.join(","));
  const etcd = services.filter(([name]) => name.startsWith("etcd-"));
  assert.deepEqual(etcd.map(([name]) => name), ["etcd-1", "etcd-2", "etcd-3"]);
  for (const [name, service] of etcd) {
    assert.equal(service.environment?.ETCD_NAME, name);
    assert.equal(service.environment?.ETCD_INITIAL_CLUSTER?.split(",").length, 3);
  }
  const mounted = compose.services["manager-1"]?.volumes?.map((volume) => volume.split(":")[0] as string) ??
    [];
  const config = parse(await Deno.readTextFile(join(DEPLOY, "ha", mounted[0]!))) as {
    manager: { ha: { etcd: string[] } };
  };
  assert.deepEqual(config.manager.ha.etcd, etcd.map(([name]) => `http://${name}:2379`));
});
