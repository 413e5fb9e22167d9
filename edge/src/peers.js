// Who each socket is: a Peer record kept in the socket's attachment (serializeAttachment), so
// it survives hibernation; the object reads it back, lazily, when it is built again. The only
// module that touches attachments and the runtime's list of sockets.
import { LEEWAY_SECONDS } from "./tokens.js";

/**
 * What the object keeps about each socket.
 * @typedef {object} Peer
 * @property {string} id
 * @property {string} session
 * @property {"pending" | "open" | "closed"} state pending: accepted, no token yet
 * @property {number} [deadline] ms: a pending socket is closed then
 * @property {string} [role]
 * @property {string} [sub]
 * @property {string} [jti]
 * @property {number} [exp] seconds: the token's expiry
 * @property {Owned} [aw] the awareness states the socket owns
 */

/**
 * Awareness client id -> [clock, state or null when too large to keep in the attachment].
 * @typedef {Record<string, [number, unknown]>} Owned
 */

// A socket attachment may hold 2 KiB: the rest of a Peer takes at most about 700 bytes (sub
// and jti at most 256 each, see tokens.js); awareness states beyond this are kept in memory
// only.
const ATTACHMENT_BUDGET = 1200;

/**
 * When an open peer's token is refused (ms): its expiry plus the clocks' leeway.
 * @param {Peer} peer
 */
export const expiresAt = (peer) => ((peer.exp ?? 0) + LEEWAY_SECONDS) * 1000;

/**
 * A socket accepted without a token: closed at `deadline` (ms) unless one comes first.
 * @param {string} session
 * @param {number} deadline
 * @returns {Peer}
 */
export const pendingPeer = (session, deadline) => ({
  id: crypto.randomUUID(),
  session,
  state: "pending",
  deadline,
});

/**
 * The peer once its token is valid: what the token says, nothing of before but its id.
 * @param {Peer} peer
 * @param {import("./tokens.js").Claims} claims
 * @returns {Peer}
 */
export function openPeer(peer, claims) {
  const { role, sub, jti, exp } = claims;
  return { id: peer.id, session: peer.session, state: "open", role, sub, jti, exp };
}

/**
 * The awareness states a socket owns, with the states dropped (kept as null) from the largest
 * down until the attachment fits its budget; ids and clocks are always kept.
 * @param {Owned} owned
 */
export function fitAttachment(owned) {
  const fitted = { ...owned };
  const size = () => JSON.stringify(fitted).length;
  const bySize = Object.keys(fitted).sort(
    (a, b) => JSON.stringify(fitted[b]).length - JSON.stringify(fitted[a]).length,
  );
  for (const key of bySize) {
    if (size() <= ATTACHMENT_BUDGET) break;
    fitted[key] = [fitted[key][0], null];
  }
  return fitted;
}

/** The object's sockets and their Peer records. */
export class Peers {
  /** @param {DurableObjectState} ctx */
  constructor(ctx) {
    this.ctx = ctx;
    /** @type {WeakMap<WebSocket, Peer>} */
    this.cache = new WeakMap();
  }

  /**
   * @param {WebSocket} ws
   * @returns {Peer | null} null for a socket with no attachment yet
   */
  get(ws) {
    let peer = this.cache.get(ws);
    if (peer === undefined) {
      peer = /** @type {Peer | null} */ (ws.deserializeAttachment()) ?? undefined;
      if (peer === undefined) return null;
      this.cache.set(ws, peer);
    }
    return peer;
  }

  /**
   * @param {WebSocket} ws
   * @param {Peer} peer
   */
  set(ws, peer) {
    this.cache.set(ws, peer);
    ws.serializeAttachment(peer);
  }

  /**
   * The peer gone: nothing of it kept but its id (a socket already closed may refuse the
   * attachment; the record in memory is enough then).
   * @param {WebSocket} ws
   * @param {Peer} peer
   */
  close(ws, peer) {
    /** @type {Peer} */
    const closed = { id: peer.id, session: peer.session, state: "closed" };
    try {
      this.set(ws, closed);
    } catch {
      this.cache.set(ws, closed);
    }
  }

  /**
   * The hibernatable sockets that have a record, in the runtime's order.
   * @returns {Iterable<[WebSocket, Peer]>}
   */
  *all() {
    for (const ws of this.ctx.getWebSockets()) {
      const peer = this.get(ws);
      if (peer !== null) yield [ws, peer];
    }
  }

  /** @param {"pending" | "open"} state how many sockets are in it */
  count(state) {
    let n = 0;
    for (const [, peer] of this.all()) if (peer.state === state) n += 1;
    return n;
  }

  /**
   * Whether a socket other than `except` owns awareness client `id`.
   * @param {number} id
   * @param {WebSocket} except
   */
  ownsAwareness(id, except) {
    for (const [ws, peer] of this.all()) {
      if (ws !== except && peer.state === "open" && String(id) in (peer.aw ?? {})) return true;
    }
    return false;
  }
}
