/** The release version of switchyard (the release workflow tags the same number) and what a build stamped. */
import { COMMIT } from "./build_info.ts";

export const VERSION = "0.1.0";

/** What `switchyard version` prints: the version, the Deno that runs it, and the commit it was built from. */
export function versionText(): string {
  const { deno, v8, typescript } = Deno.version;
  return `switchyard ${VERSION}\ndeno ${deno} (v8 ${v8}, typescript ${typescript})\ncommit ${COMMIT}`;
}
