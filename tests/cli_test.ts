/** The command line as a user meets it: help, exit codes, environment variables and `check`. */
import assert from "node:assert/strict";
import { ADMIN_TOKEN, testConfig, testService } from "./_config.ts";
import { type Proc, run, startManagerProcess } from "./_helpers.ts";

Deno.test("switchyard --help and each sub-command's --help exit 0 and name their flags", async () => {
  const top = await run(["--help"]);
  assert.equal(top.code, 0);
  for (const command of ["manager", "agent", "demo", "check", "feedback", "version"]) {
    assert.match(top.stdout, new RegExp(`\\b${command}\\b`));
  }
  const agent = await run(["agent", "--help"]);
  assert.equal(agent.code, 0);
  for (
    const flag of [
      "--manager",
      "--token-file",
      "--id",
      "--mesh",
      "--admin",
      "--state-dir",
      "--log-level",
      "--log-format",
    ]
  ) {
    assert.ok(agent.stdout.includes(flag), `agent --help names ${flag}`);
  }
  assert.ok(agent.stdout.includes("SWITCHYARD_TOKEN_FILE"));
  assert.ok(agent.stdout.includes("--manager HOST:PORT[,...]"), "agent --help: several managers");
  const manager = await run(["manager", "--help"]);
  assert.equal(manager.code, 0);
  for (
    const flag of [
      "--config",
      "--admin HOST:PORT",
      "SWITCHYARD_ADMIN",
      "--cluster HOST:PORT",
      "SWITCHYARD_CLUSTER",
    ]
  ) {
    assert.ok(manager.stdout.includes(flag), `manager --help names ${flag}`);
  }
});

Deno.test("bad usage exits 2 with a one-line reason on stderr", async () => {
  for (
    const [args, reason] of [
      [["frobnicate"], /Unknown command "frobnicate"/],
      [["manager"], /Missing --config/],
      [["manager", "--config"], /--config/],
      [["manager", "--config", "x.yaml", "--bogus"], /bogus/],
      [["agent", "--manager", "127.0.0.1:99999", "--token-file", "t"], /port must be 1-65535/],
      [["agent", "--manager", "127.0.0.1:9091,127.0.0.1:99999", "--token-file", "t"], /port must be 1-65535/],
      [["agent", "--manager", ",", "--token-file", "t"], /expected HOST:PORT\[,HOST:PORT\.\.\.\]/],
      [
        ["manager", "--config", "x.yaml", "--admin", "127.0.0.1:9090", "--cluster", "127.0.0.1:9090"],
        /same address/,
      ],
      [["manager", "--config", "x.yaml", "--cluster", "nowhere"], /Cannot use --cluster/],
      [["check", "--config", "c.yaml", "--log-level", "loud"], /--log-level "loud"/],
      [["demo", "--duration", "soon"], /--duration "soon"/],
      [["demo", "--duration", "-1"], /Cannot use --duration "-1": expected a positive number of seconds/],
      [[
        "feedback",
        "--manager",
        "http://127.0.0.1:1",
        "--token",
        "t",
        "--service",
        "web",
        "--backend",
        "a:1",
      ], /at least one/],
    ] as const
  ) {
    const result = await run([...args]);
    assert.equal(result.code, 2, `${args.join(" ")} → ${result.code}: ${result.stderr}`);
    const lines = result.stderr.trim().split("\n");
    assert.equal(lines.length, 1, `one line for ${args.join(" ")}: ${result.stderr}`);
    assert.match(lines[0] as string, reason);
  }
});

