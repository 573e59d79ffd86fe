/**
 * Proving the cluster token without sending it: each side sends a random nonce and answers with an
 * HMAC-SHA256 over both nonces, keyed by the token. Comparison is constant-time.
 */

const encoder = new TextEncoder();

export function randomNonce(bytes = 16): string {
  return toBase64(crypto.getRandomValues(new Uint8Array(bytes)));
}

export function toBase64(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

/** The proof that `role` knows `token`, bound to both nonces and the agent's id. */
export async function proof(
  token: string,
  parts: { role: "agent" | "manager" | "mesh"; agentNonce: string; managerNonce: string; agent: string },
): Promise<string> {
  const key = await crypto.subtle.importKey(
    "raw",
    encoder.encode(token),
    { name: "HMAC", hash: "SHA-256" },
    false,
    [
      "sign",
    ],
  );
  const message = encoder.encode(
    `switchyard/1\n${parts.role}\n${parts.agent}\n${parts.agentNonce}\n${parts.managerNonce}`,
  );
  return toBase64(new Uint8Array(await crypto.subtle.sign("HMAC", key, message)));
}

/**
 * Compares two strings in time that depends only on their lengths: code unit by code unit, with no copy
 * (every admin request compares its token with each configured one).
 */
export function constantTimeEqual(a: string, b: string): boolean {
  let diff = a.length ^ b.length;
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    // Past the end of the shorter string charCodeAt is NaN, which `| 0` makes 0.
    diff |= (a.charCodeAt(i) | 0) ^ (b.charCodeAt(i) | 0);
  }
  return diff === 0;
}

/** A stable per-cluster seed for flow hashing, derived from the cluster token (so it survives restarts). */
export async function clusterSeed(token: string): Promise<number> {
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", encoder.encode(`switchyard seed\n${token}`)),
  );
  return new DataView(digest.buffer).getUint32(0);
}

/** HMAC-SHA256 under the cluster token, with the key imported once. */
export class TokenSigner {
  readonly #key: Promise<CryptoKey>;

  constructor(token: string) {
    this.#key = crypto.subtle.importKey(
      "raw",
      encoder.encode(token),
      { name: "HMAC", hash: "SHA-256" },
      false,
      [
        "sign",
        "verify",
      ],
    );
  }

  async sign(message: Uint8Array<ArrayBuffer>): Promise<Uint8Array> {
    return new Uint8Array(await crypto.subtle.sign("HMAC", await this.#key, message));
  }

  /** Checks a signature (Web Crypto's verify compares in constant time). */
  async verify(message: Uint8Array<ArrayBuffer>, signature: Uint8Array<ArrayBuffer>): Promise<boolean> {
    return await crypto.subtle.verify("HMAC", await this.#key, signature, message);
  }
}
