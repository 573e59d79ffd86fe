/**
 * Network namespaces for end-to-end tests that need a network of their own: a real partition, or kernel
 * settings (sysctls) that must not touch the machine's. Roles run inside with `ip netns exec`; the test
 * reaches them through veth pairs. Addresses are taken from one private /24 (10.200.N.0/24, N picked
 * free) and assigned only to the veths made here: no packet leaves the machine. `close()` deletes every
 * namespace (and with them their veths) and checks nothing is left behind.
 */
import { Proc } from "./_helpers.ts";

const decoder = new TextDecoder();

export async function ip(...args: string[]): Promise<{ ok: boolean; text: string }> {
  try {
    const out = await new Deno.Command("ip", { args, stdout: "piped", stderr: "piped" }).output();
    return { ok: out.success, text: decoder.decode(out.stdout) + decoder.decode(out.stderr) };
  } catch (error) {
    return { ok: false, text: String(error) };
  }
}

async function must(...args: string[]): Promise<string> {
  const result = await ip(...args);
  if (!result.ok) throw new Error(`ip ${args.join(" ")} failed: ${result.text.trim()}`);
  return result.text;
}

/** Why namespaces cannot be made here (not root, not Linux, `ip netns add` fails), or null when they can. */
export async function netnsUnavailable(): Promise<string | null> {
  if (Deno.build.os !== "linux") return "not Linux";
  if (Deno.uid() !== 0) return "not root";
  const probe = `sy-${Deno.pid}-probe`;
  const added = await ip("netns", "add", probe);
  if (!added.ok) return `ip netns add failed: ${added.text.trim()}`;
  await ip("netns", "del", probe);
  return null;
}

/**
 * A switchyard sub-command run inside a network namespace: a `Proc` started with `ip netns exec` (which
 * execs: the pid is the role's).
 */
export class NsProc extends Proc {
  constructor(ns: string, args: string[]) {
    super(args, { netns: ns });
  }
}

/**
 * The arguments of agent `id` joining `manager` with the token in `dir/cluster.token`: it takes handed-off
 * flows on a free port of 127.0.0.1 and logs JSON lines from debug up.
 */
export function meshAgentArgs(manager: string, dir: string, id: string): string[] {
  return [
    "agent",
    "--manager",
    manager,
    "--token-file",
    `${dir}/cluster.token`,
    "--id",
    id,
    "--mesh",
    "127.0.0.1:0",
    "--log-format",
    "json",
    "--log-level",
    "debug",
  ];
}

/** The namespaces and veths of one test, named after this process so that concurrent runs never meet. */
export class TestNetwork {
  readonly tag = `sy${Deno.pid}`;
  readonly #namespaces: string[] = [];
  readonly #rootLinks: string[] = [];
  /** The third octet of this network's 10.200.N.0/24. */
  subnet = 0;

  /** 10.200.N.host */
  address(host: number): string {
    return `10.200.${this.subnet}.${host}`;
  }

  /** Picks a /24 of 10.200.0.0/16 that no address or route of the root namespace uses yet. */
  async pickSubnet(): Promise<void> {
    const used = (await must("-o", "addr")) + (await must("route"));
    for (let i = 0; i < 200; i++) {
      const n = 20 + ((Deno.pid + i) % 200);
      if (!used.includes(`10.200.${n}.`)) {
        this.subnet = n;
        return;
      }
    }
    throw new Error("No free 10.200.N.0/24");
  }

  /** Makes namespace `sy-PID-suffix` with its loopback up, and returns its name. */
  async namespace(suffix: string): Promise<string> {
    const name = `sy-${Deno.pid}-${suffix}`;
    await must("netns", "add", name);
    this.#namespaces.push(name);
    await must("-n", name, "link", "set", "lo", "up");
    return name;
  }

  /**
   * A veth pair between two namespaces (null: the root namespace), with 10.200.N.leftHost/30 and
   * 10.200.N.rightHost/30 on its ends, both up. Link names are `syPID` + the given suffixes (≤ 15 bytes).
   */
  async veth(
    left: { ns: string | null; suffix: string; host: number },
    right: { ns: string | null; suffix: string; host: number },
  ): Promise<{ left: string; right: string }> {
    const leftName = `${this.tag}${left.suffix}`;
    const rightName = `${this.tag}${right.suffix}`;
    await must("link", "add", leftName, "type", "veth", "peer", "name", rightName);
    for (const [end, name] of [[left, leftName], [right, rightName]] as const) {
      if (end.ns) await must("link", "set", name, "netns", end.ns);
      else this.#rootLinks.push(name);
      const on = end.ns ? ["-n", end.ns] : [];
      await must(...on, "addr", "add", `${this.address(end.host)}/30`, "dev", name);
      await must(...on, "link", "set", name, "up");
    }
    return { left: leftName, right: rightName };
  }

  /** Sets a link of a namespace up or down. */
  async link(ns: string | null, name: string, state: "up" | "down"): Promise<void> {
    await must(...(ns ? ["-n", ns] : []), "link", "set", name, state);
  }

  /** Sets a sysctl inside a namespace; false when the kernel does not let a namespace set it. */
  async sysctl(ns: string, key: string, value: string): Promise<boolean> {
    const out = await new Deno.Command("ip", {
      args: ["netns", "exec", ns, "sysctl", "-q", "-w", `${key}=${value}`],
      stdout: "null",
      stderr: "null",
    }).output().catch(() => null);
    return out?.success ?? false;
  }

  /** Deletes every namespace and root-side veth made here; throws if any is left. */
  async close(): Promise<void> {
    for (const ns of this.#namespaces) await ip("netns", "del", ns);
    // Deleting a namespace deletes its veths, and with them their peers; these are in case it did not.
    for (const link of this.#rootLinks) await ip("link", "del", link);
    const links = (await ip("-o", "link")).text;
    const namespaces = (await ip("netns", "list")).text;
    if (links.includes(this.tag) || namespaces.includes(`sy-${Deno.pid}-`)) {
      throw new Error(`Left behind: ${links.includes(this.tag) ? "a veth" : "a namespace"} of ${this.tag}`);
    }
  }
}
