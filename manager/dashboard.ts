/**
 * The dashboard at `GET /` of the manager: one self-contained page (`dashboard/page.ts`) served with a
 * strict Content-Security-Policy. The page holds no cluster data and needs no token; its script asks the
 * operator for the admin token and sends it only as a bearer token to the admin API, same origin.
 */
import { DASHBOARD_HTML } from "./dashboard/page.ts";

/** The page, with a fresh nonce that is the only way its inline style and script are allowed to run. */
export function dashboardPage(): Response {
  const nonce = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
  return new Response(DASHBOARD_HTML.replaceAll("__NONCE__", nonce), {
    headers: {
      "content-type": "text/html; charset=utf-8",
      "content-security-policy": [
        "default-src 'none'",
        `script-src 'nonce-${nonce}'`,
        `style-src 'nonce-${nonce}'`,
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
      ].join("; "),
      "cache-control": "no-store",
      "referrer-policy": "no-referrer",
      "x-content-type-options": "nosniff",
      "x-frame-options": "DENY",
    },
  });
}
