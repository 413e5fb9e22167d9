// The Worker: routes each session to its own Session Durable Object, which holds the
// session's document and sockets. A session belongs to the key that signs its tokens: the
// object is named by that key's kid and the session's name (idFromName(scopeOf(kid, name))),
// and the request reaches it as /session/<kid>:<name>[/action], so the object checks every
// token (the URL's, the first message's, a Bearer) against that key. Which key: the verified
// kid of the URL's token or of the Bearer; without a token in the URL (a browser sends it as
// the first message), the kid the URL names (?kid=, public), or the edge's only key.
//
//   GET  /session/<name>[?token=<jwt>]   WebSocket upgrade: the y-websocket protocol
//   POST /session/<name>/revoke          {"jti": ...}, with a device token (Bearer)
//   GET  /session/<name>/info            what the object holds, with a device token (Bearer)
//   GET  /healthz                        {"name": "kiki-edge", "status": "ready"}
//   GET  /dashboard/[<file>]             the web dashboard (the device relay's page)
import { answerDashboard } from "./dashboard.js";
import { KINDS, Refusal } from "./errors.js";
import { json } from "./limits.js";
import { Session } from "./session.js";
import { scopeOf, trustedKids, verifyToken } from "./tokens.js";

export { Session };

// The session names of the sync contract: 1 to 64 of [A-Za-z0-9._-].
const ROUTE = /^\/session\/([A-Za-z0-9._-]{1,64})(?:\/(revoke|info))?$/;
const METHODS = Object.freeze({ "": "GET", revoke: "POST", info: "GET" });

export default {
  /**
   * @param {Request} request
   * @param {{SESSION: DurableObjectNamespace, KIKI_TRUSTED_KEYS?: string}} env
   */
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/healthz" && request.method === "GET") {
      return json({ name: "kiki-edge", status: "ready" });
    }
    const page = answerDashboard(request, url);
    if (page !== null) return page;
    const match = ROUTE.exec(url.pathname);
    if (match === null) return json({ error: "no such path" }, 404);
    const [, name, action = ""] = match;
    const method = METHODS[/** @type {keyof typeof METHODS} */ (action)];
    if (request.method !== method) {
      return new Response(JSON.stringify({ error: `use ${method}` }), {
        status: 405,
        headers: { Allow: method, "Content-Type": "application/json" },
      });
    }
    if (action === "" && request.headers.get("Upgrade")?.toLowerCase() !== "websocket") {
      return json({ error: "expected a WebSocket upgrade" }, 426);
    }
    /** @type {string} */
    let kid;
    try {
      kid = await owner(request, url, name, action, env.KIKI_TRUSTED_KEYS);
    } catch (error) {
      if (!(error instanceof Refusal)) throw error;
      if (action !== "") return json({ error: error.reason }, 403);
      // As the object refuses: a browser sees the close code and the reason, never a status.
      const [client, server] = Object.values(new WebSocketPair());
      server.accept();
      server.close(error.code, error.reason);
      return new Response(null, { status: 101, webSocket: client });
    }
    const scope = scopeOf(kid, name);
    const inner = new URL(url);
    inner.pathname = `/session/${scope}${action === "" ? "" : `/${action}`}`;
    const stub = env.SESSION.get(env.SESSION.idFromName(scope));
    return stub.fetch(new Request(inner, request));
  },
};

/**
 * The kid of the key whose session `name` the request is for, or a PermissionDenied refusal.
 * @param {Request} request
 * @param {URL} url
 * @param {string} name
 * @param {string} action
 * @param {string | undefined} trusted the KIKI_TRUSTED_KEYS binding
 * @returns {Promise<string>}
 */
async function owner(request, url, name, action, trusted) {
  if (action !== "") {
    const bearer = /^Bearer\s+(\S+)$/.exec(request.headers.get("Authorization") ?? "");
    if (bearer === null) {
      throw new Refusal(KINDS.PermissionDenied, "needs Authorization: Bearer <device token>");
    }
    return (await verifyToken(bearer[1], name, trusted)).kid;
  }
  const token = url.searchParams.get("token");
  if (token !== null) return (await verifyToken(token, name, trusted)).kid;
  const kids = trustedKids(trusted);
  const named = url.searchParams.get("kid");
  if (named !== null) {
    if (!kids.includes(named)) {
      throw new Refusal(KINDS.PermissionDenied, "no trusted key has that kid");
    }
    return named;
  }
  if (kids.length === 1) return kids[0];
  throw new Refusal(
    KINDS.PermissionDenied,
    `this edge trusts ${kids.length} keys: name the session's (?kid=) or put the token in the URL`,
  );
}
