/** A mistake in how switchyard was called (flags, files named by flags): one line on stderr, exit code 2. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}
