// The web dashboard at /dashboard/: the device relay's page and files (embedded by build.mjs),
// answered as the relay answers them (services/sync-relay/src/kiki_sync_relay/dashboard): the
// same types, ETags, caching and content security policy. The page joins the session on this
// same origin (wss://<host>/session/<name>) with the token from its URL's fragment.
import FILES from "kiki:dashboard";
import { TYPES } from "./dashboard-types.js";
import { json } from "./limits.js";

export const PREFIX = "/dashboard/";

// A name with a content hash never changes its bytes: a browser may keep it for good.
const HASHED = /^[A-Za-z0-9_-]+-[0-9a-f]{12}\.[a-z]+$/;
// The page loads its own script and style sheet and opens a WebSocket to where it came from:
// nothing inline, nothing from elsewhere, never framed. ('self' covers ws: and wss: on the
// page's own host and port: CSP Level 3, as browsers have it.)
const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
  "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
const COMMON = Object.freeze({
  "Content-Security-Policy": CSP,
  "X-Content-Type-Options": "nosniff",
  "Referrer-Policy": "no-referrer",
  "Cross-Origin-Opener-Policy": "same-origin",
  "X-Frame-Options": "DENY",
});

/** @typedef {{body: Uint8Array, type: string, etag: string, cache: string}} Asset */

/** @type {Map<string, Asset> | null} decoded on first use, once per isolate */
let assets = null;

/** @returns {Map<string, Asset>} */
function loaded() {
  if (assets === null) {
    assets = new Map();
    for (const [name, { etag, body }] of Object.entries(FILES)) {
      const suffix = name.includes(".") ? name.slice(name.lastIndexOf(".")) : "";
      assets.set(name, {
        body: Uint8Array.from(atob(body), (c) => c.charCodeAt(0)),
        type: TYPES[suffix] ?? "application/octet-stream",
        etag,
        cache: HASHED.test(name) ? "public, max-age=31536000, immutable" : "no-cache",
      });
    }
  }
  return assets;
}

/**
 * The answer to a request under /dashboard, or null when its path is not the dashboard's.
 * @param {Request} request
 * @param {URL} url
 * @returns {Response | null}
 */
export function answerDashboard(request, url) {
  const path = url.pathname;
  if (path !== PREFIX.slice(0, -1) && !path.startsWith(PREFIX)) return null;
  // RFC 9110 (9.1): GET and HEAD; a HEAD is answered as its GET, without the body.
  const head = request.method === "HEAD";
  if (request.method !== "GET" && !head) {
    return new Response(JSON.stringify({ error: "use GET or HEAD" }), {
      status: 405,
      headers: { Allow: "GET, HEAD", "Content-Type": "application/json" },
    });
  }
  if (path === PREFIX.slice(0, -1)) {
    // The same headers as the page's: a redirect is a response a browser renders too.
    const moved = new Headers(COMMON);
    moved.set("Location", PREFIX);
    return new Response(null, { status: 308, headers: moved });
  }
  // A WebSocket on the dashboard's path is no session.
  const upgrade = request.headers.get("Upgrade")?.toLowerCase() === "websocket";
  const found = upgrade ? undefined : loaded().get(path.slice(PREFIX.length) || "index.html");
  if (found === undefined) {
    const missing = json({ error: "no such path" }, 404);
    return head ? new Response(null, { status: 404, headers: missing.headers }) : missing;
  }
  const headers = new Headers(COMMON);
  headers.set("Cache-Control", found.cache);
  headers.set("ETag", found.etag);
  // "*" matches any current representation, and every file here has one (RFC 9110, 13.1.2).
  const held = etags(request.headers.get("If-None-Match"));
  if (held.has(found.etag) || held.has("*")) {
    return new Response(null, { status: 304, headers });
  }
  headers.set("Content-Type", found.type);
  if (head) {
    headers.set("Content-Length", String(found.body.byteLength));
    return new Response(null, { status: 200, headers });
  }
  return new Response(found.body, { status: 200, headers });
}

/**
 * The entity tags an If-None-Match header names (weak ones as strong: a GET compares weakly).
 * @param {string | null} header
 */
function etags(header) {
  return new Set((header ?? "").split(",").map((tag) => tag.trim().replace(/^W\//, "")));
}
