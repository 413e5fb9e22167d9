// The Worker: routes each session to its own Session Durable Object (idFromName), which holds
// the session's document and sockets.
//
//   GET  /session/<name>[?token=<jwt>]   WebSocket upgrade: the y-websocket protocol
//   POST /session/<name>/revoke          {"jti": ...}, with a device token (Bearer)
//   GET  /session/<name>/info            what the object holds, with a device token (Bearer)
//   GET  /healthz                        {"name": "kiki-edge", "status": "ready"}
//   GET  /dashboard/[<file>]             the web dashboard (the device relay's page)
import { answerDashboard } from "./dashboard.js";
import { json } from "./limits.js";
import { Session } from "./session.js";

export { Session };

// The session names of the sync contract: 1 to 64 of [A-Za-z0-9._-].
const ROUTE = /^\/session\/([A-Za-z0-9._-]{1,64})(?:\/(revoke|info))?$/;
const METHODS = Object.freeze({ "": "GET", revoke: "POST", info: "GET" });

export default {
  /**
   * @param {Request} request
   * @param {{SESSION: DurableObjectNamespace}} env
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
    const stub = env.SESSION.get(env.SESSION.idFromName(name));
    return stub.fetch(request);
  },
};
