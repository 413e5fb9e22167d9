// The Session Durable Object: one per session of a key (idFromName), holding the session's
// Yjs document. Its sockets are accepted with the hibernation API, so an idle session costs no
// memory: the runtime evicts the object and keeps the sockets; the next message builds the
// object again from its SQLite storage (the document) and the sockets' attachments (who each
// client is, which awareness states it owns).
//
// This class is the runtime's side only: it accepts, sends to and closes sockets, sets the
// alarm and answers requests, and leaves each decision to its part: admission.js (tokens,
// caps, each frame's limits), document.js (the document, its log), awareness.js (the awareness
// states and their owners), peers.js (each socket's record in its attachment).
import { DurableObject } from "cloudflare:workers";
import { Admission, firstMessageToken, revocationOf } from "./admission.js";
import { SessionAwareness } from "./awareness.js";
import { SessionDocument } from "./document.js";
import { KINDS, Refusal } from "./errors.js";
import { json, limitsFrom } from "./limits.js";
import { expiresAt, fitAttachment, openPeer, pendingPeer, Peers } from "./peers.js";
import { parseMessage } from "./protocol.js";
import { SessionStore } from "./store.js";
import { LEEWAY_SECONDS } from "./tokens.js";

/** @typedef {import("./peers.js").Peer} Peer */

export class Session extends DurableObject {
  /**
   * @param {DurableObjectState} ctx
   * @param {Record<string, string | undefined>} env
   */
  constructor(ctx, env) {
    super(ctx, env);
    this.limits = limitsFrom(env);
    this.store = new SessionStore(ctx.storage);
    this.boots = this.store.countBoot();
    this.document = new SessionDocument(this.store, ctx.storage.sql, this.limits);
    this.peers = new Peers(ctx);
    this.admission = new Admission(this.limits, env.KIKI_TRUSTED_KEYS, this.store, this.peers);
    /** @type {Map<WebSocket, Promise<void>>} token checks under way, per socket */
    this.verifying = new Map();
    this.awareness = new SessionAwareness(this.limits.maxAwarenessClients);
    this.awareness.restore(this.peers.all(), Date.now());
  }

  /** @param {Request} request */
  async fetch(request) {
    const url = new URL(request.url);
    const [, , session, action] = url.pathname.split("/");
    try {
      if (action === "revoke") return await this.revoke(request, session);
      if (action === "info") return await this.info(request, session);
      return await this.join(url, session);
    } catch (error) {
      if (error instanceof Refusal) return json({ error: error.reason }, 403);
      throw error;
    }
  }

  /**
   * @param {URL} url
   * @param {string} session
   */
  async join(url, session) {
    const pair = new WebSocketPair();
    const [client, server] = Object.values(pair);
    /** @type {import("./tokens.js").Claims | null} */
    let claims = null;
    const token = url.searchParams.get("token");
    try {
      if (token === null) this.admission.roomForAPendingClient();
      else claims = await this.admission.urlToken(token, session);
    } catch (error) {
      if (!(error instanceof Refusal)) throw error;
      // Accepted and closed at once, outside the object's hibernatable sockets: a browser
      // sees the close code and the reason, never an HTTP status.
      server.accept();
      server.close(error.code, error.reason);
      return new Response(null, { status: 101, webSocket: client });
    }
    this.ctx.acceptWebSocket(server);
    const peer = pendingPeer(session, Date.now() + this.limits.authTimeoutMs);
    if (claims !== null) {
      this.open(server, peer, claims);
    } else {
      this.peers.set(server, peer);
      await this.scheduleAlarm();
    }
    return new Response(null, { status: 101, webSocket: client });
  }

  /**
   * A client with a valid token joins: the server's step 1 and the awareness states it has.
   * @param {WebSocket} ws
   * @param {Peer} peer
   * @param {import("./tokens.js").Claims} claims
   */
  open(ws, peer, claims) {
    this.peers.set(ws, openPeer(peer, claims));
    ws.send(this.document.step1());
    const states = this.awareness.states();
    if (states !== null) ws.send(states);
    void this.scheduleAlarm();
  }

  /**
   * @param {WebSocket} ws
   * @param {string | ArrayBuffer} message
   */
  async webSocketMessage(ws, message) {
    // Messages that follow a token message wait for its check, in order.
    const pending = this.verifying.get(ws);
    if (pending !== undefined) await pending;
    const peer = this.peers.get(ws);
    if (peer === null || peer.state === "closed") return;
    try {
      this.admission.screen(ws, peer, message);
      if (peer.state === "pending") {
        // Nothing is relayed to or from a client before its token.
        if (typeof message !== "string") return;
        const check = this.authenticate(ws, peer, message);
        this.verifying.set(ws, check);
        try {
          await check;
        } finally {
          this.verifying.delete(ws);
        }
        return;
      }
      this.receive(ws, peer, this.admission.openFrame(peer, message));
    } catch (error) {
      if (!(error instanceof Refusal)) {
        console.error("session: a message failed", error);
        this.refuse(ws, new Refusal({ name: "InternalError", code: 1011 }, "internal error"));
        return;
      }
      this.refuse(ws, error);
    }
  }

  /**
   * A pending client's first message: its token, checked; the client opens unless it went
   * meanwhile.
   * @param {WebSocket} ws
   * @param {Peer} peer
   * @param {string} message
   */
  async authenticate(ws, peer, message) {
    const claims = await this.admission.checkToken(firstMessageToken(message), peer.session);
    const now = this.peers.get(ws);
    if (now === null || now.state !== "pending") return;
    this.admission.roomForAClient();
    this.open(ws, now, claims);
  }