Deno.test("a flag's environment variable is used when the flag is absent, and the flag wins", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/bad.yaml`, "services: 3\n");
    await Deno.writeTextFile(
      `${dir}/good.yaml`,
      "manager: { tokens: { cluster: abcdefgh12345678 } }\nservices:\n  - { name: web, listen: 127.0.0.1:8080, backends: [10.0.0.1:80] }\n",
    );
    const fromEnv = await run(["check"], { SWITCHYARD_CONFIG: `${dir}/bad.yaml` });
    assert.equal(fromEnv.code, 2);
    const flagWins = await run(["check", "--config", `${dir}/good.yaml`], {
      SWITCHYARD_CONFIG: `${dir}/bad.yaml`,
    });
    assert.equal(flagWins.code, 0, flagWins.stderr);
    assert.match(flagWins.stdout, /ok \(1 services, 1 backends\)/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("switchyard check names each problem of a broken config with its line and column", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/broken.yaml`;
    await Deno.writeTextFile(
      file,
      [
        "manager:",
        "  tokens: { cluster: abcdefgh12345678 }",
        "services:",
        "  - name: web",
        "    listen: 0.0.0.0:8080",
        "    decide: sometimes",
        "    colour: blue",
        "    backends:",
        "      - { address: 10.0.0.1:99999, weight: 100 }",
        "    health: { interval: soon }",
        "  - name: web",
        "    listen: 0.0.0.0:8081",
        "    backends: [10.0.0.2:80]",
        "",
      ].join("\n"),
    );
    const result = await run(["check", "--config", file]);
    assert.equal(result.code, 2);
    const lines = result.stdout.trim().split("\n");
    const expected: Array<[number, number, RegExp]> = [
      [6, 13, /services\[0\]\.decide: .*sometimes/],
      [7, 5, /Unknown key "colour"/],
      [9, 20, /Cannot parse address "10.0.0.1:99999": port must be 1-65535/],
      [10, 25, /services\[0\]\.health\.interval: .*soon/],
      [11, 11, /Service name "web" is already used at line 4/],
    ];
    assert.equal(lines.length, expected.length, result.stdout);
    expected.forEach(([line, column, message], index) => {
      const text = lines[index] as string;
      assert.ok(text.startsWith(`${file}:${line}:${column}: `), `problem ${index}: ${text}`);
      assert.match(text, message);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the manager refuses a bad config with exit code 2 and starts nothing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/bad.yaml`, "services: []\n");
    const result = await run(["manager", "--config", `${dir}/bad.yaml`]);
    assert.equal(result.code, 2);
    assert.match(result.stderr, /bad\.yaml:1:\d+: /);
    const missing = await run(["manager", "--config", `${dir}/nope.yaml`]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /Cannot read config file/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("switchyard version prints the version and Deno's", async () => {
  const result = await run(["version"]);
  assert.equal(result.code, 0);
  assert.match(result.stdout, /^switchyard \d+\.\d+\.\d+/);
  assert.match(result.stdout, new RegExp(`deno ${Deno.version.deno.replaceAll(".", "\\.")}`));
});

Deno.test("a config whose state cannot fit in a cluster frame is refused by check, at start and on reload, with the running one kept", async () => {
  const dir = await Deno.makeTempDir();
  const config = (services: number) =>
    testConfig({
      manager: { tokens: { cluster: "cluster-token-0123456789" } },
      services: Array.from({ length: services }, (_, i) =>
        testService({ name: `s${i}`, backends: ["127.0.0.1:9"] })),
    });
  // Each service's table of 65,537 slots is about 175 KB of the state: 100 of them pass the 16 MiB a frame has.
  const tooMany = config(100);
  let manager: Proc | null = null;
  try {
    await Deno.writeTextFile(`${dir}/big.yaml`, tooMany);
    const checked = await run(["check", "--config", `${dir}/big.yaml`]);
    assert.equal(checked.code, 2, checked.stdout + checked.stderr);
    assert.match(
      checked.stdout,
      /Cannot take a config of 100 services: the state agents need would not fit in one frame/,
    );
    const started = await run(["manager", "--config", `${dir}/big.yaml`]);
    assert.equal(started.code, 2, started.stderr);
    assert.match(started.stderr, /would not fit in one frame.*the manager did not start/);

    const running = await startManagerProcess(dir, config(2));
    manager = running.proc;
    await Deno.writeTextFile(running.config, tooMany);
    const reload = await fetch(`http://${running.admin}/v1/reload`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    const body = await reload.json();
    assert.equal(reload.status, 400, JSON.stringify(body));
    assert.match(body.problems.join("\n"), /would not fit in one frame/);
    const services = await (await fetch(`http://${running.admin}/v1/services`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    })).json();
    assert.deepEqual(
      services.services.map((s: { name: string }) => s.name),
      ["s0", "s1"],
      "the running config is kept",
    );
  } finally {
    await manager?.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
