// The Session Durable Object: one per session name (idFromName), holding the session's Yjs
// document. Its sockets are accepted with the hibernation API, so an idle session costs no
// memory: the runtime evicts the object and keeps the sockets; the next message builds the
// object again from its SQLite storage (the document) and the sockets' attachments (who each
// client is, which awareness states it owns).
import { DurableObject } from "cloudflare:workers";
import * as decoding from "lib0/decoding";
import * as encoding from "lib0/encoding";
import * as awarenessProtocol from "y-protocols/awareness";
import * as Y from "yjs";
import { KINDS, Refusal } from "./errors.js";
import { json, limitsFrom, TokenBucket } from "./limits.js";
import { addedEntriesProblem, addOnlyRoots, forbiddenRoots } from "./parts.js";
import {
  awarenessMessage,
  awarenessStates,
  checkOnScratch,
  isEmptyUpdate,
  parseMessage,
  syncStep1,
  syncStep2,
  updateMessage,
} from "./protocol.js";
import { MAX_TTL_SECONDS, SessionStore } from "./store.js";
import { LEEWAY_SECONDS, verifyToken, WRITERS } from "./tokens.js";
import {
  advancedClients,
  clocksOf,
  grownClients,
  MAX_YJS_IDS,
  writerOf,
  YjsWriters,
} from "./writers.js";

/**
 * What the object keeps about each socket (serializeAttachment: it survives hibernation).
 * @typedef {object} Peer
 * @property {string} id
 * @property {string} session
 * @property {"pending" | "open" | "closed"} state pending: accepted, no token yet
 * @property {number} [deadline] ms: a pending socket is closed then
 * @property {string} [role]
 * @property {string} [sub]
 * @property {string} [jti]
 * @property {number} [exp] seconds: the token's expiry
 * @property {Record<string, [number, unknown]>} [aw] awareness client id -> [clock, state or
 *   null when too large to keep here]
 */

// A socket attachment may hold 2 KiB: the rest of a Peer takes at most about 700 bytes (sub
// and jti at most 256 each, see tokens.js); awareness states beyond this are kept in memory
// only.
const ATTACHMENT_BUDGET = 1200;

/** @param {string | ArrayBuffer} message */
const byteLength = (message) =>
  typeof message === "string" ? new TextEncoder().encode(message).length : message.byteLength;

export class Session extends DurableObject {
  /**
   * @param {DurableObjectState} ctx
   * @param {Record<string, string | undefined>} env
   */
  constructor(ctx, env) {
    super(ctx, env);
    this.limits = limitsFrom(env);
    this.trusted = env.KIKI_TRUSTED_KEYS;
    this.store = new SessionStore(ctx.storage);
    this.boots = this.store.countBoot();
    this.doc = this.store.loadDoc();
    this.writers = new YjsWriters(ctx.storage.sql);
    /** @type {WeakMap<WebSocket, Peer>} */
    this.peers = new WeakMap();
    // Kept in memory only: an object is evicted after it was idle, when every bucket is full.
    /** @type {WeakMap<WebSocket, TokenBucket>} */
    this.buckets = new WeakMap();
    /** @type {Map<WebSocket, Promise<void>>} token checks under way, per socket */
    this.verifying = new Map();
    // Only the Awareness object's codec and bookkeeping are used; destroy() stops its timer,
    // which would otherwise keep the object from hibernating.
    this.awareness = new awarenessProtocol.Awareness(new Y.Doc());
    this.awareness.destroy();
    const now = Date.now();
    for (const ws of ctx.getWebSockets()) {
      const peer = this.peer(ws);
      for (const [key, [clock, state]] of Object.entries(peer?.aw ?? {})) {
        const id = Number(key);
        this.awareness.meta.set(id, { clock, lastUpdated: now });
        if (state !== null) this.awareness.states.set(id, /** @type {any} */ (state));
      }
    }
  }

  /**
   * @param {WebSocket} ws
   * @returns {Peer | null}
   */
  peer(ws) {
    let peer = this.peers.get(ws);
    if (peer === undefined) {
      peer = /** @type {Peer | null} */ (ws.deserializeAttachment()) ?? undefined;
      if (peer === undefined) return null;
      this.peers.set(ws, peer);
    }
    return peer;
  }