  /**
   * An open client's message: answered, or applied and relayed to the others.
   * @param {WebSocket} ws
   * @param {Peer} peer
   * @param {Uint8Array} data
   */
  receive(ws, peer, data) {
    const message = parseMessage(data);
    switch (message.kind) {
      case "step1":
        ws.send(this.document.step2(message.stateVector));
        return;
      case "update": {
        const relays = this.document.receive(message.update, peer);
        if (relays === null) return;
        for (const relay of relays) this.broadcast(relay, ws);
        // Compaction waits for the alarm, after this message's relays.
        if (this.document.compactionDue()) void this.scheduleAlarm();
        return;
      }
      case "awareness": {
        const ownedByAnother = (/** @type {number} */ id) => this.peers.ownsAwareness(id, ws);
        const accepted = this.awareness.receive(peer, message.update, ownedByAnother, ws);
        if (accepted === null) return;
        if (accepted.owned !== null) {
          this.peers.set(ws, { ...peer, aw: fitAttachment(accepted.owned) });
        }
        this.broadcast(accepted.relay, ws);
        return;
      }
      case "queryAwareness": {
        // No states, no answer (as the device relay).
        const states = this.awareness.states();
        if (states !== null) ws.send(states);
        return;
      }
    }
  }

  /**
   * @param {Uint8Array} message
   * @param {WebSocket | null} except
   */
  broadcast(message, except) {
    for (const [ws, peer] of this.peers.all()) {
      if (ws === except || peer.state !== "open") continue;
      try {
        ws.send(message);
      } catch {
        // A socket closing meanwhile: its close event cleans up.
      }
    }
  }

  /**
   * Ends one client's connection with the refusal's code; the session goes on.
   * @param {WebSocket} ws
   * @param {Refusal} refusal
   */
  refuse(ws, refusal) {
    this.forget(ws);
    try {
      ws.close(refusal.code, refusal.reason);
    } catch {
      // Already closed.
    }
  }

  /**
   * A client goes: its awareness states are removed, and the others told.
   * @param {WebSocket} ws
   */
  forget(ws) {
    const peer = this.peers.get(ws);
    if (peer === null || peer.state === "closed") return;
    this.peers.close(ws, peer);
    const removal = this.awareness.release(peer.aw);
    if (removal !== null) this.broadcast(removal, ws);
  }

  /**
   * The client closed: the closing handshake is answered (the runtime leaves that to the
   * object), echoing the client's code as RFC 6455 asks.
   * @param {WebSocket} ws
   * @param {number} code
   * @param {string} _reason
   * @param {boolean} _wasClean
   */
  async webSocketClose(ws, code, _reason, _wasClean) {
    this.forget(ws);
    try {
      ws.close(code === 1005 || code === 1006 ? 1000 : code, "");
    } catch {
      // Already closed: the runtime answered it.
    }
  }

  /**
   * @param {WebSocket} ws
   * @param {unknown} _error
   */
  async webSocketError(ws, _error) {
    this.forget(ws);
  }

  /** Closes what is due (no token in time, an expired token) and compacts the log. */
  async alarm() {
    const now = Date.now();
    for (const [ws, peer] of this.peers.all()) {
      const refusal = this.admission.overdue(peer, now);
      if (refusal !== null) this.refuse(ws, refusal);
    }
    this.document.compactIfDue();
    this.store.pruneRevoked(now / 1000 - LEEWAY_SECONDS);
    await this.scheduleAlarm();
  }

  /** Sets the alarm to the next thing due, or clears it. */
  async scheduleAlarm() {
    let next = Infinity;
    for (const [, peer] of this.peers.all()) {
      if (peer.state === "pending") next = Math.min(next, peer.deadline ?? 0);
      if (peer.state === "open") next = Math.min(next, expiresAt(peer));
    }
    if (this.document.compactionDue()) next = Date.now();
    const revoked = this.store.firstRevokedExpiry();
    if (revoked !== null) next = Math.min(next, (revoked + LEEWAY_SECONDS) * 1000);
    if (next === Infinity) await this.ctx.storage.deleteAlarm();
    else await this.ctx.storage.setAlarm(next);
  }

  /**
   * POST /session/<name>/revoke, with a device token for this session: the token id is
   * refused from now on, and the live sockets holding it are closed.
   * @param {Request} request
   * @param {string} session
   */
  async revoke(request, session) {
    await this.admission.deviceOnly(request, session);
    /** @type {unknown} */
    let body;
    try {
      body = await request.json();
    } catch {
      body = undefined;
    }
    const revocation = revocationOf(body, Date.now() / 1000);
    if (revocation === null) {
      return json({ error: 'the body must be {"jti": "<token id>", "exp"?: <seconds>}' }, 400);
    }
    const { jti, until } = revocation;
    this.store.revoke(jti, until);
    let closed = 0;
    for (const [ws, peer] of this.peers.all()) {
      if (peer.state === "open" && peer.jti === jti) {
        this.refuse(ws, new Refusal(KINDS.PermissionDenied, "token revoked"));
        closed += 1;
      }
    }
    await this.scheduleAlarm();
    return json({ revoked: jti, closed });
  }

  /**
   * GET /session/<name>/info, with a device token: what the object holds now.
   * @param {Request} request
   * @param {string} session
   */
  async info(request, session) {
    await this.admission.deviceOnly(request, session);
    return json({
      session,
      boots: this.boots,
      clients: { open: this.peers.count("open"), pending: this.peers.count("pending") },
      awareness: this.awareness.size,
      revoked: this.store.revokedCount(),
      log: { rows: this.store.logRows, bytes: this.store.logBytes },
      snapshotBytes: this.store.snapshotBytes,
    });
  }
}
