// The session's live Yjs document and its durable log: the answers to a client's sync step 1,
// and a client's update checked (its role, the document's size, the scratch document, the Yjs
// client ids' owners, the parts its role may write), applied, written to the log (before it is
// relayed: the runtime's output gate holds what is sent after a write until it is durable) and
// given back as what it changed, for the object to relay. Nothing here knows a socket.
import * as Y from "yjs";
import { KINDS, Refusal } from "./errors.js";
import { addedEntriesProblem, addOnlyRoots, forbiddenRoots } from "./parts.js";
import { checkOnScratch, isEmptyUpdate, syncStep1, syncStep2, updateMessage } from "./protocol.js";
import { WRITERS } from "./tokens.js";
import {
  advancedClients,
  clocksOf,
  grownClients,
  MAX_YJS_IDS,
  writerOf,
  YjsWriters,
} from "./writers.js";

export class SessionDocument {
  /**
   * @param {import("./store.js").SessionStore} store
   * @param {SqlStorage} sql where the Yjs client ids' owners are kept
   * @param {import("./limits.js").Limits} limits
   */
  constructor(store, sql, limits) {
    this.store = store;
    this.limits = limits;
    this.doc = store.loadDoc();
    this.writers = new YjsWriters(sql);
  }

  /** The server's sync step 1, sent to a client as it joins. */
  step1() {
    return syncStep1(this.doc);
  }

  /**
   * The answer to a client's step 1: what the document has that its state vector lacks.
   * @param {Uint8Array} stateVector
   */
  step2(stateVector) {
    return syncStep2(this.doc, stateVector);
  }

  /**
   * A client's update, checked, applied and durable: the messages to relay to the others (one
   * for each change the document reported), or null when nothing was stored (it changed
   * nothing).
   * @param {Uint8Array} update
   * @param {import("./peers.js").Peer} peer the sender
   * @returns {Uint8Array[] | null}
   */
  receive(update, peer) {
    if (!WRITERS.has(peer.role ?? "")) {
      // A reader answers the server's step 1 with what it has that the server lacks: nothing.
      if (isEmptyUpdate(update)) return null;
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
    const changes = this.apply(update, peer);
    this.writers.claim(grownClients(this.doc, before), writer);
    const { pendingStructs, pendingDs } = this.doc.store;
    if (changes.length === 0 && pendingStructs === null && pendingDs === null) return null;
    this.store.append(update);
    return changes.map((change) => updateMessage(change));
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
   * @param {import("./peers.js").Peer} peer
   * @returns {Uint8Array[]}
   */
  apply(update, peer) {
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

  /** Whether the log is long enough to be compacted into the snapshot. */
  compactionDue() {
    const { logRows, logBytes } = this.store;
    return logRows >= this.limits.compactRows || logBytes >= this.limits.compactBytes;
  }

  /** The log compacted into the snapshot (one transaction), when it is due. */
  compactIfDue() {
    if (this.compactionDue()) this.store.compact(this.doc);
  }
}
