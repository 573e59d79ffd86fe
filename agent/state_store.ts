/**
 * The agent's last known cluster state on disk, so it serves without the manager, also across its own
 * restart. Written atomically: a temporary file in the same folder, then a rename.
 */
import { join } from "node:path";
import { type ClusterState, ClusterStateSchema } from "../cluster/protocol.ts";

export const STATE_FILE = "state.json";

export async function saveState(dir: string, state: ClusterState): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const target = join(dir, STATE_FILE);
  const temporary = join(dir, `.${STATE_FILE}.${crypto.randomUUID()}.tmp`);
  try {
    // Readable by this user only: with manager.tls the state holds the mesh port's private key.
    await Deno.writeTextFile(temporary, JSON.stringify(state), { mode: 0o600 });
    await Deno.rename(temporary, target);
  } catch (error) {
    await Deno.remove(temporary).catch(() => {});
    throw error;
  }
}

/** The saved state, or null when there is none; a file that does not validate is an error. */
export async function loadState(dir: string): Promise<ClusterState | null> {
  const file = join(dir, STATE_FILE);
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
  const result = ClusterStateSchema.safeParse(JSON.parse(text));
  if (!result.success) {
    throw new TypeError(`Cannot use saved state "${file}": ${result.error.issues[0]?.message ?? "invalid"}`);
  }
  return result.data;
}