  /**
   * @param {WebSocket} ws
   * @param {Peer} peer
   */
  remember(ws, peer) {
    this.peers.set(ws, peer);
    ws.serializeAttachment(peer);
  }

  /** @returns {Iterable<[WebSocket, Peer]>} */
  *sockets() {
    for (const ws of this.ctx.getWebSockets()) {
      const peer = this.peer(ws);
      if (peer !== null) yield [ws, peer];
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
    /** @type {Refusal | null} */
    let refusal = null;
    /** @type {import("./tokens.js").Claims | null} */
    let claims = null;
    const token = url.searchParams.get("token");
    // Only clients with a valid token count toward the session's clients: sockets that sent
    // none yet are capped on their own, so they cannot keep the clients out.
    if (token === null) {
      const pending = this.count("pending");
      if (pending >= this.limits.maxPendingClients) {
        const why = `the session has ${pending} sockets waiting for their token already`;
        refusal = new Refusal(KINDS.LimitExceeded, why);
      }
    } else {
      try {
        this.roomForAClient();
        claims = await this.checkToken(token, session);
        this.roomForAClient(); // again: others may have joined while the token was checked
      } catch (error) {
        if (!(error instanceof Refusal)) throw error;
        refusal = error;
      }
    }
    if (refusal !== null) {
      // Accepted and closed at once, outside the object's hibernatable sockets: a browser
      // sees the close code and the reason, never an HTTP status.
      server.accept();
      server.close(refusal.code, refusal.reason);
      return new Response(null, { status: 101, webSocket: client });
    }
    this.ctx.acceptWebSocket(server);
    /** @type {Peer} */
    const peer = { id: crypto.randomUUID(), session, state: "pending" };
    if (claims !== null) {
      this.open(server, peer, claims);
    } else {
      this.remember(server, { ...peer, deadline: Date.now() + this.limits.authTimeoutMs });
      await this.scheduleAlarm();
    }
    return new Response(null, { status: 101, webSocket: client });
  }

  /** @param {"pending" | "open"} state how many sockets are in it */
  count(state) {
    let n = 0;
    for (const [, peer] of this.sockets()) if (peer.state === state) n += 1;
    return n;
  }

  /** Refuses a client when the session has its most already. */
  roomForAClient() {
    const open = this.count("open");
    if (open >= this.limits.maxClients) {
      throw new Refusal(KINDS.LimitExceeded, `the session has ${open} clients already`);
    }
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

  /**
   * A client with a valid token joins: the server's step 1 and the awareness states it has.
   * @param {WebSocket} ws
   * @param {Peer} peer
   * @param {import("./tokens.js").Claims} claims
   */
  open(ws, peer, claims) {
    const { role, sub, jti, exp } = claims;
    const opened = { id: peer.id, session: peer.session, state: "open", role, sub, jti, exp };
    this.remember(ws, /** @type {Peer} */ (opened));
    ws.send(syncStep1(this.doc));
    const clients = [...this.awareness.states.keys()];
    if (clients.length > 0) ws.send(awarenessStates(this.awareness, clients));
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
    const peer = this.peer(ws);
    if (peer === null || peer.state === "closed") return;
    try {
      if (byteLength(message) > this.limits.maxMessage) {
        throw new Refusal(
          KINDS.FrameTooLarge,
          `message of ${byteLength(message)} bytes is over the limit of ${this.limits.maxMessage}`,
        );
      }
      // The rate holds before the token too. The device's own link carries every local
      // client's updates: it is not held to the rate of one client.
      if (peer.role !== "device" && !this.bucket(ws).take(Date.now())) {
        throw new Refusal(
          KINDS.LimitExceeded,
          `over ${this.limits.rate} messages/s (${this.limits.burst} at once)`,
        );
      }
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
      // The alarm closes it too; this holds should the alarm be late.
      if (((peer.exp ?? 0) + LEEWAY_SECONDS) * 1000 <= Date.now()) {
        throw new Refusal(KINDS.PermissionDenied, "token expired");
      }
      if (typeof message === "string") {
        throw new Refusal(KINDS.ProtocolError, "a text frame after the token (frames are binary)");
      }
      this.receive(ws, peer, new Uint8Array(message));
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
   * @param {WebSocket} ws
   * @param {Peer} peer
   * @param {string} message
   */
  async authenticate(ws, peer, message) {
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
    const claims = await this.checkToken(token, peer.session);
    const now = this.peer(ws);
    if (now === null || now.state !== "pending") return;
    this.roomForAClient();
    this.open(ws, now, claims);
  }

  /**
   * @param {WebSocket} ws
   * @param {Peer} peer
   * @param {Uint8Array} data
   */
  receive(ws, peer, data) {
    const message = parseMessage(data);
    switch (message.kind) {
      case "step1":
        ws.send(syncStep2(this.doc, message.stateVector));
        return;
      case "update":
        this.receiveUpdate(ws, peer, message.update);
        return;
      case "awareness": {
        const writer = WRITERS.has(peer.role ?? "");
        const entries = awarenessChanges(this.awareness, message.update);
        // A stock y-websocket client times out the states of others it has not heard from
        // for 30 s and sends that removal too: a removal from anyone but the owner is dropped
        // (not applied, not relayed), so a stock client stays joined when someone's tab
        // sleeps. An observer owns nothing.
        const kept = entries.filter(
          ([id, present]) => present || (writer && !this.ownerOf(id, ws)),
        );
        if (!writer) {
          // A stock client also sends back every awareness change it applies, the states the
          // server told it included (same clocks): from a reader that echo is dropped;
          // anything new is refused.
          if (kept.length === 0) return;
          throw new Refusal(KINDS.PermissionDenied, `an ${peer.role} cannot send awareness`);
        }
        if (kept.length < entries.length) {
          if (kept.length === 0) return;
          this.receiveAwareness(ws, peer, encodeEntries(kept));
          return;
        }
        this.receiveAwareness(ws, peer, message.update);
        return;
      }
      case "queryAwareness": {
        // No states, no answer (as the device relay).
        const clients = [...this.awareness.states.keys()];
        if (clients.length > 0) ws.send(awarenessStates(this.awareness, clients));
        return;
      }
    }
  }

  /**
   * Checked, applied, durable, then relayed to the others.
   * @param {WebSocket} ws
   * @param {Peer} peer
   * @param {Uint8Array} update
   */
  receiveUpdate(ws, peer, update) {
    if (!WRITERS.has(peer.role ?? "")) {
      // A reader answers the server's step 1 with what it has that the server lacks: nothing.
      if (isEmptyUpdate(update)) return;
      throw new Refusal(KINDS.PermissionDenied, `an ${peer.role} cannot write`);
    }
    const size = this.store.snapshotBytes + this.store.logBytes + update.length;
    if (size > this.limits.maxDocument) {
      throw new Refusal(KINDS.LimitExceeded, `the session document is full (${size} bytes)`);
    }
    checkOnScratch(update);
    const writer = writerOf(peer);
    const device = peer.role === "device";
    // What the update names (its structs' `to`) is checked before it applies; only what it
    // grew in the live document is claimed (Skip structs name ids they change nothing under).
    const advanced = advancedClients(this.doc, update);
    for (const client of advanced) {
      if (!this.writers.may(client, writer, device)) {
        const why = `Yjs client ${client} belongs to another member`;
        throw new Refusal(KINDS.PermissionDenied, why);
      }
    }
    if (this.writers.over(advanced, writer, device)) {
      const why = `a writer may own at most ${MAX_YJS_IDS} Yjs client ids`;
      throw new Refusal(KINDS.LimitExceeded, why);
    }
    const before = clocksOf(this.doc);
    const changes = this.applyUpdate(update, peer);
    this.writers.claim(grownClients(this.doc, before), writer);
    const { pendingStructs, pendingDs } = this.doc.store;
    if (changes.length === 0 && pendingStructs === null && pendingDs === null) return;
    this.store.append(update);
    for (const change of changes) this.broadcast(updateMessage(change), ws);
    // Compaction waits for the alarm, after this message's relays.
    if (this.compactionDue()) void this.scheduleAlarm();
  }

  /**
   * Applies an update to the live document and returns what it changed (the document's own
   * update events). An update the live document refuses half-way, or one that touches a part
   * of the document the sender's role may not write, is undone by building the document again
   * from storage, which never held it.
   *
   * Yjs integrates an item whose dependencies are missing later, when they arrive (possibly in
   * another client's update), and keeps deletions of unknown ids until they exist; so for a
   * role with forbidden parts an update must also leave nothing new waiting. A part the role
   * may only add to (a controller's intents) is read off the same update's map events.
   * @param {Uint8Array} update
   * @param {Peer} peer
   * @returns {Uint8Array[]}
   */
  applyUpdate(update, peer) {
    const role = peer.role ?? "";
    /** @type {Uint8Array[]} */
    const changes = [];
    /** @param {Uint8Array} change */
    const collect = (change) => {
      changes.push(change);
    };
    /** @type {string[]} */
    const touched = [];
    const watches = forbiddenRoots(role).map((root) => {
      // The parts are maps; the typed root is what calls deep observers (a root still only
      // known from updates is a placeholder that calls none).
      const type = this.partRoot(root);
      const note = () => {
        touched.push(root);
      };
      type.observeDeep(note);
      return () => type.unobserveDeep(note);
    });
    /** @type {string | null} */
    let problem = null;
    for (const root of addOnlyRoots(role)) {
      const type = this.partRoot(root);
      /** @param {Y.YEvent<any>[]} events */
      const read = (events) => {
        problem ??= addedEntriesProblem(root, events, peer.sub ?? "");
      };
      type.observeDeep(read);
      watches.push(() => type.unobserveDeep(read));
    }
    const { pendingStructs, pendingDs } = this.doc.store;
    this.doc.on("update", collect);
    try {
      Y.applyUpdate(this.doc, update);
    } catch (error) {
      this.rebuild();
      const why = error instanceof Error ? error.message : String(error);
      throw new Refusal(KINDS.InvalidFrame, `the update does not apply: ${why}`);
    } finally {
      this.doc.off("update", collect);
      for (const unwatch of watches) unwatch();
    }
    const waiting =
      watches.length > 0 &&
      (this.doc.store.pendingStructs !== pendingStructs || this.doc.store.pendingDs !== pendingDs);
    if (touched.length > 0 || waiting) {
      this.rebuild();
      const what = touched.length > 0 ? `the ${touched[0]} part` : "what it depends on";
      throw new Refusal(KINDS.PermissionDenied, `a ${role} may not write ${what}`);
    }
    if (problem !== null) {
      this.rebuild();
      throw new Refusal(KINDS.PermissionDenied, problem);
    }
    return changes;
  }

  /**
   * @param {string} root
   * @returns {Y.AbstractType<any>}
   */
  partRoot(root) {
    try {
      return this.doc.getMap(root);
    } catch {
      // Made some other type by a writer allowed to: observed as that type.
      return /** @type {Y.AbstractType<any>} */ (this.doc.share.get(root));
    }
  }

  /** The live document again from storage (the snapshot and the log). */
  rebuild() {
    this.doc.destroy();
    this.doc = this.store.loadDoc();
  }

  /**
   * @param {WebSocket} ws
   * @param {Peer} peer
   * @param {Uint8Array} update
   */
  receiveAwareness(ws, peer, update) {
    // Checked before anything is applied: a refused message leaves no state behind. A client
    // owns the ids it set a state for (removed ones too) until it goes; only it may change them.
    const changes = awarenessChanges(this.awareness, update);
    const owned = { ...(peer.aw ?? {}) };
    const ids = new Set(Object.keys(owned));
    for (const [id] of changes) {
      if (!ids.has(String(id)) && this.ownerOf(id, ws)) {
        const why = `awareness client ${id} belongs to another client`;
        throw new Refusal(KINDS.PermissionDenied, why);
      }
    }
    for (const [id, present] of changes) if (present) ids.add(String(id));
    // The device's link carries every local client's states: not bound as one client.
    if (peer.role !== "device" && ids.size > this.limits.maxAwarenessClients) {
      throw new Refusal(KINDS.LimitExceeded, "too many awareness states from one client");
    }
    if (changes.length === 0) return;
    /** @type {{added: number[], updated: number[], removed: number[]} | null} */
    let change = null;
    /** @param {{added: number[], updated: number[], removed: number[]}} c */
    const collect = (c) => {
      change = c;
    };
    this.awareness.on("update", collect);
    try {
      awarenessProtocol.applyAwarenessUpdate(this.awareness, update, ws);
    } finally {
      this.awareness.off("update", collect);
    }
    if (change !== null) {
      /** @type {{added: number[], updated: number[], removed: number[]}} */
      const { added, updated, removed } = change;
      for (const id of [...added, ...updated, ...removed]) {
        const clock = this.awareness.meta.get(id)?.clock ?? 0;
        owned[String(id)] = [clock, this.awareness.states.get(id) ?? null];
      }
      this.remember(ws, { ...peer, aw: fitAttachment(owned) });
    }
    this.broadcast(awarenessMessage(update), ws);
  }

  /**
   * Whether a socket other than `except` owns awareness client `id`.
   * @param {number} id
   * @param {WebSocket} except
   */
  ownerOf(id, except) {
    for (const [ws, peer] of this.sockets()) {
      if (ws !== except && peer.state === "open" && String(id) in (peer.aw ?? {})) return true;
    }
    return false;
  }

  /**
   * @param {Uint8Array} message
   * @param {WebSocket | null} except
   */
  broadcast(message, except) {
    for (const [ws, peer] of this.sockets()) {
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
    const peer = this.peer(ws);
    if (peer === null || peer.state === "closed") return;
    try {
      this.remember(ws, { id: peer.id, session: peer.session, state: "closed" });
    } catch {
      this.peers.set(ws, { id: peer.id, session: peer.session, state: "closed" });
    }
    // A state too large for the attachment is gone after a hibernation; its id and clock are
    // not, and a null state at the same clock removes it at the other clients all the same.
    const ids = Object.keys(peer.aw ?? {})
      .map(Number)
      .filter((id) => this.awareness.meta.has(id));
    if (ids.length === 0) return;
    awarenessProtocol.removeAwarenessStates(this.awareness, ids, "closed");
    const removal = awarenessProtocol.encodeAwarenessUpdate(this.awareness, ids);
    for (const id of ids) this.awareness.meta.delete(id);
    this.broadcast(awarenessMessage(removal), ws);
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
    for (const [ws, peer] of this.sockets()) {
      if (peer.state === "pending" && (peer.deadline ?? 0) <= now) {
        const seconds = this.limits.authTimeoutMs / 1000;
        this.refuse(ws, new Refusal(KINDS.PermissionDenied, `no token within ${seconds} s`));
      } else if (peer.state === "open" && ((peer.exp ?? 0) + LEEWAY_SECONDS) * 1000 <= now) {
        this.refuse(ws, new Refusal(KINDS.PermissionDenied, "token expired"));
      }
    }
    if (this.compactionDue()) this.store.compact(this.doc);
    this.store.pruneRevoked(now / 1000 - LEEWAY_SECONDS);
    await this.scheduleAlarm();
  }

  compactionDue() {
    const { logRows, logBytes } = this.store;
    return logRows >= this.limits.compactRows || logBytes >= this.limits.compactBytes;
  }

  /** Sets the alarm to the next thing due, or clears it. */
  async scheduleAlarm() {
    let next = Infinity;
    for (const [, peer] of this.sockets()) {
      if (peer.state === "pending") next = Math.min(next, peer.deadline ?? 0);
      if (peer.state === "open") next = Math.min(next, ((peer.exp ?? 0) + LEEWAY_SECONDS) * 1000);
    }
    if (this.compactionDue()) next = Date.now();
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
    await this.deviceOnly(request, session);
    /** @type {unknown} */
    let body;
    try {
      body = await request.json();
    } catch {
      body = undefined;
    }
    const { jti, exp } = /** @type {{jti?: unknown, exp?: unknown}} */ (body ?? {});
    if (
      typeof jti !== "string" ||
      jti.length === 0 ||
      jti.length > 256 ||
      (exp !== undefined && exp !== null && !Number.isSafeInteger(exp))
    ) {
      return json({ error: 'the body must be {"jti": "<token id>", "exp"?: <seconds>}' }, 400);
    }
    // Kept until the token would be refused anyway; without its exp, as long as any lives.
    const nowSeconds = Date.now() / 1000;
    const until = typeof exp === "number" ? exp : nowSeconds + MAX_TTL_SECONDS;
    this.store.revoke(jti, until);
    let closed = 0;
    for (const [ws, peer] of this.sockets()) {
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
    await this.deviceOnly(request, session);
    const clients = { open: 0, pending: 0 };
    for (const [, peer] of this.sockets()) {
      if (peer.state === "open") clients.open += 1;
      if (peer.state === "pending") clients.pending += 1;
    }
    return json({
      session,
      boots: this.boots,
      clients,
      awareness: this.awareness.states.size,
      revoked: this.store.revokedCount(),
      log: { rows: this.store.logRows, bytes: this.store.logBytes },
      snapshotBytes: this.store.snapshotBytes,
    });
  }

  /**
   * @param {Request} request
   * @param {string} session
   */
  async deviceOnly(request, session) {
    const match = /^Bearer\s+(\S+)$/.exec(request.headers.get("Authorization") ?? "");
    if (match === null) {
      throw new Refusal(KINDS.PermissionDenied, "needs Authorization: Bearer <device token>");
    }
    const claims = await this.checkToken(match[1], session);
    if (claims.role !== "device") {
      throw new Refusal(KINDS.PermissionDenied, `an ${claims.role} token cannot do this`);
    }
  }
}

/**
 * The entries of an awareness update that y-protocols would apply to `awareness`: [client id,
 * whether a state is set]. A stock y-websocket client sends back every awareness change it
 * applies, the states the server told it included (same clocks): those change nothing and are
 * left out, so an echo is neither refused nor counted.
 * @param {awarenessProtocol.Awareness} awareness
 * @param {Uint8Array} update
 * @returns {[number, boolean, number, string][]} [id, whether set, clock, state as JSON]
 */
function awarenessChanges(awareness, update) {
  /** @type {Map<number, number>} */
  const clocks = new Map();
  for (const [id, meta] of awareness.meta) clocks.set(id, meta.clock);
  const held = new Set(awareness.states.keys());
  /** @type {[number, boolean, number, string][]} */
  const changes = [];
  try {
    const decoder = decoding.createDecoder(update);
    const count = decoding.readVarUint(decoder);
    for (let i = 0; i < count; i += 1) {
      const id = decoding.readVarUint(decoder);
      const clock = decoding.readVarUint(decoder);
      const state = decoding.readVarString(decoder);
      const present = JSON.parse(state) !== null;
      const known = clocks.get(id) ?? 0;
      if (known < clock || (known === clock && !present && held.has(id))) {
        clocks.set(id, clock);
        if (present) held.add(id);
        else held.delete(id);
        changes.push([id, present, clock, state]);
      }
    }
  } catch (error) {
    const why = error instanceof Error ? error.message : String(error);
    throw new Refusal(KINDS.InvalidFrame, `not an awareness update: ${why}`);
  }
  return changes;
}

/**
 * An awareness update (y-protocols' encoding) of `entries`, as awarenessChanges gives them.
 * @param {[number, boolean, number, string][]} entries
 */
function encodeEntries(entries) {
  const encoder = encoding.createEncoder();
  encoding.writeVarUint(encoder, entries.length);
  for (const [id, , clock, state] of entries) {
    encoding.writeVarUint(encoder, id);
    encoding.writeVarUint(encoder, clock);
    encoding.writeVarString(encoder, state);
  }
  return encoding.toUint8Array(encoder);
}

/**
 * The awareness states a socket owns, with the states dropped (kept as null) from the largest
 * down until the attachment fits its budget; ids and clocks are always kept.
 * @param {Record<string, [number, unknown]>} owned
 */
function fitAttachment(owned) {
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
