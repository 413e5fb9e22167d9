// Who may join a session and what a client's frame must pass before it is read: a valid,
// unrevoked token of the session's key (in the URL, as the first message, or as the Bearer of
// a device request), what a revocation holds, the caps on clients and on sockets still waiting
// for their token, and each frame's size, the sender's rate and its token's expiry. Decisions
// only: the object accepts, refuses and closes the sockets.
import { KINDS, Refusal } from "./errors.js";
import { TokenBucket } from "./limits.js";
import { expiresAt } from "./peers.js";
import { MAX_TTL_SECONDS } from "./store.js";
import { verifyToken } from "./tokens.js";

/** @param {string | ArrayBuffer} message */
const byteLength = (message) =>
  typeof message === "string" ? new TextEncoder().encode(message).length : message.byteLength;

/**
 * The token a pending client's first message carries, a text frame `{"token": "<jwt>"}`.
 * @param {string} message
 */
export function firstMessageToken(message) {
  /** @type {unknown} */
  let token;
  try {
    token = JSON.parse(message)?.token;
  } catch {
    token = undefined;
  }
  if (typeof token !== "string") {
    throw new Refusal(KINDS.PermissionDenied, 'the first message must be {"token": "<jwt>"}');
  }
  return token;
}

/**
 * The token of `Authorization: Bearer <token>`.
 * @param {Request} request
 */
export function bearerToken(request) {
  const match = /^Bearer\s+(\S+)$/.exec(request.headers.get("Authorization") ?? "");
  if (match === null) {
    throw new Refusal(KINDS.PermissionDenied, "needs Authorization: Bearer <device token>");
  }
  return match[1];
}

/**
 * The body of a revoke request, `{"jti": "<token id>", "exp"?: <seconds>}`: the token id and
 * until when (seconds) its revocation is kept, the token's expiry or, without one, as long as
 * any token lives; null for any other body.
 * @param {unknown} body
 * @param {number} nowSeconds
 * @returns {{jti: string, until: number} | null}
 */
export function revocationOf(body, nowSeconds) {
  const { jti, exp } = /** @type {{jti?: unknown, exp?: unknown}} */ (body ?? {});
  if (
    typeof jti !== "string" ||
    jti.length === 0 ||
    jti.length > 256 ||
    (exp !== undefined && exp !== null && !Number.isSafeInteger(exp))
  ) {
    return null;
  }
  return { jti, until: typeof exp === "number" ? exp : nowSeconds + MAX_TTL_SECONDS };
}

export class Admission {
  /**
   * @param {import("./limits.js").Limits} limits
   * @param {string | undefined} trusted the KIKI_TRUSTED_KEYS binding
   * @param {import("./store.js").SessionStore} store the revoked token ids
   * @param {import("./peers.js").Peers} peers
   */
  constructor(limits, trusted, store, peers) {
    this.limits = limits;
    this.trusted = trusted;
    this.store = store;
    this.peers = peers;
    // Kept in memory only: an object is evicted after it was idle, when every bucket is full.
    /** @type {WeakMap<WebSocket, TokenBucket>} */
    this.buckets = new WeakMap();
  }

  /**
   * @param {string} token
   * @param {string} session
   */
  async checkToken(token, session) {
    const claims = await verifyToken(token, session, this.trusted);
    if (this.store.isRevoked(claims.jti)) {
      throw new Refusal(KINDS.PermissionDenied, "token revoked");
    }
    return claims;
  }

  /** Refuses a client when the session has its most already. */
  roomForAClient() {
    const open = this.peers.count("open");
    if (open >= this.limits.maxClients) {
      throw new Refusal(KINDS.LimitExceeded, `the session has ${open} clients already`);
    }
  }

  /**
   * A socket joining with its token in the URL: its claims, or a refusal.
   * @param {string} token
   * @param {string} session
   */
  async urlToken(token, session) {
    this.roomForAClient();
    const claims = await this.checkToken(token, session);
    this.roomForAClient(); // again: others may have joined while the token was checked
    return claims;
  }

  /**
   * A socket joining without a token refused when too many wait for theirs already. Only
   * clients with a valid token count toward the session's clients: sockets that sent none yet
   * are capped on their own, so they cannot keep the clients out.
   */
  roomForAPendingClient() {
    const pending = this.peers.count("pending");
    if (pending >= this.limits.maxPendingClients) {
      const why = `the session has ${pending} sockets waiting for their token already`;
      throw new Refusal(KINDS.LimitExceeded, why);
    }
  }

  /**
   * What every frame passes first, before the token too: its size and the sender's rate.
   * @param {WebSocket} ws
   * @param {import("./peers.js").Peer} peer
   * @param {string | ArrayBuffer} message
   */
  screen(ws, peer, message) {
    if (byteLength(message) > this.limits.maxMessage) {
      throw new Refusal(
        KINDS.FrameTooLarge,
        `message of ${byteLength(message)} bytes is over the limit of ${this.limits.maxMessage}`,
      );
    }
    // The device's own link carries every local client's updates: it is not held to the rate
    // of one client.
    if (peer.role !== "device" && !this.bucket(ws).take(Date.now())) {
      throw new Refusal(
        KINDS.LimitExceeded,
        `over ${this.limits.rate} messages/s (${this.limits.burst} at once)`,
      );
    }
  }

  /**
   * An open client's frame: its token still valid (the alarm closes it too; this holds should
   * the alarm be late), binary.
   * @param {import("./peers.js").Peer} peer
   * @param {string | ArrayBuffer} message
   */
  openFrame(peer, message) {
    if (expiresAt(peer) <= Date.now()) {
      throw new Refusal(KINDS.PermissionDenied, "token expired");
    }
    if (typeof message === "string") {
      throw new Refusal(KINDS.ProtocolError, "a text frame after the token (frames are binary)");
    }
    return new Uint8Array(message);
  }

  /**
   * Why the alarm closes a socket at `now` (ms), if it does: no token by its deadline, or an
   * expired one.
   * @param {import("./peers.js").Peer} peer
   * @param {number} now
   * @returns {Refusal | null}
   */
  overdue(peer, now) {
    if (peer.state === "pending" && (peer.deadline ?? 0) <= now) {
      const seconds = this.limits.authTimeoutMs / 1000;
      return new Refusal(KINDS.PermissionDenied, `no token within ${seconds} s`);
    }
    if (peer.state === "open" && expiresAt(peer) <= now) {
      return new Refusal(KINDS.PermissionDenied, "token expired");
    }
    return null;
  }

  /**
   * A request only the device may make (revoke, info): its Bearer token, of the device role.
   * @param {Request} request
   * @param {string} session
   */
  async deviceOnly(request, session) {
    const claims = await this.checkToken(bearerToken(request), session);
    if (claims.role !== "device") {
      throw new Refusal(KINDS.PermissionDenied, `an ${claims.role} token cannot do this`);
    }
  }

  /** @param {WebSocket} ws */
  bucket(ws) {
    let bucket = this.buckets.get(ws);
    if (bucket === undefined) {
      bucket = new TokenBucket(this.limits.rate, this.limits.burst, Date.now());
      this.buckets.set(ws, bucket);
    }
    return bucket;
  }
}
