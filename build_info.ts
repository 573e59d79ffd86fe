/**
 * What a build stamps into the binary. This committed file holds the defaults of a run from source;
 * `scripts/compile.ts` (and so `deno task compile` and the release workflow) never edits it: it compiles
 * with an import map that puts a generated copy, holding the commit, in this file's place.
 */
export const COMMIT: string = "unknown (not a release build)";
